"""Earth Engine batch exports, driven through the real ee client against the loopback fake.

The fake turns ``image:export`` requests into operations that finish after a few polls and write
their GeoTIFFs into a local "bucket" served like Cloud Storage, so that GDAL's ``/vsigs/`` reads
them back (rsgee cuts ``dem.tif`` from the DEM's one task there) and ``rsgee tile`` builds an
archive from a batch export end to end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import uuid
from typing import Iterator
from unittest import mock

import ee
import numpy as np
import pytest
import rasterio

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.earthengine.batch import (
    HALO,
    TASKS,
    BatchSource,
    Destination,
    batch_files,
    export_batch,
    export_request,
)
from rsgee.acquire.earthengine.download import EarthEngineSource, RetryPolicy, parse_windows
from rsgee.acquire.earthengine.session import SessionConfig
from rsgee.acquire.export import export_aois
from rsgee.catalog import load_catalog
from rsgee.errors import RsgeeError
from rsgee.exports import MANIFEST, WORKDIR, read_manifest
from rsgee.grid import Grid, Tile
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.check import check_archive
from rsgee.preprocess.split import SplitConfig
from rsgee.preprocess.terrain import terrain
from rsgee.preprocess.tiling import build_archive, to_catalog_nodata
from rsgee.testing.earthengine import FakeEarthEngine, PollFault, TaskFault, export_grid, fake_pixels

AOI = "v=10.60,46.60,10.63,46.62"  # 2×2 tiles of EPSG:32632
OTHER = "w=10.70,46.60,10.73,46.62"
CATALOG = load_catalog()
SOURCES = list(CATALOG.sources)
KEYS = [HALO if name == "dem" else name for name in SOURCES]  # one task per source, the DEM's on the grown grid
GRID = parse_aois([AOI])[0].grid()
FILL = {"s1": -32768.0, "s2": 0.0, "lulc": 255.0, "dem_halo": -32768.0}


@contextlib.contextmanager
def serving(**kwargs) -> Iterator[FakeEarthEngine]:
    """A fake Earth Engine whose bucket GDAL reads: rsgee cuts dem.tif from the DEM task's file there."""
    with FakeEarthEngine(**kwargs) as server, mock.patch.dict(os.environ, server.gdal_env()):
        yield server


@pytest.fixture()
def fake():
    with serving(task_polls=2) as server:
        yield server
    ee.Reset()


@pytest.fixture()
def bucket() -> str:
    """A bucket name per test: GDAL caches /vsigs/ reads by path for the life of the process."""
    return f"bk-{uuid.uuid4().hex[:12]}"


def export(fake, out, *, aois=(AOI,), bucket="rsgee-bk", prefix="runs/1", drive=None, windows=(), sleep=lambda s: None,
           **kwargs):
    destination = Destination.parse(None if drive else bucket, None if drive else prefix, drive)
    source = BatchSource(SessionConfig(project="fake", url=fake.url, auth=False),
                         parse_windows(dt.date(2023, 6, 1), dt.date(2023, 9, 1), list(windows), SOURCES), destination)
    return export_batch(parse_aois(list(aois)), out, source, CATALOG, poll_s=0, progress=False, sleep=sleep, **kwargs)


def expected(name: str, grid: Grid, halo: int = 0, masked=None) -> np.ndarray:
    """The fake's pixels of a source over a grid, with masked pixels as the archive's nodata."""
    spec = CATALOG["dem" if name == "dem_halo" else name]
    x0, _, _, y1 = grid.bounds
    ix = (x0 // 10 - halo + np.arange(grid.width + 2 * halo))[None, :].repeat(grid.height + 2 * halo, 0)
    iy = (y1 // 10 - 1 + halo - np.arange(grid.height + 2 * halo))[:, None].repeat(grid.width + 2 * halo, 1)
    out = np.stack([fake_pixels(spec, b, ix, iy) for b in range(len(spec.bands))])
    if masked is not None:
        out[:, masked(ix, iy)] = spec.nodata
    return out


def test_one_task_per_aoi_and_source_on_exactly_the_aoi_grid(fake, tmp_path):
    (result,) = export(fake, tmp_path)
    assert result.ok and result.status == "written" and result.tasks == 4, result.line()
    requests = fake.export_requests()
    assert sorted(r.source for r in requests) == sorted(SOURCES)  # one DEM task, on the grown grid
    assert len({r.body["requestId"] for r in requests}) == 4
    by_key = {r.body["fileExportOptions"]["cloudStorageDestination"]["filenamePrefix"].rsplit("/", 1)[1]: r.body
              for r in requests}
    assert sorted(by_key) == sorted(KEYS)
    for key, body in by_key.items():
        halo = 1 if key == "dem_halo" else 0
        size = 512 + 2 * halo
        options = body["fileExportOptions"]
        assert options["fileFormat"] == "GEO_TIFF"
        assert options["cloudStorageDestination"] == {"bucket": "rsgee-bk", "filenamePrefix": f"runs/1/v/{key}"}
        geotiff = options["geoTiffOptions"]
        assert geotiff["noData"] == {"floatValue": FILL[key]} and geotiff["cloudOptimized"] is True
        tile_dims = geotiff["tileDimensions"]  # one file per task: at least the image, in 256-px shards
        assert tile_dims["width"] >= size and tile_dims["height"] >= size and tile_dims["width"] % 256 == 0
        assert int(body["maxPixels"]["value"]) >= size * size
        assert body["description"] == f"rsgee_v_{key}"
        grid = export_grid(body["expression"])
        assert grid["crsCode"] == "EPSG:32632" and grid["dimensions"] == {"width": size, "height": size}
        x0, _, _, y1 = GRID.bounds
        assert grid["affineTransform"] == {"scaleX": 10.0, "shearX": 0.0, "translateX": x0 - 10.0 * halo,
                                           "shearY": 0.0, "scaleY": -10.0, "translateY": y1 + 10.0 * halo}
    manifest = read_manifest(tmp_path / "v")
    assert manifest["source"] == "earthengine" and manifest["grid"] == GRID.to_dict()
    assert manifest["request"]["via"] == "batch"
    assert manifest["request"]["destination"] == {"gcs": {"bucket": "rsgee-bk", "prefix": "runs/1"}}
    assert {k: f["path"] for k, f in manifest["files"].items()} == {
        **{k: f"/vsigs/rsgee-bk/runs/1/v/{k}.tif" for k in KEYS}, "dem": "dem.tif"}  # cut here from dem_halo
    assert manifest["files"]["dem_halo"]["halo_px"] == 1 and manifest["files"]["s1"]["nodata"] == "nan"
    with rasterio.open(tmp_path / "v" / "dem.tif") as src:
        assert src.transform == GRID.transform and (src.width, src.height) == (GRID.width, GRID.height)
        np.testing.assert_array_equal(src.read(), expected("dem", GRID))
    tasks = manifest["provenance"]["tasks"]
    assert set(tasks) == set(KEYS) and {t["operation"] for t in tasks.values()} == set(fake.state.operations)
    assert manifest["provenance"]["earthengine"]["endpoint"] == fake.url
    assert not (tmp_path / "v" / WORKDIR).exists()
    written = fake.storage / "gcs" / "rsgee-bk" / "runs" / "1" / "v"
    assert sorted(p.name for p in written.iterdir()) == sorted(f"{k}.tif" for k in KEYS)
    (again,) = export(fake, tmp_path)  # equal request, complete export: nothing is started
    assert again.status == "up to date" and len(fake.export_requests()) == 4


def test_tile_reads_a_cloud_storage_export_through_vsigs(tmp_path, bucket):
    masked = lambda ix, iy: (ix % 97) == 0  # noqa: E731 — about 1 % of columns come back masked
    with serving(masked=masked, task_polls=3) as server:
        (result,) = export(server, tmp_path / "exports", bucket=bucket)
        assert result.ok, result.line()
        with rasterio.open(f"/vsigs/{bucket}/runs/1/v/s1.tif") as src:
            assert src.nodata == -32768.0 and src.transform == GRID.transform
        summary = build_archive([tmp_path / "exports"], tmp_path / "archive", load_catalog(),
                                split=SplitConfig(block=1), progress=False)
    ee.Reset()
    assert summary.written == 4 and not summary.failed, summary.lines()
    arch = Archive(tmp_path / "archive")
    dem = expected("dem_halo", GRID, halo=1, masked=masked)[0]
    whole = terrain(dem, 10.0, 10.0)
    for props in arch.tiles():
        tile = Tile.from_id(props["tile_id"])
        rows, cols = GRID.window(tile).toslices()
        for name in ("s1", "s2", "lulc"):
            got = rasterio.open(arch.tile_path(name, tile.id)).read()
            np.testing.assert_array_equal(got, expected(name, GRID, masked=masked)[:, rows, cols])
        assert np.isnan(rasterio.open(arch.tile_path("s1", tile.id)).read()).any()  # the fill became NaN
        got = rasterio.open(arch.tile_path("terrain", tile.id)).read()
        inner = (slice(rows.start + 1, rows.stop + 1), slice(cols.start + 1, cols.stop + 1))
        np.testing.assert_array_equal(got[0], dem[inner])
        for band, want in zip(got[1:], (whole.slope, whole.aspect, whole.hillshade)):
            np.testing.assert_allclose(band, want[inner], atol=1e-3)  # the AOI border uses dem_halo's ring
    report = check_archive(tmp_path / "archive", progress=False)
    assert report.ok, report.problems


def test_dem_tif_is_cut_from_the_one_dem_task_byte_identical_to_the_download_paths(tmp_path, bucket):
    masked = lambda ix, iy: (ix % 89) == 0  # noqa: E731 — masked pixels must come out as the same NaN
    with serving(masked=masked, task_polls=1) as server:
        (batch,) = export(server, tmp_path / "batch", bucket=bucket)
        session = SessionConfig(project="fake", url=server.url, auth=False, workers=2)
        download = EarthEngineSource(session, parse_windows(dt.date(2023, 6, 1), dt.date(2023, 9, 1), [], ["dem"]),
                                     policy=RetryPolicy(attempts=1), progress=False)
        (direct,) = export_aois(parse_aois([AOI]), tmp_path / "download", download, CATALOG, source_names=["dem"],
                                progress=False)
        assert [r.source for r in server.export_requests()].count("dem") == 1
    ee.Reset()
    assert batch.ok and direct.ok, (batch.line(), direct.line())
    cut, downloaded = tmp_path / "batch" / "v" / "dem.tif", tmp_path / "download" / "v" / "dem.tif"
    assert cut.read_bytes() == downloaded.read_bytes()
    assert np.isnan(rasterio.open(cut).read()).any()


def test_a_dem_that_cannot_be_read_back_fails_the_aoi_in_one_line_and_a_rerun_only_cuts_it(tmp_path, bucket):
    # GDAL's per-path cache would remember the failed read for the rest of the process
    with FakeEarthEngine(task_polls=1) as server, mock.patch.dict(os.environ, {"CPL_VSIL_CURL_NON_CACHED": "/vsigs/"}):
        with mock.patch.dict(os.environ, {"CPL_GS_ENDPOINT": "http://127.0.0.1:9/", "GS_NO_SIGN_REQUEST": "YES"}):
            (first,) = export(server, tmp_path, bucket=bucket)  # as without Google Cloud credentials for GDAL
        assert first.status == "failed" and "\n" not in first.error, first.line()
        assert first.error.startswith(f"cannot read /vsigs/{bucket}/runs/1/v/dem_halo.tif to cut dem.tif from it (")
        assert "re-run the same command with them (no task is started again)" in first.error
        assert not (tmp_path / "v" / MANIFEST).exists() and not (tmp_path / "v" / "dem.tif").exists()
        with mock.patch.dict(os.environ, server.gdal_env()):
            (again,) = export(server, tmp_path, bucket=bucket)
        assert again.ok and again.status == "written" and len(server.export_requests()) == 4, again.line()
        np.testing.assert_array_equal(rasterio.open(tmp_path / "v" / "dem.tif").read(), expected("dem", GRID))
    ee.Reset()


def test_a_failed_task_is_recorded_and_retry_failed_restarts_only_it(fake, tmp_path):
    fake.add_task_fault(TaskFault("User memory limit exceeded.", match=lambda source, prefix: prefix.endswith("v/s2")))
    first, second = export(fake, tmp_path, aois=(AOI, OTHER))
    assert not first.ok and first.status == "failed" and first.failed_blocks == {"s2/*": "User memory limit exceeded."}
    assert "1 of 4 Earth Engine task(s) failed, e.g. s2: User memory limit exceeded." in first.line()
    assert "--retry-failed" in first.line()
    assert second.ok and (tmp_path / "w" / MANIFEST).exists()
    assert not (tmp_path / "v" / MANIFEST).exists()
    recorded = json.loads((tmp_path / "v" / WORKDIR / TASKS).read_text())["tasks"]
    assert recorded["s2"]["state"] == "FAILED" and recorded["s2"]["error"] == "User memory limit exceeded."
    assert {recorded[k]["state"] for k in KEYS if k != "s2"} == {"SUCCEEDED"}
    assert len(fake.export_requests()) == 8
    again, other = export(fake, tmp_path, aois=(AOI, OTHER))  # a plain re-run starts nothing
    assert not again.ok and again.failed_blocks == first.failed_blocks and other.status == "up to date"
    assert len(fake.export_requests()) == 8
    retried, _ = export(fake, tmp_path, aois=(AOI, OTHER), retry_failed=True)
    assert retried.ok and retried.status == "written"
    assert [r.source for r in fake.export_requests()[8:]] == ["s2"]
    manifest = read_manifest(tmp_path / "v")
    assert "failed_blocks" not in manifest and manifest["provenance"]["tasks"]["s1"] == {
        "operation": recorded["s1"]["operation"], "request_id": recorded["s1"]["request_id"], "eecu_seconds": 1.5}


def test_an_interrupted_run_resumes_polling_without_starting_tasks(tmp_path, caplog):
    def interrupt(seconds):
        raise KeyboardInterrupt

    with serving(task_polls=3) as server:
        with pytest.raises(KeyboardInterrupt), caplog.at_level(logging.WARNING, logger="rsgee"):
            export(server, tmp_path, sleep=interrupt)
        assert "4 Earth Engine task(s) keep running" in caplog.text and "re-run the same command" in caplog.text
        assert not any(":cancel" in r.path for r in server.requests)  # the tasks run on
        tasks_path = tmp_path / "v" / WORKDIR / TASKS
        recorded = json.loads(tasks_path.read_text())
        assert {t["state"] for t in recorded["tasks"].values()} == {"PENDING"}  # started, not polled since
        assert not (tmp_path / "v" / MANIFEST).exists() and len(server.export_requests()) == 4
        (other,) = export(server, tmp_path, windows=["s1=2023-05-01/2023-10-01"])  # never adopts these tasks
        assert other.status == "failed" and "has Earth Engine tasks started with different parameters" in other.error
        # As if the answer to one start had been lost: recorded as STARTING, without an operation.
        recorded["tasks"]["lulc"].update(state="STARTING", operation=None)
        tasks_path.write_text(json.dumps(recorded))
        (result,) = export(server, tmp_path)
        assert result.ok and result.status == "written", result.line()
        resent = server.export_requests()[4:]
        assert [r.body["requestId"] for r in resent] == [recorded["tasks"]["lulc"]["request_id"]]
        assert len(server.state.operations) == 4  # the same request id got the same task, not a second one
        assert not server.operation_requests()  # every poll was one listing, none per task
    ee.Reset()


def test_a_damaged_manifest_is_replaced_with_overwrite_as_its_error_says(fake, tmp_path):
    export(fake, tmp_path)
    (tmp_path / "v" / MANIFEST).write_text("[1, 2]")
    (refused,) = export(fake, tmp_path)
    assert refused.status == "failed" and "manifest.json is damaged" in refused.error, refused.line()
    assert "--overwrite" in refused.error and len(fake.export_requests()) == 4
    (replaced,) = export(fake, tmp_path, overwrite=True)
    assert replaced.ok and replaced.status == "written", replaced.line()
    assert len(fake.export_requests()) == 8 and read_manifest(tmp_path / "v")["request"]["via"] == "batch"


def test_an_empty_collection_fails_that_aoi_before_anything_starts(tmp_path):
    with serving(empty=lambda source, expression: source == "s2" and "622080" in expression) as server:
        first, second = export(server, tmp_path, aois=(AOI, OTHER))
        assert {r.body["fileExportOptions"]["cloudStorageDestination"]["filenamePrefix"].split("/")[2]
                for r in server.export_requests()} == {"w"}
    ee.Reset()
    assert first.status == "failed" and not first.ok and not (tmp_path / "v" / MANIFEST).exists()
    assert "no s2 images in COPERNICUS/S2_SR_HARMONIZED between 2023-06-01 and 2023-09-01" in first.error
    assert second.ok and (tmp_path / "w" / MANIFEST).exists()


def test_drive_exports_name_relative_files_and_say_how_to_fetch_them(fake, tmp_path):
    (result,) = export(fake, tmp_path / "exports", drive="rsgee-drive")
    assert result.ok and result.status == "written"
    body = fake.export_requests()[0].body
    assert body["fileExportOptions"]["driveDestination"]["folder"] == "rsgee-drive"
    assert {r.body["fileExportOptions"]["driveDestination"]["filenamePrefix"] for r in fake.export_requests()} == {
        f"v_{k}" for k in KEYS}
    folder = tmp_path / "exports" / "v"
    manifest = read_manifest(folder)
    assert {k: f["path"] for k, f in manifest["files"].items()} == {k: f"{k}.tif" for k in KEYS + ["dem"]}
    assert manifest["request"]["destination"] == {"drive": {"folder": "rsgee-drive"}}
    text = result.line()
    assert "Google Drive folder 'rsgee-drive'" in text.splitlines()[0]
    for key in KEYS:
        assert f"download 'rsgee-drive/v_{key}.tif' into {folder / f'{key}.tif'}" in text
    assert text.splitlines()[-1] == f"  then re-run this command: it cuts {folder / 'dem.tif'} from dem_halo.tif"
    with pytest.raises(RsgeeError, match="s1.tif is missing"):  # not downloaded yet: a clear error
        build_archive([tmp_path / "exports"], tmp_path / "a0", load_catalog(), progress=False)
    for key in KEYS:  # what the user does by hand
        shutil.copy(fake.storage / "drive" / "rsgee-drive" / f"v_{key}.tif", folder / f"{key}.tif")
    (cut,) = export(fake, tmp_path / "exports", drive="rsgee-drive")  # the re-run cuts dem.tif, starts nothing
    assert cut.status == "up to date" and cut.line().count("\n") == 0 and len(fake.export_requests()) == 4
    np.testing.assert_array_equal(rasterio.open(folder / "dem.tif").read(), expected("dem", GRID))
    summary = build_archive([tmp_path / "exports"], tmp_path / "archive", load_catalog(), progress=False)
    assert summary.written == 4 and not summary.failed
    (again,) = export(fake, tmp_path / "exports", drive="rsgee-drive")
    assert again.status == "up to date" and again.line().count("\n") == 0  # nothing left to download


def test_destination_must_be_exactly_one():
    for args in [(None, None, None), ("bkt", None, "F"), (None, "p", "F")]:
        with pytest.raises(RsgeeError):
            Destination.parse(*args)
    with pytest.raises(RsgeeError, match="not a Cloud Storage bucket name"):
        Destination.parse("gs://bkt/folder", None, None)
    gcs = Destination.parse("gs://bkt", "/a/b/", None)
    assert (gcs.bucket, gcs.prefix, gcs.manifest_path("v", "s1")) == ("bkt", "a/b", "/vsigs/bkt/a/b/v/s1.tif")
    assert Destination.parse("bkt", None, None).manifest_path("v", "dem_halo") == "/vsigs/bkt/v/dem_halo.tif"


def test_a_files_declared_nodata_becomes_the_catalogs():
    block = np.array([[[-32768.0, -12.5]]], dtype=np.float32)
    np.testing.assert_array_equal(to_catalog_nodata(block.copy(), -32768.0, CATALOG["s1"]), [[[np.nan, -12.5]]])
    np.testing.assert_array_equal(to_catalog_nodata(block.copy(), None, CATALOG["s1"]), block)
    labels = np.array([[[255, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(to_catalog_nodata(labels.copy(), 255.0, CATALOG["lulc"]), labels)


def test_cli_batch_needs_one_destination(capsys, tmp_path):
    from rsgee.cli import main

    for extra, message in [([], "needs exactly one destination"), (["--bucket", "bkt", "--drive-folder", "F"],
                                                                      "needs exactly one destination")]:
        code = main(["export", "--aoi", AOI, "--out", str(tmp_path), "--via", "batch", *extra])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and message in err
    code = main(["export", "--aoi", AOI, "--out", str(tmp_path), "--bucket", "bkt"])
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == "rsgee: error: --bucket, --prefix and --drive-folder apply to --via batch only"
    code = main(["export", "--aoi", AOI, "--out", str(tmp_path), "--via", "batch", "--bucket", "bkt", "--source",
                 "synthetic"])
    assert code == 1 and "does not apply to --source synthetic" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_batch_export_to_a_bucket_end_to_end(fake, tmp_path, capsys, bucket):
    from rsgee.cli import main

    fake.add_task_fault(TaskFault("Earth Engine capacity exceeded.", state="CANCELLED",
                                  match=lambda source, prefix: source == "lulc"))
    args = ["export", "--aoi", AOI, "--out", str(tmp_path), "--via", "batch", "--bucket", bucket, "--prefix", "p",
            "--ee-url", fake.url, "--no-auth", "--project", "fake", "--poll", "0", "--no-progress"]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 1 and "v: FAILED: 1 of 4 Earth Engine task(s) failed, e.g. lulc: Earth Engine capacity exceeded." in out
    assert err.strip() == "rsgee: error: 1 of 1 AOI(s) failed or have failed blocks: v"
    code = main(args + ["--retry-failed"])
    out, _ = capsys.readouterr()
    assert code == 0 and out.strip() == f"v: written (4 tiles, 4 Earth Engine tasks) → gs://{bucket}/p/v/"
    assert read_manifest(tmp_path / "v")["files"]["lulc"]["path"] == f"/vsigs/{bucket}/p/v/lulc.tif"
    code = main(args)
    out, _ = capsys.readouterr()
    assert code == 0 and "v: up to date" in out and len(fake.export_requests()) == 5


def started_source(fake, client_retries=None):
    """A connected batch source; ``client_retries=0`` turns off the ee client's own retries (and their sleeps)."""
    source = BatchSource(SessionConfig(project="fake", url=fake.url, auth=False),
                         parse_windows(dt.date(2023, 6, 1), dt.date(2023, 9, 1), [], SOURCES),
                         Destination.parse("rsgee-bk", "runs/1", None))
    source.connect()
    if client_retries is not None:
        ee.data.setMaxRetries(client_retries)
    return source


THREE = (AOI, OTHER, "x=10.80,46.60,10.83,46.62")  # 12 tasks


def test_tasks_are_submitted_while_fewer_than_max_pending_and_polled_by_one_listing(tmp_path):
    cycles = []
    with serving(task_polls=2, list_page=4) as server:
        source = started_source(server)
        results = export_batch(parse_aois(list(THREE)), tmp_path, source, CATALOG, poll_s=0, max_pending=4,
                               progress=False, sleep=cycles.append)
        assert [r.status for r in results] == ["written"] * 3, [r.line() for r in results]
        assert server.peak_pending == 4 and len(server.export_requests()) == 12
        assert all(r.status == 200 for r in server.export_requests())
        assert not server.operation_requests()  # no per-task polls
        # one listing per cycle, paged at the server's 4 operations a page: 12 operations are 3 pages
        lists = server.list_requests()
        first_pages = [r for r in lists if "pageToken" not in r.body]
        assert len(first_pages) == len(cycles) + 1 and {r.body["pageSize"] for r in lists} == {"500"}
        assert [r.body.get("pageToken") for r in lists[-3:]] == [None, "4", "8"]
    ee.Reset()


def test_a_full_queue_defers_the_start_instead_of_failing_it(tmp_path):
    with serving(task_polls=2, max_pending=3) as server:
        source = started_source(server, client_retries=0)
        results = export_batch(parse_aois(list(THREE)), tmp_path, source, CATALOG, poll_s=0, max_pending=3000,
                               progress=False, sleep=lambda s: None)
        assert [r.status for r in results] == ["written"] * 3, [r.line() for r in results]
        refused = [r for r in server.export_requests() if r.status == 429]
        assert refused and len(server.state.operations) == 12 and server.peak_pending == 3
        resent = {r.body["requestId"] for r in refused}
        assert resent <= set(server.state.by_request_id)  # each refused start was re-sent with its own id
    ee.Reset()


@pytest.mark.parametrize("status, message", [
    (429, "Quota exceeded for quota metric 'Number of read requests' and limit 'Number of read requests per minute "
          "per user' of service 'earthengine.googleapis.com' for consumer 'project_number:599401802498'."),
    (500, "An internal server error has occurred (fake-1234)."),
    (503, "The service is currently unavailable."),
])
def test_a_failed_poll_never_ends_a_task(tmp_path, caplog, status, message):
    with serving(task_polls=2) as server:
        source = started_source(server, client_retries=0)
        server.add_poll_fault(PollFault(status, message, times=3))
        with caplog.at_level(logging.WARNING, logger="rsgee"):
            (result,) = export_batch(parse_aois([AOI]), tmp_path, source, CATALOG, poll_s=0, progress=False,
                                     sleep=lambda s: None)
        assert result.ok and result.status == "written", result.line()
        assert len(server.export_requests()) == 4  # nothing started twice
        assert [r.status for r in server.list_requests()][:3] == [status] * 3
        assert caplog.text.count("could not list Earth Engine tasks") == 3 and message in caplog.text
    ee.Reset()


def test_files_over_earth_engines_limits_refuse_the_run_before_anything_starts(fake, tmp_path):
    big = "big=6.0,44.0,12.9,48.6"  # ~ 530 km × 510 km: S1 would be one ~20 GiB file
    aois = parse_aois([AOI, big], max_area_km2=600_000)
    files = {f.key: f for f in batch_files("big", aois[1].grid(), [CATALOG[n] for n in SOURCES])}
    assert files["s1"].nbytes >= 2**34 > files["lulc"].nbytes and files["s1"].problem() and not files["lulc"].problem()
    source = BatchSource(SessionConfig(project="fake", url=fake.url, auth=False),
                         parse_windows(dt.date(2023, 6, 1), dt.date(2023, 9, 1), [], SOURCES),
                         Destination.parse("rsgee-bk", None, None))
    with pytest.raises(RsgeeError) as info:
        export_batch(aois, tmp_path, source, CATALOG, poll_s=0, progress=False, sleep=lambda s: None)
    text = str(info.value)
    assert text.count("\n") == 0 and "split the AOI into smaller AOIs or export it with --via download" in text
    assert text.startswith("2 batch file(s) over Earth Engine's per-file limits, e.g. big/s1 would be one 2")
    assert "GiB GeoTIFF before compression (Earth Engine writes files under 16 GiB)" in text
    assert not fake.requests  # not even connected
    # what the server would have done: the task starts, then fails with Earth Engine's message
    source.connect()
    recipe = source.recipes(aois[1].grid(), [CATALOG["s1"]])["s1"]
    operation = ee.data.exportImage(str(uuid.uuid4()), export_request("big", "s1", aois[1].grid(), recipe, 2,
                                                                      source.destination))
    for _ in range(2):
        status = ee.data.getOperation(operation["name"])
    assert status["metadata"]["state"] == "FAILED" and status["error"]["message"].startswith(
        f"File dimensions are too large for the number of bands and data type: the total file size requested is "
        f"{files['s1'].nbytes} bytes before compression (8 bytes per pixel)")
