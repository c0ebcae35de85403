"""The packed training cache: equal to the GeoTIFFs, fingerprinted, rebuilt when stale."""

from __future__ import annotations

import datetime as dt
import os
import pickle

import numpy as np
import pytest
import rasterio

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.export import export_aois
from rsgee.acquire.synthetic import SyntheticSource
from rsgee.catalog import load_catalog
from rsgee.errors import RsgeeError
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.cache import PackedSplit, build_cache, is_current, open_split, verify_cache
from rsgee.preprocess.check import check_archive
from rsgee.preprocess.split import SplitConfig
from rsgee.preprocess.tiling import build_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Archive:
    root = tmp_path_factory.mktemp("cache")
    source = SyntheticSource(seed=1, cloud_cover=0.05, start=dt.date(2023, 6, 1), end=dt.date(2023, 7, 1))
    export_aois(parse_aois(["v=10.60,46.60,10.66,46.64"]), root / "exports", source, load_catalog(), progress=False)
    build_archive([root / "exports"], root / "archive", load_catalog(), split=SplitConfig(block=1), progress=False)
    return Archive(root / "archive")


def test_cache_equals_the_geotiffs(archive):
    packed = open_split(archive, "train", progress=False)
    assert packed.tile_ids == [p["tile_id"] for p in archive.tiles("train")] and len(packed) >= 2
    for i, tile_id in enumerate(packed.tile_ids):
        sample = packed[i]
        assert set(sample) == {"s1", "s2", "lulc", "terrain"}
        for source, array in sample.items():
            with rasterio.open(archive.tile_path(source, tile_id)) as src:
                np.testing.assert_array_equal(array, src.read())
                assert array.dtype == np.dtype(src.dtypes[0])
    sample["s2"][:] = 0  # a copy, not a view of the read-only map
    assert packed[len(packed) - 1]["s2"].any()
    assert verify_cache(archive, "train") == []


def test_stale_cache_is_detected_and_rebuilt(archive):
    open_split(archive, "train", progress=False)
    assert is_current(archive, "train")
    tile_id = archive.tiles("train")[0]["tile_id"]
    path = archive.tile_path("s2", tile_id)
    with rasterio.open(path, "r+") as dst:  # the archive of record changes under the cache
        data = dst.read()
        data[:, 0, 0] = 1234
        dst.write(data)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert not is_current(archive, "train")
    assert any(tile_id in p for p in verify_cache(archive, "train"))
    assert any("cache/train is stale" in n for n in check_archive(archive.root, progress=False).notes)
    with pytest.raises(RsgeeError, match="missing or stale; run rsgee cache"):
        open_split(archive, "train", rebuild=False)
    packed = open_split(archive, "train", progress=False)
    assert packed[0]["s2"][:, 0, 0].tolist() == [1234] * 4 and is_current(archive, "train")


def test_packed_split_pickles_without_its_memory_maps(archive):
    packed = open_split(archive, "val", progress=False)
    packed[0]
    clone = pickle.loads(pickle.dumps(packed))
    assert clone._arrays is None and np.array_equal(clone[0]["lulc"], packed[0]["lulc"])


def test_missing_cache_is_a_clear_error(tmp_path, archive):
    with pytest.raises(RsgeeError, match="no packed cache for split 'test'; run rsgee cache"):
        PackedSplit(Archive(tmp_path), "test")
    folder = build_cache(archive, "test", progress=False)
    assert (folder / "tiles.json").exists() and not list(folder.parent.glob(".*"))
