"""The archive folder: a corrupt index is a one-line error that names the file, everywhere it is read."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
import time

import pytest

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.export import export_aois
from rsgee.acquire.synthetic import SyntheticSource
from rsgee.catalog import load_catalog
from rsgee.cli import main
from rsgee.errors import RsgeeError
from rsgee.preprocess.archive import Archive, CorruptIndex
from rsgee.preprocess.check import check_archive
from rsgee.preprocess.split import SplitConfig
from rsgee.preprocess.tiling import build_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Archive:
    root = tmp_path_factory.mktemp("archive")
    source = SyntheticSource(seed=2, cloud_cover=0.0, start=dt.date(2023, 6, 1), end=dt.date(2023, 7, 1))
    export_aois(parse_aois(["v=10.60,46.60,10.63,46.62"]), root / "exports", source, load_catalog(), progress=False)
    build_archive([root / "exports"], root / "archive", load_catalog(), split=SplitConfig(block=1), progress=False)
    return Archive(root / "archive")


@pytest.mark.parametrize("garbage", ['{"type": "FeatureCollection", "features": [{"id"', '{"type": "Feature"}', "[1]"])
def test_a_corrupt_index_names_the_file_and_rsgee_check(archive, tmp_path, capsys, garbage):
    broken = tmp_path / "broken"
    shutil.copytree(archive.root, broken)
    (broken / "index.geojson").write_text(garbage)
    with pytest.raises(CorruptIndex, match="index.geojson is not a valid tile index"):
        Archive(broken).tiles("train")
    assert main(["train", "seg", str(broken), "--out", str(tmp_path / "run"), "--size", "tiny"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error" not in err[0] and f"rsgee check {broken}" in err[0]
    report = check_archive(broken, progress=False)
    assert not report.ok and "index.geojson unreadable" in report.problems[0]
    assert not (tmp_path / "run").exists()


def test_the_lock_fails_fast_or_waits_and_a_holder_may_take_it_again(archive, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rsgee")
    copy = archive.linked_copy(tmp_path / "copy")
    holder, other, taken = Archive(copy.root), Archive(copy.root), []

    def wait_for_it():
        with other.lock(wait=True):
            taken.append(other.root)

    with holder.lock():
        with holder.lock():  # generate building a cache: the same object, no deadlock
            pass
        with pytest.raises(RsgeeError, match=f"another rsgee process is writing to {copy.root}; wait for it"):
            with other.lock():
                pass
        with Archive(archive.root).lock():  # a linked copy has a lock file of its own
            pass
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        deadline = time.monotonic() + 30
        while not caplog.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert taken == []
    waiter.join(30)
    assert taken == [copy.root]  # taken once the holder let go
    assert caplog.messages == [f"waiting for another rsgee process to finish writing to {copy.root}"]
