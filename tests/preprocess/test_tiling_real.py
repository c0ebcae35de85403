"""rsgee tile on real rasters: a 256×256 window of the Sen1Floods11 S1/S2 chip and the Rome SRTM DEM.

The real arrays are placed, unchanged, on one lattice tile and written as an export folder; the
archive must hand them back value for value, and its terrain must match gdaldem's outputs for the
same DEM (../shared/data/real/gdaldem_reference, made with `-s 111120`). Placing the 30.87 m DEM on
the 10 m grid would change its slopes, so its heights are scaled by 10/30.87: every gradient, and
so slope, aspect and hillshade, is then exactly that of the real DEM at its own resolution.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from rsgee.acquire.aoi import parse_aois
from rsgee.catalog import load_catalog
from rsgee.exports import write_manifest
from rsgee.geotiff import RasterGrid, write_array
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.check import check_archive
from rsgee.preprocess.split import SplitConfig
from rsgee.preprocess.terrain import hillshade_to_uint8
from rsgee.preprocess.tiling import TileFilters, build_archive

ROME_PIXEL_M = 111120 * (1 / 3600)  # gdaldem -s 111120 on a 1″ DEM: 30.87 m in x and in y
HEIGHT_SCALE = 10.0 / ROME_PIXEL_M
S2_BANDS = (2, 3, 4, 8)  # B2, B3, B4, B8 among the chip's 13 L1C bands (1-based)
CATALOG = load_catalog()


def write_export(folder, real, *, halo: bool) -> dict:
    """A one-tile export of real arrays on the lattice tile over Rome; returns the arrays used."""
    aoi = parse_aois(["rome=12.45,41.88,12.46,41.89"])[0]
    grid = aoi.grid()
    assert (grid.ncols, grid.nrows) == (1, 1)
    raster = RasterGrid(grid.crs, grid.transform, 256, 256)
    floods = real / "sen1floods11"
    with rasterio.open(floods / "Spain_7370579_S1Hand.tif") as src:
        s1 = src.read(window=((0, 256), (0, 256)))
    with rasterio.open(floods / "Spain_7370579_S2Hand.tif") as src:
        s2 = src.read(S2_BANDS, window=((0, 256), (0, 256))).astype(np.uint16)
    with rasterio.open(floods / "Spain_7370579_LabelHand.tif") as src:
        label = src.read(1, window=((0, 256), (0, 256)))
    # the hand label as land cover: water (1) → Dynamic World water (0), dry (0) → grass (2), -1 → 255
    lulc = np.select([label == 1, label == 0], [0, 2], 255).astype(np.uint8)[None]
    with rasterio.open(real / "sarsen_srtm" / "Rome-30m-DEM.tif") as src:
        dem_258 = src.read(1, window=((0, 258), (0, 258))).astype(np.float32) * np.float32(HEIGHT_SCALE)
    dem = dem_258[1:257, 1:257] if halo else dem_258[:256, :256]
    files = {}
    for name, array in (("s1", s1), ("s2", s2), ("lulc", lulc), ("dem", dem[None])):
        write_array(folder / f"{name}.tif", array, CATALOG[name], raster)
        files[name] = {"path": f"{name}.tif"}
    if halo:
        from affine import Affine

        grown = RasterGrid(grid.crs, grid.transform @ Affine.translation(-1, -1), 258, 258)
        write_array(folder / "dem_halo.tif", dem_258[None], CATALOG["dem"], grown)
        files["dem_halo"] = {"path": "dem_halo.tif", "halo_px": 1}
    manifest = {"aoi": {"name": "rome", "geometry": aoi.to_geojson()["geometry"]}, "source": "local",
                "grid": grid.to_dict(), "files": files}
    write_manifest(folder, manifest)
    return {"s1": s1, "s2": s2, "lulc": lulc, "dem": dem, "tile": next(grid.tiles()).id}


def reference(real, product: str) -> np.ndarray:
    with rasterio.open(real / "gdaldem_reference" / f"rome_srtm30_{product}.tif") as src:
        return src.read(1)


@pytest.fixture(scope="module", params=[True, False], ids=["with-dem-halo", "compute-edges"])
def built(request, real_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    arrays = write_export(root / "exports" / "rome", real_data, halo=request.param)
    summary = build_archive([root / "exports"], root / "archive", CATALOG, split=SplitConfig(by="aoi"),
                            filters=TileFilters(max_nodata=0.5, max_s2_nodata=0.5), progress=False)
    return request.param, arrays, Archive(root / "archive"), summary




def test_real_sar_optical_and_labels_come_back_value_for_value(built):
    _, arrays, archive, summary = built
    assert summary.written == 1 and not summary.failed
    tile = arrays["tile"]
    with rasterio.open(archive.tile_path("s1", tile)) as src:
        s1 = src.read()
    np.testing.assert_array_equal(s1, arrays["s1"])  # real dB, recognised as dB: not converted again
    assert -40 < np.nanmedian(s1) < 0
    np.testing.assert_array_equal(rasterio.open(archive.tile_path("s2", tile)).read(), arrays["s2"])
    np.testing.assert_array_equal(rasterio.open(archive.tile_path("lulc", tile)).read(), arrays["lulc"])
    (props,) = archive.tiles()
    assert props["class_hist"][0] == int((arrays["lulc"] == 0).sum()) > 0
    assert props["class_hist"][2] == int((arrays["lulc"] == 2).sum()) > 0
    assert props["valid_s1"] == pytest.approx(np.isfinite(arrays["s1"]).all(axis=0).mean(), abs=1e-6)
    assert props["valid_lulc"] == pytest.approx((arrays["lulc"] != 255).mean(), abs=1e-6)
    assert check_archive(archive.root, progress=False).ok


def test_real_terrain_matches_gdaldem(built, real_data):
    halo, arrays, archive, _ = built
    with rasterio.open(archive.tile_path("terrain", arrays["tile"])) as src:
        dem, slope, aspect, hill = src.read()
    np.testing.assert_array_equal(dem, arrays["dem"])
    window = (slice(1, 257), slice(1, 257)) if halo else (slice(0, 256), slice(0, 256))
    ref_slope, ref_aspect = reference(real_data, "slope")[window], reference(real_data, "aspect")[window]
    ref_hill = reference(real_data, "hillshade")[window]
    # gdaldem without -compute_edges leaves its own raster border as nodata (-9999 / 0)
    defined = ref_slope != -9999
    if not halo:  # our bottom row and right column are the window's edge, not the DEM's: not comparable
        defined[-1, :] = defined[:, -1] = False
    assert defined.sum() > 60_000
    assert np.abs(slope - ref_slope)[defined].max() <= 0.01
    # aspect is ill-conditioned where the DEM is flat, and the height scaling changes float32 rounding
    # there: compare it where the slope is at least 1°, and check gdaldem's flat pixels are flat here too
    flat = defined & (ref_aspect == -9999)
    assert flat.sum() > 100 and slope[flat].max() <= 0.01
    steep = defined & (ref_slope >= 1.0)
    diff = np.abs(aspect - ref_aspect)[steep]
    assert steep.sum() > 10_000 and np.minimum(diff, 360 - diff).max() <= 0.1
    assert np.abs(hillshade_to_uint8(hill).astype(int) - ref_hill.astype(int))[defined & (ref_hill > 0)].max() <= 1
    if not halo:  # the DEM's own top row and left column: gdaldem -compute_edges
        edges = reference(real_data, "slope_edges")[:256, :256]
        assert np.abs(slope[0, :-1] - edges[0, :-1]).max() <= 0.01
        assert np.abs(slope[:-1, 0] - edges[:-1, 0]).max() <= 0.01
    else:
        assert np.isfinite(slope).all()


def test_the_export_manifest_round_trips_through_the_index(built):
    _, arrays, archive, _ = built
    (feature,) = archive.read_index().values()
    lon, lat = np.array(feature["geometry"]["coordinates"][0]).T
    assert 12.4 < lon.min() < lon.max() < 12.5 and 41.85 < lat.min() < lat.max() < 41.92
    assert json.loads(archive.meta_path.read_text())["aois"]["rome"]["complete"]
