"""The UTM tile lattice: zones, snapping, tile ids and windows."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Transformer
from shapely.geometry import box

from rsgee.errors import GridError
from rsgee.grid import (
    PIXEL_M,
    TILE_M,
    TILE_PX,
    Grid,
    Tile,
    grid_for_geometry,
    to_utm,
    utm_epsg,
    utm_epsg_for_extent,
    utm_zone,
)


@pytest.mark.parametrize(
    "lon, lat, epsg",
    [
        (10.5, 46.5, 32632),  # Alps: zone 32 (6°E–12°E), north
        (-74.0, 40.7, 32618),  # New York
        (151.2, -33.9, 32756),  # Sydney: south
        (-180.0, 10.0, 32601),
        (180.0, 10.0, 32660),  # 180° belongs to zone 60
        (0.0, 0.0, 32631),  # the equator is north
        (-0.0001, -0.0001, 32730),
        (5.999999, 45.0, 32631),
        (6.0, 45.0, 32632),
    ],
)
def test_utm_epsg_known_points(lon, lat, epsg):
    assert utm_epsg(lon, lat) == epsg


def test_utm_zone_rejects_non_degrees():
    with pytest.raises(GridError, match="lon/lat"):
        utm_zone(500000.0)


def test_grid_for_geometry_alps_values():
    grid = grid_for_geometry(box(10.5, 46.5, 10.6, 46.6))
    assert grid.epsg == 32632
    assert grid.crs == "EPSG:32632"
    # lower-left corner (10.5°E, 46.5°N) is at x=614,?? m; the grid starts at the lattice line below it
    x_ll, y_ll = Transformer.from_crs(4326, 32632, always_xy=True).transform(10.5, 46.5)
    assert grid.col_min == int(x_ll // TILE_M) == 240
    assert grid.row_min == int(y_ll // TILE_M) == 2011
    assert (grid.ncols, grid.nrows) == (4, 6)
    assert (grid.width, grid.height) == (1024, 1536)
    assert tuple(grid.transform)[:6] == (10.0, 0.0, 240 * 2560.0, 0.0, -10.0, (2011 + 6) * 2560.0)
    assert grid.to_dict()["transform"] == [10.0, 0.0, 614400.0, 0.0, -10.0, 5163520.0]


def test_tile_geometry_and_window():
    grid = Grid(32632, col_min=240, row_min=2011, ncols=4, nrows=6)
    tiles = list(grid.tiles())
    assert len(tiles) == 24
    first, last = tiles[0], tiles[-1]
    assert first.id == "32632_240_2016"  # north-west tile comes first (raster order)
    assert last.id == "32632_243_2011"
    assert grid.window(first).flatten() == (0, 0, 256, 256)
    assert grid.window(last).flatten() == (3 * 256, 5 * 256, 256, 256)
    assert first.bounds == (614400, 5160960, 616960, 5163520)
    # the tile transform is the grid transform shifted by the window offset
    w = grid.window(last)
    assert last.transform == grid.transform @ grid.transform.translation(w.col_off, w.row_off)
    with pytest.raises(GridError, match="not inside"):
        grid.window(Tile(32632, 244, 2011))


def test_from_raster_round_trip_and_rejects_off_lattice():
    from rasterio.crs import CRS

    grid = Grid(32733, col_min=-2, row_min=3900, ncols=3, nrows=2)
    assert Grid.from_raster(CRS.from_epsg(32733), grid.transform, grid.width, grid.height) == grid
    shifted = grid.transform @ grid.transform.translation(1, 0)
    with pytest.raises(GridError, match="lattice"):
        Grid.from_raster(CRS.from_epsg(32733), shifted, grid.width, grid.height)
    with pytest.raises(GridError, match="lattice"):
        Grid.from_raster(CRS.from_epsg(32733), grid.transform, grid.width - 1, grid.height)
    with pytest.raises(GridError, match="UTM"):
        Grid.from_raster(CRS.from_epsg(4326), grid.transform, grid.width, grid.height)


@pytest.mark.parametrize("text", ["32632_1_2", "32760_-5_3906", "32601_0_-12"])
def test_tile_id_round_trip(text):
    assert Tile.from_id(text).id == text


@pytest.mark.parametrize("text", ["4326_1_2", "32661_1_2", "32600_1_2", "32632_1", "32632_a_2", "../32632_1_2", ""])
def test_tile_id_rejects_garbage(text):
    with pytest.raises(GridError, match="not a tile id"):
        Tile.from_id(text)


def test_antimeridian_is_a_clear_error():
    with pytest.raises(GridError, match="antimeridian"):
        utm_epsg_for_extent((-179.9, 10.0, 179.9, 11.0), (0.0, 10.5))


def test_aoi_near_antimeridian_on_one_side_is_zone_60_or_1():
    assert grid_for_geometry(box(179.5, -17.0, 180.0, -16.8)).epsg == 32760
    assert grid_for_geometry(box(-180.0, -17.0, -179.5, -16.8)).epsg == 32701


@pytest.mark.parametrize("lat", [84.5, -80.5])
def test_polar_aois_are_refused(lat):
    geom = box(10.0, lat - 0.1, 10.1, lat + 0.1)
    with pytest.raises(GridError, match="UTM grids exist only"):
        grid_for_geometry(geom)


def test_aoi_reaching_far_beyond_its_zone_is_refused():
    with pytest.raises(GridError, match="one AOI per UTM zone"):
        grid_for_geometry(box(10.0, 45.0, 14.5, 45.2))  # centroid zone 33 (12–18°E) but reaches 10°E
    # 0.9° past the zone edge is fine
    assert grid_for_geometry(box(11.1, 45.0, 13.0, 45.2)).epsg == 32633


def test_equator_crossing_aoi_uses_centroid_hemisphere_and_covers_both_sides():
    geom = box(9.0, -0.05, 9.1, 0.2)
    grid = grid_for_geometry(geom)
    assert grid.epsg == 32632
    assert grid.row_min < 0  # southern part has negative northings in the northern zone
    assert Tile.from_id(Tile(32632, 5, grid.row_min).id).row == grid.row_min


lons = st.floats(-179.0, 178.0, allow_nan=False)
lats = st.floats(-79.0, 83.0, allow_nan=False)
sizes = st.floats(0.001, 0.4)


@settings(max_examples=60, deadline=None)
@given(lon=lons, lat=lats, dlon=sizes, dlat=sizes)
def test_snapped_grid_covers_the_aoi(lon, lat, dlon, dlat):
    geom = box(lon, lat, min(lon + dlon, 180.0), min(lat + dlat, 84.0))
    grid = grid_for_geometry(geom)
    x_min, y_min, x_max, y_max = grid.bounds
    utm = to_utm(geom, grid.epsg)
    ux_min, uy_min, ux_max, uy_max = utm.bounds
    assert x_min <= ux_min and ux_max <= x_max and y_min <= uy_min and uy_max <= y_max
    # snapped: bounds on the lattice, and no spare tile row/column on any side
    assert all(v % TILE_M == 0 for v in grid.bounds)
    assert ux_min - x_min <= TILE_M and x_max - ux_max <= TILE_M
    assert uy_min - y_min <= TILE_M and y_max - uy_max <= TILE_M
    # every vertex of the densified AOI falls in a tile of the grid
    xs, ys = shapely.get_coordinates(utm).T
    cols, rows = np.floor(xs / TILE_M).astype(int), np.floor(ys / TILE_M).astype(int)
    assert all(Tile(grid.epsg, c, r) in grid or x == x_max or y == y_max for c, r, x, y in zip(cols, rows, xs, ys))


@settings(max_examples=60, deadline=None)
@given(
    epsg=st.sampled_from([32601, 32632, 32660, 32701, 32733, 32760]),
    col_min=st.integers(-50, 400),
    row_min=st.integers(-200, 4000),
    ncols=st.integers(1, 9),
    nrows=st.integers(1, 9),
)
def test_tiles_partition_the_grid_exactly(epsg, col_min, row_min, ncols, nrows):
    grid = Grid(epsg, col_min, row_min, ncols, nrows)
    cover = np.zeros((grid.height, grid.width), dtype=np.int32)
    tiles = list(grid.tiles())
    assert len(tiles) == ncols * nrows == len({t.id for t in tiles})
    for tile in tiles:
        w = grid.window(tile)
        cover[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
        # the window's pixel corner maps to the tile's own upper-left corner in metres
        assert grid.transform @ (w.col_off, w.row_off) == (tile.bounds[0], tile.bounds[3])
        assert tile.transform.a == PIXEL_M and TILE_PX * PIXEL_M == TILE_M
        assert Tile.from_id(tile.id) == tile
    assert (cover == 1).all()
