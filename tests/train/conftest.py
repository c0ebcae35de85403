"""A small synthetic archive shared by the training tests (built once per session)."""

from __future__ import annotations

import datetime as dt

import pytest

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.export import export_aois
from rsgee.acquire.synthetic import SyntheticSource
from rsgee.catalog import load_catalog
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.split import SplitConfig
from rsgee.preprocess.tiling import TileFilters, build_archive


@pytest.fixture(scope="session")
def ddp_archive(tmp_path_factory) -> Archive:
    """Nine tiles with odd-sized splits (train 5, val 3, test 1), so that two ranks get uneven shares."""
    root = tmp_path_factory.mktemp("ddp-archive")
    source = SyntheticSource(seed=0, cloud_cover=0.02, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    export_aois(parse_aois(["ridge=10.60,46.60,10.69,46.64"]), root / "exports", source, load_catalog(), progress=False)
    build_archive([root / "exports"], root / "archive", load_catalog(), split=SplitConfig(block=1, ratios=(5, 3, 2)),
                  filters=TileFilters(max_s2_nodata=0.5), progress=False)
    archive = Archive(root / "archive")
    counts = {s: len(archive.tiles(s)) for s in ("train", "val", "test")}
    assert counts == {"train": 5, "val": 3, "test": 1}, counts
    return archive
