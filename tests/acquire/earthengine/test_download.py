"""The Earth Engine downloader, driven through the real ee client against the loopback fake."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import ee
import numpy as np
import pytest
import rasterio

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.earthengine import download
from rsgee.acquire.earthengine.download import (
    BlockError,
    EarthEngineSource,
    RetryPolicy,
    Throttle,
    classify,
    parse_windows,
)
from rsgee.acquire.earthengine.session import SessionConfig, initialize
from rsgee.acquire.export import export_aois
from rsgee.catalog import load_catalog
from rsgee.errors import RsgeeError
from rsgee.exports import MANIFEST, read_manifest
from rsgee.grid import Grid
from rsgee.testing.earthengine import QUOTA_EXCEEDED, FakeClock, FakeEarthEngine, Fault, fake_pixels

AOI = "v=10.60,46.60,10.63,46.62"  # 2×2 tiles of EPSG:32632
CATALOG = load_catalog()
SOURCES = list(CATALOG.sources)


@pytest.fixture()
def fake():
    with FakeEarthEngine() as server:
        yield server
    ee.Reset()


def source(fake, *, workers=4, attempts=4, retry_failed=False, timeout_s=30.0, sleep=lambda s: None):
    windows = parse_windows(dt.date(2023, 6, 1), dt.date(2023, 9, 1), [], SOURCES)
    return EarthEngineSource(SessionConfig(project="fake", url=fake.url, auth=False, workers=workers, timeout_s=timeout_s),
                             windows, policy=RetryPolicy(attempts=attempts), retry_failed=retry_failed,
                             progress=False, sleep=sleep, seed=0)


def export(fake, out, aois=(AOI,), **kwargs):
    retry = kwargs.pop("retry_failed_run", False)
    return export_aois(parse_aois(list(aois)), out, source(fake, retry_failed=retry, **kwargs), CATALOG,
                       retry_failed=retry, progress=False)


def expected_raster(name: str, grid: Grid, halo: int = 0) -> np.ndarray:
    spec = CATALOG[name]
    x0, _, _, y1 = grid.bounds
    ix = (x0 // 10 - halo + np.arange(grid.width + 2 * halo))[None, :].repeat(grid.height + 2 * halo, 0)
    iy = (y1 // 10 - 1 + halo - np.arange(grid.height + 2 * halo))[:, None].repeat(grid.width + 2 * halo, 1)
    return np.stack([fake_pixels(spec, b, ix, iy) for b in range(len(spec.bands))])


def test_every_block_lands_where_it_belongs(fake, tmp_path):
    (result,) = export(fake, tmp_path)
    assert result.ok and result.counts == {"ok": 16, "skipped": 0, "retried": 0, "failed": 0}
    grid = parse_aois([AOI])[0].grid()
    for name in SOURCES:
        with rasterio.open(tmp_path / "v" / f"{name}.tif") as src:
            assert src.crs.to_epsg() == 32632 and src.transform == grid.transform
            np.testing.assert_array_equal(src.read(), expected_raster(name, grid))
    with rasterio.open(tmp_path / "v" / "dem_halo.tif") as src:
        assert (src.width, src.height) == (514, 514)
        np.testing.assert_array_equal(src.read(), expected_raster("dem", grid, halo=1))
    bodies = [r.body for r in fake.pixel_requests()]
    assert len(bodies) == 16
    for body in bodies:
        assert body["fileFormat"] == "NPY" and body["grid"]["crsCode"] == "EPSG:32632"
        affine = body["grid"]["affineTransform"]
        assert (affine["scaleX"], affine["scaleY"], affine["shearX"], affine["shearY"]) == (10, -10, 0, 0)
    dem = [b for b in bodies if "COPERNICUS/DEM/GLO30" in json.dumps(b["expression"])]
    assert {b["grid"]["dimensions"]["width"] for b in dem} == {258}
    assert sorted(b["grid"]["affineTransform"]["translateX"] for b in dem) == [622070] * 2 + [624630] * 2
    s2 = [b for b in bodies if "COPERNICUS/S2_SR_HARMONIZED" in json.dumps(b["expression"])]
    assert len(s2) == 4 and {b["grid"]["dimensions"]["width"] for b in s2} == {256}
    assert sorted(b["grid"]["affineTransform"]["translateY"] for b in s2) == [5163520] * 2 + [5166080] * 2
    manifest = read_manifest(tmp_path / "v")
    assert manifest["source"] == "earthengine" and manifest["request"]["windows"]["s1"] == ["2023-06-01", "2023-09-01"]
    assert manifest["provenance"]["earthengine"] == {"project": "fake", "endpoint": fake.url, "auth": "none"}
    assert manifest["files"]["dem_halo"]["halo_px"] == 1
    assert not (tmp_path / "v" / ".partial").exists()


def test_masked_pixels_become_each_sources_nodata(tmp_path):
    with FakeEarthEngine(masked=lambda ix, iy: (ix % 97) == 0) as server:
        export(server, tmp_path)
    ee.Reset()
    grid = parse_aois([AOI])[0].grid()
    columns = (grid.bounds[0] // 10 + np.arange(grid.width)) % 97 == 0
    s1 = rasterio.open(tmp_path / "v" / "s1.tif").read()
    s2 = rasterio.open(tmp_path / "v" / "s2.tif").read()
    lulc = rasterio.open(tmp_path / "v" / "lulc.tif").read()
    assert np.isnan(s1[:, :, columns]).all() and not np.isnan(s1[:, :, ~columns]).any()
    assert (s2[:, :, columns] == 0).all() and (lulc[:, :, columns] == 255).all()


@pytest.mark.parametrize(
    "fault",
    [
        Fault("http", 429, "Too many concurrent aggregations.", times=5),
        Fault("http", 500, "An internal error has occurred (abc).", times=3),
        Fault("http", 503, "Service unavailable", times=2),
        Fault("http", 400, "Computation timed out.", times=1),
        Fault("truncate", times=2),
        Fault("short", times=2),
        Fault("hang", seconds=3.0, times=1),
    ],
    ids=["429-burst", "500", "503", "timed-out", "truncated-connection", "truncated-npy", "timeout"],
)
def test_retryable_faults_end_with_correct_files(fake, tmp_path, fault):
    fake.add_fault(dataclasses.replace(fault))
    (result,) = export(fake, tmp_path, timeout_s=1.0 if fault.kind == "hang" else 30.0)
    assert result.ok and result.counts["retried"] == fault.times and result.counts["ok"] == 16
    grid = parse_aois([AOI])[0].grid()
    for name in SOURCES:
        np.testing.assert_array_equal(rasterio.open(tmp_path / "v" / f"{name}.tif").read(), expected_raster(name, grid))


def test_non_retryable_error_is_recorded_and_retry_failed_fetches_only_it(fake, tmp_path):
    target = lambda source, x, y: source == "s2" and x == 622080 and y == 5166080  # noqa: E731
    fake.add_fault(Fault("http", 400, "User memory limit exceeded.", times=1, match=target))
    (result,) = export(fake, tmp_path)
    assert not result.ok and result.failed_blocks == {"s2/32632_243_2017": "User memory limit exceeded."}
    assert result.counts == {"ok": 15, "skipped": 0, "retried": 0, "failed": 1}
    assert len(fake.pixel_requests()) == 16  # not retried
    manifest = read_manifest(tmp_path / "v")
    assert manifest["failed_blocks"] == {"s2/32632_243_2017": "User memory limit exceeded."}
    s2 = rasterio.open(tmp_path / "v" / "s2.tif").read()
    assert (s2[:, :256, :256] == 0).all() and (s2[:, 256:, :] != 0).all()  # the failed block is nodata
    (again,) = export(fake, tmp_path)  # a plain re-run does not retry it
    assert again.status == "up to date" and not again.ok and len(fake.pixel_requests()) == 16
    (retried,) = export(fake, tmp_path, retry_failed_run=True)
    assert retried.ok and retried.counts == {"ok": 1, "skipped": 15, "retried": 0, "failed": 0}
    assert len(fake.pixel_requests()) == 17
    grid = parse_aois([AOI])[0].grid()
    np.testing.assert_array_equal(rasterio.open(tmp_path / "v" / "s2.tif").read(), expected_raster("s2", grid))
    assert "failed_blocks" not in read_manifest(tmp_path / "v")


def test_a_computation_timeout_is_tried_twice_at_most_and_names_batch(fake, tmp_path):
    """The server bills each try for its ~5 minutes: 2 requests for that block, not --attempts (6)."""
    target = lambda source, x, y: source == "s1" and x == 622080 and y == 5166080  # noqa: E731
    fake.add_fault(Fault("http", 400, "Computation timed out.", times=100, match=target))
    (result,) = export(fake, tmp_path, attempts=6)
    timed_out = [r for r in fake.pixel_requests() if r.status == 400]
    assert len(timed_out) == 2 and {r.source for r in timed_out} == {"s1"}
    assert len(fake.pixel_requests()) == 17 and result.counts == {"ok": 15, "skipped": 0, "retried": 1, "failed": 1}
    message = result.failed_blocks["s1/32632_243_2017"]
    assert message.startswith("Computation timed out. (tried 2×, each billed for up to ~5 min")
    assert "--via batch" in message


def test_a_refused_token_refresh_stops_the_run_in_one_line(fake, tmp_path):
    import google.auth.exceptions

    def refused(*args, **kwargs):
        raise google.auth.exceptions.RefreshError("invalid_grant: Token has been expired or revoked.")

    src = source(fake)
    src._fetch = refused
    (result,) = export_aois(parse_aois([AOI]), tmp_path, src, CATALOG, progress=False)
    assert result.status == "failed" and result.error.count("\n") == 0
    assert result.error.startswith("Google refused the Earth Engine credentials (invalid_grant: Token has been expired "
                                   "or revoked): run `earthengine authenticate`")
    assert not (tmp_path / "v" / ".partial" / "failed.jsonl").exists()  # no block is blamed for it


def test_retries_give_up_after_the_last_attempt(tmp_path, monkeypatch):
    """A fault that is not a quota answer keeps the short schedule: seconds apart, --attempts tries, no slowdown."""
    bars = record_bars(monkeypatch)
    clock = FakeClock()
    with FakeEarthEngine() as server:
        server.add_fault(Fault("http", 500, "An internal error has occurred (x1).", times=100,
                               match=lambda s, x, y: s == "lulc"))
        (result,) = export(server, tmp_path, attempts=3, sleep=clock.sleep)
    ee.Reset()
    assert result.counts["failed"] == 4 and result.counts["retried"] == 8
    assert set(result.failed_blocks.values()) == {"An internal error has occurred (x1)."}
    assert len(clock.waits) == 8 and max(clock.waits) <= 2.0
    assert {p["concurrency"] for p in bars} == {"4/4"} and not any("backoff" in p for p in bars)


def test_an_empty_collection_fails_that_aoi_and_the_run_goes_on(tmp_path):
    other = "w=10.70,46.60,10.73,46.62"
    with FakeEarthEngine(empty=lambda source, expression: source == "s2" and "622080" in expression) as server:
        first, second = export(server, tmp_path, aois=(AOI, other))
    ee.Reset()
    assert first.status == "failed" and not (tmp_path / "v" / MANIFEST).exists()
    assert "no s2 images in COPERNICUS/S2_SR_HARMONIZED between 2023-06-01 and 2023-09-01" in first.error
    assert second.ok and (tmp_path / "w" / MANIFEST).exists()


def test_concurrency_reaches_but_never_exceeds_the_worker_count(tmp_path):
    with FakeEarthEngine(latency=0.1, max_concurrent=4) as server:
        (result,) = export(server, tmp_path, workers=4)
        assert server.peak_in_flight == 4 and result.counts["retried"] == 0
    ee.Reset()


def test_a_corrupt_saved_block_is_fetched_again(fake, tmp_path):
    fake.add_fault(Fault("http", 400, "User memory limit exceeded.", match=lambda s, x, y: s == "s2" and x == 622080
                         and y == 5166080))
    export(fake, tmp_path)  # one failed block keeps the saved blocks in .partial
    saved = tmp_path / "v" / ".partial" / "s1" / "32632_243_2016.npy"
    saved.write_bytes(saved.read_bytes()[:1000])  # as if cut short by a crash of the disk
    (result,) = export(fake, tmp_path, retry_failed_run=True)
    assert result.ok and result.counts == {"ok": 2, "skipped": 14, "retried": 0, "failed": 0}
    grid = parse_aois([AOI])[0].grid()
    for name in SOURCES:
        np.testing.assert_array_equal(rasterio.open(tmp_path / "v" / f"{name}.tif").read(), expected_raster(name, grid))


@pytest.mark.parametrize(
    "exc, retryable",
    [
        (ConnectionError("reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (ee.EEException("Too many concurrent aggregations."), True),
        (ee.EEException("Computation timed out."), True),
        (ee.EEException("Too many tasks already in the queue (3000). Please wait for some of them to complete."), True),
        (ee.EEException("Quota exceeded for quota metric 'Number of read requests' and limit 'Number of read "
                        "requests per minute per user' of service 'earthengine.googleapis.com'."), True),
        (ee.EEException("An internal server error has occurred (a1b2)."), True),
        (ee.EEException("The service is currently unavailable."), True),
        (ee.EEException("User memory limit exceeded."), False),
        (ee.EEException("Total request size (56623104 bytes) must be less than or equal to 50331648 bytes."), False),
        (ee.EEException("Image.select: Parameter 'input' is required."), False),
        (ee.EEException("Something odd"), False),
    ],
)
def test_classification(exc, retryable):
    error = classify(exc)
    assert isinstance(error, BlockError) and error.retryable is retryable and error.message


def http_error(status: int, message: str, headers: dict | None = None, **error) -> Exception:
    import httplib2
    from googleapiclient.errors import HttpError

    names = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 400: "INVALID_ARGUMENT"}
    body = {"error": {"code": status, "message": message, "status": names[status], **error}}
    return HttpError(httplib2.Response({"status": status, **(headers or {})}), json.dumps(body).encode())


@pytest.mark.parametrize(
    "exc, quota, retry_after",
    [
        (http_error(429, "Too many concurrent aggregations."), True, None),
        (http_error(429, QUOTA_EXCEEDED, {"retry-after": "30"}), True, 30.0),
        (http_error(429, "Resource has been exhausted (e.g. check quota).",
                    details=[{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12.5s"}]), True, 12.5),
        (http_error(503, "The service is currently unavailable."), True, None),
        (ee.EEException(QUOTA_EXCEEDED), True, None),  # the fallback client path: no status, the text says it
        (ee.EEException("Earth Engine capacity exceeded."), True, None),
        (http_error(500, "An internal error has occurred (abc)."), False, None),
        (http_error(400, "Computation timed out."), False, None),
        (ConnectionError("reset by peer"), False, None),
        (http_error(400, "User memory limit exceeded."), False, None),
    ],
)
def test_quota_and_rate_answers_are_told_apart_with_the_servers_wait(exc, quota, retry_after):
    error = classify(exc)
    assert error.quota is quota and error.retry_after == retry_after
    assert error.retryable is (quota or "memory" not in error.message)


def test_quota_backoff_is_minutes_capped_and_never_shorter_than_retry_after():
    import random

    policy, rng = RetryPolicy(), random.Random(0)
    delays = [policy.quota_delay(k, rng) for k in range(12)]
    for k, d in enumerate(delays):
        top = min(300.0, 5.0 * 2.0**k)
        assert top / 2 <= d <= top
    assert sum(delays[:5]) > 60  # five quota answers already outlast the short schedule's ~1 min
    waits = 0.0  # tries a block gets before its 30 minutes of patience run out
    for k in range(100):
        waits += policy.quota_delay(k, rng)
        if waits > policy.quota_patience_s:
            break
    assert 10 <= k <= 16
    assert 600 <= policy.quota_delay(0, rng, retry_after=600) <= 605  # the server's word beats the schedule
    assert policy.quota_delay(7, rng, retry_after=1) >= 150


def test_throttle_halves_once_per_round_and_grows_back_by_one():
    throttle = Throttle(8)
    first = throttle.round
    throttle.quota(first)
    throttle.quota(first)  # a second answer to the same round of requests: the same overload
    assert throttle.limit == 4
    throttle.quota(throttle.round)
    assert throttle.limit == 2
    for expected in (2, 3, 3, 3, 4):
        throttle.succeeded()
        assert throttle.limit == expected
    assert throttle.answered({"x-earth-engine-quota-status": "parallelism_restricted=true"}) is True
    assert throttle.limit == 2 and throttle.restricted
    for _ in range(10):  # no growth while restricted
        throttle.succeeded()
    assert throttle.answered({"x-earth-engine-quota-status": "parallelism_restricted=true"}) is False
    assert throttle.limit == 2 and throttle.answered({}) is False and not throttle.restricted
    stale = throttle.round - 1  # an answer to a request sent while restricted, arriving after the end
    assert throttle.answered({"x-earth-engine-quota-status": "parallelism_restricted=true"}, stale) is False
    assert throttle.limit == 2 and not throttle.restricted
    for _ in range(200):
        throttle.succeeded()
    assert throttle.limit == 8  # never above the workers


class RecordingBar:
    """Stands in for tqdm in the downloader: keeps every postfix it shows."""

    def __init__(self, postfixes: list, *args, **kwargs):
        self.postfixes = postfixes

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        self.postfixes.append(dict(ordered_dict or {}, **kwargs))

    def update(self, n=1):
        pass

    def close(self):
        pass


def record_bars(monkeypatch) -> list[dict]:
    postfixes: list[dict] = []
    monkeypatch.setattr(download, "tqdm", lambda *a, **k: RecordingBar(postfixes, *a, **k))
    return postfixes


def block_of(record) -> tuple:
    affine = record.body["grid"]["affineTransform"]
    return record.source, affine["translateX"], affine["translateY"]


def test_a_quota_burst_longer_than_a_minute_is_waited_out_with_fewer_requests(tmp_path, monkeypatch, caplog):
    """Five minutes of 429s: every block arrives, concurrency drops to one during the burst and grows back."""
    bars = record_bars(monkeypatch)
    clock = FakeClock()
    with FakeEarthEngine(clock=clock) as server, caplog.at_level(logging.WARNING, logger="rsgee"):
        server.add_fault(Fault("http", 429, QUOTA_EXCEEDED, until=300.0))
        (result,) = export(server, tmp_path, workers=4, attempts=6, sleep=clock.sleep)
        requests = server.pixel_requests()
    ee.Reset()
    assert result.ok and result.counts["ok"] == 16 and result.counts["failed"] == 0
    refused = [r for r in requests if r.status == 429]
    assert max(r.at for r in refused) > 150 and clock.now >= 300
    per_block = {}
    for r in refused:
        per_block[block_of(r)] = per_block.get(block_of(r), 0) + 1
    assert max(per_block.values()) >= 6  # more quota answers than --attempts 6 would have survived
    late = [r for r in refused if r.at > 60]
    assert late and max(r.in_flight for r in late) == 1  # the server saw one request at a time
    shown = [p["concurrency"] for p in bars]
    assert "1/4" in shown and shown[-1] == "4/4" and any("backoff" in p for p in bars)
    assert caplog.text.count("(a quota or rate limit)") == 1
    grid = parse_aois([AOI])[0].grid()
    for name in SOURCES:
        np.testing.assert_array_equal(rasterio.open(tmp_path / "v" / f"{name}.tif").read(), expected_raster(name, grid))


def test_retry_after_is_respected(tmp_path):
    clock = FakeClock()
    with FakeEarthEngine(clock=clock) as server:
        server.add_fault(Fault("http", 429, "Too many concurrent aggregations.", times=1, retry_after=240))
        (result,) = export(server, tmp_path, sleep=clock.sleep)
    ee.Reset()
    assert result.ok and result.counts["retried"] == 1 and 240 <= clock.waits[0] <= 245


def test_restricted_mode_lowers_concurrency_until_it_ends(tmp_path, monkeypatch, caplog):
    bars = record_bars(monkeypatch)
    with FakeEarthEngine() as server, caplog.at_level(logging.WARNING, logger="rsgee"):
        server.restrict(6)
        with pytest.warns(UserWarning, match="restricted mode"):  # the ee client's own warning
            (result,) = export(server, tmp_path, workers=4)
    ee.Reset()
    assert result.ok and result.counts["ok"] == 16 and result.counts["retried"] == 0
    shown = [p["concurrency"] for p in bars]
    assert "2/4 restricted" in shown and shown[-1] == "4/4"
    assert caplog.text.count("restricted mode") == 1 and "noncommercial_tiers#restricted_mode" in caplog.text


def tif_bytes(folder) -> dict:
    return {name: (folder / f"{name}.tif").read_bytes() for name in SOURCES + ["dem_halo"]}


def test_a_quota_outage_beyond_patience_stops_the_aoi_and_resumes_byte_identical(tmp_path):
    """Nothing is blamed on a block: the AOI stops in one line, later AOIs do not wait it out again,
    and a later run downloads only what is missing, to the same bytes."""
    clock = FakeClock()
    other = "w=10.70,46.60,10.73,46.62"
    with FakeEarthEngine(clock=clock) as server:
        export(server, tmp_path / "clean")
        clean = len(server.pixel_requests())
        server.add_fault(Fault("http", 429, QUOTA_EXCEEDED, until=10_000.0, match=lambda s, x, y: s == "s2"))
        first, second = export(server, tmp_path / "out", aois=(AOI, other), sleep=clock.sleep)
        assert first.status == "failed" and first.error.count("\n") == 0
        assert first.error.startswith(f'Earth Engine still answered "{QUOTA_EXCEEDED}" after ')
        assert "re-run later to resume" in first.error and second.status == "failed" and second.error == first.error
        assert not (tmp_path / "out" / "v" / ".partial" / "failed.jsonl").exists()
        assert len(server.pixel_requests()) - clean < 40  # one probe at a time, minutes apart
        kept = len(list((tmp_path / "out" / "v" / ".partial").rglob("*.npy")))
        assert 0 < kept < 16
        clock.now = 10_000.0
        before = len(server.pixel_requests())
        (resumed,) = export(server, tmp_path / "out", sleep=clock.sleep)
        assert resumed.ok and resumed.counts["skipped"] == kept and len(server.pixel_requests()) - before == 16 - kept
    ee.Reset()
    assert tif_bytes(tmp_path / "out" / "v") == tif_bytes(tmp_path / "clean" / "v")


def test_an_interrupt_during_a_quota_wait_stops_at_once_and_resumes_byte_identical(tmp_path):
    clock = FakeClock()

    def interrupted(seconds):
        clock.sleep(seconds)
        if len(clock.waits) == 5:
            raise KeyboardInterrupt

    with FakeEarthEngine(clock=clock) as server:
        export(server, tmp_path / "clean")
        server.add_fault(Fault("http", 429, "Too many concurrent aggregations.", until=300.0,
                               match=lambda s, x, y: s in ("s1", "dem")))
        with pytest.raises(KeyboardInterrupt):
            export(server, tmp_path / "out", sleep=interrupted)
        kept = len(list((tmp_path / "out" / "v" / ".partial").rglob("*.npy")))
        assert kept < 16 and not (tmp_path / "out" / "v" / MANIFEST).exists()
        (resumed,) = export(server, tmp_path / "out", sleep=clock.sleep)
        assert resumed.ok and resumed.counts["skipped"] == kept and resumed.counts["ok"] == 16 - kept
    ee.Reset()
    assert tif_bytes(tmp_path / "out" / "v") == tif_bytes(tmp_path / "clean" / "v")


def test_backoff_is_capped_exponential_with_jitter():
    import random

    policy, rng = RetryPolicy(base_s=1.0, cap_s=8.0), random.Random(0)
    delays = [policy.delay(k, rng) for k in range(6)]
    for k, d in enumerate(delays):
        top = min(8.0, 2.0**k)
        assert top / 2 <= d <= top
    assert len({round(d, 6) for d in delays}) == 6


def test_parse_windows():
    windows = parse_windows(dt.date(2023, 6, 1), dt.date(2023, 9, 1), ["s1=2023-05-01/2023-10-01"], SOURCES)
    assert windows["s1"].start == dt.date(2023, 5, 1) and windows["s2"].end == dt.date(2023, 9, 1)
    for bad, message in [("s9=2023-01-01/2023-02-01", "not an exported source"), ("s1=2023-01-01", "expected SOURCE="),
                         ("s1=2023-03-01/2023-02-01", "--window .*the end must be after the start")]:
        with pytest.raises(RsgeeError, match=message):
            parse_windows(dt.date(2023, 6, 1), dt.date(2023, 9, 1), [bad], SOURCES)


def test_session_errors_are_one_line_and_never_show_key_material(tmp_path, monkeypatch):
    monkeypatch.delenv("EE_PROJECT", raising=False)
    with pytest.raises(RsgeeError, match="no Earth Engine project: pass --project"):
        initialize(SessionConfig(project=None, auth=False))
    with pytest.raises(RsgeeError, match="must be within 1…40"):
        initialize(SessionConfig(project="p", workers=64))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setattr(ee.data, "get_persistent_credentials",
                        lambda: (_ for _ in ()).throw(ee.EEException("Please authorize access")))
    with pytest.raises(RsgeeError, match="run `earthengine authenticate`"):
        initialize(SessionConfig(project="p"))
    secret = "-----BEGIN PRIVATE KEY-----\\nMIIEsecret\\n-----END PRIVATE KEY-----\\n"
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"type": "service_account", "client_email": "a@b.iam", "private_key": secret}))
    with pytest.raises(RsgeeError) as info:
        initialize(SessionConfig(project="p", service_account=key))
    assert "MIIEsecret" not in str(info.value) and "could not be loaded" in str(info.value)
    with pytest.raises(RsgeeError, match="not a service-account JSON key"):
        (tmp_path / "bad.json").write_text('{"type": "service_account"}')
        initialize(SessionConfig(project="p", service_account=tmp_path / "bad.json"))


def test_environment_fills_the_session(monkeypatch, tmp_path):
    monkeypatch.setenv("EE_PROJECT", "from-env")
    monkeypatch.setenv("RSGEE_EE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "k.json"))
    config = SessionConfig.from_env()
    assert (config.project, config.url, config.service_account) == ("from-env", "http://127.0.0.1:1", tmp_path / "k.json")
    assert SessionConfig.from_env(auth=False).service_account is None
    assert config.describe() == {"project": "from-env", "endpoint": "http://127.0.0.1:1", "auth": "credentials file"}
    assert SessionConfig.from_env().timeout_s == 330.0  # above the server's ~300 s limit


@pytest.mark.slow
def test_a_killed_export_resumes_to_byte_identical_files(tmp_path):
    """kill -9 the real CLI mid-download, re-run it: only missing blocks are fetched, same bytes."""
    aoi = "k=10.60,46.60,10.66,46.64"  # 2×3 tiles → 24 blocks
    with FakeEarthEngine(latency=0.15) as server:
        args = [sys.executable, "-m", "rsgee.cli", "export", "--source", "earthengine", "--ee-url", server.url,
                "--no-auth", "--project", "fake", "--aoi", aoi, "--workers", "2", "--no-progress"]
        clean = subprocess.run(args + ["--out", str(tmp_path / "clean")], capture_output=True, text=True)
        assert clean.returncode == 0, clean.stderr
        before = len(server.pixel_requests())
        out = tmp_path / "killed"
        proc = subprocess.Popen(args + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        saved = lambda: list((out / "k" / ".partial").rglob("*.npy"))  # noqa: E731
        while time.time() < deadline and len(saved()) < 8:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kept = len(saved())
        assert 8 <= kept < 24 and not (out / "k" / MANIFEST).exists()
        first_run = len(server.pixel_requests()) - before
        resumed = subprocess.run(args + ["--out", str(out)], capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        second_run = len(server.pixel_requests()) - before - first_run
        assert second_run == 24 - kept and f"skipped {kept}" in resumed.stdout
    for name in SOURCES + ["dem_halo"]:
        assert (out / "k" / f"{name}.tif").read_bytes() == (tmp_path / "clean" / "k" / f"{name}.tif").read_bytes()


def test_cli_summarises_blocks_and_exits_nonzero_on_failures(fake, tmp_path, capsys, monkeypatch):
    from rsgee.cli import main

    monkeypatch.delenv("EE_PROJECT", raising=False)
    code = main(["export", "--aoi", AOI, "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "no Earth Engine project: pass --project" in err
    fake.add_fault(Fault("http", 400, "User memory limit exceeded.", match=lambda s, x, y: s == "lulc" and x == 622080
                         and y == 5166080))
    args = ["export", "--aoi", AOI, "--out", str(tmp_path), "--ee-url", fake.url, "--no-auth", "--project", "fake",
            "--workers", "4", "--no-progress"]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 1 and "[blocks ok 15, skipped 0, retried 0, failed 1]" in out
    assert "1 block(s) failed, e.g. lulc/32632_243_2017: User memory limit exceeded." in out
    assert err.strip() == "rsgee: error: 1 of 1 AOI(s) failed or have failed blocks: v"
    code = main(args + ["--retry-failed"])
    out, _ = capsys.readouterr()
    assert code == 0 and "[blocks ok 1, skipped 15, retried 0, failed 0]" in out


def test_dry_run_counts_the_requests_and_bytes_an_export_then_downloads(fake, tmp_path, capsys):
    from rsgee.acquire.earthengine.download import download_estimate
    from rsgee.cli import main

    other = "w=10.70,46.60,10.73,46.62"  # 2×2 tiles
    requests, nbytes = download_estimate(parse_aois([AOI])[0].grid(), [CATALOG[n] for n in SOURCES])
    assert requests == 16
    export(fake, tmp_path)
    assert len(fake.pixel_requests()) == requests and sum(r.nbytes for r in fake.pixel_requests()) == nbytes
    code = main(["export", "--aoi", AOI, "--aoi", other, "--out", str(tmp_path / "dry"), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == 4 and not (tmp_path / "dry").exists()
    assert lines[0].endswith(f"; 16 computePixels requests, {nbytes / 2**20:,.1f} MiB to download")
    assert "; 16 computePixels requests" in lines[1]
    assert lines[2] == f"total: 2 AOI(s), 8 tiles, 32 computePixels requests, {2 * nbytes / 2**20:,.1f} MiB to download"
    assert lines[3] == ("Earth Engine endpoint https://earthengine.googleapis.com "
                        "(standard, the default for composites), no workload tag")
    code = main(["export", "--aoi", AOI, "--out", str(tmp_path / "dry"), "--dry-run", "--via", "batch", "--bucket", "rsgee-bk"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and "; 4 batch task(s), " in lines[0] and lines[1].startswith("total: 1 AOI(s), 4 tiles, 4 batch")
    assert lines[2] == ("Earth Engine endpoint https://earthengine.googleapis.com "
                        "(standard, the default for batch tasks), no workload tag")


def test_a_password_in_the_endpoint_url_is_never_printed_or_stored(fake, tmp_path, capsys):
    """``--ee-url http://user:password@host`` works, and the password reaches no output and no file."""
    from rsgee.cli import main

    args = ["export", "--aoi", AOI, "--out", str(tmp_path), "--ee-url", fake.url.replace("://", "://alice:s3cret-pw@"),
            "--no-auth", "--project", "fake", "--workers", "4", "--no-progress"]
    assert main(args + ["--dry-run"]) == 0 and main(args) == 0
    out, err = capsys.readouterr()
    assert len(fake.pixel_requests()) == 16 and "s3cret-pw" not in out + err
    assert read_manifest(tmp_path / "v")["provenance"]["earthengine"]["endpoint"] == fake.url.replace("://", "://***@")
    assert [p for p in tmp_path.rglob("*") if p.is_file() and b"s3cret-pw" in p.read_bytes()] == []


def test_an_unreachable_endpoint_is_named_without_its_password(tmp_path, capsys):
    """Both rsgee's text and the quoted client exception (which repeats the URL) are redacted."""
    from rsgee.cli import main

    try:
        code = main(["export", "--aoi", AOI, "--out", str(tmp_path), "--ee-url", "http://alice:s3cret-pw@127.0.0.1:99999",
                     "--no-auth", "--project", "fake", "--no-progress"])
    finally:
        ee.Reset()
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.count("\n") == 1 and "s3cret-pw" not in err
    assert err.startswith("rsgee: error: cannot reach Earth Engine at http://***@127.0.0.1:99999 (")
    assert "http://***@127.0.0.1:99999/$discovery" in err  # requests' own message, quoting the URL
    error = classify(ConnectionError("Max retries exceeded with url: https://bob:pw@proxy.example/v1 (refused)"))
    assert error.message == "Max retries exceeded with url: https://***@proxy.example/v1 (refused)" and error.retryable
