"""The UTM tile lattice every AOI is registered to.

Each AOI gets one UTM zone (EPSG 326zz north / 327zz south, chosen from its centroid), 10 m pixels,
and a raster whose edges lie on multiples of 2560 m, so that all AOIs of one zone share one global
lattice of 256×256-pixel tiles. A tile is the lattice cell ``(col, row)`` covering
``x ∈ [col·2560, (col+1)·2560)`` and ``y ∈ [row·2560, (row+1)·2560)`` metres of its EPSG, and its
id is ``<epsg>_<col>_<row>``: two overlapping AOIs name the same tile the same way.

Rows count northwards like the y axis, so inside a raster (whose rows run southwards) the top tile
row is the largest ``row``.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Iterator

import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry

from rsgee.errors import GridError

PIXEL_M = 10
TILE_PX = 256
TILE_M = PIXEL_M * TILE_PX

UTM_MIN_LAT = -80.0
UTM_MAX_LAT = 84.0
#: How far (degrees of longitude) an AOI may reach past the edges of its centroid's UTM zone.
#: At 1° past the edge the UTM scale error stays below 0.25 %.
MAX_ZONE_OVERHANG_DEG = 1.0
#: Edges are densified to this spacing (degrees) before projecting, so curved edges stay covered.
DENSIFY_DEG = 0.01

_TILE_ID = re.compile(r"^(32[67](?:0[1-9]|[1-5][0-9]|60))_(-?\d+)_(-?\d+)$")


def utm_zone(lon: float) -> int:
    """UTM zone number 1–60 of a longitude in degrees (180° belongs to zone 60)."""
    if not -180.0 <= lon <= 180.0:
        raise GridError(f"longitude {lon} is outside -180…180; AOIs must be in lon/lat degrees")
    return min(int(math.floor((lon + 180.0) / 6.0)) + 1, 60)


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the UTM zone of a point: 326zz north of the equator, 327zz south."""
    return (32600 if lat >= 0 else 32700) + utm_zone(lon)


def zone_central_meridian(zone: int) -> float:
    """Central meridian (degrees) of a UTM zone."""
    return -183.0 + 6.0 * zone


def tile_id(epsg: int, col: int, row: int) -> str:
    """The id of lattice cell ``(col, row)`` of a UTM EPSG."""
    return f"{epsg}_{col}_{row}"


@dataclass(frozen=True, order=True)
class Tile:
    """One 256×256 cell of the 2560 m lattice of a UTM zone."""

    epsg: int
    col: int
    row: int

    @property
    def id(self) -> str:
        return tile_id(self.epsg, self.col, self.row)

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """(x_min, y_min, x_max, y_max) in metres of the tile's EPSG."""
        return (self.col * TILE_M, self.row * TILE_M, (self.col + 1) * TILE_M, (self.row + 1) * TILE_M)

    @property
    def transform(self) -> Affine:
        """Affine transform of the tile's 256×256 raster (10 m pixels, north up)."""
        return Affine(PIXEL_M, 0.0, self.col * TILE_M, 0.0, -PIXEL_M, (self.row + 1) * TILE_M)

    @classmethod
    def from_id(cls, text: str) -> "Tile":
        """Parse ``<epsg>_<col>_<row>``; raise :class:`GridError` for anything else."""
        match = _TILE_ID.match(text)
        if not match:
            raise GridError(f"'{text}' is not a tile id; expected <epsg>_<col>_<row> such as 32632_250_1990")
        epsg, col, row = (int(g) for g in match.groups())
        return cls(epsg, col, row)


@dataclass(frozen=True)
class Grid:
    """A rectangular block of lattice tiles: the raster grid of one AOI.

    Attributes:
        epsg: UTM EPSG code (326zz or 327zz).
        col_min: lattice column of the western-most tiles.
        row_min: lattice row of the southern-most tiles.
        ncols: number of tiles west to east.
        nrows: number of tiles south to north.
    """

    epsg: int
    col_min: int
    row_min: int
    ncols: int
    nrows: int

    def __post_init__(self) -> None:
        if self.ncols < 1 or self.nrows < 1:
            raise GridError(f"a grid needs at least one tile, got {self.ncols}×{self.nrows}")
        if not _TILE_ID.match(tile_id(self.epsg, 0, 0)):
            raise GridError(f"EPSG:{self.epsg} is not a UTM zone (expected 32601–32660 or 32701–32760)")

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def width(self) -> int:
        return self.ncols * TILE_PX

    @property
    def height(self) -> int:
        return self.nrows * TILE_PX

    @property
    def row_max(self) -> int:
        return self.row_min + self.nrows - 1

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """(x_min, y_min, x_max, y_max) in metres."""
        return (
            self.col_min * TILE_M,
            self.row_min * TILE_M,
            (self.col_min + self.ncols) * TILE_M,
            (self.row_min + self.nrows) * TILE_M,
        )

    @property
    def transform(self) -> Affine:
        x_min, _, _, y_max = self.bounds
        return Affine(PIXEL_M, 0.0, x_min, 0.0, -PIXEL_M, y_max)

    def tiles(self) -> Iterator[Tile]:
        """All tiles in raster order: north to south, then west to east."""
        for row in range(self.row_max, self.row_min - 1, -1):
            for col in range(self.col_min, self.col_min + self.ncols):
                yield Tile(self.epsg, col, row)

    def __contains__(self, tile: object) -> bool:
        return (
            isinstance(tile, Tile)
            and tile.epsg == self.epsg
            and self.col_min <= tile.col < self.col_min + self.ncols
            and self.row_min <= tile.row <= self.row_max
        )

    def window(self, tile: Tile) -> Window:
        """The pixel window of ``tile`` inside this grid's raster."""
        if tile not in self:
            raise GridError(f"tile {tile.id} is not inside grid {self.describe()}")
        return Window((tile.col - self.col_min) * TILE_PX, (self.row_max - tile.row) * TILE_PX, TILE_PX, TILE_PX)

    def describe(self) -> str:
        return f"{self.crs} {self.ncols}×{self.nrows} tiles from {tile_id(self.epsg, self.col_min, self.row_min)}"

    def to_dict(self) -> dict:
        """JSON-ready description (what manifests record)."""
        return {
            "epsg": self.epsg,
            "col_min": self.col_min,
            "row_min": self.row_min,
            "ncols": self.ncols,
            "nrows": self.nrows,
            "pixel_m": PIXEL_M,
            "tile_px": TILE_PX,
            "width": self.width,
            "height": self.height,
            "transform": list(self.transform)[:6],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Grid":
        return cls(int(data["epsg"]), int(data["col_min"]), int(data["row_min"]), int(data["ncols"]), int(data["nrows"]))

    @classmethod
    def from_bounds(cls, epsg: int, x_min: float, y_min: float, x_max: float, y_max: float) -> "Grid":
        """The smallest lattice-aligned grid covering a box in metres of ``epsg``."""
        if not (x_max >= x_min and y_max >= y_min) or not all(map(math.isfinite, (x_min, y_min, x_max, y_max))):
            raise GridError(f"bounds {(x_min, y_min, x_max, y_max)} are not a valid box")
        col_min = math.floor(x_min / TILE_M)
        row_min = math.floor(y_min / TILE_M)
        col_end = max(math.ceil(x_max / TILE_M), col_min + 1)
        row_end = max(math.ceil(y_max / TILE_M), row_min + 1)
        return cls(epsg, col_min, row_min, col_end - col_min, row_end - row_min)

    @classmethod
    def from_raster(cls, crs, transform: Affine, width: int, height: int) -> "Grid":
        """The grid of an existing raster, which must lie exactly on the lattice."""
        epsg = crs.to_epsg() if hasattr(crs, "to_epsg") else None
        if epsg is None:
            raise GridError(f"raster CRS {crs} is not a UTM EPSG code")
        a, b, c, d, e, f = list(transform)[:6]
        if (a, b, d, e) != (PIXEL_M, 0.0, 0.0, -PIXEL_M):
            raise GridError(f"raster pixels are {a}×{e} m, not {PIXEL_M}×-{PIXEL_M} m north-up")
        if c % TILE_M or f % TILE_M or width % TILE_PX or height % TILE_PX:
            raise GridError(
                f"raster origin ({c}, {f}) or size {width}×{height} is not on the {TILE_M} m tile lattice"
            )
        ncols, nrows = width // TILE_PX, height // TILE_PX
        return cls(epsg, int(c // TILE_M), int(f // TILE_M) - nrows, ncols, nrows)


def utm_epsg_for_extent(
    bounds: tuple[float, float, float, float], centroid: tuple[float, float], *, name: str = "AOI"
) -> int:
    """EPSG of the UTM zone an AOI is gridded in, after checking that one zone can hold it.

    Args:
        bounds: (lon_min, lat_min, lon_max, lat_max) of the AOI in degrees.
        centroid: (lon, lat) of the AOI's centroid; it picks the zone and the hemisphere.
        name: the AOI's name, for messages.

    Raises:
        GridError: the AOI crosses the antimeridian, leaves the UTM latitude band, or reaches more
            than ``MAX_ZONE_OVERHANG_DEG`` past its zone.
    """
    lon_min, lat_min, lon_max, lat_max = bounds
    if lon_max - lon_min > 180.0:
        raise GridError(
            f"AOI '{name}' spans longitudes {lon_min:g}…{lon_max:g}: it seems to cross the antimeridian; "
            "split it at 180° into two AOIs (RFC 7946 §3.1.9)"
        )
    if lat_max > UTM_MAX_LAT or lat_min < UTM_MIN_LAT:
        worst = lat_max if lat_max > UTM_MAX_LAT else lat_min
        raise GridError(
            f"AOI '{name}' reaches latitude {worst:g}°; UTM grids exist only between {-UTM_MIN_LAT:g}°S and "
            f"{UTM_MAX_LAT:g}°N (polar stereographic grids are not supported)"
        )
    zone = utm_zone(centroid[0])
    west = zone_central_meridian(zone) - 3.0
    east = west + 6.0
    if lon_min < west - MAX_ZONE_OVERHANG_DEG or lon_max > east + MAX_ZONE_OVERHANG_DEG:
        raise GridError(
            f"AOI '{name}' spans longitudes {lon_min:g}…{lon_max:g}, more than {MAX_ZONE_OVERHANG_DEG:g}° beyond "
            f"UTM zone {zone} ({west:g}…{east:g}); split it into one AOI per UTM zone"
        )
    return utm_epsg(centroid[0], centroid[1])


def to_utm(geometry: BaseGeometry, epsg: int) -> BaseGeometry:
    """Project a lon/lat geometry to ``epsg``, densified first so that curved edges stay covered."""
    transformer = _lonlat_to(epsg)
    dense = shapely.segmentize(geometry, DENSIFY_DEG)
    return shapely.transform(dense, lambda x, y: transformer.transform(x, y), interleaved=False)


def grid_for_geometry(geometry: BaseGeometry, *, name: str = "AOI") -> Grid:
    """The lattice-aligned UTM grid covering a lon/lat Polygon or MultiPolygon."""
    centroid = geometry.centroid
    epsg = utm_epsg_for_extent(geometry.bounds, (centroid.x, centroid.y), name=name)
    return Grid.from_bounds(epsg, *to_utm(geometry, epsg).bounds)


@functools.lru_cache(maxsize=64)
def _lonlat_to(epsg: int) -> Transformer:
    return Transformer.from_crs(4326, epsg, always_xy=True)
