"""xarray views of exports, tiles and packed caches, checked pixel for pixel against rasterio reads."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from affine import Affine
from xarray.core import indexing

import rsgee
from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.export import export_aois
from rsgee.acquire.synthetic import SyntheticSource
from rsgee.catalog import load_catalog
from rsgee.grid import GridError
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.cache import PackedSplit
from rsgee.preprocess.split import SplitConfig
from rsgee.preprocess.tiling import TileFilters, build_archive
from rsgee.views import ViewError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An export of six tiles with some clouds, and its archive (train 4, val 1, test 1)."""
    root = tmp_path_factory.mktemp("views")
    source = SyntheticSource(seed=0, cloud_cover=0.05, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    export_aois(parse_aois(["valley=10.60,46.60,10.66,46.64"]), root / "exports", source, load_catalog(), progress=False)
    build_archive([root / "exports"], root / "archive", load_catalog(), split=SplitConfig(block=1),
                  filters=TileFilters(max_s2_nodata=0.5), progress=False)
    return root / "exports" / "valley", Archive(root / "archive")


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.transform, src.crs, src.nodata


def centres(transform: Affine, width: int, height: int):
    xs = [(transform @ (c + 0.5, 0.5))[0] for c in range(width)]
    ys = [(transform @ (0.5, r + 0.5))[1] for r in range(height)]
    return np.array(xs), np.array(ys)


def test_open_export_matches_rasterio_pixel_for_pixel(built):
    folder, _ = built
    ds = rsgee.open_export(folder)
    assert set(ds.data_vars) == {"s1", "s2", "lulc", "dem"}
    assert ds.attrs["aoi"] == "valley" and ds.attrs["synthetic"] == 1
    raw, transform, crs, _ = read(folder / "s2.tif")
    assert ds.rio.crs == crs and ds.rio.crs.to_epsg() == 32632
    xs, ys = centres(transform, raw.shape[2], raw.shape[1])
    np.testing.assert_array_equal(ds.x.values, xs)
    np.testing.assert_array_equal(ds.y.values, ys)
    assert ds.rio.transform() == transform

    s2 = ds.s2.values
    assert s2.dtype == np.float32 and ds.s2.attrs["nodata"] == 0
    clouds = raw == 0
    assert 0 < clouds.sum() < raw.size  # the scene has clouds, and they are NaN now
    np.testing.assert_array_equal(np.isnan(s2), clouds)
    np.testing.assert_array_equal(s2[~clouds], raw[~clouds].astype(np.float32))
    assert list(ds.s2_band.values) == ["B2", "B3", "B4", "B8"]

    lulc, _, _, _ = read(folder / "lulc.tif")
    assert ds.lulc.dtype == np.uint8 and ds.lulc.attrs["nodata"] == 255 and ds.lulc.rio.nodata == 255
    np.testing.assert_array_equal(ds.lulc.values, lulc)
    assert ds.lulc.attrs["flag_meanings"].split()[:2] == ["water", "trees"]
    np.testing.assert_array_equal(ds.lulc.attrs["flag_values"], np.arange(9))
    for name, bands in (("s1", ["VV", "VH"]), ("dem", ["dem"])):
        values, _, _, _ = read(folder / f"{name}.tif")
        assert list(ds[f"{name}_band"].values) == bands and np.isnan(ds[name].attrs["nodata"])
        np.testing.assert_array_equal(ds[name].values, values)  # NaN == NaN here


def test_views_are_lazy_with_and_without_dask(built):
    folder, archive = built
    pytest.importorskip("dask")
    chunked = rsgee.open_export(folder)
    assert chunked.s2.chunks == ((4,), (768,), (512,))  # one 2048-px chunk covers this small AOI
    plain = rsgee.open_export(folder, chunks=False)
    assert plain.s2.chunks is None and not plain.s2.variable._in_memory
    np.testing.assert_array_equal(plain.s2.values, chunked.s2.values)
    tile = archive.tiles()[0]["tile_id"]
    assert archive.open_tile(tile).terrain.chunks == ((4,), (256,), (256,))


def test_open_tile_matches_its_geotiffs_and_adds_gen(built, tmp_path):
    _, built_archive = built
    archive = Archive(tmp_path / "archive")
    shutil.copytree(built_archive.root, archive.root)
    first = archive.tiles()[0]["tile_id"]
    archive.generated_dir.mkdir()
    shutil.copyfile(archive.tile_path("s2", first), archive.generated_path(first))  # stands in for rsgee generate
    for props in archive.tiles():
        tile_id = props["tile_id"]
        ds = archive.open_tile(tile_id)
        assert ds.attrs["tile_id"] == tile_id
        assert set(ds.data_vars) == ({"s1", "s2", "lulc", "terrain", "gen"} if tile_id == first
                                     else {"s1", "s2", "lulc", "terrain"})
        assert list(ds.terrain_band.values) == ["dem", "slope", "aspect", "hillshade"]
        for name in ds.data_vars:
            path = archive.generated_path(tile_id) if name == "gen" else archive.tile_path(name, tile_id)
            raw, transform, crs, nodata = read(path)
            if name in ("s2", "gen"):
                expected = np.where(raw == 0, np.nan, raw.astype(np.float32))
            else:
                expected = raw
            np.testing.assert_array_equal(ds[name].values, expected)
            assert ds[name].dtype == expected.dtype
        xs, ys = centres(transform, 256, 256)
        np.testing.assert_array_equal(ds.x.values, xs)
        np.testing.assert_array_equal(ds.y.values, ys)
        assert ds.rio.crs == crs


def test_open_tile_refuses_unknown_and_malformed_ids(built):
    _, archive = built
    with pytest.raises(ViewError, match=r"tile 32632_1_1 is not in .*no lulc/32632_1_1.tif, s1/32632_1_1.tif"):
        archive.open_tile("32632_1_1")
    with pytest.raises(GridError, match="not a tile id"):
        archive.open_tile("valley")


def test_to_xarray_decodes_the_packed_cache_lazily(built):
    _, archive = built
    for split in ("train", "val", "test"):
        ds = archive.to_xarray(split)
        tiles = [p["tile_id"] for p in archive.tiles(split)]
        assert list(ds.tile.values) == tiles and list(ds.aoi.values) == ["valley"] * len(tiles)
        assert ds.s2.dims == ("tile", "s2_band", "y", "x") and ds.s2.shape == (len(tiles), 4, 256, 256)
        for name in ("s1", "s2", "lulc", "terrain"):
            assert isinstance(ds[name].variable._data, indexing.LazilyIndexedArray)  # nothing read yet
        assert ds.s2.dtype == np.uint16 and ds.s2.attrs["nodata"] == 0 and ds.lulc.attrs["nodata"] == 255
        packed = PackedSplit(archive, split)
        for i, tile_id in enumerate(tiles):
            for name in ("s1", "s2", "lulc", "terrain"):
                raw, transform, _, _ = read(archive.tile_path(name, tile_id))
                values = ds[name].isel(tile=i).values
                if name in ("s2", "lulc"):
                    np.testing.assert_array_equal(values, raw)
                else:  # stored as codes: within the cache's tolerances of the GeoTIFF
                    assert packed.codecs[name].errors(raw, values) == []
                np.testing.assert_array_equal(values, packed[i][name])
            window = ds.terrain.isel(tile=i, terrain_band=slice(1, 3), y=slice(10, 20), x=7).values
            np.testing.assert_array_equal(window, packed[i]["terrain"][1:3, 10:20, 7])
            assert (float(ds.x_origin[i]), float(ds.y_origin[i])) == (transform.c, transform.f)
            assert int(ds.epsg[i]) == 32632
            x_centres = ds.x_origin[i] + (ds.x + 0.5) * ds.attrs["pixel_m"]
            np.testing.assert_array_equal(x_centres.values, centres(transform, 256, 256)[0])


def test_open_export_refuses_files_off_the_grid(built, tmp_path):
    folder, _ = built
    moved = tmp_path / "valley"
    shutil.copytree(folder, moved)
    with rasterio.open(moved / "lulc.tif", "r+") as dst:
        dst.transform = dst.transform @ Affine.translation(1, 0)
    with pytest.raises(ViewError, match="not on one grid"):
        rsgee.open_export(moved)


def test_import_rsgee_loads_no_xarray():
    code = ("import sys, rsgee; assert 'xarray' not in sys.modules; import rsgee.preprocess.archive; "
            "assert 'xarray' not in sys.modules and 'pystac' not in sys.modules; "
            "import rsgee.views; assert rsgee.open_export is rsgee.views.open_export; assert 'open_export' in dir(rsgee)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rsgee.nope
