"""Slope, aspect and hillshade against gdaldem 3.6.2 (`gdaldem ... -compute_edges`).

Oracles, none of which needs the gdaldem binary:
- the real DEMs and gdaldem outputs in ../shared/data/real/gdaldem_reference (skipped where absent);
- two tiny DEMs with NaN/nodata holes whose gdaldem 3.6.2 outputs are written out below;
- analytic planes;
- a plain per-pixel transcription of GDALGeneric3x3Processing (loops, float64) on random small DEMs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rsgee.preprocess import terrain as terrain_module
from rsgee.preprocess.terrain import ASPECT_FLAT, Terrain, hillshade_to_uint8, terrain

GDAL_NODATA = -9999.0


def _real_data_dir() -> Path:
    shared = os.environ.get("RSGEE_SHARED")
    base = Path(shared) if shared else Path(__file__).resolve().parents[3] / "shared"
    return base / "data" / "real"


@pytest.fixture(scope="module")
def real_dir() -> Path:
    path = _real_data_dir()
    if not (path / "gdaldem_reference").is_dir():
        pytest.skip(f"real gdaldem reference data not found at {path}")
    return path


def _read(path: Path):
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(path) as ds:
        return ds.read(1), ds.nodata, ds.transform


def _angle_diff(a, b):
    d = np.abs(a.astype(np.float64) - b.astype(np.float64)) % 360.0
    return np.minimum(d, 360.0 - d)


# --------------------------------------------------------------------------------------------------
# Real DEMs vs gdaldem 3.6.2

REAL = [
    # name, DEM, gdaldem -s (geographic DEMs: one scale for x and y, no cos(lat))
    ("vinschgau", "terra/elev_vinschgau.tif", 1.0),
    ("rome_srtm30", "sarsen_srtm/Rome-30m-DEM.tif", 111120.0),
    ("pysheds_dem", "pysheds/dem.tif", 111120.0),
]


@pytest.mark.parametrize("name,dem_file,scale", REAL, ids=[r[0] for r in REAL])
def test_real_dems_match_gdaldem(real_dir, name, dem_file, scale):
    dem, nodata, transform = _read(real_dir / dem_file)
    t = terrain(dem, transform.a, -transform.e, scale=scale, nodata=nodata)
    ref = real_dir / "gdaldem_reference"
    slope_ref, _, _ = _read(ref / f"{name}_slope.tif")
    aspect_ref, _, _ = _read(ref / f"{name}_aspect.tif")
    hill_ref, _, _ = _read(ref / f"{name}_hillshade.tif")
    edges_ref, _, _ = _read(ref / f"{name}_slope_edges.tif")

    # Interior references were made without -compute_edges: compare where gdaldem wrote values.
    inner = slope_ref != GDAL_NODATA
    assert inner.sum() > 40_000
    assert np.abs(t.slope[inner] - slope_ref[inner]).max() <= 1e-4  # target 0.01°

    # Aspect: gdaldem writes nodata on flat pixels (dx = dy = 0 in its float32 sums). We flag
    # exactly those, and compare every other pixel: no slope threshold is needed, because our
    # sums are gdaldem's float32 sums in gdaldem's order, bit for bit.
    flat_ref = inner & (aspect_ref == GDAL_NODATA)
    np.testing.assert_array_equal(t.aspect[inner] == ASPECT_FLAT, flat_ref[inner])
    sloped = inner & ~flat_ref
    assert _angle_diff(t.aspect[sloped], aspect_ref[sloped]).max() <= 1e-3  # target 0.1°

    lit = hill_ref != 0
    np.testing.assert_array_equal(lit, inner)
    ours = hillshade_to_uint8(t.hillshade)
    np.testing.assert_array_equal(ours[lit], hill_ref[lit])  # target ±1 DN; we match exactly
    assert np.abs(np.round(t.hillshade[lit]) - hill_ref[lit]).max() <= 1

    # -compute_edges: values everywhere except input nodata.
    edge_valid = edges_ref != GDAL_NODATA
    np.testing.assert_array_equal(np.isnan(t.slope), ~edge_valid)
    assert np.abs(t.slope[edge_valid] - edges_ref[edge_valid]).max() <= 1e-4


def test_real_vinschgau_nodata_propagates_like_gdaldem(real_dir):
    dem, nodata, transform = _read(real_dir / "terra/elev_vinschgau.tif")
    missing = dem == np.float32(nodata)
    assert missing.sum() == 445
    t = terrain(dem, transform.a, -transform.e, nodata=nodata)
    for product in (t.slope, t.aspect, t.hillshade):
        np.testing.assert_array_equal(np.isnan(product), missing)


# --------------------------------------------------------------------------------------------------
# gdaldem 3.6.2 outputs of two tiny DEMs (`gdaldem slope|aspect|hillshade -compute_edges`, 10 m)

NAN = np.nan
HOLES_DEM = np.array(
    [
        [10, 12, 15, 19, 24, 30],
        [11, 14, 18, NAN, 27, 33],
        [13, 17, 22, 26, 31, 37],
        [16, 21, 25, 30, 36, 42],
        [20, 24, 29, 35, 41, NAN],
    ],
    np.float32,
)  # written with nodata = NaN
HOLES_SLOPE = np.array(
    [
        [9.0946, 17.7528, 17.7528, 25.3769, 25.6822, 22.9898],
        [18.542, 23.2733, 23.8596, NAN, 28.8358, 34.7847],
        [25.2532, 28.1478, 29.6038, 29.3275, 29.0342, 36.8699],
        [29.6869, 29.6869, 31.1817, 34.7237, 29.6869, 27.4706],
        [23.0255, 29.6869, 34.2186, 37.4254, 25.576, NAN],
    ]
)
HOLES_ASPECT = np.array(
    [
        [321.3402, 308.6598, 308.6598, 288.4349, 297.8973, 315.0],
        [296.5651, 305.5377, 317.2906, NAN, 309.4725, 300.2564],
        [302.0054, 307.4053, 309.6442, 302.2756, 305.8376, 306.8699],
        [307.875, 307.875, 308.2902, 309.144, 307.875, 297.1811],
        [331.9275, 307.875, 306.0274, 308.3675, 319.2364, NAN],
    ]
)
HOLES_HILLSHADE = np.array(
    [
        [207, 226, 226, 232, 237, 236],
        [225, 236, 238, 0, 245, 248],
        [238, 243, 245, 243, 244, 251],
        [245, 245, 247, 250, 245, 239],
        [234, 245, 249, 252, 240, 0],
    ],
    np.uint8,
)
# nodata = 0. Row 2's left extrapolation 2·1 − 2 = 0 equals nodata, so gdaldem treats it as missing.
ZERO_DEM = np.array(
    [[5, 6, 8, 9], [3, 5, 7, 8], [1, 2, 4, 6], [2, 3, 0, 7], [4, 4, 6, 8]], np.float32
)
ZERO_SLOPE = np.array(
    [
        [10.3151, 11.0484, 10.2194, 6.3794],
        [11.18, 14.8826, 13.9347, 11.0484],
        [6.3794, 10.025, 12.3342, 8.2938],
        [7.6676, 8.1113, NAN, 8.0495],
        [9.9262, 6.3794, 11.6486, 5.1507],
    ]
)
ZERO_ASPECT = np.array(
    [
        [195.9454, 230.1944, 236.3099, 206.565],
        [214.6952, 221.1859, 220.9144, 219.8056],
        [243.435, 225.0, 239.0362, 239.0362],
        [338.1986, 322.125, NAN, 315.0],
        [0.0, 333.4349, 284.0363, 326.3099],
    ]
)
ZERO_HILLSHADE = np.array(
    [
        [162, 180, 184, 173],
        [171, 172, 172, 174],
        [186, 178, 186, 185],
        [201, 204, 0, 204],
        [200, 198, 208, 196],
    ],
    np.uint8,
)


@pytest.mark.parametrize(
    "dem,nodata,slope,aspect,hill",
    [
        (HOLES_DEM, None, HOLES_SLOPE, HOLES_ASPECT, HOLES_HILLSHADE),  # NaN is always missing
        (HOLES_DEM, float("nan"), HOLES_SLOPE, HOLES_ASPECT, HOLES_HILLSHADE),
        (ZERO_DEM, 0.0, ZERO_SLOPE, ZERO_ASPECT, ZERO_HILLSHADE),
    ],
    ids=["nan", "nan-nodata", "zero-nodata"],
)
def test_holes_and_edges_match_gdaldem(dem, nodata, slope, aspect, hill):
    t = terrain(dem, 10.0, 10.0, nodata=nodata)
    np.testing.assert_allclose(t.slope, slope, atol=1e-4, equal_nan=True)
    np.testing.assert_array_equal(np.isnan(t.aspect), np.isnan(aspect))
    ok = ~np.isnan(aspect)
    assert _angle_diff(t.aspect[ok], aspect[ok]).max() <= 1e-3
    np.testing.assert_array_equal(hillshade_to_uint8(t.hillshade), hill)


def test_extrapolated_value_equal_to_nodata_counts_as_missing():
    # Pixel (2, 0): left column (1, 0, 1) with the extrapolated 0 taken as a height gives sums
    # E = 2 − 12, N = 8 − 12 → 7.6676°; gdaldem replaces the 0 by the centre (1): E = 4 − 12,
    # → 6.3794°.
    def horn_slope(e, n):
        return math.degrees(math.atan(math.hypot(e, n) / 80))

    as_height = terrain(ZERO_DEM, 10.0, 10.0, nodata=-1.0)  # same DEM, no missing cells
    assert as_height.slope[2, 0] == pytest.approx(horn_slope(10, 4), abs=1e-4)
    with_rule = terrain(ZERO_DEM, 10.0, 10.0, nodata=0.0).slope[2, 0]
    assert with_rule == pytest.approx(horn_slope(8, 4), abs=1e-4)
    assert with_rule == pytest.approx(6.3794, abs=1e-4)  # gdaldem 3.6.2


# --------------------------------------------------------------------------------------------------
# Analytic planes z = a·x + b·y (x east, y north), 10 m pixels: integer heights, exact sums


def _plane(a: float, b: float, rows: int = 7, cols: int = 9, res: float = 10.0) -> np.ndarray:
    r, c = np.mgrid[0:rows, 0:cols]
    return (100.0 + a * c * res - b * r * res).astype(np.float32)


def _expected_hillshade(slope_deg, aspect_deg, azimuth=315.0, altitude=45.0):
    s, asp = np.radians(slope_deg), np.radians(aspect_deg)
    alt, az = math.radians(altitude), math.radians(azimuth)
    cang = math.sin(alt) * np.cos(s) + math.cos(alt) * np.sin(s) * np.cos(az - asp)
    return 1.0 + 254.0 * np.maximum(cang, 0.0)


PLANES = [  # (a, b) = dz/dx east, dz/dy north; expected aspect = downslope direction
    (0.0, -0.3, 0.0),  # falls to the north
    (-0.3, 0.0, 90.0),  # east
    (0.0, 0.3, 180.0),  # south
    (0.3, 0.0, 270.0),  # west
    (-0.3, -0.4, math.degrees(math.atan2(0.3, 0.4))),  # NE quadrant
    (-0.3, 0.4, 180.0 - math.degrees(math.atan2(0.3, 0.4))),  # SE
    (0.3, 0.4, 180.0 + math.degrees(math.atan2(0.3, 0.4))),  # SW
    (0.3, -0.4, 360.0 - math.degrees(math.atan2(0.3, 0.4))),  # NW
]


@pytest.mark.parametrize("a,b,aspect", PLANES)
def test_plane_slope_aspect_hillshade_everywhere(a, b, aspect):
    t = terrain(_plane(a, b), 10.0, 10.0)
    slope = np.full(t.slope.shape, math.degrees(math.atan(math.hypot(a, b))))
    asp = np.full(t.slope.shape, aspect)
    # gdaldem's corners repeat the edge column instead of extrapolating it (jmin = j in the first
    # and last rows), so their x gradient is half the true one, even on a plane.
    for i, j in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        slope[i, j] = math.degrees(math.atan(math.hypot(a / 2, b)))
        asp[i, j] = math.degrees(math.atan2(-a / 2, -b)) % 360.0
    np.testing.assert_allclose(t.slope, slope, atol=1e-4)  # every border pixel included
    assert _angle_diff(t.aspect, asp).max() <= 1e-3
    np.testing.assert_allclose(t.hillshade, _expected_hillshade(slope, asp), atol=1e-3)


def test_plane_edges_are_exact_with_compute_edges():
    t = terrain(_plane(0.2, -0.5, rows=6, cols=5), 10.0, 10.0)
    true_slope = math.degrees(math.atan(math.hypot(0.2, 0.5)))
    border = np.zeros(t.slope.shape, bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    for i, j in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        border[i, j] = False
    np.testing.assert_allclose(t.slope[border], true_slope, atol=1e-4)
    assert not np.isnan(t.slope).any()


def test_flat_dem():
    t = terrain(np.full((5, 6), 812.37, np.float32), 10.0, 10.0)
    np.testing.assert_array_equal(t.slope, 0.0)
    np.testing.assert_array_equal(t.aspect, ASPECT_FLAT)
    expected = 1.0 + 254.0 * math.sin(math.radians(45.0))  # 180.605
    np.testing.assert_allclose(t.hillshade, expected, rtol=1e-6)
    np.testing.assert_array_equal(hillshade_to_uint8(t.hillshade), 181)
    np.testing.assert_array_equal(np.round(t.hillshade), 181)


def test_hillshade_light_parameters_and_shadow():
    # 45° slope facing south, lit from the north at 30°: in shadow, gdaldem's minimum 1.
    t = terrain(_plane(0.0, 1.0), 10.0, 10.0, azimuth=0.0, altitude=30.0)
    np.testing.assert_array_equal(t.hillshade[1:-1, 1:-1], 1.0)
    # The same slope lit from the south at 30°: cos(0) → sin(alt + slope) = sin 75°.
    t = terrain(_plane(0.0, 1.0), 10.0, 10.0, azimuth=180.0, altitude=30.0)
    expected = 1 + 254 * math.sin(math.radians(75))
    np.testing.assert_allclose(t.hillshade[1:-1, 1:-1], expected, atol=1e-3)


def test_geographic_scale_factor():
    dem = _plane(0.3, -0.4).astype(np.float32) + np.arange(9, dtype=np.float32) ** 2
    deg = terrain(dem, 1 / 1200, 1 / 1200, scale=111120.0)  # 3" DEM, heights in metres
    metres = terrain(dem, 111120.0 / 1200, 111120.0 / 1200)  # 92.6 m pixels
    np.testing.assert_allclose(deg.slope, metres.slope, atol=1e-5)
    np.testing.assert_allclose(deg.hillshade, metres.hillshade, atol=1e-3)
    np.testing.assert_array_equal(deg.aspect, metres.aspect)
    no_scale = terrain(dem, 1 / 1200, 1 / 1200)  # metres over degrees: a wall
    assert no_scale.slope[1:-1, 1:-1].min() > 89.0
    np.testing.assert_array_equal(no_scale.aspect, deg.aspect)


def test_z_factor_scales_heights_not_aspect():
    dem = _plane(0.3, -0.4) + np.arange(9, dtype=np.float32)[None, :] ** 2 / 10
    t2 = terrain(dem, 10.0, 10.0, z_factor=2.0)
    doubled = terrain(dem * 2, 10.0, 10.0)
    np.testing.assert_allclose(t2.slope, doubled.slope, atol=1e-4)
    np.testing.assert_allclose(t2.hillshade, doubled.hillshade, atol=1e-3)
    np.testing.assert_array_equal(t2.aspect, terrain(dem, 10.0, 10.0).aspect)


def test_aspect_ignores_pixel_size_like_gdaldem():
    # gdaldem's aspect uses the raw 3×3 sums: with 10 m × 20 m pixels a plane falling 1 m per
    # pixel both east and north gets 45°, not atan2(1/10, 1/20).
    r, c = np.mgrid[0:7, 0:9]
    dem = (100.0 - c + r).astype(np.float32)
    t = terrain(dem, 10.0, 20.0)
    np.testing.assert_allclose(t.aspect[1:-1, 1:-1], 45.0, atol=1e-4)
    expected_slope = math.degrees(math.atan(math.hypot(1 / 10, 1 / 20)))
    np.testing.assert_allclose(t.slope[1:-1, 1:-1], expected_slope, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# A plain per-pixel transcription of gdaldem (GDALGeneric3x3Processing + Horn), float64


def _gdaldem_reference(dem, xres, yres, nodata=None, scale=1.0):
    z = dem.astype(np.float64)
    rows, cols = z.shape
    missing = np.isnan(z) if nodata is None else (np.isnan(z) | (z == nodata))
    sin_alt, cos_alt = math.sin(math.radians(45)), math.cos(math.radians(45))
    sin_az, cos_az = math.sin(math.radians(315)), math.cos(math.radians(315))

    def cell(r, c):
        return None if missing[r, c] else z[r, c]

    def interpol(a, b):  # 2a − b; missing if a or b is, or if it equals nodata
        if a is None or b is None:
            return None
        v = 2 * a - b
        return None if (nodata is not None and v == nodata) else v

    def window(i, j):
        if i in (0, rows - 1):  # first/last row: outer row extrapolated, edge columns repeated
            cs = [max(j - 1, 0), j, min(j + 1, cols - 1)]
            inner, next_ = (0, 1) if i == 0 else (rows - 1, rows - 2)
            outer = [interpol(cell(inner, c), cell(next_, c)) for c in cs]
            near = [cell(inner, c) for c in cs]
            far = [cell(next_, c) for c in cs]
            return [outer, near, far] if i == 0 else [far, near, outer]
        win = []
        for r in (i - 1, i, i + 1):  # other rows: edge columns extrapolated
            left = interpol(cell(r, 0), cell(r, 1)) if j == 0 else cell(r, j - 1)
            right = interpol(cell(r, j), cell(r, j - 1)) if j == cols - 1 else cell(r, j + 1)
            win.append([left, cell(r, j), right])
        return win

    slope = np.full(z.shape, np.nan)
    aspect = np.full(z.shape, np.nan)
    hill = np.full(z.shape, np.nan)
    for i in range(rows):
        for j in range(cols):
            win = window(i, j)
            centre = win[1][1]
            if centre is None:
                continue
            w = [centre if v is None else v for row in win for v in row]
            dx = (w[2] + 2 * w[5] + w[8]) - (w[0] + 2 * w[3] + w[6])  # right − left
            dy = (w[6] + 2 * w[7] + w[8]) - (w[0] + 2 * w[1] + w[2])  # bottom − top
            gx, gy = dx / (xres * scale), dy / (yres * scale)
            slope[i, j] = math.degrees(math.atan(math.hypot(gx, gy) / 8))
            if dx == 0 and dy == 0:
                aspect[i, j] = ASPECT_FLAT
            else:
                a = math.degrees(math.atan2(dy, -dx))
                aspect[i, j] = (450.0 - a if a > 90.0 else 90.0 - a) % 360.0
            x, y = -gx / 8, -gy / 8  # GDALHillshadeAlg: north-up, so nsres is negative
            cang = (sin_alt - (y * cos_az - x * sin_az) * cos_alt) / math.sqrt(1 + x * x + y * y)
            hill[i, j] = 1.0 if cang <= 0 else 1.0 + 254.0 * cang
    return slope, aspect, hill


@pytest.mark.parametrize("corner", [(0, 0), (0, -1), (-1, 0), (-1, -1)])
def test_corner_extrapolation_equal_to_nodata(corner):
    # 2·3 − 6 = 0: the extrapolated cell outside each corner equals the nodata value 0.
    dem = np.array([[3, 4, 5, 3], [6, 2, 1, 6], [6, 7, 2, 6], [3, 5, 4, 3]], np.float32)
    dem = np.ascontiguousarray(dem[:: -1 if corner[0] else 1, :: -1 if corner[1] else 1])
    t = terrain(dem, 10.0, 10.0, nodata=0.0)
    slope, aspect, hill = _gdaldem_reference(dem, 10.0, 10.0, nodata=0.0)
    np.testing.assert_allclose(t.slope, slope, atol=1e-4)
    np.testing.assert_allclose(t.hillshade, hill, atol=1e-3)
    assert _angle_diff(t.aspect, aspect).max() <= 1e-3
    # gdaldem 3.6.2 on the first orientation: 3.6470° at the corner (10.3151° if 0 were a height).
    if corner == (0, 0):
        assert t.slope[0, 0] == pytest.approx(3.6470, abs=1e-4)


def test_masked_array_cells_are_missing():
    dem = np.ma.masked_equal(HOLES_DEM.copy(), 27.0)
    t = terrain(dem, 10.0, 10.0)
    expected = terrain(np.where(HOLES_DEM == 27.0, np.nan, HOLES_DEM), 10.0, 10.0)
    np.testing.assert_array_equal(t.slope, expected.slope)
    assert np.isnan(t.slope[1, 4])


@st.composite
def _dems(draw):
    rows = draw(st.integers(2, 9))
    cols = draw(st.integers(2, 9))
    heights = draw(st.lists(st.integers(-40, 40), min_size=rows * cols, max_size=rows * cols))
    dem = np.array(heights, np.float32).reshape(rows, cols)  # integers: float32 sums are exact
    holes = draw(st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols))
    every_third = np.arange(rows * cols).reshape(rows, cols) % 3 == 0
    dem[np.array(holes).reshape(rows, cols) & every_third] = np.nan
    nodata = draw(st.sampled_from([None, 0.0, 7.0]))
    xres = draw(st.sampled_from([10.0, 30.0]))
    yres = draw(st.sampled_from([10.0, 20.0]))
    return dem, nodata, xres, yres


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_dems())
def test_matches_plain_gdaldem_transcription(case):
    dem, nodata, xres, yres = case
    t = terrain(dem, xres, yres, nodata=nodata)
    slope, aspect, hill = _gdaldem_reference(dem, xres, yres, nodata)
    np.testing.assert_array_equal(np.isnan(t.slope), np.isnan(slope))
    np.testing.assert_allclose(t.slope, slope, atol=1e-4, equal_nan=True)
    np.testing.assert_array_equal(t.aspect == ASPECT_FLAT, aspect == ASPECT_FLAT)
    sloped = ~np.isnan(aspect) & (aspect != ASPECT_FLAT)
    if sloped.any():
        assert _angle_diff(t.aspect[sloped], aspect[sloped]).max() <= 1e-3
    np.testing.assert_allclose(t.hillshade, hill, atol=1e-3, equal_nan=True)


# --------------------------------------------------------------------------------------------------
# Shapes, dtypes, strips, threads, arguments


def _rough_dem(rows, cols, seed=0):
    rng = np.random.default_rng(seed)
    dem = np.cumsum(np.cumsum(rng.normal(0, 1, (rows, cols)), 0), 1).astype(np.float32) + 800.5
    dem[rng.random((rows, cols)) < 0.002] = np.nan
    dem[50:60, 0:20] = np.nan
    return dem


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_output_dtypes_and_shapes(dtype):
    dem = np.arange(35, dtype=np.float64).reshape(5, 7) ** 1.5
    t = terrain(dem.astype(dtype), 10.0, 10.0)
    assert isinstance(t, Terrain)
    for product in (t.slope, t.aspect, t.hillshade):
        assert product.dtype == np.float32
        assert product.shape == (5, 7)
        assert product.flags.c_contiguous
        assert not np.isnan(product).any()


@pytest.mark.parametrize("shape", [(1, 5), (5, 1), (1, 1), (0, 4)])
def test_rasters_thinner_than_two_pixels_are_all_nan(shape):
    t = terrain(np.ones(shape, np.float32), 10.0, 10.0)
    for product in (t.slope, t.aspect, t.hillshade):
        assert product.shape == shape
        assert np.isnan(product).all()


def test_strips_and_threads_do_not_change_the_result(monkeypatch):
    dem = _rough_dem(700, 420)  # over the threading threshold
    one = terrain(dem, 10.0, 10.0, threads=1)
    two = terrain(dem, 10.0, 10.0, threads=2)
    monkeypatch.setattr(terrain_module, "_STRIP_PIXELS", 3 * 422)  # 3-row strips
    small = terrain(dem, 10.0, 10.0, threads=3)
    for name in ("slope", "aspect", "hillshade"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name))
        np.testing.assert_array_equal(getattr(one, name), getattr(small, name))
    np.testing.assert_array_equal(np.isnan(one.slope), np.isnan(dem))


def test_hillshade_to_uint8_rounds_half_up_like_gdal():
    h = np.array([1.0, 180.49, 180.5, 254.6, np.nan], np.float32)
    np.testing.assert_array_equal(hillshade_to_uint8(h), [1, 180, 181, 255, 0])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dem=np.zeros((3, 3, 1))),
        dict(xres=0.0),
        dict(yres=-10.0),
        dict(scale=float("nan")),
        dict(z_factor=float("inf")),
        dict(dem=np.zeros((3, 3), complex)),
    ],
)
def test_rejects_bad_arguments(kwargs):
    args = dict(dem=np.zeros((3, 3)), xres=10.0, yres=10.0) | kwargs
    with pytest.raises(ValueError):
        terrain(args.pop("dem"), args.pop("xres"), args.pop("yres"), **args)
