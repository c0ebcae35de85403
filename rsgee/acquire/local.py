"""Local GeoTIFFs as a block source: ``rsgee export --source local --input s2=scene.tif …``.

Users bring their own rasters per catalog source, in any CRS and resolution; :class:`LocalSource`
warps them onto each AOI's lattice grid, tile by tile, into the same export contract as the
synthetic and Earth Engine sources (a ``(bands, 256, 256)`` array per source in the catalog dtype,
catalog nodata where there is no data).

**What the inputs must be.** One GeoTIFF (or several, a mosaic) per source, with exactly the
catalog's bands in the catalog's order, already in the archive's units: Sentinel-2 as reflectance
× 10000 (rsgee never rescales 0–1 reflectance on a guess; it warns when a float input looks like
it), land cover as the catalog's class ids. Sentinel-1 (a source with ``to_db``) may come in dB or
in linear power: linear power is recognised (:func:`~rsgee.radiometry.looks_linear`),
converted and reported with a warning, never silently trusted. The input's nodata (its nodata
value or mask, and NaN/±inf for floats) becomes the catalog's nodata.

**How pixels are made.** Every input is opened once per AOI. For each tile, only the source window
under the tile's footprint (plus a margin for the resampling kernel) is read and warped with GDAL
(:func:`rasterio.warp.reproject`) onto ``tile.transform`` / ``tile.crs``, in float64 with NaN as
nodata, using the catalog's resampling: nearest or mode for categorical sources (class ids are
never interpolated), bilinear, cubic or average for continuous ones. Sources with ``to_db`` are
resampled in linear power and converted to dB afterwards, as Earth Engine resamples
``S1_GRD_FLOAT`` before the catalog's ``10·log10``. Several files of one source form a mosaic: per
pixel and band, the first file (in ``--input`` order; a glob's matches sorted by name) with valid
data wins. Values are then cast to the catalog dtype: integers are rounded and clipped to the
dtype's range (minus the nodata value where that sits at an end of the range, so that valid data
never turns into nodata); categorical values that do not fit the dtype become nodata.

A tile's pixels depend only on the tile and the inputs, never on the AOI around it, so
overlapping AOIs agree where they overlap and re-runs are byte-identical. GDAL's default
approximate transformer is used (error ≤ 0.125 input pixel, as ``gdalwarp``), so a nearest pixel
whose centre lies within a few hundredths of an input pixel edge may take the neighbour's value.
Like the Earth Engine source, the DEM also comes as ``dem_halo``, each tile grown by one pixel of
real neighbours, so that terrain at the AOI border needs no edge extrapolation.

**Coverage.** A source whose inputs do not overlap the AOI grid at all is an error, raised before
any block is made; partial coverage is allowed (uncovered pixels are nodata, which the tile step
filters) and reported as one warning line with the covered fraction of the grid.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import rasterio
from affine import Affine
import shapely
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import reproject, transform, transform_bounds
from rasterio.windows import Window
from shapely.geometry import Polygon, box

from rsgee.catalog import SourceSpec
from rsgee.errors import RsgeeError
from rsgee.geotiff import GDAL_READ_ENV
from rsgee.grid import PIXEL_M, TILE_PX, Grid, Tile
from rsgee.radiometry import db_to_linear, linear_to_db, looks_linear

log = logging.getLogger("rsgee")

#: Bumped whenever the warping recipe changes the pixels, so that older local exports are redone.
LOCAL_VERSION = 1

RESAMPLING = {
    "nearest": Resampling.nearest,
    "bilinear": Resampling.bilinear,
    "cubic": Resampling.cubic,
    "average": Resampling.average,
    "mode": Resampling.mode,
}
#: Pixels of extra ring delivered with the DEM (``dem_halo``), as the Earth Engine source does.
DEM_HALO = 1
#: Source pixels read beyond a tile's footprint: covers the cubic kernel (radius 2) and rounding.
PAD_SRC_PX = 3
#: Longest side (pixels) of the decimated read that checks an input's units over the AOI.
PROBE_PX = 1024
#: Vertices per edge when a grid outline is projected into an input's CRS (curved edges stay close).
OUTLINE_PTS = 64
#: A float input for an integer (reflectance × 10000) source whose maximum is at most this looks like 0–1.
UNIT_REFLECTANCE_MAX = 1.5

_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_EXAMPLE = "--input s2=scene.tif (repeatable; PATH may be a glob such as 'dem=tiles/*.tif')"


# --------------------------------------------------------------------------------------------------
# --input SOURCE=PATH
# --------------------------------------------------------------------------------------------------


def parse_inputs(values: Sequence[str]) -> dict[str, list[Path]]:
    """Parse repeated ``--input SOURCE=PATH`` options into absolute paths per catalog source.

    ``PATH`` is a file or a glob (``*``, ``?``, ``[…]``, ``**``; ``~`` is expanded); a glob's matches
    are taken in sorted order. Repeating a source appends to its list, which is the mosaic order
    (the first file wins where files overlap); a path given twice is kept once.

    Raises:
        RsgeeError: a value without ``=``, an empty or odd source name, a path that does not exist,
            a folder, or a glob that matches no file.
    """
    if isinstance(values, str):
        values = [values]
    out: dict[str, list[Path]] = {}
    for value in values:
        name, sep, pattern = str(value).partition("=")
        name, pattern = name.strip(), pattern.strip()
        if not sep or not name or not pattern:
            raise RsgeeError(f"--input {value!r}: expected SOURCE=PATH, e.g. {_EXAMPLE}")
        if not _SOURCE_NAME.match(name):
            raise RsgeeError(f"--input {value!r}: '{name}' is not a catalog source name (letters, digits, _ . -)")
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = [Path(p) for p in sorted(glob.glob(expanded, recursive=True)) if Path(p).is_file()]
            if not matches:
                raise RsgeeError(f"--input {name}={pattern}: the pattern matches no file")
        else:
            path = Path(expanded)
            if path.is_dir():
                raise RsgeeError(f"--input {name}={pattern}: is a folder; pass a file or a glob such as "
                                 f"{name}={pattern.rstrip('/')}/*.tif")
            if not path.is_file():
                raise RsgeeError(f"--input {name}={pattern}: no such file")
            matches = [path]
        paths = out.setdefault(name, [])
        for match in matches:
            absolute = Path(os.path.abspath(match))
            if absolute not in paths:
                paths.append(absolute)
    return out


# --------------------------------------------------------------------------------------------------
# The block source
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalSource:
    """User GeoTIFFs per catalog source, warped onto each AOI's lattice grid (see the module doc).

    Attributes:
        inputs: catalog source name → one or more GeoTIFFs (several = a mosaic, first wins).
    """

    inputs: Mapping[str, Sequence[Path]]

    name = "local"

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, Mapping) or not self.inputs:
            raise RsgeeError(f"the local source needs at least one input: {_EXAMPLE}")
        normalised: dict[str, tuple[Path, ...]] = {}
        for source, paths in self.inputs.items():
            if isinstance(paths, (str, os.PathLike)):
                paths = [paths]
            unique: list[Path] = []
            for p in paths:
                absolute = Path(os.path.abspath(os.path.expanduser(os.fspath(p))))
                if absolute not in unique:
                    unique.append(absolute)
            if not unique:
                raise RsgeeError(f"--input {source}: no file given; e.g. {_EXAMPLE}")
            normalised[str(source)] = tuple(unique)
        object.__setattr__(self, "inputs", normalised)

    def request(self) -> dict:
        """Input paths with their sizes and modification times: a changed input means a new export."""
        files: dict[str, list[dict]] = {}
        for source, paths in sorted(self.inputs.items()):
            entries = []
            for path in paths:
                try:
                    stat = path.stat()
                except OSError as exc:
                    raise RsgeeError(f"--input {source}: cannot read {path} ({exc.strerror or exc})") from None
                entries.append({"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})
            files[source] = entries
        return {"source": self.name, "local_version": LOCAL_VERSION, "dem_halo_px": DEM_HALO, "inputs": files}

    def blocks(
        self, grid: Grid, sources: Sequence[SourceSpec], workdir: Path | None = None
    ) -> Iterator[tuple[Tile, dict[str, np.ndarray]]]:
        """Every tile of ``grid`` with one array per catalog source, in each source's catalog dtype.

        The DEM also comes as ``dem_halo``, its tile grown by :data:`DEM_HALO` pixels on every side
        (real neighbours for terrain at the AOI border), whose interior is the ``dem`` block. All
        checks (missing inputs, unreadable files, band counts, coverage, units) run before the first
        block is yielded. Warping a tile takes milliseconds, so nothing is kept in ``workdir``.
        """
        specs = list(sources)
        missing = [spec.name for spec in specs if spec.name not in self.inputs]
        if missing:
            given = f"; inputs were given for: {', '.join(self.inputs)}" if self.inputs else ""
            raise RsgeeError(
                f"no --input for source(s) {', '.join(missing)} of this export; add "
                + " ".join(f"--input {m}=PATH" for m in missing)
                + f" (PATH a GeoTIFF or a glob such as '{missing[0]}=tiles/*.tif'), or leave them out of --sources{given}"
            )
        with ExitStack() as stack:
            layers: dict[str, list[_Input]] = {}
            for spec in specs:
                opened = [_Input.open(path, spec, stack) for path in self.inputs[spec.name]]
                layers[spec.name] = _covering(opened, spec, grid)
                for layer in layers[spec.name]:
                    layer.probe(grid)
            for tile in grid.tiles():
                arrays = {}
                for spec in specs:
                    halo = DEM_HALO if spec.name == "dem" else 0
                    block = _tile_block(tile, spec, layers[spec.name], halo)
                    if halo:
                        arrays[f"{spec.name}_halo"] = block
                        block = np.ascontiguousarray(block[:, halo:-halo, halo:-halo])
                    arrays[spec.name] = block
                yield tile, arrays


# --------------------------------------------------------------------------------------------------
# One input file
# --------------------------------------------------------------------------------------------------


@dataclass
class _Input:
    """One open input raster of one catalog source."""

    path: Path
    spec: SourceSpec
    dataset: rasterio.io.DatasetReader
    #: Whether a to_db source's values are linear power (else dB).
    linear: bool = False
    footprint: Polygon = field(default_factory=Polygon)

    @classmethod
    def open(cls, path: Path, spec: SourceSpec, stack: ExitStack) -> "_Input":
        where = f"--input {spec.name}: {path}"
        if not path.is_file():
            raise RsgeeError(f"{where}: no such file")
        try:
            with rasterio.Env(**GDAL_READ_ENV):
                dataset = stack.enter_context(rasterio.open(path))
        except (RasterioError, OSError) as exc:
            detail = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise RsgeeError(f"{where}: cannot read it as a raster ({detail})") from None
        if dataset.crs is None:
            if dataset.gcps[0]:
                raise RsgeeError(f"{where}: is georeferenced by ground control points only; warp it first (gdalwarp -t_srs …)")
            raise RsgeeError(f"{where}: has no CRS; assign one first (e.g. gdal_edit.py -a_srs EPSG:4326 {path})")
        if dataset.transform.is_identity:
            raise RsgeeError(f"{where}: has no geotransform (pixel coordinates only); it cannot be placed on the map")
        if dataset.count != len(spec.bands):
            raise RsgeeError(
                f"{where}: has {dataset.count} band(s), catalog source {spec.name} has {len(spec.bands)} "
                f"({', '.join(spec.band_names)}); give a file with exactly these bands in this order "
                "(e.g. gdal_translate -b … to pick them)"
            )
        # The file's outline in its own CRS (any rotation of the geotransform included).
        h, w = dataset.height, dataset.width
        corners = [dataset.transform @ xy for xy in ((0, 0), (w, 0), (w, h), (0, h))]
        return cls(path, spec, dataset, footprint=Polygon(corners))

    @property
    def where(self) -> str:
        return f"--input {self.spec.name}: {self.path}"

    def window(self, bounds: tuple[float, float, float, float], pad: int = PAD_SRC_PX) -> Window | None:
        """The pixel window of the dataset under a box of its CRS, padded, clipped; None if empty."""
        x0, y0, x1, y1 = bounds
        inverse = ~self.dataset.transform
        cols, rows = zip(*(inverse @ xy for xy in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))))
        c0, c1 = max(math.floor(min(cols)) - pad, 0), min(math.ceil(max(cols)) + pad, self.dataset.width)
        r0, r1 = max(math.floor(min(rows)) - pad, 0), min(math.ceil(max(rows)) + pad, self.dataset.height)
        if c1 <= c0 or r1 <= r0:
            return None
        return Window(c0, r0, c1 - c0, r1 - r0)

    def read(self, window: Window, out_shape: tuple[int, int] | None = None) -> np.ndarray:
        """All bands of a window as float64, NaN wherever the input has no valid data."""
        shape = None if out_shape is None else (self.dataset.count, *out_shape)
        try:
            data = self.dataset.read(window=window, out_shape=shape, masked=True, resampling=Resampling.nearest)
        except RasterioError as exc:
            detail = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise RsgeeError(f"{self.where}: read failed ({detail})") from None
        values = np.ma.filled(data.astype(np.float64), np.nan)
        values[~np.isfinite(values)] = np.nan
        return values

    def probe(self, grid: Grid) -> None:
        """Check the units over the AOI on a decimated read; decide whether S1 is linear power."""
        spec = self.spec
        src_bounds = _outline(grid.bounds, grid.crs, self.dataset.crs).bounds
        window = self.window(src_bounds, pad=0)
        if window is None:
            return
        scale = max(window.width, window.height) / PROBE_PX
        shape = None if scale <= 1 else (max(1, round(window.height / scale)), max(1, round(window.width / scale)))
        values = self.read(window, shape)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            log.warning("%s: no valid pixel found over the AOI grid %s (sampled); the source will be nodata there",
                        self.where, grid.describe())
            return
        floating = np.dtype(self.dataset.dtypes[0]).kind == "f"
        if any(s != 1.0 for s in self.dataset.scales) or any(o != 0.0 for o in self.dataset.offsets):
            log.warning("%s: declares a scale/offset (%s/%s); rsgee uses the stored values as they are",
                        self.where, self.dataset.scales, self.dataset.offsets)
        if spec.to_db:
            self.linear = looks_linear(finite)
            if self.linear:
                log.warning(
                    "%s: %s looks like linear power, not dB (median %.3g, no negative values); converting with "
                    "10·log10 after resampling, floored at %g dB", self.where, spec.name, float(np.median(finite)),
                    spec.db_floor,
                )
        elif spec.dtype == "uint16" and not spec.categorical and floating and float(finite.max()) <= UNIT_REFLECTANCE_MAX:
            log.warning(
                "%s: float values up to %.3g look like 0–1 reflectance, but %s is stored as %s; rsgee does not "
                "rescale: multiply by 10000 first if so", self.where, float(finite.max()), spec.name, spec.units,
            )
        if spec.classes:
            valid = finite[finite != spec.nodata] if not spec.nodata_is_nan else finite
            unknown = np.setdiff1d(np.unique(valid), np.arange(len(spec.classes)))
            if unknown.size:
                shown = ", ".join(f"{v:g}" for v in unknown[:8]) + (" …" if unknown.size > 8 else "")
                log.warning("%s: values %s are not %s classes (0–%d); they are kept as they are", self.where,
                            shown, spec.name, len(spec.classes) - 1)

    def warp(self, tile: Tile, halo: int = 0) -> np.ndarray | None:
        """This input on one tile grown by ``halo`` pixels: (bands, size, size) float64, NaN = nodata;
        None if it misses the tile."""
        x0, y0, x1, y1 = tile.bounds
        # one destination pixel more: the footprint of an edge pixel for average/mode downsampling
        margin = (halo + 1) * PIXEL_M
        src_bounds = transform_bounds(tile.crs, self.dataset.crs, x0 - margin, y0 - margin, x1 + margin,
                                      y1 + margin, densify_pts=21)
        window = self.window(src_bounds)
        if window is None:
            return None
        source = self.read(window)
        if np.isnan(source).all():
            return None
        if self.spec.to_db and not self.linear:
            source = db_to_linear(source)  # resample in linear power, as Earth Engine does
        size = TILE_PX + 2 * halo
        out = np.full((self.dataset.count, size, size), np.nan)
        reproject(
            source, out,
            src_transform=self.dataset.transform @ Affine.translation(window.col_off, window.row_off),
            src_crs=self.dataset.crs, src_nodata=np.nan,
            dst_transform=tile.transform @ Affine.translation(-halo, -halo), dst_crs=tile.crs, dst_nodata=np.nan,
            resampling=RESAMPLING[self.spec.resampling], num_threads=1,
        )
        return out


# --------------------------------------------------------------------------------------------------
# Coverage, mosaic, cast
# --------------------------------------------------------------------------------------------------


def _outline(bounds: tuple[float, float, float, float], crs, to_crs) -> Polygon:
    """A box of ``crs`` as a densified polygon in ``to_crs``."""
    outline = shapely.segmentize(box(*bounds), max(bounds[2] - bounds[0], bounds[3] - bounds[1]) / OUTLINE_PTS)
    xs, ys = np.asarray(outline.exterior.coords).T
    if rasterio.crs.CRS.from_user_input(crs) == rasterio.crs.CRS.from_user_input(to_crs):
        return outline
    tx, ty = transform(crs, to_crs, xs.tolist(), ys.tolist())
    return Polygon(zip(tx, ty))


def _covering(layers: list[_Input], spec: SourceSpec, grid: Grid) -> list[_Input]:
    """The inputs that overlap the grid; error if none does, one warning if they cover it partly."""
    grid_box = box(*grid.bounds)
    covered = []
    kept = []
    for layer in layers:
        outline = _outline(grid.bounds, grid.crs, layer.dataset.crs)
        if not outline.is_valid or not np.isfinite(outline.bounds).all():
            continue
        overlap = outline.intersection(layer.footprint)
        if overlap.is_empty or overlap.area <= 0:
            continue
        kept.append(layer)
        # back into the grid's CRS (the overlap lies inside the grid, where that CRS is well defined)
        for part in getattr(overlap, "geoms", [overlap]):
            if isinstance(part, Polygon) and not part.is_empty:
                covered.append(_outline_of(part, layer.dataset.crs, grid.crs))
    if not kept:
        lon0, lat0, lon1, lat1 = transform_bounds(grid.crs, "EPSG:4326", *grid.bounds, densify_pts=21)
        x0, y0, x1, y1 = grid.bounds
        files = ", ".join(str(layer.path) for layer in layers[:3]) + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")
        verb = "does" if len(layers) == 1 else "do"
        raise RsgeeError(
            f"--input {spec.name}: {files} {verb} not cover the AOI grid {grid.describe()} at all "
            f"(lon {lon0:.5f}…{lon1:.5f}, lat {lat0:.5f}…{lat1:.5f}; x {x0}…{x1}, y {y0}…{y1} m)"
        )
    fraction = shapely.union_all(covered).intersection(grid_box).area / grid_box.area if covered else 0.0
    if fraction < 0.9995:
        log.warning("--input %s: the input(s) cover %.1f %% of the AOI grid %s; the rest is nodata",
                    spec.name, 100 * fraction, grid.describe())
    return kept


def _outline_of(polygon: Polygon, crs, to_crs) -> Polygon:
    xs, ys = np.asarray(polygon.exterior.coords).T
    tx, ty = transform(crs, to_crs, xs.tolist(), ys.tolist())
    out = Polygon(zip(tx, ty))
    return out if out.is_valid else out.buffer(0)


def _tile_block(tile: Tile, spec: SourceSpec, layers: list[_Input], halo: int = 0) -> np.ndarray:
    """The mosaic of a source's inputs on one tile (grown by ``halo`` px), in the catalog dtype and nodata."""
    size = TILE_PX + 2 * halo
    out = np.full((len(spec.bands), size, size), np.nan)
    for layer in layers:
        warped = layer.warp(tile, halo)
        if warped is None:
            continue
        empty = np.isnan(out)
        out[empty] = warped[empty]  # first wins, per pixel and band
        if not np.isnan(out).any():
            break
    return as_catalog_dtype(out, spec)


def as_catalog_dtype(values: np.ndarray, spec: SourceSpec) -> np.ndarray:
    """Float values (NaN = nodata; linear power for to_db sources) → the catalog's dtype and nodata."""
    if spec.to_db:
        values = linear_to_db(values, spec.db_floor).astype(np.float64)
    missing = np.isnan(values)
    dtype = spec.numpy_dtype
    if dtype.kind == "f":
        out = values.astype(dtype)
        out[missing] = spec.nodata
        return out
    info = np.iinfo(dtype)
    filled = np.where(missing, spec.nodata, values)
    if spec.categorical:
        rounded = np.rint(filled)
        outside = (rounded < info.min) | (rounded > info.max)
        return np.where(outside, spec.nodata, rounded).astype(dtype)
    lo, hi = info.min, info.max
    if spec.nodata == lo:
        lo += 1
    elif spec.nodata == hi:
        hi -= 1
    clipped = np.clip(np.rint(filled), lo, hi)
    return np.where(missing, spec.nodata, clipped).astype(dtype)
