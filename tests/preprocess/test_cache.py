"""The packed training cache: equal to the GeoTIFFs, fingerprinted, rebuilt when stale."""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
from unittest import mock

import numpy as np
import pytest
import rasterio

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.export import export_aois
from rsgee.acquire.synthetic import SyntheticSource
from rsgee.catalog import load_catalog
from rsgee.errors import RsgeeError
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.cache import (CACHE_FORMAT, DecibelCodec, PackedSplit, TerrainCodec, build_cache, is_current,
                                    open_split, verify_cache)
from rsgee.preprocess.check import check_archive
from rsgee.preprocess.split import SplitConfig
from rsgee.preprocess.terrain import terrain
from rsgee.preprocess.tiling import build_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Archive:
    root = tmp_path_factory.mktemp("cache")
    source = SyntheticSource(seed=1, cloud_cover=0.05, start=dt.date(2023, 6, 1), end=dt.date(2023, 7, 1))
    export_aois(parse_aois(["v=10.60,46.60,10.66,46.64"]), root / "exports", source, load_catalog(), progress=False)
    build_archive([root / "exports"], root / "archive", load_catalog(), split=SplitConfig(block=1), progress=False)
    return Archive(root / "archive")


def test_cache_equals_the_geotiffs_within_the_stated_tolerances(archive):
    packed = open_split(archive, "train", progress=False)
    assert packed.tile_ids == [p["tile_id"] for p in archive.tiles("train")] and len(packed) >= 2
    for i, tile_id in enumerate(packed.tile_ids):
        sample = packed[i]
        assert set(sample) == {"s1", "s2", "lulc", "terrain"}
        for source, array in sample.items():
            with rasterio.open(archive.tile_path(source, tile_id)) as src:
                raw = src.read()
            assert array.dtype == raw.dtype and array.shape == raw.shape
            if source in ("s2", "lulc"):
                np.testing.assert_array_equal(array, raw)
        with rasterio.open(archive.tile_path("s1", tile_id)) as src:
            s1 = src.read()
        for b, (low, high) in enumerate([(-25.0, 0.0), (-32.5, 0.0)]):  # VV, VH: half a step of 254
            np.testing.assert_allclose(sample["s1"][b], np.clip(s1[b], low, high), atol=(high - low) / 254 / 2 + 1e-5)
        with rasterio.open(archive.tile_path("terrain", tile_id)) as src:
            dem, slope, aspect, hillshade = src.read()
        assert np.abs(sample["terrain"][0] - dem).max() <= 0.25
        assert np.abs(sample["terrain"][1] - slope).max() <= 90 / 254 / 2 + 1e-5
        turn = np.abs(sample["terrain"][2] - aspect) % 360
        assert np.minimum(turn, 360 - turn).max() <= 360 / 254 / 2 + 1e-4
        np.testing.assert_array_equal(sample["terrain"][2] < 0, aspect < 0)  # flat pixels stay flat
        assert np.abs(sample["terrain"][3] - hillshade).max() <= 3.0
    sample["s2"][:] = 0  # a copy, not a view of the read-only map
    assert packed[len(packed) - 1]["s2"].any()
    assert verify_cache(archive, "train") == []


def test_cache_takes_under_a_megabyte_per_tile(archive):
    folder = build_cache(archive, "train", progress=False)
    packed = PackedSplit(archive, "train")
    files = sum(f.stat().st_size for f in folder.glob("*.npy"))
    assert packed.nbytes_per_tile() == 983_040 == 256 * 256 * 15
    assert files - len(packed) * packed.nbytes_per_tile() <= 5 * 128  # only the five .npy headers besides
    assert json.loads((folder / "tiles.json").read_text())["encoding"]["format"] == CACHE_FORMAT


def test_parallel_build_is_byte_identical(archive, tmp_path):
    one = build_cache(archive, "train", progress=False)
    first = {f.name: f.read_bytes() for f in one.glob("*.npy")}
    with mock.patch("rsgee.preprocess.cache._RUN", 1):  # one tile per unit: the workers interleave
        build_cache(archive, "train", workers=2, progress=False)
    assert {f.name: f.read_bytes() for f in one.glob("*.npy")} == first


def test_decibel_codes_keep_nodata_and_clip_to_the_model_range():
    codec = DecibelCodec("s1", ["VV", "VH"])
    db = np.array([[[np.nan, -40.0, -25.0, -12.34, 0.0, 3.0]], [[np.nan, -40.0, -32.5, -20.0, 0.0, 3.0]]], np.float32)
    codes = codec.encode(db)["s1"]
    assert codes[:, 0, 0].tolist() == [0, 0] and codes[:, 0, 1:].min() >= 1
    back = codec.decode({"s1": codes})
    assert np.isnan(back[:, 0, 0]).all()
    np.testing.assert_allclose(back[0, 0, 1:], [-25.0, -25.0, -12.34, 0.0, 0.0], atol=25 / 254 / 2 + 1e-6)
    np.testing.assert_allclose(back[1, 0, 1:], [-32.5, -32.5, -20.0, 0.0, 0.0], atol=32.5 / 254 / 2 + 1e-6)
    rng = np.random.default_rng(0)  # the bound holds for any value, not only these
    values = rng.uniform(-32.5, 0, (2, 64, 64)).astype(np.float32)
    assert codec.errors(np.clip(values, [[[-25.0]], [[-32.5]]], 0), codec.decode(codec.encode(values))) == []


def test_terrain_codes_recompute_hillshade_from_slope_and_aspect(real_data):
    dem = real_data / "terra" / "elev_vinschgau.tif"
    with rasterio.open(dem) as src:
        height = src.read(1).astype(np.float32)
        t = terrain(height, *src.res, nodata=src.nodata)
    reference = np.stack([np.where(np.isnan(t.slope), np.nan, height), t.slope, t.aspect, t.hillshade])
    reference[:, :3, :3] = [[[np.nan]], [[0.0]], [[-1.0]], [[1 + 254 * np.sin(np.pi / 4)]]]  # flat pixels
    codec = TerrainCodec("terrain")
    decoded = codec.decode(codec.encode(reference))
    assert codec.errors(reference, decoded) == [] and np.isnan(reference).any()
    np.testing.assert_array_equal(np.isnan(decoded), np.isnan(reference))
    np.testing.assert_array_equal(decoded[2, :3, :3], -1.0)
    worst = np.nanmax(np.abs(decoded[3] - reference[3]))
    assert 0.5 < worst <= codec.hillshade_tolerance < 3.01  # the bound is met and not vacuous
    tampered = decoded.copy()
    tampered[1, 50, 50] += 1.0  # a slope one degree off is caught
    problems = codec.errors(reference, tampered)
    assert len(problems) == 1 and problems[0].startswith("slope: ") and "(tolerance 0.177)" in problems[0]


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


def test_sources_of_one_read_are_separate_fresh_arrays(archive):
    packed = open_split(archive, "train", progress=False)
    first, again = packed[0], packed[0]
    for source, array in first.items():
        expected = packed.codecs[source].decode({f: np.load(packed.folder / f"{f}.npy")[0] for f in packed.codecs[source].files})
        np.testing.assert_array_equal(array, expected)  # the one-buffer path equals the plain decode
        array[...] = 0  # writing one source touches neither the others nor later reads
    for source in first:
        np.testing.assert_array_equal(packed[0][source], again[source])
    batch = packed.read(slice(0, 2), ("s1", "terrain"))
    np.testing.assert_array_equal(batch["terrain"][1], packed[1]["terrain"])


def test_terrain_codes_read_a_lossy_archives_flat_and_near_north_aspects():
    """Tiles of --max-float-error E hold −1 ± E where flat and may hold −E for an aspect of ~0."""
    codec = TerrainCodec("terrain")
    reference = np.zeros((4, 2, 2), np.float32)
    reference[0] = 500.0
    reference[1] = [[0.0, 0.0], [10.0, 10.0]]
    reference[2] = [[-1.004, -0.996], [-0.006, 359.996]]
    slope, aspect, alt = np.deg2rad(reference[1]), np.deg2rad(reference[2]), np.deg2rad(45.0)
    reference[3] = 1 + 254 * (np.sin(alt) * np.cos(slope) + np.cos(alt) * np.sin(slope) * np.cos(np.deg2rad(315.0) - aspect))
    decoded = codec.decode(codec.encode(reference))
    np.testing.assert_array_equal(decoded[2, 0], -1.0)  # flat
    assert decoded[2, 1].tolist() == [0.0, 0.0]  # north, the first of the 254 directions
    assert codec.errors(reference, decoded) == []
