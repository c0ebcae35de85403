"""The DEM recipe against a fake GLO30 (see :class:`~rsgee.testing.earthengine.Glo30`): tiles that change grid
at 50°N, that are missing over open ocean and over land (Armenia, Azerbaijan: the fallback DEM fills it), and whose
edges come back masked after per-tile resampling (seams)."""

from __future__ import annotations

import datetime as dt
import io
import os
import uuid
from unittest import mock

import ee
import numpy as np
import rasterio
from pyproj import Transformer

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.earthengine.batch import BatchSource, Destination, export_batch
from rsgee.acquire.earthengine.download import EarthEngineSource, RetryPolicy, compute_pixels, parse_windows
from rsgee.acquire.earthengine.recipes import FLOAT_FILL, build_recipe
from rsgee.acquire.earthengine.session import SessionConfig
from rsgee.acquire.export import export_aois
from rsgee.catalog import load_catalog
from rsgee.testing.earthengine import FALLBACK_OFFSET_M, FakeEarthEngine, Glo30

CATALOG = load_catalog()
WINDOWS = parse_windows(dt.date(2023, 6, 1), dt.date(2023, 9, 1), [], ["dem"])
ACROSS_50 = "n=10.60,49.99,10.63,50.01"  # GLO30 spacing: 1″ south of 50°N, 1.5″ north of it
COAST = "c=10.97,46.60,11.00,46.62"  # the cell east of 11°E is open ocean, sea from 10.99°E in the coastal tile
SEA = Glo30(ocean=lambda lon, lat: lon >= 11, sea=lambda lon, lat: lon >= 10.99)
# Four tiles: 9°E crosses the AOI (EPSG:32732), and its grid ends 11 m south of 7°S, so that only the halo's top row
# (and the kernel of the last rows) reads the tiles north of 7°S.
CORNER = "r=8.99,-7.02,9.01,-7.0003"
SEAMS = Glo30(seams=True)
ARMENIA = Glo30(missing=lambda lon, lat: lon >= 11, seams=True)  # land east of 11°E has no GLO30 tile
# Wholly in the gap, on its coast: no GLO30 tile at all (an empty collection), open sea east of 11°E.
CASPIAN = Glo30(ocean=lambda lon, lat: lon >= 11, missing=lambda lon, lat: True, sea=lambda lon, lat: lon >= 10.99)
ARCSEC = 1.0 / 3600.0


def export_dem(server, tmp_path, aoi):
    """Export the DEM of ``aoi`` through the download path; its folder."""
    source = EarthEngineSource(SessionConfig(project="fake", url=server.url, auth=False, workers=2), WINDOWS,
                               policy=RetryPolicy(attempts=2), progress=False, sleep=lambda s: None)
    (result,) = export_aois(parse_aois([aoi]), tmp_path, source, CATALOG, source_names=["dem"], progress=False)
    assert result.ok, result.line()
    return tmp_path / aoi.split("=")[0]


def pixels(path):
    """A DEM GeoTIFF's heights and the lon/lat of its pixel centres."""
    with rasterio.open(path) as src:
        dem, transform, crs = src.read(1), src.transform, src.crs
    rows, cols = np.mgrid[0 : dem.shape[0], 0 : dem.shape[1]]
    x, y = transform @ (cols + 0.5, rows + 0.5)
    lon, lat = Transformer.from_crs(crs.to_string(), "EPSG:4326", always_xy=True).transform(x, y)
    return dem, lon, lat


def at(lon, lat, crs="EPSG:32632"):
    """(x, y) in ``crs`` of a point, rounded down to the 10 m lattice: a block's top-left corner."""
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    return x // 10 * 10, y // 10 * 10


def block(image, corner, crs="EPSG:32632", size=(256, 256)):
    """``image`` computed on a 10 m grid of ``crs`` from its top-left ``corner``, the wire fill as NaN:
    (heights, lon, lat)."""
    (x0, y1), (width, height) = corner, size
    grid = {"dimensions": {"width": width, "height": height}, "crsCode": crs,
            "affineTransform": {"scaleX": 10, "shearX": 0, "translateX": x0, "shearY": 0, "scaleY": -10,
                                "translateY": y1}}
    heights = np.load(io.BytesIO(compute_pixels(image, grid)))["dem"]
    heights[heights == FLOAT_FILL] = np.nan
    rows, cols = np.mgrid[0:height, 0:width]
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(
        x0 + (cols + 0.5) * 10, y1 - (rows + 0.5) * 10)
    return heights, lon, lat


def first_projection_graph():
    """The graph rsgee built first: the mosaic resampled from the first tile's projection."""
    collection = ee.ImageCollection("COPERNICUS/DEM/GLO30").select(["DEM"])
    first = ee.Image(collection.first()).select([0])
    return (collection.mosaic().setDefaultProjection(first.projection()).resample("bilinear")
            .rename(["dem"]).unmask(FLOAT_FILL, False).toFloat())


def per_tile_graph():
    """The graph rsgee built next: tiles resampled on their own grids, mosaicked, where none has data 0 m."""
    tiles = ee.ImageCollection("COPERNICUS/DEM/GLO30").map(lambda image: image.select(["DEM"]).resample("bilinear"))
    return tiles.mosaic().unmask(0, False).rename(["dem"]).unmask(FLOAT_FILL, False).toFloat()


def test_across_50_degrees_every_tile_is_interpolated_on_its_own_grid(tmp_path):
    with FakeEarthEngine(glo30=Glo30()) as server:
        dem, lon, lat = pixels(export_dem(server, tmp_path, ACROSS_50) / "dem.tif")
        want = Glo30.plane(lon, lat)
        # away from the 50° edge (where a tile has no neighbour rows of its own) the plane is exact
        inner = np.abs(lat - 50.0) > 2.0 * ARCSEC
        assert (lat > 50.0).any() and (lat < 50.0).any()
        np.testing.assert_allclose(dem[inner], want[inner], atol=0.02)
        assert np.abs(dem - want).max() < 0.6  # the edge rows: at most half a 1″ row of slope
        # the graph rsgee built first: north of 50° nearest-sampled onto the southern tile's 1″ columns
        old, olon, olat = block(first_projection_graph(), at(10.60, 50.01))
        north = olat > 50.0 + 2.0 * ARCSEC
        assert np.abs(old[north] - Glo30.plane(olon, olat)[north]).max() > 0.3
    ee.Reset()


def test_open_ocean_is_zero_and_the_coastal_tile_keeps_its_sea(tmp_path):
    with FakeEarthEngine(glo30=SEA) as server:
        dem, lon, lat = pixels(export_dem(server, tmp_path, COAST) / "dem.tif")
        assert not np.isnan(dem).any()
        offshore = lon >= 11.0
        assert offshore.any() and (dem[offshore] == 0).all()
        sea = (lon >= 10.99 + 2.0 * ARCSEC) & ~offshore
        assert sea.any() and (dem[sea] == 0).all()
        land = lon < 10.99 - 2.0 * ARCSEC
        np.testing.assert_allclose(dem[land], Glo30.plane(lon, lat)[land], atol=0.02)
        old, olon, _ = block(first_projection_graph(), at(10.985, 46.62))
        assert np.isnan(old[olon >= 11.0]).all()  # what rsgee wrote first: NaN offshore
    ee.Reset()


def test_no_rim_of_zero_where_tiles_meet_and_the_search_reaches_the_tiles_the_halo_reads(tmp_path):
    with FakeEarthEngine(glo30=SEAMS) as server:
        folder = export_dem(server, tmp_path, CORNER)
        for name in ("dem", "dem_halo"):
            dem, lon, lat = pixels(folder / f"{name}.tif")
            assert np.isfinite(dem).all() and (dem != 0).all(), name
            np.testing.assert_allclose(dem, Glo30.plane(lon, lat), atol=0.02)  # the seam pixels too
        assert (lon.min() < 9.0 < lon.max()) and (lat[0] > -7.0 - 0.5 * ARCSEC).all()  # past the last node of 8°S
        # the graph rsgee built before: each tile's edge comes back masked, and between the tiles 0 m
        old, olon, _ = block(per_tile_graph(), at(8.995, -7.005, "EPSG:32732"), "EPSG:32732")
        rim = np.abs(olon - 9.0) < 0.5 * ARCSEC
        assert rim.any() and (old[rim] == 0).all() and (old[np.abs(olon - 9.0) > ARCSEC] != 0).all()
        # images searched within the grid's bounds only: the halo's top row misses the tiles north of 7°S
        grid = parse_aois([CORNER])[0].grid()
        bounds = ee.Geometry.Rectangle(list(grid.bounds), grid.crs, False)
        narrow = build_recipe(CATALOG["dem"], bounds, WINDOWS["dem"]).image
        x0, _, _, y1 = grid.bounds
        top, tlon, tlat = block(narrow, (x0 - 10, y1 + 10), grid.crs, (grid.width + 2, 1))
        np.testing.assert_allclose(top, Glo30.plane(tlon, tlat) + FALLBACK_OFFSET_M, atol=0.02)  # not GLO30's
    ee.Reset()


def test_land_without_a_glo30_tile_takes_the_fallback_never_zero(tmp_path):
    with FakeEarthEngine(glo30=ARMENIA) as server:
        folder = export_dem(server, tmp_path, "m=10.98,46.60,11.02,46.62")
        for name in ("dem", "dem_halo"):
            dem, lon, lat = pixels(folder / f"{name}.tif")
            assert np.isfinite(dem).all() and (dem != 0).all(), name
            plane = Glo30.plane(lon, lat)
            glo30 = lon < 11.0 - 0.6 * ARCSEC  # within the reach of the 10°E tile's own nodes
            gap = lon > 11.0 - 0.4 * ARCSEC
            assert glo30.any() and gap.any() and (glo30 | gap).mean() > 0.99
            np.testing.assert_allclose(dem[glo30], plane[glo30], atol=0.02)
            np.testing.assert_allclose(dem[gap], plane[gap] + FALLBACK_OFFSET_M, atol=0.02)
        old, olon, _ = block(per_tile_graph(), at(10.99, 46.62))
        assert (old[olon >= 11.0] == 0).all()  # what rsgee wrote before: the land without a tile at 0 m
    ee.Reset()


def test_batch_cuts_dem_tif_from_its_one_dem_task_as_the_download_writes_it(tmp_path):
    aoi = "m=10.98,46.60,11.02,46.62"
    with FakeEarthEngine(glo30=ARMENIA, task_polls=1) as server, mock.patch.dict(os.environ, server.gdal_env()):
        downloaded = export_dem(server, tmp_path / "download", aoi) / "dem.tif"
        bucket = f"bk-{uuid.uuid4().hex[:12]}"  # GDAL caches /vsigs/ reads per path for the process's life
        source = BatchSource(SessionConfig(project="fake", url=server.url, auth=False), WINDOWS,
                             Destination.parse(bucket, None, None))
        (result,) = export_batch(parse_aois([aoi]), tmp_path / "batch", source, CATALOG, source_names=["dem"],
                                 poll_s=0, progress=False, sleep=lambda s: None)
        assert result.ok and result.tasks == 1, result.line()
        (task,) = server.export_requests()
        assert task.body["fileExportOptions"]["cloudStorageDestination"]["filenamePrefix"] == "m/dem_halo"
    ee.Reset()
    assert (tmp_path / "batch" / "m" / "dem.tif").read_bytes() == downloaded.read_bytes()


def test_an_aoi_wholly_without_glo30_tiles_takes_the_fallback_and_its_open_sea_is_zero(tmp_path):
    with FakeEarthEngine(glo30=CASPIAN) as server:
        dem, lon, lat = pixels(export_dem(server, tmp_path, COAST) / "dem.tif")
        sizes = [r for r in server.requests if r.path.endswith("value:compute")]
        assert [r.source for r in sizes] == ["dem"]  # the collection had no image: the fallback alone
        assert all("COPERNICUS/DEM/GLO30" not in str(r.body) for r in server.pixel_requests())
    ee.Reset()
    assert np.isfinite(dem).all()
    land = lon < 10.99 - 2.0 * ARCSEC
    np.testing.assert_allclose(dem[land], Glo30.plane(lon, lat)[land] + FALLBACK_OFFSET_M, atol=0.02)
    assert (dem[land] != 0).all()
    sea = lon >= 10.99 + 2.0 * ARCSEC  # the sea of the coastal cell, and open ocean beyond 11°E
    assert (lon[sea] >= 11.0).any() and (dem[sea] == 0).all()
