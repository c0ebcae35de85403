"""Scene and pixel quality filters — Sentinel-2's cloudy-scene pre-filter, Sentinel-1's instrument,
resolution, polarisation and orbit filters, and its incidence-angle mask — evaluated by the loopback fake:
collection sizes count the scripted scenes that pass the request's filters, and Sentinel-1 pixels carry an
incidence angle whose border-noise edges come back dark unless the request masks them."""

from __future__ import annotations

import datetime as dt

import ee
import numpy as np
import pytest
import rasterio

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.earthengine.download import EarthEngineSource, RetryPolicy, parse_windows
from rsgee.acquire.earthengine.recipes import RecipeOptions, Window, build_recipe, collection_size
from rsgee.acquire.earthengine.session import SessionConfig, initialize
from rsgee.acquire.export import export_aois
from rsgee.catalog import load_catalog, parse_catalog
from rsgee.testing.earthengine import BORDER_NOISE_DB, FakeEarthEngine, fake_pixels, scene_passes

AOI = "v=10.60,46.60,10.63,46.62"  # 2×2 tiles of EPSG:32632
CATALOG = load_catalog()
WINDOW = Window(dt.date(2023, 6, 1), dt.date(2023, 9, 1))


def s1_scene(**changes):
    scene = {"instrumentMode": "IW", "resolution_meters": 10, "orbitProperties_pass": "DESCENDING",
             "transmitterReceiverPolarisation": ["VV", "VH"]}
    return {**scene, **changes}


SCENES = {
    "s2": [{"CLOUDY_PIXEL_PERCENTAGE": p} for p in (0.0, 35.0, 89.9, 90.0, 99.5, 100.0)],
    "s1": [s1_scene(), s1_scene(orbitProperties_pass="ASCENDING"), s1_scene(resolution_meters=40),
           s1_scene(instrumentMode="EW"), s1_scene(transmitterReceiverPolarisation=["VV"]),
           s1_scene(orbitProperties_pass="ASCENDING", resolution_meters=25)],
}


@pytest.fixture()
def fake():
    with FakeEarthEngine(scenes=SCENES) as server:
        initialize(SessionConfig(project="fake", url=server.url, auth=False, workers=2))
        yield server
    ee.Reset()


def size(catalog, name, options=RecipeOptions()):
    region = ee.Geometry.Rectangle([500000, 5000000, 502560, 5002560], "EPSG:32632", False)
    return collection_size(build_recipe(catalog[name], region, WINDOW, options)).getInfo()


def edited(name, **changes):
    data = CATALOG.to_dict()
    data["sources"][name].update(changes)
    return parse_catalog(data, "edited.yaml")


def test_overcast_sentinel2_scenes_are_not_read(fake):
    # < 90 %: the clear, the partly cloudy and the 89.9 % granule stay for Cloud Score+ to mask per pixel.
    assert size(CATALOG, "s2") == 3
    assert size(edited("s2", filters_lt={"CLOUDY_PIXEL_PERCENTAGE": 50}), "s2") == 2
    without = CATALOG.to_dict()
    del without["sources"]["s2"]["filters_lt"]
    assert size(parse_catalog(without), "s2") == 6


@pytest.mark.parametrize("orbit, expected", [("both", 2), ("ASCENDING", 1), ("DESCENDING", 1)])
def test_sentinel1_keeps_10_m_iw_dual_polarisation_scenes_of_the_chosen_pass(fake, orbit, expected):
    assert size(CATALOG, "s1", RecipeOptions(s1_orbit=orbit)) == expected
    # Without the resolution filter the 40 m and 25 m scenes of the pass come back.
    filters = {"instrumentMode": "IW"}
    assert size(edited("s1", filters=filters), "s1", RecipeOptions(s1_orbit=orbit)) == {2: 4, 1: 2}[expected]


def test_no_scene_passing_is_an_empty_collection_error(tmp_path):
    overcast = {"s2": [{"CLOUDY_PIXEL_PERCENTAGE": 97.0}]}
    with FakeEarthEngine(scenes=overcast) as server:
        windows = parse_windows(WINDOW.start, WINDOW.end, [], ["s2"])
        source = EarthEngineSource(SessionConfig(project="fake", url=server.url, auth=False, workers=2), windows,
                                   policy=RetryPolicy(attempts=1), progress=False)
        (result,) = export_aois(parse_aois([AOI]), tmp_path, source, CATALOG, source_names=["s2"], progress=False)
        assert not result.ok and not server.pixel_requests()
        assert "no s2 images in COPERNICUS/S2_SR_HARMONIZED between 2023-06-01 and 2023-09-01" in result.line()
    ee.Reset()


def test_scene_filters_as_earth_engine_judges_them(ee_offline):
    collection = ee.ImageCollection("X").filter(ee.Filter.inList("p", ["a", "b"])).filter(ee.Filter.gt("n", 3))
    expression = ee.serializer.encode(collection.size())
    assert scene_passes(expression, {"p": "a", "n": 4})
    assert not scene_passes(expression, {"p": "c", "n": 4}) and not scene_passes(expression, {"p": "a", "n": 3})
    assert not scene_passes(expression, {"p": "a"})  # a filter on a missing property fails


# --- the incidence-angle mask ---------------------------------------------------------------------


def s1_export(tmp_path, catalog):
    grid = parse_aois([AOI])[0].grid()
    ix0 = int(grid.bounds[0] // 10)

    def angle(ix, iy):  # across the AOI's 512 columns: 29.0° … 49.4°, one scene's range direction
        return 29.0 + 0.04 * (ix - ix0) + 0 * iy

    with FakeEarthEngine(s1_angle=angle) as server:
        windows = parse_windows(WINDOW.start, WINDOW.end, [], ["s1"])
        source = EarthEngineSource(SessionConfig(project="fake", url=server.url, auth=False, workers=2), windows,
                                   policy=RetryPolicy(attempts=1), progress=False)
        (result,) = export_aois(parse_aois([AOI]), tmp_path, source, catalog, source_names=["s1"], progress=False)
    ee.Reset()
    assert result.ok
    with rasterio.open(tmp_path / "v" / "s1.tif") as src:
        pixels = src.read()
    x0, _, _, y1 = grid.bounds
    ix = (x0 // 10 + np.arange(grid.width))[None, :]
    iy = (y1 // 10 - 1 - np.arange(grid.height))[:, None]
    expected = np.stack([np.broadcast_to(fake_pixels(catalog["s1"], b, ix, iy), pixels.shape[1:]) for b in range(2)])
    return pixels, expected, angle(ix[0], 0)


def test_border_noise_is_masked_per_the_incidence_angle(tmp_path):
    pixels, expected, angle = s1_export(tmp_path, CATALOG)
    edge = (angle <= 30.63993) | (angle >= 45.23993)
    assert edge[:41].all() and not edge[41:406].any() and edge[406:].all()  # 41 near-range, 106 far-range columns
    assert np.isnan(pixels[:, :, edge]).all()  # the archive's nodata, never a dark value
    np.testing.assert_array_equal(pixels[:, :, ~edge], expected[:, :, ~edge])


def test_without_the_mask_the_border_noise_darkens_the_edges(tmp_path):
    pixels, expected, angle = s1_export(tmp_path, edited("s1", angle_mask=None))
    edge = (angle <= 30.63993) | (angle >= 45.23993)
    assert not np.isnan(pixels).any()
    np.testing.assert_allclose(pixels[:, :, edge], expected[:, :, edge] - BORDER_NOISE_DB, atol=1e-5)
    np.testing.assert_array_equal(pixels[:, :, ~edge], expected[:, :, ~edge])


def test_the_mask_bounds_come_from_the_catalog(tmp_path):
    narrow = edited("s1", angle_mask={"band": "angle", "min": 35.0, "max": 40.0})
    pixels, _, angle = s1_export(tmp_path, narrow)
    outside = (angle <= 35.0) | (angle >= 40.0)
    assert np.isnan(pixels[:, :, outside]).all() and not np.isnan(pixels[:, :, ~outside]).any()
