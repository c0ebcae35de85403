"""The packed training cache: equal to the GeoTIFFs, fingerprinted, rebuilt when stale."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path
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
from rsgee.cli import main
from rsgee.preprocess.cache import (CACHE_FORMAT, DecibelCodec, PackedSplit, TerrainCodec, build_cache, damage,
                                    is_current, open_split, update_caches, verify_cache)
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
    with pytest.raises(RsgeeError, match="missing, incomplete or stale; run rsgee cache"):
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


def cache_files(root: Path) -> dict[str, bytes]:
    """Every file under ARCHIVE/cache, hidden ones included, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "cache").rglob("*")) if p.is_file()}


def cached_copy(archive: Archive, dest: Path) -> Archive:
    """A copy of the fixture archive (tile times kept: the same fingerprint) with a fresh cache of every split."""
    shutil.copytree(archive.root, dest, ignore=shutil.ignore_patterns("cache"))
    copy = Archive(dest)
    update_caches(copy, ("train", "val", "test"), progress=False)
    return copy


def test_two_cache_commands_at_once_build_each_split_once(archive, tmp_path):
    """Both wait for the lock (held here until both say so); one builds every split, the other finds them built."""
    root = tmp_path / "archive"
    shutil.copytree(archive.root, root, ignore=shutil.ignore_patterns("cache"))
    command = [sys.executable, "-m", "rsgee", "cache", str(root), "--no-progress"]
    logs = [tmp_path / "first.err", tmp_path / "second.err"]
    with contextlib.ExitStack() as files, Archive(root).lock():
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=files.enter_context(log.open("w")), text=True,
                                  stdin=subprocess.DEVNULL) for log in logs]
        deadline = time.monotonic() + 120
        while not all("waiting" in log.read_text() for log in logs) and time.monotonic() < deadline:
            time.sleep(0.2)
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    for log in logs:
        assert log.read_text() == f"rsgee: info: waiting for another rsgee process to finish writing to {root}\n"
    tiles = {split: len(archive.tiles(split)) for split in ("train", "val", "test")}
    assert sorted(outputs) == [
        "".join(f"cache/{split}: built {n} tiles → {root / 'cache' / split}\n" for split, n in tiles.items()),
        "cache/train: up to date\ncache/val: up to date\ncache/test: up to date\n"]  # re-checked under the lock
    built = cache_files(root)
    assert not [name for name in built if "/." in name]  # no work folder or temporary left
    assert update_caches(Archive(root), ("train", "val", "test"), force=True, progress=False) == ["train", "val", "test"]
    assert cache_files(root) == built  # byte for byte a build of one process alone
    assert len(open_split(Archive(root), "train", rebuild=False)) == len(archive.tiles("train"))


def test_a_truncated_array_is_rebuilt_by_cache_and_reported_by_check(archive, tmp_path, capsys):
    copy = cached_copy(archive, tmp_path / "archive")
    s2 = copy.root / "cache" / "train" / "s2.npy"
    whole = s2.read_bytes()
    s2.write_bytes(whole[:len(whole) // 2])
    expected = f"s2.npy holds {len(whole) // 2:,} bytes, tiles.json records {len(whole):,}"
    assert damage(copy, "train") == expected and not is_current(copy, "train")
    problems = [p for p in check_archive(copy.root, progress=False).problems if p.startswith("cache/")]
    assert problems == [f"cache/train: {expected}; run rsgee cache {copy.root} to rebuild it"]
    with pytest.raises(RsgeeError, match=f"{expected}; run rsgee cache {copy.root} to rebuild it$"):
        PackedSplit(copy, "train")
    assert main(["cache", str(copy.root), "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        f"cache/train: built {len(copy.tiles('train'))} tiles → {copy.root / 'cache' / 'train'}", "cache/val: up to date"]
    assert s2.read_bytes() == whole and damage(copy, "train") is None


def test_a_cache_holding_only_its_manifest_is_not_up_to_date(archive, tmp_path, capsys):
    copy = cached_copy(archive, tmp_path / "archive")
    folder = copy.root / "cache" / "val"
    for array in folder.glob("*.npy"):  # what two concurrent builds of an older rsgee left
        array.unlink()
    assert damage(copy, "val") == "lulc.npy is missing" and not is_current(copy, "val")
    assert [p for p in check_archive(copy.root, progress=False).problems if p.startswith("cache/")] == [
        f"cache/val: lulc.npy is missing; run rsgee cache {copy.root} to rebuild it"]
    assert len(open_split(copy, "val", progress=False)) == len(copy.tiles("val"))  # training rebuilds it
    for array in folder.glob("*.npy"):
        array.unlink()
    manifest = json.loads((folder / "tiles.json").read_text())
    del manifest["arrays"]
    manifest["encoding"]["format"] = 2  # the older layout: no sizes recorded, stale rather than damaged
    (folder / "tiles.json").write_text(json.dumps(manifest))
    assert damage(copy, "val") is None and not is_current(copy, "val")
    with pytest.raises(RsgeeError, match="a packed cache of an older rsgee; run rsgee cache"):
        PackedSplit(copy, "val")
    assert main(["cache", str(copy.root), "--splits", "val", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("cache/val: built ")
    assert is_current(copy, "val") and len(PackedSplit(copy, "val")) == len(copy.tiles("val"))


def test_changed_bytes_are_found_by_check_and_rebuilt_with_force(archive, tmp_path, capsys):
    copy = cached_copy(archive, tmp_path / "archive")
    lulc = copy.root / "cache" / "test" / "lulc.npy"
    whole = lulc.read_bytes()
    lulc.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))  # one bit of the last tile: the size is the same
    assert is_current(copy, "test")  # opening compares sizes only; check reads every byte anyway
    assert [p for p in check_archive(copy.root, progress=False).problems if p.startswith("cache/")] == [
        f"cache/test/lulc.npy differs from what rsgee cache wrote (its sha256); run rsgee cache {copy.root} --force "
        "to rebuild it"]
    assert main(["cache", str(copy.root), "--splits", "test", "--no-progress"]) == 0
    assert capsys.readouterr().out == "cache/test: up to date\n"
    assert main(["cache", str(copy.root), "--splits", "test", "--force", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("cache/test: built ")
    assert lulc.read_bytes() == whole
    assert not [p for p in check_archive(copy.root, progress=False).problems if p.startswith("cache/")]


@pytest.mark.parametrize("manifest", ["{", "[1, 2]", '{"encoding": {"format": 3}, "arrays": {"s2": {"bytes": "x"}}}'])
def test_a_garbage_manifest_is_damage_and_rebuilt(archive, tmp_path, capsys, manifest):
    copy = cached_copy(archive, tmp_path / "archive")
    (copy.root / "cache" / "val" / "tiles.json").write_text(manifest)
    problem = damage(copy, "val")
    assert problem.startswith("tiles.json unreadable (") if manifest == "{" else problem == "tiles.json is not a cache manifest"
    with pytest.raises(RsgeeError, match=f"; run rsgee cache {copy.root} to rebuild it$"):
        PackedSplit(copy, "val")
    assert main(["cache", str(copy.root), "--splits", "val", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("cache/val: built ") and is_current(copy, "val")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_damaged_tile_is_named_and_the_build_leaves_nothing(archive, tmp_path, capsys, workers):
    root = tmp_path / "archive"
    shutil.copytree(archive.root, root, ignore=shutil.ignore_patterns("cache"))
    tile_id = Archive(root).tiles("train")[-1]["tile_id"]
    tif = Archive(root).tile_path("s2", tile_id)
    tif.write_bytes(tif.read_bytes()[:2000])  # cut short
    with mock.patch("rsgee.preprocess.cache._RUN", 1):  # with 2 workers, the error comes from a worker process
        code = main(["cache", str(root), "--splits", "train", "--workers", str(workers), "--no-progress"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith(f"rsgee: error: tile {tile_id}: {tif} is unreadable (")
    assert err[0].endswith(f"; run rsgee check {root} to list the damaged tiles")
    assert sorted(p.name for p in (root / "cache").iterdir()) == []  # no half-built folder
