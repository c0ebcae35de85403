"""rsgee stac: the archive as a STAC Collection, read back with pystac and checked against the files."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.eo import EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.export import export_aois
from rsgee.acquire.synthetic import SyntheticSource
from rsgee.catalog import load_catalog
from rsgee.cli import main
from rsgee.exports import export_windows
from rsgee.preprocess import stac
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.split import SplitConfig
from rsgee.preprocess.stac import ML_AOI, StacError
from rsgee.preprocess.tiling import TileFilters, build_archive

SPLIT = SplitConfig(block=1)
FILTERS = TileFilters(max_s2_nodata=0.5)
START = dt.datetime(2023, 6, 1, tzinfo=dt.timezone.utc)
END = dt.datetime(2023, 8, 31, 23, 59, 59, tzinfo=dt.timezone.utc)  # the window [2023-06-01, 2023-09-01)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("stac")
    source = SyntheticSource(seed=0, cloud_cover=0.02, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    export_aois(parse_aois(["valley=10.60,46.60,10.66,46.64"]), root / "exports", source, load_catalog(), progress=False)
    build_archive([root / "exports"], root / "archive", load_catalog(), split=SPLIT, filters=FILTERS, progress=False)
    return root / "exports", Archive(root / "archive")


@pytest.fixture
def archive(built, tmp_path) -> Archive:
    """A private copy of the built archive, free to change."""
    shutil.copytree(built[1].root, tmp_path / "archive")
    return Archive(tmp_path / "archive")


def test_tiling_records_the_export_windows(built):
    exports, archive = built
    window = ["2023-06-01", "2023-09-01"]
    assert archive.read_meta()["aois"]["valley"]["windows"] == {s: window for s in ("dem", "lulc", "s1", "s2")}
    manifest = json.loads((exports / "valley" / "manifest.json").read_text())
    assert export_windows(manifest) == {s: window for s in ("dem", "lulc", "s1", "s2")}
    ee = {"request": {"source": "earthengine", "windows": {"s2": ["2023-05-01", "2023-10-01"], "s1": window}}}
    assert export_windows(ee) == {"s1": window, "s2": ["2023-05-01", "2023-10-01"]}
    assert export_windows({"request": {"source": "local", "inputs": {}}}) is None


def test_collection_reads_back_with_one_item_per_tile(archive):
    path = archive.to_stac()
    assert path == archive.stac_dir / "collection.json"
    collection = pystac.Collection.from_file(str(path))
    index = archive.read_index()
    items = {item.id: item for item in collection.get_items()}
    assert sorted(items) == sorted(index)
    assert collection.id == "archive" and ML_AOI in collection.stac_extensions
    assert collection.summaries.get_list("ml-aoi:split") == ["train", "validate", "test"]
    assert collection.extent.temporal.intervals == [[START, END]]
    assert "SYNTHETIC" in collection.description and collection.extra_fields["rsgee:synthetic"] is True
    assert collection.extra_fields["rsgee:max_float_error"] == 0.0 and "bounded-lossy" not in collection.description
    lon = [x for f in index.values() for x, _ in f["geometry"]["coordinates"][0]]
    assert collection.extent.spatial.bboxes[0][0] == min(lon) and collection.extent.spatial.bboxes[0][2] == max(lon)
    names = {"train": "train", "val": "validate", "test": "test"}
    classes = archive.catalog()["lulc"].classes
    for tile_id, item in items.items():
        props = index[tile_id]["properties"]
        assert item.properties["ml-aoi:split"] == names[props["split"]] and item.properties["rsgee:aoi"] == "valley"
        assert item.datetime is None and item.common_metadata.start_datetime == START
        assert item.common_metadata.end_datetime == END
        assert item.geometry == index[tile_id]["geometry"] and item.get_collection().id == collection.id
        assert set(item.assets) == {"s1", "s2", "lulc", "terrain"}
        proj = ProjectionExtension.ext(item)
        with rasterio.open(archive.tile_path("s2", tile_id)) as src:
            assert proj.code == src.crs.to_string() == "EPSG:32632"
            assert proj.transform == list(src.transform)[:6] and proj.shape == [src.height, src.width]
            assert proj.bbox == list(src.bounds)
        for name, asset in item.assets.items():
            assert asset.href == f"../../{name}/{tile_id}.tif"  # relative, as written
            target = archive.tile_path(name, tile_id).resolve()
            assert asset.get_absolute_href() == str(target) and target.exists()
            assert asset.media_type == pystac.MediaType.GEOTIFF and "data" in asset.roles
            assert asset.extra_fields["ml-aoi:role"] == ("label" if name == "lulc" else "feature")
            with rasterio.open(target) as src:
                assert [b["name"] for b in asset.extra_fields["bands"]] == list(src.descriptions)
                bands = RasterExtension.ext(asset).bands
                assert [b.data_type for b in bands] == list(src.dtypes)
                assert [b.unit for b in bands] == list(src.units)
                nodata = [b.nodata for b in bands]
                assert nodata == (["nan"] * src.count if np.isnan(src.nodata) else [src.nodata] * src.count)
        eo = EOExtension.ext(item.assets["s2"]).bands
        assert [(b.name, b.common_name, b.center_wavelength) for b in eo] == [
            ("B2", "blue", 0.49), ("B3", "green", 0.56), ("B4", "red", 0.665), ("B8", "nir", 0.842)]
        lulc = ClassificationExtension.ext(item.assets["lulc"]).classes
        with rasterio.open(archive.tile_path("lulc", tile_id)) as src:
            counts = np.bincount(src.read(1).ravel(), minlength=256)
        assert [(c.value, c.name, c.count) for c in lulc[:-1]] == [(i, n, counts[i]) for i, n in enumerate(classes)]
        assert (lulc[-1].value, lulc[-1].nodata) == (255, True)
        assert {ML_AOI, ProjectionExtension.get_schema_uri(), ClassificationExtension.get_schema_uri()} <= set(
            item.stac_extensions)


def test_every_href_resolves_after_moving_the_archive(archive, tmp_path):
    archive.to_stac()
    moved = tmp_path / "published"
    shutil.move(archive.root, moved)
    collection = pystac.Collection.from_file(str(moved / "stac" / "collection.json"))
    hrefs = [link.get_absolute_href() for link in collection.links if link.rel != "self"] + [
        asset.get_absolute_href() for item in collection.get_items() for asset in item.assets.values()]
    assert len(hrefs) == 1 + 6 + 6 * 4
    assert all(moved in Path(h).parents for h in hrefs)
    assert all(Path(h).is_file() for h in hrefs)


def test_generated_tiles_become_gen_assets(archive):
    first = archive.tiles()[0]["tile_id"]
    archive.generated_dir.mkdir()
    shutil.copyfile(archive.tile_path("s2", first), archive.generated_path(first))
    archive.generated_meta_path.write_text(json.dumps({"run": "runs/fusion", "weights": "ema"}))
    collection = pystac.Collection.from_file(str(archive.to_stac()))
    with_gen = {item.id: item.assets["gen"] for item in collection.get_items() if "gen" in item.assets}
    assert list(with_gen) == [first]
    gen = with_gen[first]
    assert gen.href == f"../../gen/{first}.tif" and gen.get_absolute_href() == str(archive.generated_path(first).resolve())
    assert "runs/fusion" in gen.description and "ema" in gen.description
    assert [b.name for b in EOExtension.ext(gen).bands] == ["B2", "B3", "B4", "B8"]


def test_archive_without_windows_refuses_then_takes_dates_or_a_retile(archive, built):
    meta = archive.read_meta()
    del meta["aois"]["valley"]["windows"]  # as written by rsgee before windows were recorded
    archive.write_meta(meta)
    with pytest.raises(StacError, match=r"AOI 'valley' has no date window .*re-run rsgee tile .*--start and --end"):
        archive.to_stac()
    assert not archive.stac_dir.exists()
    collection = pystac.Collection.from_file(str(archive.to_stac(start=dt.date(2022, 1, 1), end=dt.date(2023, 1, 1))))
    item = next(iter(collection.get_items()))
    assert item.common_metadata.start_datetime == dt.datetime(2022, 1, 1, tzinfo=dt.timezone.utc)
    assert item.common_metadata.end_datetime == dt.datetime(2022, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)
    build_archive([built[0]], archive.root, load_catalog(), split=SPLIT, filters=FILTERS, progress=False)
    assert archive.read_meta()["aois"]["valley"]["windows"]["s2"] == ["2023-06-01", "2023-09-01"]
    collection = pystac.Collection.from_file(str(archive.to_stac()))
    assert collection.extent.temporal.intervals == [[START, END]]
    with pytest.raises(StacError, match="give --start and --end together"):
        archive.to_stac(start=dt.date(2023, 1, 1))
    meta = archive.read_meta()
    meta["aois"]["valley"]["windows"] = None  # as recorded for an export of local files
    archive.write_meta(meta)
    with pytest.raises(StacError, match=r"AOI 'valley' was exported from local files, .*; pass --start and --end$"):
        archive.to_stac()


def test_a_failed_write_keeps_the_previous_catalog(archive, monkeypatch):
    archive.to_stac()
    before = {p.relative_to(archive.stac_dir): p.read_bytes() for p in archive.stac_dir.rglob("*.json")}
    write, calls = stac._write, []

    def failing(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        write(path, data)

    monkeypatch.setattr(stac, "_write", failing)
    with pytest.raises(OSError, match="disk full"):
        archive.to_stac()
    after = {p.relative_to(archive.stac_dir): p.read_bytes() for p in archive.stac_dir.rglob("*.json")}
    assert after == before and len(before) == 7
    assert sorted(p.name for p in archive.root.iterdir() if p.name.startswith(".stac")) == []


def test_cli_writes_the_catalog_and_refuses_a_non_archive(archive, tmp_path, capsys):
    assert main(["stac", str(archive.root)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"stac: 6 items → {archive.stac_dir / 'collection.json'}"
    assert main(["stac", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an rsgee archive" in err and "rsgee tile" in err
    assert not (tmp_path / "nothing").exists()


def test_a_bounded_lossy_archive_says_so(archive):
    meta = archive.read_meta()
    archive.write_meta(dict(meta, max_float_error=0.005))
    collection = pystac.Collection.from_file(str(archive.to_stac()))
    assert collection.extra_fields["rsgee:max_float_error"] == 0.005
    assert "stored bounded-lossy: every value within 0.005 of the exact one" in collection.description
