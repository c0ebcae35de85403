"""The DEM recipe against a fake GLO30 whose tiles change grid at 50°N and are missing over open ocean."""

from __future__ import annotations

import datetime as dt

import ee
import numpy as np
import pytest
import rasterio
from pyproj import Transformer

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.earthengine.download import EarthEngineSource, RetryPolicy, compute_pixels, decode_block, parse_windows
from rsgee.acquire.earthengine.fake import FakeEarthEngine, Glo30
from rsgee.acquire.earthengine.recipes import FLOAT_FILL, Window
from rsgee.acquire.earthengine.session import SessionConfig
from rsgee.acquire.export import export_aois
from rsgee.catalog import load_catalog

CATALOG = load_catalog()
ACROSS_50 = "n=10.60,49.99,10.63,50.01"  # GLO30 spacing: 1″ south of 50°N, 1.5″ north of it
COAST = "c=10.97,46.60,11.00,46.62"  # the cell east of 11°E is open ocean, sea from 10.99°E in the coastal tile
SEA = Glo30(ocean=lambda lon, lat: lon >= 11, sea=lambda lon, lat: lon >= 10.99)


def export_dem(server, tmp_path, aoi):
    windows = parse_windows(dt.date(2023, 6, 1), dt.date(2023, 9, 1), [], ["dem"])
    source = EarthEngineSource(SessionConfig(project="fake", url=server.url, auth=False, workers=2), windows,
                               policy=RetryPolicy(attempts=2), progress=False, sleep=lambda s: None)
    (result,) = export_aois(parse_aois([aoi]), tmp_path, source, CATALOG, source_names=["dem"], progress=False)
    assert result.ok, result.line()
    with rasterio.open(tmp_path / aoi.split("=")[0] / "dem.tif") as src:
        dem, transform, crs = src.read(1), src.transform, src.crs
    rows, cols = np.mgrid[0 : dem.shape[0], 0 : dem.shape[1]]
    x, y = transform @ (cols + 0.5, rows + 0.5)
    lon, lat = Transformer.from_crs(crs.to_string(), "EPSG:4326", always_xy=True).transform(x, y)
    return dem, lon, lat


def old_recipe_block(server, lon_lat, size=256):
    """A block through the graph rsgee used to build: the mosaic resampled from the first tile's projection."""
    collection = ee.ImageCollection("COPERNICUS/DEM/GLO30").select(["DEM"])
    first = ee.Image(collection.first()).select([0])
    image = (collection.mosaic().setDefaultProjection(first.projection()).resample("bilinear")
             .rename(["dem"]).unmask(FLOAT_FILL, False).toFloat())
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True).transform(*lon_lat)
    x0, y1 = x // 10 * 10, y // 10 * 10
    grid = {"dimensions": {"width": size, "height": size}, "crsCode": "EPSG:32632",
            "affineTransform": {"scaleX": 10, "shearX": 0, "translateX": x0, "shearY": 0, "scaleY": -10,
                                "translateY": y1}}
    block = decode_block(compute_pixels(image, grid), CATALOG["dem"], size, FLOAT_FILL)[0]
    rows, cols = np.mgrid[0:size, 0:size]
    lon, lat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True).transform(
        x0 + (cols + 0.5) * 10, y1 - (rows + 0.5) * 10)
    return block, lon, lat


def test_across_50_degrees_every_tile_is_interpolated_on_its_own_grid(tmp_path):
    with FakeEarthEngine(glo30=Glo30()) as server:
        dem, lon, lat = export_dem(server, tmp_path, ACROSS_50)
        want = Glo30.plane(lon, lat)
        # away from the 50° edge (where a tile has no neighbour rows of its own) the plane is exact
        inner = np.abs(lat - 50.0) > 2.0 / 3600.0
        assert (lat > 50.0).any() and (lat < 50.0).any()
        np.testing.assert_allclose(dem[inner], want[inner], atol=0.02)
        assert np.abs(dem - want).max() < 0.6  # the edge rows: at most half a 1″ row of slope
        # the graph rsgee built before: north of 50° nearest-sampled onto the southern tile's 1″ columns
        old, olon, olat = old_recipe_block(server, (10.60, 50.01))  # the block's top-left corner
        north = olat > 50.0 + 2.0 / 3600.0
        assert np.abs(old[north] - Glo30.plane(olon, olat)[north]).max() > 0.3
    ee.Reset()


def test_open_ocean_is_zero_and_the_coastal_tile_keeps_its_sea(tmp_path):
    with FakeEarthEngine(glo30=SEA) as server:
        dem, lon, lat = export_dem(server, tmp_path, COAST)
        assert not np.isnan(dem).any()
        offshore = lon >= 11.0
        assert offshore.any() and (dem[offshore] == 0).all()
        sea = (lon >= 10.99 + 2.0 / 3600.0) & ~offshore
        assert sea.any() and (dem[sea] == 0).all()
        land = lon < 10.99 - 2.0 / 3600.0
        np.testing.assert_allclose(dem[land], Glo30.plane(lon, lat)[land], atol=0.02)
        old, olon, _ = old_recipe_block(server, (10.985, 46.62))
        assert np.isnan(old[olon >= 11.0]).all()  # what rsgee wrote before: NaN offshore
    ee.Reset()
