"""``rsgee check``: verify an archive against its own index, splits and statistics."""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import rasterio
from tqdm import tqdm

from rsgee.catalog import SourceSpec
from rsgee.errors import RsgeeError
from rsgee.geotiff import GDAL_READ_ENV
from rsgee.grid import TILE_PX, Tile
from rsgee.preprocess.archive import Archive, CorruptIndex, recorded_float_error
from rsgee.preprocess.cache import MANIFEST, cache_dir, damage, is_current, verify_cache, verify_hashes
from rsgee.preprocess.split import SPLITS, SplitConfig
from rsgee.preprocess.stats import compute_stats
from rsgee.workers import process_pool


@dataclass
class CheckReport:
    tiles: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_archive(root, *, workers: int = 1, progress: bool = True) -> CheckReport:
    """Check every indexed tile's files, the split assignment and stats.json."""
    archive = Archive(root)
    meta = archive.read_meta()
    report = CheckReport()
    try:
        specs = archive.sources()
    except RsgeeError as exc:
        report.problems.append(f"catalog.yaml: {exc}")
        return report
    if archive.journal_path.exists():
        report.problems.append("index.journal exists: a tile run was interrupted; re-run rsgee tile to finish it")
    try:
        index = archive.read_index()
    except CorruptIndex as exc:
        report.problems.append(f"index.geojson unreadable ({exc.reason}); restore it, or rebuild the archive with "
                               "rsgee tile into a new folder")
        return report
    except OSError as exc:
        report.problems.append(f"index.geojson unreadable ({exc})")
        return report
    report.tiles = len(index)
    split = SplitConfig.from_dict(meta["split"])
    _check_splits(index, split, report)
    lossy = recorded_float_error(meta) > 0
    jobs = [(archive.root, tile_id, specs, lossy) for tile_id in sorted(index)]
    bar = tqdm(total=len(jobs), desc="check", unit="tile", disable=not progress, file=sys.stderr)
    tile_problems = []
    with contextlib.ExitStack() as stack:
        if workers <= 1:
            results = map(_check_tile, jobs)
        else:
            results = stack.enter_context(process_pool(workers)).map(_check_tile, jobs, chunksize=16)
        for problems in results:
            tile_problems.extend(problems)
            bar.update(1)
    bar.close()
    report.problems.extend(tile_problems)
    _check_orphans(archive, index, specs, report)
    if tile_problems:
        report.notes.append("stats.json and caches not verified: tile files are damaged")
    else:
        _check_stats(archive, report, workers)
        _check_caches(archive, report)
    return report


def _check_splits(index: dict, split: SplitConfig, report: CheckReport) -> None:
    blocks: dict[str, set[str]] = defaultdict(set)
    for tile_id, feature in index.items():  # read_index checked ids, tile_id, split and AOI
        props = feature["properties"]
        tile = Tile.from_id(tile_id)
        expected = split.split_of(tile, props["aoi"])
        if props["split"] != expected:
            report.problems.append(f"{tile_id}: in split {props['split']} but its block belongs to {expected}")
        blocks[split.block_key(tile, props["aoi"])].add(props["split"])
    for key, names in sorted(blocks.items()):
        if len(names) > 1:
            report.problems.append(f"block {key} straddles splits {', '.join(sorted(names))}")


def _check_tile(job) -> list[str]:
    root, tile_id, specs, lossy = job
    archive = Archive(root)
    tile = Tile.from_id(tile_id)
    problems = []
    with rasterio.Env(**GDAL_READ_ENV), warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # reported as a bad transform
        for name, spec in specs.items():
            path = archive.tile_path(name, tile_id)
            if not path.exists():
                problems.append(f"{tile_id}: {name} file missing ({path})")
                continue
            try:
                with rasterio.open(path) as src:
                    problem = _tile_problem(src, tile, spec, lossy)
                    if problem is None:
                        src.read()  # decodes every block: catches truncated files
            except rasterio.errors.RasterioError as exc:
                problem = f"cannot open or read ({str(exc).splitlines()[0]})"
            if problem:
                problems.append(f"{tile_id}: {name}: {problem}")
    return problems


def _tile_problem(src, tile: Tile, spec: SourceSpec, lossy: bool) -> str | None:
    if (src.count, src.height, src.width) != (len(spec.bands), TILE_PX, TILE_PX):
        return f"shape {(src.count, src.height, src.width)}, expected {(len(spec.bands), TILE_PX, TILE_PX)}"
    if src.dtypes[0] != spec.dtype:
        return f"dtype {src.dtypes[0]}, expected {spec.dtype}"
    if src.crs is None or src.crs.to_epsg() != tile.epsg:
        return f"CRS {src.crs}, expected EPSG:{tile.epsg}"
    if src.transform != tile.transform:
        return f"transform {tuple(src.transform)[:6]}, expected {tuple(tile.transform)[:6]}"
    nodata_ok = (src.nodata is not None and math.isnan(src.nodata)) if spec.nodata_is_nan else src.nodata == spec.nodata
    if not nodata_ok:
        return f"nodata {src.nodata}, expected {spec.nodata}"
    stored_lossy = src.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION", "").startswith("LERC")
    wanted_lossy = lossy and spec.numpy_dtype.kind == "f"  # integer sources are lossless in every archive
    if stored_lossy != wanted_lossy:
        wanted = "bounded-lossy (LERC)" if wanted_lossy else "lossless"
        return f"{'LERC' if stored_lossy else 'lossless'}-compressed, but archive.json says {wanted}"
    return None


def _check_orphans(archive: Archive, index: dict, specs: dict, report: CheckReport) -> None:
    for name in specs:
        folder = archive.root / name
        if not folder.is_dir():
            continue
        orphans = [p.stem for p in folder.glob("*.tif") if p.stem not in index]
        if orphans:
            report.notes.append(f"{name}/: {len(orphans)} file(s) not in the index (left by an interrupted run; "
                                "the next rsgee tile rebuilds or ignores them)")


def _check_stats(archive: Archive, report: CheckReport, workers: int) -> None:
    try:
        stored = archive.stats
    except RsgeeError as exc:  # missing or damaged
        report.problems.append(str(exc))
        return
    fresh = compute_stats(archive, workers=workers, progress=False, write=False)
    if stored.get("tiles_sha256") != fresh["tiles_sha256"]:
        report.problems.append(f"stats.json was computed on {stored.get('tiles')} tiles, not on the current "
                               f"{fresh['tiles']} train tiles; re-run rsgee tile")
        return
    for source, bands in fresh["sources"].items():
        for band, values in bands.items():
            old = stored["sources"].get(source, {}).get(band)
            if not _close(old, values):
                report.problems.append(f"stats.json: {source}.{band} does not match the train tiles")


def _check_caches(archive: Archive, report: CheckReport) -> None:
    """A stale cache is a note (training rebuilds it); a damaged one, or one whose bytes changed, a problem."""
    for split in SPLITS:
        if not (cache_dir(archive, split) / MANIFEST).exists():
            continue
        broken = damage(archive, split)
        if broken:
            report.problems.append(f"cache/{split}: {broken}; run rsgee cache {archive.root} to rebuild it")
        elif not is_current(archive, split):
            report.notes.append(f"cache/{split} is stale; it is rebuilt on next use (or by rsgee cache)")
        elif changed := verify_hashes(archive, split):
            report.problems.extend(f"cache/{split}/{name} differs from what rsgee cache wrote (its sha256); "
                                   f"run rsgee cache {archive.root} --force to rebuild it" for name in changed)
        else:
            report.problems.extend(verify_cache(archive, split))


def _close(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b
