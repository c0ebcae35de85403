"""Workload tags: checked as the earthengine-api checks them, and carried by every computePixels request and
batch task to the loopback fake (which records each request's ``workloadTag``)."""

from __future__ import annotations

import datetime as dt
import os
from unittest import mock

import ee
import pytest

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.earthengine.batch import BatchSource, Destination, export_batch
from rsgee.acquire.earthengine.download import EarthEngineSource, RetryPolicy, parse_windows
from rsgee.acquire.earthengine.session import SessionConfig, check_workload_tag
from rsgee.acquire.export import export_aois
from rsgee.catalog import load_catalog
from rsgee.errors import RsgeeError
from rsgee.exports import read_manifest
from rsgee.testing.earthengine import FakeEarthEngine

AOI = "v=10.60,46.60,10.63,46.62"  # 2×2 tiles: 16 computePixels requests, 4 batch tasks
CATALOG = load_catalog()
WINDOWS = parse_windows(dt.date(2023, 6, 1), dt.date(2023, 9, 1), [], list(CATALOG.sources))


@pytest.fixture()
def fake():
    with FakeEarthEngine(task_polls=1) as server:
        yield server
    ee.Reset()  # also forgets a tag set with ee.data.setWorkloadTag


def download(fake, out, tag=None):
    session = SessionConfig(project="fake", url=fake.url, auth=False, workers=4, workload_tag=tag)
    source = EarthEngineSource(session, WINDOWS, policy=RetryPolicy(attempts=1), progress=False)
    (result,) = export_aois(parse_aois([AOI]), out, source, CATALOG, progress=False)
    return result


def batch(fake, out, tag=None):
    session = SessionConfig(project="fake", url=fake.url, auth=False, workload_tag=tag)
    source = BatchSource(session, WINDOWS, Destination.parse("rsgee-bk", "tags", None))
    with mock.patch.dict(os.environ, fake.gdal_env()):  # rsgee cuts dem.tif from the DEM's task file through GDAL
        (result,) = export_batch(parse_aois([AOI]), out, source, CATALOG, poll_s=0, progress=False,
                                 sleep=lambda s: None)
    return result


def test_every_pixel_request_carries_the_tag_and_the_manifest_records_it(fake, tmp_path):
    assert download(fake, tmp_path / "tagged", "rsgee-nightly").ok
    assert [r.workload_tag for r in fake.pixel_requests()] == ["rsgee-nightly"] * 16
    assert read_manifest(tmp_path / "tagged" / "v")["provenance"]["earthengine"]["workload_tag"] == "rsgee-nightly"
    assert download(fake, tmp_path / "tagged", "another-run").status == "up to date"  # a label, not a new request
    assert download(fake, tmp_path / "plain").ok
    assert len(fake.pixel_requests()) == 32 and all("workloadTag" not in r.body for r in fake.pixel_requests()[16:])
    assert "workload_tag" not in read_manifest(tmp_path / "plain" / "v")["provenance"]["earthengine"]


def test_every_batch_task_carries_the_tag(fake, tmp_path):
    result = batch(fake, tmp_path, "rsgee-batch")
    assert result.ok and [r.workload_tag for r in fake.export_requests()] == ["rsgee-batch"] * 4


def test_the_clients_own_tag_labels_everything_unless_one_is_given(fake, tmp_path):
    """A tag set in Python before an export is honoured, as the earthengine-api's own calls honour it."""
    ee.data.setWorkloadTag("from-python")
    assert download(fake, tmp_path / "a").ok and batch(fake, tmp_path / "b").ok
    assert {r.workload_tag for r in fake.pixel_requests() + fake.export_requests()} == {"from-python"}
    assert download(fake, tmp_path / "c", "given").ok
    assert {r.workload_tag for r in fake.pixel_requests()[16:]} == {"given"}
    assert ee.data.getWorkloadTag() == "from-python"  # rsgee leaves the client's tag as it was


def test_tags_are_checked_as_the_earthengine_api_checks_them():
    samples = ["a", "7", "run-7", "nightly_2024-06", "x" * 63, "x" * 64, "Run", "run.7", "-run", "run_", "run 7", "rün"]
    try:
        for tag in samples:
            try:
                ee.data.setWorkloadTag(tag)
                client_takes = True
            except ValueError:
                client_takes = False
            try:
                rsgee_takes = check_workload_tag(tag) == tag
            except RsgeeError:
                rsgee_takes = False
            assert rsgee_takes == client_takes, tag
    finally:
        ee.Reset()
    with pytest.raises(RsgeeError) as info:
        SessionConfig(workload_tag="Nightly Run #3")
    assert str(info.value) == ("--workload-tag 'Nightly Run #3' is not a workload tag Earth Engine accepts (1–63 "
                               "lowercase letters, digits, '-' and '_', starting and ending with a letter or digit); "
                               "try --workload-tag nightly-run-3")
    assert check_workload_tag("nightly-run-3")


def test_cli_workload_tag_reaches_downloads_batch_tasks_and_dry_run(fake, tmp_path, capsys):
    from rsgee.cli import main

    args = ["export", "--aoi", AOI, "--ee-url", fake.url, "--no-auth", "--project", "fake", "--workers", "4",
            "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "d"), "--workload-tag", "cli-run", "--dry-run"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"Earth Engine endpoint {fake.url} (--ee-url), workload tag cli-run"
    assert main(args + ["--out", str(tmp_path / "d"), "--workload-tag", "CLI run"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith("try --workload-tag cli-run") and not fake.requests
    assert main(args + ["--out", str(tmp_path / "d"), "--workload-tag", "cli-run"]) == 0
    assert [r.workload_tag for r in fake.pixel_requests()] == ["cli-run"] * 16
    batch_args = ["--out", str(tmp_path / "b"), "--via", "batch", "--bucket", "rsgee-bk", "--poll", "0"]
    with mock.patch.dict(os.environ, fake.gdal_env()):
        assert main(args + batch_args + ["--workload-tag", "cli-batch"]) == 0
    assert [r.workload_tag for r in fake.export_requests()] == ["cli-batch"] * 4
