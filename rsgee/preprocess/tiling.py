"""``rsgee tile``: per-AOI exports → the registered 256×256 archive.

The work is cut into *strips* (one row of tiles of one AOI): each strip reads its rows of every
source, derives terrain from the DEM with a one-pixel halo (so tile edges use their true
neighbours, and the AOI border behaves like ``gdaldem -compute_edges``), filters the tiles and
writes the survivors. Strips run in parallel processes; the main process journals finished tiles,
so a killed run loses nothing and a re-run only does what is missing. Exports are found and read
through :mod:`rsgee.exports`, the archive written through :mod:`rsgee.preprocess.archive`.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
import shapely
from pyproj import Transformer
from rasterio.windows import Window
from tqdm import tqdm

from rsgee.catalog import Catalog, SourceSpec, without_recipe_keys
from rsgee.errors import RsgeeError, check_number
from rsgee.exports import find_exports, grid_problem, read_export
from rsgee.geotiff import GDAL_READ_ENV, MAX_Z_ERROR_LIMIT, RasterGrid, write_array
from rsgee.grid import TILE_PX, Grid, Tile, to_utm
from rsgee.preprocess.archive import FORMAT, FORMAT_VERSION, Archive, recorded_float_error, terrain_units, tile_sources
from rsgee.preprocess.split import SplitConfig, split_warning
from rsgee.preprocess.stats import compute_stats, stats_are_current
from rsgee.preprocess.terrain import terrain
from rsgee.radiometry import linear_to_db, looks_linear
from rsgee.workers import process_pool

log = logging.getLogger("rsgee")


@dataclass(frozen=True)
class TileFilters:
    """Which tiles are kept.

    Attributes:
        max_nodata: largest nodata fraction of every source but Sentinel-2 (s1, lulc, terrain).
        max_s2_nodata: largest nodata fraction of Sentinel-2, i.e. cloud-masked or missing pixels.
    """

    max_nodata: float = 0.05
    max_s2_nodata: float = 0.2

    def __post_init__(self) -> None:
        check_number("--max-nodata", self.max_nodata, 0.0, 1.0)
        check_number("--max-s2-nodata", self.max_s2_nodata, 0.0, 1.0)

    def limit(self, source: str) -> float:
        return self.max_s2_nodata if source == "s2" else self.max_nodata

    def to_dict(self) -> dict:
        return {"max_nodata": self.max_nodata, "max_s2_nodata": self.max_s2_nodata}


@dataclass(frozen=True)
class ExportedAOI:
    """A complete export folder, checked for registration."""

    name: str
    folder: Path
    manifest_sha256: str
    grid: Grid
    geometry: shapely.Geometry
    provenance: str
    s1_linear: bool
    paths: dict[str, str]  # source → file (local path or /vsigs/…); "dem_halo" when the export has one
    windows: dict[str, list[str]] | None  # source → [start, end) ISO dates, from the manifest; None for local files


@dataclass
class TileSummary:
    """What a ``rsgee tile`` run did, tile by tile."""

    written: int = 0
    existing: int = 0
    duplicate: int = 0
    rejected: Counter = field(default_factory=Counter)
    failed: dict[str, str] = field(default_factory=dict)
    aois_skipped: list[str] = field(default_factory=list)
    index_tiles: int = 0
    splits: Counter = field(default_factory=Counter)
    split_warning: str | None = None  # why the splits cannot carry a comparison, and the fix

    def lines(self) -> list[str]:
        out = [f"tiles written: {self.written}, already in the archive: {self.existing}, "
               f"claimed by another AOI: {self.duplicate}"]
        if self.rejected:
            out.append("rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())))
        if self.aois_skipped:
            out.append(f"AOIs already tiled: {', '.join(self.aois_skipped)}")
        out.append(f"archive: {self.index_tiles} tiles (" + ", ".join(f"{s} {self.splits.get(s, 0)}"
                                                                    for s in ("train", "val", "test")) + ")")
        for aoi, message in sorted(self.failed.items()):
            out.append(f"FAILED {aoi}: {message}")
        return out


def open_export(folder: Path, specs: dict[str, SourceSpec]) -> ExportedAOI:
    """Read an export's manifest and check that every source shares its CRS, transform and shape."""
    export = read_export(folder)
    name, grid = export.name, export.grid
    s1_linear = False
    for source in [n for n in specs if n != "terrain"] + ["dem"]:
        spec = specs["terrain"] if source == "dem" else specs[source]
        path = export.paths.get(source)
        if path is None or (not path.startswith("/vsi") and not os.path.exists(path)):
            raise RsgeeError(f"AOI '{name}': {source}.tif is missing from {folder}; export source '{source}' first")
        with export.open_file(source) as src:
            problem = grid_problem(src, grid) or _catalog_problem(src, spec, source)
            if source == "s1" and not problem:
                s1_linear = looks_linear(to_catalog_nodata(_spread_sample(src), src.nodata, spec))
        if problem:
            raise RsgeeError(f"AOI '{name}', source '{source}': {problem}")
    if "dem_halo" in export.paths:
        with export.open_file("dem_halo") as src:
            problem = grid_problem(src, grid, halo=1)
        if problem:
            raise RsgeeError(f"AOI '{name}', source 'dem_halo': {problem}; re-export it")
    if s1_linear:
        log.warning("AOI '%s': s1.tif looks like linear power, not dB (no negative values); converting with "
                    "10·log10", name)
    return ExportedAOI(name, export.folder, export.manifest_sha256, grid, export.geometry, export.source, s1_linear,
                       export.paths, export.windows)


def _spread_sample(src, windows: int = 8, size: int = 64) -> np.ndarray:
    """Pixels from a ``windows`` × ``windows`` lattice of small windows across the raster.

    Reads a few blocks wherever they lie, in time and memory independent of the raster's size (a
    decimated read of the whole file decodes every block, and GDAL's block cache keeps them).
    """
    def starts(length: int) -> np.ndarray:  # inside one 256-px block each where the raster allows
        if length < TILE_PX:
            return np.array([0])
        blocks = np.unique(np.linspace(0, length // TILE_PX - 1, windows).astype(int))
        return blocks * TILE_PX + (TILE_PX - size) // 2

    size = min(size, src.width, src.height)
    return np.concatenate([src.read(window=Window(int(c), int(r), size, size)).reshape(src.count, -1)
                           for r in starts(src.height) for c in starts(src.width)], axis=1)


def _catalog_problem(src, spec: SourceSpec, source: str) -> str | None:
    """Why a file's bands do not match the catalog source, or None."""
    expected = 1 if source == "dem" else len(spec.bands)
    if src.count != expected:
        return f"{src.count} bands, the catalog says {expected}"
    if src.dtypes[0] != spec.dtype:
        return f"dtype {src.dtypes[0]}, the catalog says {spec.dtype}"
    return None


def candidate_tiles(export: ExportedAOI) -> list[Tile]:
    """Tiles of the AOI's grid that touch the AOI itself (not just its bounding box)."""
    tiles = list(export.grid.tiles())
    boxes = shapely.box(*np.array([t.bounds for t in tiles], dtype=np.float64).T)
    touches = shapely.intersects(to_utm(export.geometry, export.grid.epsg), boxes)
    return [t for t, hit in zip(tiles, touches) if hit]


#: Widest run of tiles one task reads: a worker's memory stays the same however wide the AOI is.
MAX_STRIP_TILES = 16


def strip_runs(tiles: list[Tile]) -> list[tuple[Tile, ...]]:
    """The tiles of one row, west to east, cut into runs spanning at most ``MAX_STRIP_TILES`` columns."""
    runs: list[list[Tile]] = []
    for tile in sorted(tiles, key=lambda t: t.col):
        if runs and tile.col - runs[-1][0].col < MAX_STRIP_TILES:
            runs[-1].append(tile)
        else:
            runs.append([tile])
    return [tuple(run) for run in runs]


@dataclass(frozen=True)
class StripTask:
    """At most ``MAX_STRIP_TILES`` columns of one row of tiles of one AOI, with everything a worker needs."""

    archive_root: Path
    export: ExportedAOI
    strip: int  # tile row within the AOI raster, 0 = north
    tiles: tuple[Tile, ...]
    specs: dict[str, SourceSpec]
    split: SplitConfig
    filters: TileFilters
    max_float_error: float  # > 0: S1 and terrain tiles bounded-lossy (the archive's setting)


@dataclass
class StripResult:
    aoi: str
    features: list[dict]
    rejected: Counter
    error: str | None = None


def build_strip(task: StripTask) -> StripResult:
    """Read, derive, filter and write the tiles of one strip (runs in a worker process)."""
    exp = task.export
    try:
        with rasterio.Env(**GDAL_READ_ENV):
            return _build_strip(task)
    except (rasterio.errors.RasterioError, OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StripResult(exp.name, [], Counter(), f"reading tile row {task.strip} failed ({message}); re-export it")


def _build_strip(task: StripTask) -> StripResult:
    exp, grid = task.export, task.export.grid
    cols = [t.col - grid.col_min for t in task.tiles]
    x0, x1 = min(cols) * TILE_PX, (max(cols) + 1) * TILE_PX
    y0, y1 = task.strip * TILE_PX, (task.strip + 1) * TILE_PX
    blocks = {}
    for source, spec in task.specs.items():
        if source == "terrain":
            continue
        with rasterio.open(exp.paths[source]) as src:
            block = to_catalog_nodata(src.read(window=Window(x0, y0, x1 - x0, y1 - y0)), src.nodata, spec)
        if source == "s1" and exp.s1_linear:
            block = linear_to_db(block, spec.db_floor if spec.db_floor is not None else -50.0)
        blocks[source] = block
    blocks["terrain"] = terrain_window(exp.paths, grid, x0, x1, y0, y1)
    to_lonlat = Transformer.from_crs(grid.epsg, 4326, always_xy=True)
    features, rejected = [], Counter()
    for tile in task.tiles:
        cx = (tile.col - grid.col_min) * TILE_PX - x0
        arrays = {s: b[:, :, cx : cx + TILE_PX] for s, b in blocks.items()}
        valid = {s: valid_fraction(arrays[s], task.specs[s]) for s in arrays}
        bad = [s for s in arrays if 1.0 - valid[s] > task.filters.limit(s)]
        if bad:
            rejected.update(f"{s}_nodata" for s in bad[:1])
            continue
        _write_tile(task, tile, arrays)
        features.append(_feature(task, tile, arrays, valid, to_lonlat))
    return StripResult(exp.name, features, rejected)


def to_catalog_nodata(block: np.ndarray, file_nodata: float | None, spec: SourceSpec) -> np.ndarray:
    """``block`` with the file's declared nodata replaced by the catalog's, where the two differ.

    Earth Engine batch exports of float sources declare the wire fill (-32768) as nodata, while the
    catalog says NaN; the DEM's is handled in :func:`terrain_window`.
    """
    return replace_nodata(block, file_nodata, spec.nodata)


def replace_nodata(block: np.ndarray, file_nodata: float | None, nodata: float) -> np.ndarray:
    """``block`` with the file's declared nodata replaced by ``nodata`` (NaN for floats), where the two differ."""
    if file_nodata is None or file_nodata == nodata or (math.isnan(file_nodata) and math.isnan(nodata)):
        return block
    block[np.isnan(block) if math.isnan(file_nodata) else block == file_nodata] = nodata
    return block


def terrain_window(paths: dict[str, str], grid: Grid, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
    """dem, slope, aspect, hillshade for a window, computed with a 1-px halo of neighbours.

    Inside the AOI raster the halo is read from ``dem.tif``; at the raster border it comes from
    ``dem_halo.tif`` when the export has one (real neighbours), else the border is computed like
    ``gdaldem -compute_edges``.
    """
    if "dem_halo" in paths:  # dem_halo.tif pixel (c, r) is grid pixel (c - 1, r - 1): the ring is always there
        hx0, hy0, hx1, hy1 = x0 - 1, y0 - 1, x1 + 1, y1 + 1
        path, offset = paths["dem_halo"], 1
    else:
        hx0, hy0 = max(x0 - 1, 0), max(y0 - 1, 0)
        hx1, hy1 = min(x1 + 1, grid.width), min(y1 + 1, grid.height)
        path, offset = paths["dem"], 0
    with rasterio.open(path) as src:
        dem = src.read(1, window=Window(hx0 + offset, hy0 + offset, hx1 - hx0, hy1 - hy0)).astype(np.float32)
        nodata = src.nodata
    if nodata is not None and not math.isnan(nodata):
        dem[dem == nodata] = np.nan
    t = terrain(dem, float(grid.transform.a), float(-grid.transform.e), threads=1)  # workers parallelise
    crop = (slice(y0 - hy0, y0 - hy0 + (y1 - y0)), slice(x0 - hx0, x0 - hx0 + (x1 - x0)))
    return np.stack([dem[crop], t.slope[crop], t.aspect[crop], t.hillshade[crop]]).astype(np.float32)


def valid_fraction(array: np.ndarray, spec: SourceSpec) -> float:
    """Share of pixels where every band holds data (not nodata / NaN)."""
    if spec.nodata_is_nan:
        valid = np.isfinite(array).all(axis=0)
    else:
        valid = (array != spec.nodata).all(axis=0)
    return float(np.count_nonzero(valid)) / valid.size


def _write_tile(task: StripTask, tile: Tile, arrays: dict[str, np.ndarray]) -> None:
    archive = Archive(task.archive_root)
    raster = RasterGrid(tile.crs, tile.transform, TILE_PX, TILE_PX)
    tags = {"RSGEE_TILE_ID": tile.id, "RSGEE_AOI": task.export.name, "RSGEE_SOURCE": task.export.provenance,
            "RSGEE_SYNTHETIC": "yes" if task.export.provenance == "synthetic" else "no"}
    for source, spec in task.specs.items():
        units = terrain_units(spec) if source == "terrain" else None
        write_array(archive.tile_path(source, tile.id), arrays[source], spec, raster, tags=tags, units=units,
                    max_z_error=task.max_float_error)


def _feature(task: StripTask, tile: Tile, arrays, valid, to_lonlat: Transformer) -> dict:
    x_min, y_min, x_max, y_max = tile.bounds
    xs, ys = to_lonlat.transform([x_min, x_max, x_max, x_min, x_min], [y_max, y_max, y_min, y_min, y_max])
    ring = [[round(x, 7), round(y, 7)] for x, y in zip(xs, ys)]
    lulc_spec = task.specs["lulc"]
    labels = arrays["lulc"][0]
    n_classes = len(lulc_spec.classes or ())
    hist = np.bincount(labels[labels < n_classes].ravel(), minlength=n_classes)[:n_classes].tolist()
    props = {
        "tile_id": tile.id,
        "aoi": task.export.name,
        "epsg": tile.epsg,
        "col": tile.col,
        "row": tile.row,
        "split": task.split.split_of(tile, task.export.name),
        "block": task.split.block_key(tile, task.export.name),
        "source": task.export.provenance,
        "class_hist": hist,
        "dominant_class": lulc_spec.classes[int(np.argmax(hist))] if n_classes and sum(hist) else None,
    }
    props.update({f"valid_{s}": round(v, 6) for s, v in valid.items()})
    return {"type": "Feature", "id": tile.id, "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}


def build_archive(
    export_paths: Sequence[str | Path], out: str | Path, catalog: Catalog, *, split: SplitConfig = SplitConfig(),
    filters: TileFilters = TileFilters(), workers: int = 1, progress: bool = True,
    max_float_error: float | None = None,
) -> TileSummary:
    """Add the tiles of every export to the archive at ``out`` (created if needed).

    ``max_float_error`` > 0 makes a new archive store its float tiles (S1, terrain) bounded-lossy:
    every value within that absolute error in its band's units, NaN kept (LERC; ~40 % fewer bytes
    per tile at 0.005, see BENCHMARKS "Scale"). The archive records it; None = the archive's setting
    (lossless for a new one).
    """
    if max_float_error is not None and not 0.0 <= max_float_error <= MAX_Z_ERROR_LIMIT:
        raise RsgeeError(f"max_float_error must be within 0…{MAX_Z_ERROR_LIMIT} (0 = lossless), got {max_float_error!r}")
    check_number("--workers", workers, 1, whole=True)
    specs = tile_sources(catalog)
    exports = sorted((open_export(p, specs) for p in find_exports(export_paths)), key=lambda e: e.name)
    names = [e.name for e in exports]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise RsgeeError(f"two export folders hold AOI '{dup}'; tile them into separate archives or rename one")
    archive = Archive(out)
    summary = TileSummary()
    with archive.lock():
        archive.remove_stale_temporaries()
        archive.merge_journal()
        meta = _open_or_create(archive, catalog, split, filters, max_float_error)
        index = archive.read_index()
        tasks, pending = _plan(archive, exports, index, meta, specs, split, filters, summary)
        try:
            _run(archive, tasks, pending, meta, summary, workers, progress)
        finally:
            archive.merge_journal()
        index = archive.read_index()
        summary.index_tiles = len(index)
        summary.splits = Counter(f["properties"]["split"] for f in index.values())
        summary.split_warning = split_warning([f["properties"] for f in index.values()],
                                              list(specs["lulc"].classes) if "lulc" in specs else [],
                                              block=split.block if split.by == "block" else None)
        if summary.split_warning:
            log.warning(summary.split_warning)
        if not stats_are_current(archive):
            compute_stats(archive, workers=workers, progress=progress)
    return summary


def _open_or_create(archive: Archive, catalog: Catalog, split: SplitConfig, filters: TileFilters,
                    max_float_error: float | None) -> dict:
    if not archive.exists():
        archive.save_catalog(catalog)
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "tile_px": TILE_PX,
            "pixel_m": 10,
            "sources": {name: spec.to_dict() for name, spec in tile_sources(catalog).items()},
            "split": split.to_dict(),
            "filters": filters.to_dict(),
            "terrain": {"method": "Horn", "azimuth": 315.0, "altitude": 45.0, "edges": "gdaldem -compute_edges"},
            "max_float_error": float(max_float_error or 0.0),
            "aois": {},
        }
        archive.write_meta(meta)
        return meta
    meta = archive.read_meta()
    if SplitConfig.from_dict(meta["split"]) != split:
        old = meta["split"]
        pins = "".join(f", --split-aoi {aoi}={name}" for aoi, name in old.get("pinned", {}).items()) or ", no AOI pinned"
        raise RsgeeError(
            f"{archive.root} was split with ratios {':'.join(f'{r:g}' for r in old['ratios'])}, by {old['by']}, "
            f"block {old['block']}, seed {old['seed']}{pins}; pass the same split options (tiles never change split) "
            "or build a new archive"
        )
    if without_recipe_keys(archive.catalog().to_dict()["sources"]) != without_recipe_keys(catalog.to_dict()["sources"]):
        raise RsgeeError(f"{archive.root} was built with a different catalog ({archive.catalog_path}); "
                         f"pass --catalog {archive.catalog_path} or build a new archive")
    recorded = recorded_float_error(meta)
    if max_float_error is not None and max_float_error != recorded:
        raise RsgeeError(f"{archive.root} stores float tiles with max float error {recorded!r} (0.0 = lossless); "
                         f"pass --max-float-error {recorded!r} (or leave it out) or build a new archive")
    return meta


def _plan(archive, exports, index, meta, specs, split, filters, summary) -> tuple[list[StripTask], Counter]:
    tasks: list[StripTask] = []
    pending: Counter = Counter()
    claimed: set[str] = set(index)
    for exp in exports:
        done = meta["aois"].get(exp.name)
        if done and done.get("complete"):
            if done["manifest_sha256"] != exp.manifest_sha256:
                log.warning("AOI '%s' was re-exported after it was tiled; its tiles are kept as they are "
                            "(delete them from the archive to rebuild)", exp.name)
            elif "windows" not in done:  # tiled before archive.json recorded windows: same export, so record them
                done["windows"] = exp.windows
            summary.aois_skipped.append(exp.name)
            continue
        by_strip: dict[int, list[Tile]] = {}
        for tile in candidate_tiles(exp):
            if tile.id in index:
                summary.existing += 1
            elif tile.id in claimed:
                summary.duplicate += 1
            else:
                claimed.add(tile.id)
                by_strip.setdefault(exp.grid.row_max - tile.row, []).append(tile)
        meta["aois"][exp.name] = {"manifest_sha256": exp.manifest_sha256, "complete": False, "rejected": {},
                                  "filters": filters.to_dict(), "source": exp.provenance, "windows": exp.windows}
        for strip, tiles in sorted(by_strip.items()):
            for run in strip_runs(tiles):
                tasks.append(StripTask(archive.root, exp, strip, run, specs, split, filters,
                                       recorded_float_error(meta)))
                pending[exp.name] += 1
        if not by_strip:
            meta["aois"][exp.name]["complete"] = True
    archive.write_meta(meta)
    return tasks, pending


def _run(archive, tasks, pending, meta, summary, workers, progress) -> None:
    total = sum(len(t.tiles) for t in tasks)
    bar = tqdm(total=total, desc="tile", unit="tile", disable=not progress, file=sys.stderr)
    rejected: dict[str, Counter] = {name: Counter() for name in pending}
    with archive.journal() as journal:

        def record(task: StripTask, result: StripResult) -> None:
            journal.append(result.features)
            summary.written += len(result.features)
            summary.rejected.update(result.rejected)
            rejected[result.aoi].update(result.rejected)
            bar.update(len(task.tiles))
            if result.error:
                summary.failed.setdefault(result.aoi, result.error)
            pending[result.aoi] -= 1
            if pending[result.aoi] == 0 and result.aoi not in summary.failed:
                meta["aois"][result.aoi].update(complete=True, rejected=dict(sorted(rejected[result.aoi].items())))
                archive.write_meta(meta)

        if workers <= 1:
            for task in tasks:
                record(task, build_strip(task))
        else:
            with process_pool(workers) as pool:
                futures = {pool.submit(build_strip, task): task for task in tasks}
                for future in cf.as_completed(futures):
                    record(futures[future], future.result())
    bar.close()
