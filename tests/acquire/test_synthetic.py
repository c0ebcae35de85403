"""The synthetic scene: values per source, land-cover logic, world coherence, S1 compositing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from rsgee.acquire import synthetic as syn
from rsgee.acquire.synthetic import (
    BARE, BUILT, CLASSES, CROPS, GRASS, S1_MEAN_DB, S2_BANDS, SNOW, TREES, WATER,
    SyntheticSource, power_to_db, s1_acquisitions, synthesize,
)
from rsgee.catalog import load_catalog, parse_catalog
from rsgee.errors import RsgeeError
from rsgee.grid import Grid

SIZE = 512
# Two real places, as lattice-aligned 5.12 km windows of their UTM zones. The synthetic world does not
# know real geography, but seed 0 happens to raise mountains around Piz Bernina (window centred on
# 46.39°N 9.82°E, EPSG:32632) and to leave the Beauce plain low (48.30°N 1.68°E, EPSG:32631).
ALPS = (32632, Affine(10, 0, 219 * 2560, 0, -10, 2008 * 2560))
PLAIN = (32631, Affine(10, 0, 156 * 2560, 0, -10, 2091 * 2560))
B2, B3, B4, B8 = range(4)  # band order of the default s2_bands


@pytest.fixture(scope="module")
def alps():
    return synthesize(*ALPS, SIZE, SIZE, seed=0)


@pytest.fixture(scope="module")
def plain():
    return synthesize(*PLAIN, SIZE, SIZE, seed=0)


def horn(dem: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope and aspect (degrees, gdaldem conventions) of the interior pixels of a DEM."""
    z = dem.astype(np.float64)
    dzdx = ((z[:-2, 2:] + 2 * z[1:-1, 2:] + z[2:, 2:]) - (z[:-2, :-2] + 2 * z[1:-1, :-2] + z[2:, :-2])) / 80
    dzdy = ((z[:-2, :-2] + 2 * z[:-2, 1:-1] + z[:-2, 2:]) - (z[2:, :-2] + 2 * z[2:, 1:-1] + z[2:, 2:])) / 80
    slope = np.degrees(np.arctan(np.hypot(dzdx, dzdy)))
    aspect = np.degrees(np.arctan2(-dzdx, -dzdy)) % 360  # the downhill direction, clockwise from north
    return slope, aspect


def inner(a: np.ndarray) -> np.ndarray:
    return a[..., 1:-1, 1:-1]


def shifted(transform: Affine, cols: int, rows: int) -> Affine:
    return transform @ Affine.translation(cols, rows)


# --- each source as Earth Engine would deliver it ----------------------------------------------------


def test_sources_have_the_catalog_dtypes_bands_and_nodata(alps):
    catalog = load_catalog()
    assert set(alps) == set(syn.SOURCES)
    for name, array in alps.items():
        spec = catalog[name]
        assert array.dtype == spec.numpy_dtype, name
        assert array.shape == (len(spec.bands), SIZE, SIZE), name
    assert np.isfinite(alps["dem"]).all()
    assert alps["lulc"].max() <= 8  # nodata 255 never needed
    assert alps["s2"].min() >= 1 and alps["s2"].max() <= 10000  # no clouds asked, so no nodata 0
    assert np.isfinite(alps["s1"]).all()


def test_elevations_and_slopes_are_plausible(alps, plain):
    slope_alps, _ = horn(alps["dem"][0])
    slope_plain, _ = horn(plain["dem"][0])
    assert 1000 < np.median(alps["dem"]) < 3500 and alps["dem"].max() < 4800
    assert 50 < np.median(plain["dem"]) < 800 and np.ptp(plain["dem"]) < 400
    assert 12 < np.median(slope_alps) < 35 and np.percentile(slope_alps, 95) < 55
    assert np.median(slope_plain) < 5 and (slope_plain < 1).mean() > 0.2  # plains and valley floors


def test_s1_backscatter_is_plausible_db_with_vh_below_vv(alps, plain):
    for scene, vh_share in ((alps, 0.9), (plain, 0.99)):  # VH of steep rock facing away drops below −30
        s1, lc = scene["s1"], scene["lulc"][0]
        assert s1.min() >= syn.DB_FLOOR
        assert ((s1[0] > -30) & (s1[0] < 5)).mean() > 0.99
        assert ((s1[1] > -30) & (s1[1] < 5)).mean() > vh_share
        for c in np.unique(lc):
            vv, vh = s1[0][lc == c].mean(), s1[1][lc == c].mean()
            assert vh < vv - 3, CLASSES[c]


def test_s1_class_means_on_flat_ground_match_the_table(plain):
    slope, _ = horn(plain["dem"][0])
    lc, s1 = inner(plain["lulc"][0]), inner(plain["s1"])
    flat = slope < 3
    for c in np.unique(lc[flat]):
        pixels = flat & (lc == c)
        if pixels.sum() < 500:
            continue
        for band in range(2):
            assert abs(np.median(s1[band][pixels]) - S1_MEAN_DB[c, band]) < 1.5, (CLASSES[c], band)


def test_s2_spectra_are_sane_per_class(alps, plain):
    s2 = np.concatenate([alps["s2"].reshape(4, -1), plain["s2"].reshape(4, -1)], axis=1).astype(float)
    lc = np.concatenate([alps["lulc"].ravel(), plain["lulc"].ravel()])
    mean = {c: s2[:, lc == c].mean(axis=1) for c in np.unique(lc)}
    for c in (TREES, GRASS, CROPS):
        assert mean[c][B8] / mean[c][B4] > 3, CLASSES[c]  # red edge
    assert mean[WATER][B8] < mean[WATER][B4] and mean[WATER][B8] < 500
    assert (mean[SNOW] > 4000).all()
    assert 800 < mean[BUILT][B4] < 2500 and mean[BUILT][B8] / mean[BUILT][B4] < 1.6  # grey
    assert mean[BARE][B4] > mean[TREES][B4] * 3


def test_every_s2_band_is_available_and_bands_are_independent_of_the_selection():
    window = (*ALPS, 64, 48)
    full = synthesize(*window, s2_bands=S2_BANDS, sources=("s2",))["s2"]
    assert full.shape == (12, 48, 64) and full.min() >= 1
    picked = synthesize(*window, s2_bands=("B11", "B2"), sources=("s2",))["s2"]
    np.testing.assert_array_equal(picked, full[[S2_BANDS.index("B11"), S2_BANDS.index("B2")]])


def test_s2_is_brighter_on_slopes_facing_the_sun(alps):
    slope, aspect = horn(alps["dem"][0])
    lc, s2 = inner(alps["lulc"][0]), inner(alps["s2"]).astype(float)
    off_sun = np.abs((aspect - syn.SUN_AZIMUTH_DEG + 180) % 360 - 180)
    for c in (GRASS, BARE):
        steep = (slope > 20) & (lc == c)
        facing, away = steep & (off_sun < 45), steep & (off_sun > 135)
        assert facing.sum() > 1000 and away.sum() > 1000
        for band in (B4, B8):
            assert s2[band][facing].mean() > 1.5 * s2[band][away].mean(), (CLASSES[c], band)


def test_s1_is_brighter_on_slopes_facing_the_radar(alps):
    slope, aspect = horn(alps["dem"][0])
    lc, vv = inner(alps["lulc"][0]), inner(alps["s1"])[0]
    steep = (slope > 20) & (lc == GRASS)
    facing_radar = steep & (np.abs(aspect - 270) < 45)  # the radar looks east from the west
    away = steep & (np.abs(aspect - 90) < 45)
    assert vv[facing_radar].mean() > vv[away].mean() + 3


# --- land cover -----------------------------------------------------------------------------------------


def fractions(lc: np.ndarray) -> np.ndarray:
    return np.bincount(lc.ravel(), minlength=9) / lc.size


def test_land_cover_follows_the_terrain(alps, plain):
    assert plain["dem"][0][plain["lulc"][0] == WATER].mean() < plain["dem"][0][plain["lulc"][0] == TREES].mean()
    # Mountain lakes lie at the bottom of their valleys: well below the mean of the 2 km around them.
    surroundings = ndimage.uniform_filter(alps["dem"][0].astype(np.float64), size=201, mode="nearest")
    assert (alps["dem"][0] - surroundings)[alps["lulc"][0] == WATER].mean() < -20
    for scene in (alps, plain):
        dem, lc = scene["dem"][0], scene["lulc"][0]
        slope, _ = horn(dem)
        assert np.percentile(slope[inner(lc) == WATER], 95) < 3  # water lies flat
        if (lc == SNOW).any():
            assert dem[lc == SNOW].min() > 2300
        inner_lc = inner(lc)
        if (inner_lc == CROPS).any():
            assert slope[inner_lc == CROPS].max() < 8.5
        if (inner_lc == BUILT).any():
            assert slope[inner_lc == BUILT].max() < 6.5
        bare = inner_lc == BARE
        assert ((inner(dem)[bare] > 2300) | (slope[bare] > 38)).all()


def test_a_mountain_aoi_and_a_lowland_aoi_differ(alps, plain):
    mountain, lowland = fractions(alps["lulc"]), fractions(plain["lulc"])
    assert mountain[SNOW] + mountain[BARE] > 0.25 and lowland[SNOW] + lowland[BARE] == 0
    assert lowland[CROPS] + lowland[BUILT] > 0.3 and mountain[CROPS] + mountain[BUILT] < 0.1
    assert lowland[WATER] > 0 and lowland[syn.FLOODED] > 0
    assert np.median(alps["dem"]) > np.median(plain["dem"]) + 1000


def test_all_nine_classes_occur(alps, plain):
    seen = set(np.unique(alps["lulc"])) | set(np.unique(plain["lulc"]))
    assert seen == set(range(9))


# --- clouds ------------------------------------------------------------------------------------------------


def test_cloud_cover_masks_that_fraction_of_s2_in_all_bands_and_leaves_s1_alone(plain):
    cloudy = synthesize(*PLAIN, SIZE, SIZE, seed=0, cloud_cover=0.3, sources=("s2", "s1"))
    zero = cloudy["s2"] == 0
    assert (zero.all(axis=0) == zero.any(axis=0)).all()  # all four bands masked together
    assert 0.2 < zero[0].mean() < 0.4
    clear = ~zero[0]
    np.testing.assert_array_equal(cloudy["s2"][:, clear], plain["s2"][:, clear])
    assert cloudy["s1"].tobytes() == plain["s1"].tobytes()
    assert (plain["s2"] > 0).all()  # cloud_cover=0 masks nothing
    overcast = synthesize(*PLAIN, 32, 32, cloud_cover=1.0, sources=("s2",))["s2"]
    assert (overcast == 0).all()


# --- world coherence and determinism ----------------------------------------------------------------


def test_same_seed_gives_the_same_bytes_and_another_seed_another_scene():
    window = (*ALPS, 96, 64)
    first, again, other = synthesize(*window, seed=3), synthesize(*window, seed=3), synthesize(*window, seed=4)
    for name in syn.SOURCES:
        assert first[name].tobytes() == again[name].tobytes(), name
        assert first[name].tobytes() != other[name].tobytes(), name


def test_the_epsg_is_part_of_the_world():
    a = synthesize(32631, ALPS[1], 32, 32, sources=("dem",))["dem"]
    b = synthesize(32632, ALPS[1], 32, 32, sources=("dem",))["dem"]
    assert not np.array_equal(a, b)


def test_a_window_equals_its_tiles_generated_separately(alps):
    for row in range(2):
        for col in range(2):
            tile = synthesize(ALPS[0], shifted(ALPS[1], col * 256, row * 256), 256, 256, seed=0)
            for name in syn.SOURCES:
                part = alps[name][:, row * 256:(row + 1) * 256, col * 256:(col + 1) * 256]
                assert part.tobytes() == tile[name].tobytes(), (name, row, col)


def test_an_overlapping_shifted_window_agrees_on_the_overlap(alps):
    other = synthesize(ALPS[0], shifted(ALPS[1], 300, 400), 300, 200, seed=0)  # reaches past the edge
    for name in syn.SOURCES:
        assert alps[name][:, 400:, 300:].tobytes() == other[name][:, :112, :212].tobytes(), name


@settings(max_examples=15, deadline=None)
@given(col=st.integers(0, 500), row=st.integers(0, 500), width=st.integers(1, 40), height=st.integers(1, 40))
def test_any_small_window_is_a_slice_of_the_big_one(alps, col, row, width, height):
    width, height = min(width, SIZE - col), min(height, SIZE - row)
    small = synthesize(ALPS[0], shifted(ALPS[1], col, row), width, height, seed=0)
    for name in syn.SOURCES:
        assert small[name].tobytes() == alps[name][:, row:row + height, col:col + width].tobytes(), name


# --- Sentinel-1 compositing -----------------------------------------------------------------------------


def test_s1_is_the_db_of_the_mean_in_linear_power():
    window = (*PLAIN, 96, 96)
    images, expected = s1_acquisitions(*window, n_s1_images=6)
    s1 = synthesize(*window, n_s1_images=6, sources=("s1",))["s1"]
    mean_linear = images.mean(axis=0)
    np.testing.assert_allclose(s1, 10 * np.log10(mean_linear), atol=1e-4)
    # Averaging dB instead would be biased low (speckle is skewed): the composite is not that.
    mean_db = (10 * np.log10(images)).mean(axis=0)
    assert (s1 - mean_db).mean() > 0.2


def test_speckle_has_mean_one_and_its_spread_falls_with_the_number_of_images():
    window = (*PLAIN, 128, 128)
    images, expected = s1_acquisitions(*window, n_s1_images=1)
    ratio = images[0] / expected
    assert abs(ratio.mean() - 1) < 0.01
    assert abs(ratio.var() - 1 / syn.ENL) < 0.02
    spread = {}
    for n in (1, 16):
        s1 = synthesize(*window, n_s1_images=n, sources=("s1",))["s1"]
        spread[n] = (s1 - 10 * np.log10(expected)).std()
    assert spread[1] > 1.5 and spread[16] < spread[1] / 3


def test_power_to_db_is_log10_with_a_floor_and_keeps_nan():
    x = np.concatenate([10.0 ** np.linspace(-4.9, 3, 10001), [1.0, 0.5, 2.0]])
    np.testing.assert_allclose(power_to_db(x), 10 * np.log10(x), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(power_to_db(np.array([0.0, 1e-9, -1.0])), [-50.0, -50.0, -50.0])
    assert np.isnan(power_to_db(np.array([np.nan, 1.0]))[0])


# --- arguments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"s2_bands": ("B2", "B10")}, "B10"),
        ({"s1_bands": ("VV", "HH")}, "HH"),
        ({"cloud_cover": 1.5}, "cloud_cover"),
        ({"cloud_cover": -0.1}, "cloud_cover"),
        ({"n_s1_images": 0}, "n_s1_images"),
        ({"width": 0}, "width"),
        ({"height": -5}, "height"),
        ({"transform": Affine(20, 0, 0, 0, -20, 0)}, "10 m"),
        ({"transform": Affine(10, 0, 5, 0, -10, 0)}, "10 m pixel grid"),
        ({"epsg": 4326}, "UTM"),
        ({"sources": ("dem", "s3")}, "s3"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_arguments_raise_one_line_errors(kwargs, words):
    args = {"epsg": ALPS[0], "transform": ALPS[1], "width": 8, "height": 8, **kwargs}
    with pytest.raises(RsgeeError) as info:
        synthesize(args.pop("epsg"), args.pop("transform"), args.pop("width"), args.pop("height"), **args)
    assert words in str(info.value) and "\n" not in str(info.value)


# --- as the exporter's block source ---------------------------------------------------------------------


def test_synthetic_source_yields_catalog_blocks_equal_to_synthesize():
    data = load_catalog().to_dict()
    data["sources"]["s2"]["bands"].append({"ee": "B11", "name": "B11", "description": "SWIR"})
    data["sources"]["s2"]["dtype"] = "int16"  # a catalog may store reflectance as int16
    catalog = parse_catalog(data)
    source = SyntheticSource(seed=2, cloud_cover=0.2)
    assert source.name == "synthetic" and source.request()["n_s1_images"] == 7  # 92 days, 12-day repeat
    grid = Grid(32632, 221, 2007, 1, 1)
    blocks = list(source.blocks(grid, list(catalog.sources.values())))
    assert len(blocks) == 1
    tile, arrays = blocks[0]
    direct = synthesize(tile.epsg, tile.transform, 256, 256, seed=2, cloud_cover=0.2,
                        s2_bands=("B2", "B3", "B4", "B8", "B11"), n_s1_images=7)
    for name, spec in catalog.sources.items():
        assert arrays[name].dtype == spec.numpy_dtype and arrays[name].shape == (len(spec.bands), 256, 256)
        assert arrays[name].astype(direct[name].dtype).tobytes() == direct[name].tobytes(), name
    assert (direct["s2"] == 0).any()  # cloud-masked pixels keep nodata 0 through the cast


def test_synthetic_source_refuses_what_it_cannot_make():
    with pytest.raises(RsgeeError, match="cloud_cover"):
        SyntheticSource(cloud_cover=2.0)
    data = load_catalog().to_dict()
    data["sources"]["ndvi"] = dict(data["sources"]["dem"], description="a derived index")
    catalog = parse_catalog(data)
    with pytest.raises(RsgeeError, match="ndvi"):
        next(SyntheticSource().blocks(Grid(32632, 221, 2007, 1, 1), list(catalog.sources.values())))


def test_tables_cover_every_class_and_band():
    assert syn.S2_SPECTRA.shape == (len(CLASSES), len(S2_BANDS)) and (syn.S2_SPECTRA > 0).all()
    assert S1_MEAN_DB.shape == (len(CLASSES), 2) and (S1_MEAN_DB[:, 1] < S1_MEAN_DB[:, 0]).all()
    assert math.isclose(syn.SUN_AZIMUTH_DEG, 150.0)
