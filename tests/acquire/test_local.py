"""The local source: user GeoTIFFs in any CRS warped onto the AOI lattice, on real chips.

Geometry is checked independently of the warper: every output pixel centre is mapped back into the
input with :func:`rasterio.warp.transform` and the input's affine, and the value there is compared
with what came out. GDAL warps with its default approximate transformer (error ≤ 0.125 input
pixel, about 0.01 here), so pixels whose centre falls within 0.05 input pixel of a pixel edge are
left out of exact comparisons.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform
from shapely.geometry import Polygon, box

from rsgee.acquire.aoi import AOI
from rsgee.acquire.export import export_aois
from rsgee.acquire.local import LocalSource, parse_inputs
from rsgee.catalog import load_catalog, parse_catalog
from rsgee.errors import RsgeeError
from rsgee.exports import read_manifest
from rsgee.grid import TILE_PX
from rsgee.radiometry import db_to_linear

CATALOG = load_catalog()
S1, S2, LULC, DEM = (CATALOG[n] for n in ("s1", "s2", "lulc", "dem"))
S2_NEAREST = dataclasses.replace(S2, resampling="nearest")
DEM_NEAREST = dataclasses.replace(DEM, resampling="nearest")
EDGE = 0.05  # input pixels: closer than this to a pixel edge, nearest may pick either side

# AOIs inside each real raster (their lattice grids reach beyond the rasters: partial coverage).
FLOODS = AOI("floods", box(-0.775, 38.09, -0.742, 38.12))  # Sen1Floods11 Spain chip → EPSG:32630, 2×3 tiles
SAO_TOME = AOI("saotome", box(6.692, 0.357, 6.727, 0.391))  # WorldCover crop → EPSG:32632, 3×2 tiles
VINSCHGAU = AOI("vinschgau", box(10.60, 46.62, 10.66, 46.66))  # 250 m UTM DEM → EPSG:32632, 2×3 tiles
ROME = AOI("rome", box(12.46, 41.96, 12.54, 42.04))  # SRTM 1" (EPSG:9707) → EPSG:32633, 3×5 tiles


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(real_data):
    return {
        "s1": real_data / "sen1floods11" / "Spain_7370579_S1Hand.tif",
        "s2_l1c": real_data / "sen1floods11" / "Spain_7370579_S2Hand.tif",
        "worldcover": real_data / "esa_worldcover" / "ESA_WorldCover_10m_2021_v200_SaoTome_crop512.tif",
        "vinschgau": real_data / "terra" / "elev_vinschgau.tif",
        "rome": real_data / "sarsen_srtm" / "Rome-30m-DEM.tif",
    }


def write_like(path, src_path, data, **changes):
    """A GeoTIFF with ``src_path``'s georeferencing holding ``data`` (bands, rows, cols)."""
    with rasterio.open(src_path) as src:
        profile = src.profile
    profile.update(count=data.shape[0], dtype=data.dtype.name, height=data.shape[1], width=data.shape[2], **changes)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def s2_rgbn(real, tmp_path_factory):
    """The chip's B2, B3, B4, B8 (L1C bands 2, 3, 4, 8) as the 4-band file the catalog's s2 wants."""
    with rasterio.open(real["s2_l1c"]) as src:
        data = src.read([2, 3, 4, 8])
    return write_like(tmp_path_factory.mktemp("s2") / "s2_rgbn.tif", real["s2_l1c"], data)


def blocks(source, aoi, *specs):
    return list(source.blocks(aoi.grid(), specs))


def source_positions(tile, path):
    """Fractional (col, row) in the raster at ``path`` of every pixel centre of ``tile``."""
    rows, cols = np.mgrid[0:TILE_PX, 0:TILE_PX] + 0.5
    xs, ys = tile.transform @ (cols.ravel(), rows.ravel())
    with rasterio.open(path) as src:
        sx, sy = transform(tile.crs, src.crs, xs.tolist(), ys.tolist())
        c, r = ~src.transform @ (np.asarray(sx), np.asarray(sy))
        shape = (src.height, src.width)
    return c.reshape(TILE_PX, TILE_PX), r.reshape(TILE_PX, TILE_PX), shape


def nearest_lookup(tile, path, data):
    """For nearest resampling: the input value under each pixel centre, and where that is unambiguous."""
    c, r, (h, w) = source_positions(tile, path)
    ci, ri = np.floor(c).astype(int), np.floor(r).astype(int)
    inside = (ci >= 0) & (ci < w) & (ri >= 0) & (ri < h)
    clear = inside & (np.abs(c - np.rint(c)) > EDGE) & (np.abs(r - np.rint(r)) > EDGE)
    values = data[:, np.clip(ri, 0, h - 1), np.clip(ci, 0, w - 1)]
    return values, clear, inside


def bilinear_bounds(tile, path, data):
    """For bilinear resampling: min and max of the input pixels under the kernel at each pixel centre.

    That is the 2×2 neighbourhood where input and output pixels are alike; where the input is finer
    (Sen1Floods11: 7.9 m in x against 10 m), GDAL widens the kernel to the output pixel, 3 input
    pixels in that direction.
    """
    c, r, (h, w) = source_positions(tile, path)
    # the kernel radius in input pixels: one pixel, or one output pixel where that is larger
    rc = max(1.0, float(np.hypot(np.diff(c, axis=1).mean(), np.diff(c, axis=0).mean())))
    rr = max(1.0, float(np.hypot(np.diff(r, axis=1).mean(), np.diff(r, axis=0).mean())))
    first_c, last_c = np.ceil(c - 0.5 - rc).astype(int), np.floor(c - 0.5 + rc).astype(int)
    first_r, last_r = np.ceil(r - 0.5 - rr).astype(int), np.floor(r - 0.5 + rr).astype(int)
    ok = (first_c >= 0) & (last_c < w) & (first_r >= 0) & (last_r < h)
    for edge in (c - 0.5 - rc, c - 0.5 + rc, r - 0.5 - rr, r - 0.5 + rr):
        ok &= np.abs(edge - np.rint(edge)) > EDGE
    lo = np.full((data.shape[0], *c.shape), np.inf)
    hi = np.full((data.shape[0], *c.shape), -np.inf)
    for di in range(int(np.max(last_r - first_r)) + 1):
        for dj in range(int(np.max(last_c - first_c)) + 1):
            ri, ci = first_r + di, first_c + dj
            use = (ri <= last_r) & (ci <= last_c)
            values = data[:, np.clip(ri, 0, h - 1), np.clip(ci, 0, w - 1)]
            lo = np.where(use, np.minimum(lo, values), lo)
            hi = np.where(use, np.maximum(hi, values), hi)
    return lo, hi, ok


def read(path, indexes=None):
    with rasterio.open(path) as src:
        return src.read(indexes).astype(np.float64)


def covered_fraction(aoi, path):
    grid = aoi.grid()
    with rasterio.open(path) as src:
        left, bottom, right, top = src.bounds
        outline = box(left, bottom, right, top).exterior.segmentize(1e-4)
        xs, ys = transform(src.crs, grid.crs, *map(list, zip(*outline.coords)))
    return Polygon(zip(xs, ys)).intersection(box(*grid.bounds)).area / box(*grid.bounds).area


# --------------------------------------------------------------------------------------------------
# --input parsing and the request
# --------------------------------------------------------------------------------------------------


def test_parse_inputs_expands_globs_in_order_and_keeps_each_file_once(tmp_path, monkeypatch):
    for name in ("b.tif", "a2.tif", "a1.tif"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    parsed = parse_inputs(["s2=a*.tif", "dem=b.tif", "s2=b.tif", f"s2={tmp_path / 'a1.tif'}"])
    assert parsed == {
        "s2": [tmp_path / "a1.tif", tmp_path / "a2.tif", tmp_path / "b.tif"],
        "dem": [tmp_path / "b.tif"],
    }
    assert all(p.is_absolute() for paths in parsed.values() for p in paths)


@pytest.mark.parametrize(
    "value, message",
    [
        ("scene.tif", "expected SOURCE=PATH"),
        ("=scene.tif", "expected SOURCE=PATH"),
        ("s2=", "expected SOURCE=PATH"),
        ("s 2=b.tif", "not a catalog source name"),
        ("s2=nothing*.tif", "matches no file"),
        ("s2=missing.tif", "no such file"),
        ("s2=.", "is a folder"),
    ],
)
def test_parse_inputs_errors_are_one_line(tmp_path, monkeypatch, value, message):
    (tmp_path / "b.tif").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RsgeeError, match=message) as info:
        parse_inputs([value])
    assert "\n" not in str(info.value)


def test_request_names_absolute_inputs_and_changes_when_an_input_changes(real, s2_rgbn):
    source = LocalSource({"s2": [s2_rgbn], "s1": [real["s1"]]})
    request = source.request()
    assert request["source"] == "local"
    entry = request["inputs"]["s2"][0]
    assert entry["path"] == str(s2_rgbn) and os.path.isabs(entry["path"])
    assert entry["bytes"] == s2_rgbn.stat().st_size and entry["mtime_ns"] == s2_rgbn.stat().st_mtime_ns
    assert LocalSource({"s1": [real["s1"]], "s2": [s2_rgbn]}).request() == request  # deterministic
    stat = s2_rgbn.stat()
    os.utime(s2_rgbn, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        assert source.request() != request
    finally:
        os.utime(s2_rgbn, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(RsgeeError, match="cannot read .*missing.tif"):
        LocalSource({"s2": [s2_rgbn.parent / "missing.tif"]}).request()


# --------------------------------------------------------------------------------------------------
# Sen1Floods11: S1 + S2 (EPSG:4326, ~10 m) onto the UTM lattice
# --------------------------------------------------------------------------------------------------


def test_floods_chip_lands_on_the_utm_30n_lattice_with_the_catalog_dtypes(real, s2_rgbn):
    grid = FLOODS.grid()
    assert grid.epsg == 32630  # lon -0.76: UTM zone 30 (6°W…0°), northern hemisphere
    out = blocks(LocalSource({"s1": [real["s1"]], "s2": [s2_rgbn]}), FLOODS, S1, S2)
    assert [tile for tile, _ in out] == list(grid.tiles())
    for tile, arrays in out:
        assert tile.crs == "EPSG:32630"
        assert arrays["s1"].shape == (2, 256, 256) and arrays["s1"].dtype == np.float32
        assert arrays["s2"].shape == (4, 256, 256) and arrays["s2"].dtype == np.uint16


def test_nearest_keeps_the_value_of_the_input_pixel_under_each_pixel_centre(real, s2_rgbn):
    data = read(s2_rgbn)
    checked = 0
    for tile, arrays in blocks(LocalSource({"s2": [s2_rgbn]}), FLOODS, S2_NEAREST):
        expected, clear, inside = nearest_lookup(tile, s2_rgbn, data)
        got = arrays["s2"].astype(np.float64)
        np.testing.assert_array_equal(got[:, clear], expected[:, clear])
        checked += clear.sum()
        # a pixel whose centre is more than a pixel outside the chip is nodata (0) in every band
        c, r, (h, w) = source_positions(tile, s2_rgbn)
        far = (c < -1) | (c > w + 1) | (r < -1) | (r > h + 1)
        assert (arrays["s2"][:, far] == 0).all()
    assert checked > 100_000  # most of the 5 km chip


def test_nearest_at_a_known_lon_lat(real, s2_rgbn):
    """The archive pixel containing a given point holds the input pixel containing its centre."""
    lon, lat = -0.7600, 38.1050
    grid = FLOODS.grid()
    (x,), (y,) = transform("EPSG:4326", grid.crs, [lon], [lat])
    col, row = (int(v) for v in ~grid.transform @ (x, y))
    tile = next(t for t in grid.tiles() if grid.window(t).col_off <= col < grid.window(t).col_off + 256
                and grid.window(t).row_off <= row < grid.window(t).row_off + 256)
    i, j = row - grid.window(tile).row_off, col - grid.window(tile).col_off
    (cx,), (cy,) = transform(grid.crs, "EPSG:4326", *([v] for v in tile.transform @ (j + 0.5, i + 0.5)))
    with rasterio.open(s2_rgbn) as src:
        r, c = src.index(cx, cy)
        expected = src.read(window=((r, r + 1), (c, c + 1)))[:, 0, 0]
    arrays = dict(blocks(LocalSource({"s2": [s2_rgbn]}), FLOODS, S2_NEAREST))[tile]
    np.testing.assert_array_equal(arrays["s2"][:, i, j], expected)


def test_bilinear_stays_within_the_input_pixels_under_its_kernel(real, s2_rgbn):
    s2 = read(s2_rgbn)
    s1 = read(real["s1"])
    source = LocalSource({"s1": [real["s1"]], "s2": [s2_rgbn]})
    differs = 0
    for tile, arrays in blocks(source, FLOODS, S1, S2):
        lo, hi, ok = bilinear_bounds(tile, s2_rgbn, s2)
        got = arrays["s2"].astype(np.float64)
        assert (got[:, ok] >= lo[:, ok] - 0.5).all() and (got[:, ok] <= hi[:, ok] + 0.5).all()
        nearest, clear, _ = nearest_lookup(tile, s2_rgbn, s2)
        differs += np.count_nonzero(got[:, ok & clear] != nearest[:, ok & clear])
        lo, hi, ok = bilinear_bounds(tile, real["s1"], s1)
        got = arrays["s1"].astype(np.float64)
        assert np.isfinite(got[:, ok]).all()
        assert (got[:, ok] >= lo[:, ok] - 1e-4).all() and (got[:, ok] <= hi[:, ok] + 1e-4).all()
    assert differs > 100_000  # it interpolates rather than picking


def test_partial_coverage_is_nodata_with_one_warning_giving_the_fraction(real, s2_rgbn, caplog):
    with caplog.at_level(logging.WARNING, logger="rsgee"):
        out = blocks(LocalSource({"s1": [real["s1"]], "s2": [s2_rgbn]}), FLOODS, S1, S2)
    lines = [r.getMessage() for r in caplog.records if "cover" in r.getMessage()]
    assert len(lines) == 2 and all("\n" not in line for line in lines)  # one per source
    expected = covered_fraction(FLOODS, real["s1"])
    for line in lines:
        percent = float(re.search(r"cover ([0-9.]+) %", line).group(1))
        assert percent == pytest.approx(100 * expected, abs=0.2)
        assert 20 < percent < 90
    s1 = np.stack([a["s1"] for _, a in out])
    s2 = np.stack([a["s2"] for _, a in out])
    nodata_s1 = np.isnan(s1).all(axis=1)
    nodata_s2 = (s2 == 0).all(axis=1)
    assert nodata_s1.mean() == pytest.approx(1 - expected, abs=0.01)
    np.testing.assert_array_equal(nodata_s1, nodata_s2)  # one footprint, one nodata mask
    assert not np.isnan(s1[~np.broadcast_to(nodata_s1[:, None], s1.shape)]).any()


def test_the_same_inputs_give_byte_identical_blocks(real, s2_rgbn):
    source = LocalSource({"s1": [real["s1"]], "s2": [s2_rgbn]})
    first, second = blocks(source, FLOODS, S1, S2), blocks(source, FLOODS, S1, S2)
    for (t1, a1), (t2, a2) in zip(first, second, strict=True):
        assert t1 == t2 and all(a1[k].tobytes() == a2[k].tobytes() for k in ("s1", "s2"))


def test_linear_s1_is_converted_to_db_with_a_warning_naming_the_file(real, tmp_path, caplog):
    linear = write_like(tmp_path / "s1_linear.tif", real["s1"], db_to_linear(read(real["s1"])).astype(np.float32))
    with caplog.at_level(logging.WARNING, logger="rsgee"):
        from_db = blocks(LocalSource({"s1": [real["s1"]]}), FLOODS, S1)
        assert "linear power" not in caplog.text
        from_linear = blocks(LocalSource({"s1": [linear]}), FLOODS, S1)
    warnings = [r.getMessage() for r in caplog.records if "linear power" in r.getMessage()]
    assert len(warnings) == 1 and str(linear) in warnings[0] and "\n" not in warnings[0]
    for (_, a), (_, b) in zip(from_db, from_linear, strict=True):
        np.testing.assert_allclose(b["s1"], a["s1"], atol=1e-3)  # dB either way; NaN where NaN
        assert np.nanmax(b["s1"]) < 30 and np.nanmedian(b["s1"]) < -5


def test_float_reflectance_that_looks_like_0_to_1_is_not_rescaled_but_warned_about(s2_rgbn, tmp_path, caplog):
    unit = write_like(tmp_path / "s2_unit.tif", s2_rgbn, (read(s2_rgbn) / 10000).astype(np.float32), nodata=None)
    with caplog.at_level(logging.WARNING, logger="rsgee"):
        out = blocks(LocalSource({"s2": [unit]}), FLOODS, S2)
    assert "0–1 reflectance" in caplog.text and str(unit) in caplog.text
    valid = np.concatenate([a["s2"][a["s2"] != 0] for _, a in out])
    assert valid.max() == 1  # rounded as given (and kept off nodata 0), never multiplied by 10000


def test_mosaic_first_input_wins_where_inputs_overlap(s2_rgbn, tmp_path):
    data = read(s2_rgbn).astype(np.int16)
    west = data.copy()
    west[:, :, 300:] = 0  # nodata east of column 300
    west[:, :100, :] = 0  # and a nodata strip along the north edge
    east = data + 1000
    east[:, :, :200] = 0  # nodata west of column 200: the files overlap in columns 200…299
    west_path = write_like(tmp_path / "west.tif", s2_rgbn, west)
    east_path = write_like(tmp_path / "east.tif", s2_rgbn, east)
    for order in ((west_path, east_path), (east_path, west_path)):
        for tile, arrays in blocks(LocalSource({"s2": list(order)}), FLOODS, S2_NEAREST):
            original, clear, _ = nearest_lookup(tile, s2_rgbn, data.astype(np.float64))
            c, r, _ = source_positions(tile, s2_rgbn)
            got = arrays["s2"].astype(np.float64)
            from_west = clear & (c < 300) & (r >= 100) & ((c < 200) | (order[0] == west_path))
            from_east = clear & (c >= 200) & ~from_west
            np.testing.assert_array_equal(got[:, from_west], original[:, from_west])
            np.testing.assert_array_equal(got[:, from_east], original[:, from_east] + 1000)


# --------------------------------------------------------------------------------------------------
# ESA WorldCover: categorical, nearest or mode, never an interpolated class id
# --------------------------------------------------------------------------------------------------


def worldcover_spec(resampling: str):
    """The catalog's lulc, taking WorldCover's own ids (10…100) and nodata (0) as they are."""
    lulc = LULC.to_dict()
    del lulc["classes"]
    lulc.update(nodata=0, resampling=resampling)
    return parse_catalog({"sources": {"lulc": lulc}})["lulc"]


@pytest.mark.parametrize("resampling", ["nearest", "mode"])
def test_worldcover_classes_are_never_interpolated(real, resampling):
    classes = set(np.unique(read(real["worldcover"])).tolist())
    out = blocks(LocalSource({"lulc": [real["worldcover"]]}), SAO_TOME, worldcover_spec(resampling))
    assert SAO_TOME.grid().epsg == 32632
    values = set(np.unique(np.stack([a["lulc"] for _, a in out])).tolist())
    assert values - {0} <= classes and len(values - {0}) >= 5
    if resampling == "nearest":
        data = read(real["worldcover"])
        for tile, arrays in out:
            expected, clear, _ = nearest_lookup(tile, real["worldcover"], data)
            np.testing.assert_array_equal(arrays["lulc"][:, clear], expected[:, clear])


def test_worldcover_with_bilinear_would_invent_classes(real):
    """The check above has teeth: interpolating class ids makes ids that are not in the input."""
    classes = set(np.unique(read(real["worldcover"])).tolist())
    out = blocks(LocalSource({"lulc": [real["worldcover"]]}), SAO_TOME, worldcover_spec("bilinear"))
    assert set(np.unique(np.stack([a["lulc"] for _, a in out])).tolist()) - {0} - classes


def test_classes_outside_the_catalog_are_warned_about(real, caplog):
    with caplog.at_level(logging.WARNING, logger="rsgee"):
        blocks(LocalSource({"lulc": [real["worldcover"]]}), SAO_TOME, LULC)
    assert "are not lulc classes (0–8)" in caplog.text


# --------------------------------------------------------------------------------------------------
# DEMs: bilinear to 10 m
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aoi, key, epsg, value_range", [
    (VINSCHGAU, "vinschgau", 32632, (388, 3863)),  # UTM 32N, 250 m
    (ROME, "rome", 32633, (5, 115)),  # geographic (EPSG:9707), 1 arc-second
])
def test_dems_are_bilinear_smooth_and_within_the_input_range(real, aoi, key, epsg, value_range):
    path = real[key]
    assert aoi.grid().epsg == epsg
    data = read(path)
    with rasterio.open(path) as src:
        data[data == src.nodata] = np.nan
    source = LocalSource({"dem": [path]})
    smooth, steps, differ, compared = [], [], 0, 0
    for (tile, bil), (_, near) in zip(blocks(source, aoi, DEM), blocks(source, aoi, DEM_NEAREST), strict=True):
        b, n = bil["dem"][0].astype(np.float64), near["dem"][0].astype(np.float64)
        valid = np.isfinite(b)
        assert valid.mean() > 0.3
        assert value_range[0] <= np.nanmin(b) and np.nanmax(b) <= value_range[1]
        lo, hi, ok = bilinear_bounds(tile, path, data)
        ok &= np.isfinite(lo[0]) & np.isfinite(hi[0])
        assert (b[ok] >= lo[0][ok] - 1e-3).all() and (b[ok] <= hi[0][ok] + 1e-3).all()
        both = valid & np.isfinite(n)
        differ, compared = differ + np.count_nonzero(b[both] != n[both]), compared + both.sum()
        smooth.append(np.abs(np.diff(b, axis=1))[np.isfinite(np.diff(b, axis=1))])
        steps.append(np.abs(np.diff(n, axis=1))[np.isfinite(np.diff(n, axis=1))])
    smooth, steps = np.concatenate(smooth), np.concatenate(steps)
    assert differ > 0.9 * compared  # not nearest (they agree only on flats of the integer DEM)
    # nearest makes plateaus (one input pixel spans 3–25 output pixels) with jumps between them;
    # bilinear ramps: hardly any flat neighbours and no jump anywhere near nearest's largest
    assert np.mean(steps == 0) > 0.5 and np.mean(smooth == 0) < 0.1
    assert smooth.max() < 0.5 * steps.max()


def test_cubic_and_average_resampling(real):
    """Cubic is a smooth interpolation close to bilinear; average is area-weighted, so upsampling a
    250 m DEM to 10 m gives (nearly everywhere) the one input pixel under each output pixel."""
    source = LocalSource({"dem": [real["vinschgau"]]})

    def dem(spec):
        return np.stack([a["dem"] for _, a in blocks(source, VINSCHGAU, spec)]).astype(np.float64)

    bilinear, nearest = dem(DEM), dem(DEM_NEAREST)
    cubic, average = (dem(dataclasses.replace(DEM, resampling=r)) for r in ("cubic", "average"))
    assert np.isfinite(cubic).all() and 388 - 50 < cubic.min() and cubic.max() < 3863 + 50  # may overshoot a little
    assert not np.array_equal(cubic, bilinear) and np.abs(cubic - bilinear).mean() < 10
    assert np.mean(average == nearest) > 0.99 and np.isin(average, read(real["vinschgau"])).mean() > 0.99


def test_the_dem_comes_with_a_one_pixel_halo_of_real_neighbours(real):
    out = blocks(LocalSource({"dem": [real["vinschgau"]]}), VINSCHGAU, DEM)
    by_tile = dict(out)
    for tile, arrays in out:
        halo = arrays["dem_halo"]
        assert halo.shape == (1, 258, 258) and halo.dtype == np.float32
        np.testing.assert_array_equal(halo[:, 1:-1, 1:-1], arrays["dem"])
        assert np.isfinite(halo).all()  # the DEM reaches far beyond this AOI
        east = by_tile.get(dataclasses.replace(tile, col=tile.col + 1))
        if east is not None:  # the ring is the neighbour's edge (up to the warper's float rounding)
            np.testing.assert_allclose(halo[0, 1:-1, -1], east["dem"][0, :, 0], atol=1e-3)
            np.testing.assert_allclose(east["dem_halo"][0, 1:-1, 0], arrays["dem"][0, :, -1], atol=1e-3)


# --------------------------------------------------------------------------------------------------
# Errors: one line, before any block
# --------------------------------------------------------------------------------------------------


def first_block(source, aoi, *specs):
    return next(iter(source.blocks(aoi.grid(), specs)))


def test_an_input_that_misses_the_aoi_is_an_error_naming_source_file_and_bounds(real):
    with pytest.raises(RsgeeError) as info:
        first_block(LocalSource({"s1": [real["s1"]]}), SAO_TOME, S1)
    message = str(info.value)
    assert "--input s1" in message and str(real["s1"]) in message and "lon 6.6" in message
    assert "EPSG:32632" in message and "\n" not in message


def test_wrong_band_count_is_an_error_with_both_counts(real):
    with pytest.raises(RsgeeError, match=r"--input s2: .*S2Hand.tif: has 13 band\(s\), catalog source s2 has 4 \(B2, B3, B4, B8\)"):
        first_block(LocalSource({"s2": [real["s2_l1c"]]}), FLOODS, S2)


def test_a_source_without_input_is_an_error_showing_the_syntax(real):
    with pytest.raises(RsgeeError, match=r"no --input for source\(s\) s2 .*--input s2=") as info:
        first_block(LocalSource({"s1": [real["s1"]]}), FLOODS, S1, S2)
    assert "inputs were given for: s1" in str(info.value)


def test_unreadable_and_unreferenced_files_are_errors(tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(RsgeeError, match=r"--input dem: .*notes.tif: cannot read it as a raster") as info:
        first_block(LocalSource({"dem": [text]}), ROME, DEM)
    assert "\n" not in str(info.value)
    bare = tmp_path / "bare.tif"
    with rasterio.open(bare, "w", driver="GTiff", width=8, height=8, count=1, dtype="float32",
                       transform=Affine(0.001, 0, 12.5, 0, -0.001, 42.0)) as dst:
        dst.write(np.ones((1, 8, 8), np.float32))
    with pytest.raises(RsgeeError, match=r"bare.tif: has no CRS"):
        first_block(LocalSource({"dem": [bare]}), ROME, DEM)


# --------------------------------------------------------------------------------------------------
# Integration with rsgee export
# --------------------------------------------------------------------------------------------------


def test_export_writes_geotiffs_on_the_aoi_grid_and_redoes_them_when_inputs_change(real, s2_rgbn, tmp_path):
    source = LocalSource({"s1": [real["s1"]], "s2": [s2_rgbn]})
    (result,) = export_aois([FLOODS], tmp_path, source, CATALOG, source_names=["s1", "s2"], progress=False)
    assert result.status == "written" and result.tiles == 6
    grid = FLOODS.grid()
    expected = dict(blocks(source, FLOODS, S1, S2))
    for name in ("s1", "s2"):
        with rasterio.open(result.path / f"{name}.tif") as src:
            assert src.crs.to_epsg() == grid.epsg == 32630
            assert src.transform == grid.transform and (src.width, src.height) == (grid.width, grid.height)
            assert src.tags()["RSGEE_SOURCE"] == "local" and src.tags()["RSGEE_SYNTHETIC"] == "no"
            for tile, arrays in expected.items():
                np.testing.assert_array_equal(src.read(window=grid.window(tile)), arrays[name])
    manifest = read_manifest(result.path)
    assert manifest["source"] == "local" and manifest["request"]["inputs"]["s2"][0]["path"] == str(s2_rgbn)
    (again,) = export_aois([FLOODS], tmp_path, source, CATALOG, source_names=["s1", "s2"], progress=False)
    assert again.status == "up to date"
    stat = s2_rgbn.stat()
    os.utime(s2_rgbn, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        (changed,) = export_aois([FLOODS], tmp_path, source, CATALOG, source_names=["s1", "s2"], progress=False)
        assert changed.status == "failed" and "different parameters" in changed.error
    finally:
        os.utime(s2_rgbn, ns=(stat.st_atime_ns, stat.st_mtime_ns))
