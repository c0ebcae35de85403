"""rsgee tile: the archive contract, values, filters, splits, growth, parallelism and killed runs."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.export import export_aois
from rsgee.acquire.synthetic import SyntheticSource
from rsgee.catalog import load_catalog
from rsgee.errors import RsgeeError
from rsgee.exports import read_export
from rsgee.grid import Tile
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.check import check_archive
from rsgee.preprocess.split import SplitConfig
from rsgee.preprocess.stats import SAMPLE_STEP
from rsgee.preprocess.terrain import terrain
from rsgee.preprocess.tiling import TileFilters, build_archive, _spread_sample, candidate_tiles, open_export, strip_runs
from rsgee.preprocess.archive import tile_sources
from rsgee.radiometry import db_to_linear

VALLEY = "valley=10.60,46.60,10.66,46.64"  # 2×3 tiles of EPSG:32632
SLOPE = "slope=10.675,46.60,10.70,46.64"  # 2×3 tiles just east of it
SPLIT = SplitConfig(block=1)


def export(out: Path, *specs: str, cloud_cover: float = 0.0, seed: int = 0) -> Path:
    source = SyntheticSource(seed=seed, cloud_cover=cloud_cover, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    export_aois(parse_aois(specs), out, source, load_catalog(), progress=False)
    return out


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    return export(tmp_path_factory.mktemp("exports"), VALLEY, SLOPE)


@pytest.fixture(scope="module")
def archive(exports, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("archive") / "archive"
    summary = build_archive([exports], out, load_catalog(), split=SPLIT, progress=False)
    return out, summary


def test_archive_contract(archive, exports):
    root, summary = archive
    assert summary.written == 12 and summary.index_tiles == 12 and not summary.failed
    arch = Archive(root)
    index = json.loads(arch.index_path.read_text())
    assert index["type"] == "FeatureCollection" and len(index["features"]) == 12
    ids = [f["id"] for f in index["features"]]
    assert ids == sorted(ids)
    assert (root / "catalog.yaml").read_bytes() == load_catalog().path.read_bytes()
    expected = {"s1": (2, "float32"), "s2": (4, "uint16"), "lulc": (1, "uint8"), "terrain": (4, "float32")}
    for feature in index["features"]:
        tile = Tile.from_id(feature["id"])
        props = feature["properties"]
        assert props["tile_id"] == tile.id and props["aoi"] in ("valley", "slope")
        assert props["split"] in ("train", "val", "test") and props["source"] == "synthetic"
        assert sum(props["class_hist"]) == 256 * 256 and len(props["class_hist"]) == 9
        assert all(props[f"valid_{s}"] == 1.0 for s in expected)
        lon, lat = np.array(feature["geometry"]["coordinates"][0]).T
        assert 10.55 < lon.min() < lon.max() < 10.75 and 46.55 < lat.min() < lat.max() < 46.7
        for source, (count, dtype) in expected.items():
            with rasterio.open(arch.tile_path(source, tile.id)) as src:
                assert (src.count, src.height, src.width) == (count, 256, 256)
                assert src.dtypes[0] == dtype and src.crs.to_epsg() == 32632 and src.transform == tile.transform
                assert src.tags()["RSGEE_SYNTHETIC"] == "yes"
        with rasterio.open(arch.tile_path("terrain", tile.id)) as src:
            assert src.descriptions == ("dem", "slope", "aspect", "hillshade")
            assert src.units[0] == "m" and src.units[1] == "degrees"
    report = check_archive(root, progress=False)
    assert report.ok, report.problems


def test_tiles_equal_the_export_windows_and_terrain_uses_true_neighbours(archive, exports):
    root, _ = archive
    arch = Archive(root)
    folder = exports / "valley"
    grid = read_export(folder).grid
    with rasterio.open(folder / "dem.tif") as src:
        whole_dem = src.read(1)
    whole = terrain(whole_dem, 10.0, 10.0)  # terrain of the whole AOI raster
    for props in arch.tiles():
        if props["aoi"] != "valley":
            continue
        tile = Tile.from_id(props["tile_id"])
        window = grid.window(tile)
        rows, cols = window.toslices()
        for source in ("s1", "s2", "lulc"):
            with rasterio.open(folder / f"{source}.tif") as src:
                np.testing.assert_array_equal(src.read(window=window), rasterio.open(arch.tile_path(source, tile.id)).read())
        with rasterio.open(arch.tile_path("terrain", tile.id)) as src:
            dem, slope, aspect, hill = src.read()
        np.testing.assert_array_equal(dem, whole_dem[rows, cols])
        np.testing.assert_allclose(slope, whole.slope[rows, cols], atol=1e-4)
        np.testing.assert_allclose(aspect, whole.aspect[rows, cols], atol=1e-3)
        np.testing.assert_allclose(hill, whole.hillshade[rows, cols], atol=1e-3)
        assert np.isfinite(slope).all()  # AOI borders computed like gdaldem -compute_edges


def test_stats_are_the_train_split_only(archive):
    root, _ = archive
    arch = Archive(root)
    stats = json.loads(arch.stats_path.read_text())
    train = [p["tile_id"] for p in arch.tiles("train")]
    others = [p["tile_id"] for p in arch.tiles() if p["split"] != "train"]
    assert stats["tiles"] == len(train) and train and others
    b8 = np.stack([rasterio.open(arch.tile_path("s2", t)).read(4) for t in train]).astype(np.float64)
    values = b8[b8 != 0]
    got = stats["sources"]["s2"]["B8"]
    assert got["count"] == values.size
    assert got["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert got["std"] == pytest.approx(values.std(), rel=1e-9)
    sample = b8[:, ::SAMPLE_STEP, ::SAMPLE_STEP]
    assert got["p2"] == pytest.approx(np.percentile(sample[sample != 0], 2), rel=1e-12)
    assert got["p98"] == pytest.approx(np.percentile(sample[sample != 0], 98), rel=1e-12)
    every = np.stack([rasterio.open(arch.tile_path("s2", t)).read(4) for t in train + others]).astype(np.float64)
    assert got["mean"] != pytest.approx(every[every != 0].mean(), rel=1e-6)  # val/test would change it
    labels = np.stack([rasterio.open(arch.tile_path("lulc", t)).read(1) for t in train])
    counts = stats["sources"]["lulc"]["class_counts"]
    assert counts["crops"] == int((labels == 4).sum()) and sum(counts.values()) == labels.size


def test_rebuild_is_byte_identical_and_two_workers_equal_one(archive, exports, tmp_path):
    root, _ = archive
    build_archive([exports], tmp_path / "a2", load_catalog(), split=SPLIT, workers=2, progress=False)
    assert tree_bytes(tmp_path / "a2") == tree_bytes(root)


def test_cutting_rows_into_narrow_runs_changes_no_byte(archive, exports, tmp_path, monkeypatch):
    """Rows are read in runs of at most MAX_STRIP_TILES columns (bounded memory): runs of one tile give
    the same archive, terrain at the runs' edges included (its halo comes from the neighbours)."""
    root, _ = archive
    monkeypatch.setattr("rsgee.preprocess.tiling.MAX_STRIP_TILES", 1)
    assert [len(run) for run in strip_runs([Tile(32632, c, 5) for c in (4, 2, 3)])] == [1, 1, 1]
    build_archive([exports], tmp_path / "narrow", load_catalog(), split=SPLIT, progress=False)
    assert tree_bytes(tmp_path / "narrow") == tree_bytes(root)
    monkeypatch.setattr("rsgee.preprocess.tiling.MAX_STRIP_TILES", 2)
    runs = strip_runs([Tile(32632, c, 5) for c in (7, 2, 3, 4, 9)])
    assert [[t.col for t in run] for run in runs] == [[2, 3], [4], [7], [9]]


def test_growing_adds_tiles_without_moving_or_rewriting(exports, tmp_path, archive):
    root, _ = archive
    grown = tmp_path / "grown"
    first = build_archive([exports / "valley"], grown, load_catalog(), split=SPLIT, progress=False)
    assert first.written == 6
    arch = Archive(grown)
    before = {p["tile_id"]: p["split"] for p in arch.tiles()}
    inodes = {t: os.stat(arch.tile_path("s2", t)).st_ino for t in before}
    mtimes = {t: os.stat(arch.tile_path("s2", t)).st_mtime_ns for t in before}
    second = build_archive([exports], grown, load_catalog(), split=SPLIT, progress=False)
    assert second.written == 6 and second.aois_skipped == ["valley"]
    after = {p["tile_id"]: p["split"] for p in arch.tiles()}
    assert {t: after[t] for t in before} == before
    assert all(os.stat(arch.tile_path("s2", t)).st_ino == inodes[t] for t in before)
    assert all(os.stat(arch.tile_path("s2", t)).st_mtime_ns == mtimes[t] for t in before)
    assert tree_bytes(grown) == tree_bytes(root)  # same as building from both at once
    third = build_archive([exports], grown, load_catalog(), split=SPLIT, progress=False)
    assert third.written == 0 and sorted(third.aois_skipped) == ["slope", "valley"]


def test_growing_with_other_split_options_or_catalog_is_refused(archive, exports, tmp_path):
    root, _ = archive
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    with pytest.raises(RsgeeError, match="split with ratios 7:2:1, by block, block 1, seed 0"):
        build_archive([exports], copy, load_catalog(), split=SplitConfig(block=4), progress=False)
    import yaml

    data = yaml.safe_load(load_catalog().path.read_text())
    data["sources"]["s2"]["cloud_mask"]["threshold"] = 0.5
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    with pytest.raises(RsgeeError, match="different catalog"):
        build_archive([exports], copy, load_catalog(other), split=SPLIT, progress=False)


def test_a_pinned_aoi_goes_whole_into_its_split_and_check_agrees(exports, tmp_path, capsys):
    from rsgee.cli import main
    from rsgee.preprocess.check import check_archive

    out = tmp_path / "pinned"
    code = main(["tile", str(exports), "--out", str(out), "--split-block", "1", "--split-aoi", "valley=test",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    features = json.loads((out / "index.geojson").read_text())["features"]
    splits = {f["properties"]["aoi"]: set() for f in features}
    for f in features:
        splits[f["properties"]["aoi"]].add(f["properties"]["split"])
    assert splits["valley"] == {"test"} and len(splits["slope"]) > 1  # the other AOI follows its blocks
    assert json.loads((out / "archive.json").read_text())["split"]["pinned"] == {"valley": "test"}
    assert check_archive(out, progress=False).ok
    code = main(["tile", str(exports), "--out", str(out), "--split-block", "1", "--no-progress"])
    assert code == 1 and "--split-aoi valley=test; pass the same split options" in capsys.readouterr().err
    code = main(["tile", str(exports), "--out", str(tmp_path / "x"), "--split-aoi", "valley"])
    assert code == 1 and "use NAME=SPLIT" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_an_archive_whose_catalog_predates_a_recipe_only_key_grows_with_the_current_one(archive, exports, tmp_path):
    import yaml

    root, _ = archive
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    data = yaml.safe_load((copy / "catalog.yaml").read_text())
    assert data["sources"]["dem"].pop("fill_missing") == 0
    assert data["sources"]["s2"].pop("filters_lt") and data["sources"]["s1"].pop("angle_mask")
    data["sources"]["s1"]["filters"] = {"instrumentMode": "IW"}
    (copy / "catalog.yaml").write_text(yaml.safe_dump(data))
    again = build_archive([exports], copy, load_catalog(), split=SPLIT, progress=False)
    assert again.written == 0 and not again.failed


def test_filters_reject_cloudy_tiles_and_count_them(tmp_path):
    exp = export(tmp_path / "e", VALLEY, cloud_cover=0.3)
    summary = build_archive([exp], tmp_path / "a", load_catalog(), split=SPLIT, progress=False,
                            filters=TileFilters(max_nodata=0.05, max_s2_nodata=0.25))
    arch = Archive(tmp_path / "a")
    assert summary.rejected["s2_nodata"] >= 1 and summary.written + summary.rejected["s2_nodata"] == 6
    assert all(p["valid_s2"] >= 0.75 for p in arch.tiles())
    kept = {p["tile_id"] for p in arch.tiles()}
    assert {p.stem for p in (tmp_path / "a" / "s2").glob("*.tif")} == kept  # rejected tiles leave no files
    assert arch.read_meta()["aois"]["valley"]["rejected"] == {"s2_nodata": summary.rejected["s2_nodata"]}
    loose = build_archive([exp], tmp_path / "b", load_catalog(), split=SPLIT, progress=False,
                          filters=TileFilters(max_s2_nodata=1.0))
    assert loose.written == 6


def test_tiles_outside_a_non_rectangular_aoi_are_skipped(tmp_path):
    triangle = "tri=POLYGON((10.60 46.60, 10.66 46.60, 10.60 46.64, 10.60 46.60))"
    exp = export(tmp_path / "e", triangle)
    specs = tile_sources(load_catalog())
    aoi = open_export(exp / "tri", specs)
    tiles = candidate_tiles(aoi)
    assert 0 < len(tiles) < len(list(aoi.grid.tiles()))
    summary = build_archive([exp], tmp_path / "a", load_catalog(), split=SPLIT, progress=False)
    assert summary.written == len(tiles)


def test_overlapping_aois_do_not_duplicate_tiles(tmp_path):
    exp = export(tmp_path / "e", VALLEY, "bigger=10.60,46.60,10.70,46.64")
    summary = build_archive([exp], tmp_path / "a", load_catalog(), split=SPLIT, progress=False)
    arch = Archive(tmp_path / "a")
    owners = {p["tile_id"]: p["aoi"] for p in arch.tiles()}
    assert summary.duplicate == 6 and len(owners) == summary.written == 12
    assert list(owners.values()).count("bigger") == 12  # "bigger" sorts first and claims the shared tiles


def test_mismatched_grid_is_a_one_line_error_naming_aoi_and_source(exports, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(exports / "valley", bad / "valley")
    with rasterio.open(bad / "valley" / "s2.tif") as src:
        profile, data = src.profile, src.read()
    profile["transform"] = profile["transform"] @ profile["transform"].translation(1, 0)
    with rasterio.open(bad / "valley" / "s2.tif", "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(RsgeeError, match=r"AOI 'valley', source 's2': transform .* differs") as info:
        build_archive([bad], tmp_path / "a", load_catalog(), progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "a").exists()  # nothing written
    shutil.copy(exports / "valley" / "s2.tif", bad / "valley" / "s2.tif")
    (bad / "valley" / "lulc.tif").unlink()
    with pytest.raises(RsgeeError, match="AOI 'valley': lulc.tif is missing"):
        build_archive([bad], tmp_path / "a", load_catalog(), progress=False)


def test_corrupt_export_fails_that_aoi_only_and_leaves_no_partial_tiles(exports, tmp_path):
    src = tmp_path / "e"
    shutil.copytree(exports, src)
    path = src / "slope" / "s2.tif"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated: the header opens, the pixels do not
    summary = build_archive([src], tmp_path / "a", load_catalog(), split=SPLIT, progress=False)
    assert "slope" in summary.failed and "re-export it" in summary.failed["slope"]
    arch = Archive(tmp_path / "a")
    slope_tiles = [p["tile_id"] for p in arch.tiles() if p["aoi"] == "slope"]
    assert len(slope_tiles) < 6 and summary.written == 6 + len(slope_tiles)
    grid = read_export(src / "slope").grid
    for tile_id in slope_tiles:  # strips read before the damage are intact, not garbage
        with rasterio.open(exports / "slope" / "s2.tif") as f:
            expected = f.read(window=grid.window(Tile.from_id(tile_id)))
        np.testing.assert_array_equal(rasterio.open(arch.tile_path("s2", tile_id)).read(), expected)
    assert not list((tmp_path / "a").rglob(".*.tmp"))
    assert not arch.read_meta()["aois"]["slope"]["complete"]
    assert check_archive(tmp_path / "a", progress=False).ok


def test_the_s1_unit_check_reads_a_spread_sample(exports):
    """dB-or-linear is decided on small windows across the raster, not on a read of the whole file."""
    with rasterio.open(exports / "valley" / "s1.tif") as src:
        full = src.read()
        sample = _spread_sample(src, windows=2, size=8)
    assert sample.shape == (2, 4 * 64)
    window = full[:, 124:132, 124:132].reshape(2, -1)  # the first window: the middle of the first block
    np.testing.assert_array_equal(sample[:, :64], window)
    assert np.isin(sample, full).all()


def test_linear_s1_is_converted_with_a_warning(exports, tmp_path, caplog):
    src = tmp_path / "e"
    shutil.copytree(exports / "valley", src / "valley")
    with rasterio.open(src / "valley" / "s1.tif") as f:
        profile, db = f.profile, f.read()
    with rasterio.open(src / "valley" / "s1.tif", "w", **profile) as dst:
        dst.write(db_to_linear(db).astype(np.float32))
    with caplog.at_level(logging.WARNING, logger="rsgee"):
        build_archive([src], tmp_path / "a", load_catalog(), split=SPLIT, progress=False)
    assert "looks like linear power" in caplog.text
    arch = Archive(tmp_path / "a")
    tile = Tile.from_id(arch.tiles()[0]["tile_id"])
    window = read_export(src / "valley").grid.window(tile)
    with rasterio.open(arch.tile_path("s1", tile.id)) as f:
        np.testing.assert_allclose(f.read(), db[:, window.toslices()[0], window.toslices()[1]], atol=1e-4)


def test_check_finds_damage(archive, tmp_path):
    root, _ = archive
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    arch = Archive(copy)
    tiles = arch.tiles()
    arch.tile_path("s1", tiles[0]["tile_id"]).unlink()
    bad = arch.tile_path("s2", tiles[1]["tile_id"])
    bad.write_bytes(bad.read_bytes()[:300])
    index = arch.read_index()
    moved = tiles[2]["tile_id"]
    index[moved]["properties"]["split"] = "test" if tiles[2]["split"] != "test" else "train"
    arch.write_index(index)
    stats = json.loads(arch.stats_path.read_text())
    stats["sources"]["s2"]["B4"]["mean"] += 1.0
    arch.stats_path.write_text(json.dumps(stats))
    report = check_archive(copy, progress=False)
    text = "\n".join(report.problems)
    assert f"{tiles[0]['tile_id']}: s1 file missing" in text
    assert f"{tiles[1]['tile_id']}: s2: " in text  # truncated: unreadable georeferencing or pixels
    assert f"{moved}: in split" in text
    # stats are not re-verified while tile files are broken; repair them and the stats problem shows
    shutil.copy(root / "s1" / f"{tiles[0]['tile_id']}.tif", arch.tile_path("s1", tiles[0]["tile_id"]))
    shutil.copy(root / "s2" / f"{tiles[1]['tile_id']}.tif", bad)
    report = check_archive(copy, progress=False)
    assert any("stats.json" in p for p in report.problems)


KILLABLE = textwrap.dedent(
    """
    import sys, time
    import rsgee.preprocess.tiling as tiling
    original = tiling._write_tile
    def slow(*args):
        original(*args)
        time.sleep(0.4)
    tiling._write_tile = slow
    from rsgee.catalog import load_catalog
    from rsgee.preprocess.split import SplitConfig
    tiling.build_archive([sys.argv[1]], sys.argv[2], load_catalog(), split=SplitConfig(block=1), progress=False)
    """
)


@pytest.mark.slow
def test_a_killed_run_loses_nothing_and_resumes_to_the_same_archive(archive, exports, tmp_path):
    root, _ = archive
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(exports), str(out)])
    journal = out / "index.journal"
    deadline = time.time() + 60
    while time.time() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lines = journal.read_text().splitlines()
    assert 3 <= len(lines) < 12  # killed mid-run
    assert not (out / "index.geojson").exists() or len(Archive(out).read_index()) < 12
    summary = build_archive([exports], out, load_catalog(), split=SPLIT, progress=False)
    assert summary.written == 12 - len(lines)
    assert tree_bytes(out) == tree_bytes(root)
    assert check_archive(out, progress=False).ok


def test_second_writer_is_refused(archive, exports, tmp_path):
    root, _ = archive
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    with Archive(copy).lock():
        with pytest.raises(RsgeeError, match="another rsgee process is writing"):
            build_archive([exports], copy, load_catalog(), split=SPLIT, progress=False)


def test_one_small_aoi_with_default_blocks_warns_that_its_splits_are_unusable(exports, tmp_path, capsys):
    from rsgee.cli import main

    code = main(["tile", str(exports), "--out", str(tmp_path / "a"), "--no-progress"])  # default 4×4 blocks
    assert code == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rsgee: warning: splits")]
    assert len(warnings) == 1 and "--split-block 1 (now 4)" in warnings[0]
    summary = build_archive([exports], tmp_path / "a", load_catalog(), progress=False)
    assert summary.split_warning == warnings[0].removeprefix("rsgee: warning: ")


def test_bounded_lossy_float_tiles_stay_within_their_error_and_pass_check(archive, exports, tmp_path):
    """--max-float-error: S1 and terrain within E of the lossless tiles (NaN kept), S2 and land cover exact."""
    from rsgee.preprocess.cache import build_cache, verify_cache

    exact_root, _ = archive
    error = 0.005
    root = tmp_path / "lossy"
    first = build_archive([exports / "valley"], root, load_catalog(), split=SPLIT, progress=False, max_float_error=error)
    grown = build_archive([exports], root, load_catalog(), split=SPLIT, progress=False)  # the archive's own setting
    assert first.written == 6 and grown.written == 6
    exact, lossy = Archive(exact_root), Archive(root)
    assert lossy.read_meta()["max_float_error"] == error and exact.read_meta()["max_float_error"] == 0.0
    assert [p["tile_id"] for p in lossy.tiles()] == [p["tile_id"] for p in exact.tiles()]
    worst, changed = {}, 0
    for props in exact.tiles():
        for source in ("s1", "s2", "lulc", "terrain"):
            with rasterio.open(exact.tile_path(source, props["tile_id"])) as a, \
                    rasterio.open(lossy.tile_path(source, props["tile_id"])) as b:
                ref, got = a.read(), b.read()
                codec = b.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"]
            if source in ("s2", "lulc"):
                assert codec == "ZSTD"
                np.testing.assert_array_equal(got, ref)
                continue
            assert codec == "LERC_ZSTD"
            assert np.array_equal(np.isnan(ref), np.isnan(got))
            finite = ~np.isnan(ref)
            diff = np.abs(got[finite].astype(np.float64) - ref[finite])
            # LERC quantises to 2E steps; the float32 result adds at most half a float32 spacing
            assert (diff <= error + np.spacing(np.abs(ref[finite]))).all()
            worst[source] = max(worst.get(source, 0.0), float(diff.max()))
            changed += int(np.count_nonzero(diff))
    assert changed and error / 2 < min(worst.values())  # lossy indeed, and the bound is nearly used
    for source in ("s1", "terrain"):
        lossy_bytes = sum(f.stat().st_size for f in (root / source).iterdir())
        exact_bytes = sum(f.stat().st_size for f in (exact_root / source).iterdir())
        assert lossy_bytes < 0.75 * exact_bytes, source
    report = check_archive(root, progress=False)
    assert report.ok, report.problems
    build_cache(lossy, "train", progress=False)
    assert verify_cache(lossy, "train") == []
    from rsgee.geotiff import RasterGrid, write_array

    tile_id = lossy.tiles()[0]["tile_id"]  # a lossless tile slipped into the lossy archive is reported
    tile = Tile.from_id(tile_id)
    with rasterio.open(exact.tile_path("s1", tile_id)) as src:
        write_array(lossy.tile_path("s1", tile_id), src.read(), lossy.sources()["s1"],
                    RasterGrid(tile.crs, tile.transform, 256, 256))
    problems = check_archive(root, progress=False).problems
    assert problems == [f"{tile_id}: s1: lossless-compressed, but archive.json says bounded-lossy (LERC)"]


def test_the_float_error_is_the_archives_own(archive, exports, tmp_path):
    exact_root, _ = archive
    copy = tmp_path / "copy"
    shutil.copytree(exact_root, copy)
    with pytest.raises(RsgeeError, match=r"max float error 0.0 \(0.0 = lossless\); pass --max-float-error 0.0 \(or leave it out\)"):
        build_archive([exports], copy, load_catalog(), split=SPLIT, progress=False, max_float_error=0.005)
    assert build_archive([exports], copy, load_catalog(), split=SPLIT, progress=False, max_float_error=0.0).written == 0
    for bad in (-0.001, 0.02):
        with pytest.raises(RsgeeError, match=r"max_float_error must be within 0…0.01"):
            build_archive([exports], tmp_path / "bad", load_catalog(), split=SPLIT, progress=False, max_float_error=bad)
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_the_cli_option_reaches_the_archive(exports, tmp_path, capsys):
    from rsgee.cli import main

    out = tmp_path / "a"
    assert main(["tile", str(exports), "--out", str(out), "--split-block", "1", "--max-float-error", "0.002",
                 "--no-progress"]) == 0
    assert Archive(out).read_meta()["max_float_error"] == 0.002
    assert main(["tile", str(exports), "--out", str(tmp_path / "b"), "--max-float-error", "0.5"]) == 2
    assert "0.5 is not in the range 0.0<=x<=0.01" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
