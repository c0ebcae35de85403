"""Per-AOI exports: ``<out>/<aoi>/{s1,s2,lulc,dem}.tif`` plus ``manifest.json``.

A *block source* (synthetic, Earth Engine, local files) yields 256×256 blocks of every requested
catalog source on the AOI's lattice grid; this module writes them into one tiled, compressed
GeoTIFF per source and finishes with the manifest. The manifest is written last and atomically:
an AOI folder without ``manifest.json`` is incomplete, whatever else it holds.

A source may also deliver ``<name>_halo`` blocks with a ring of extra pixels (the Earth Engine
DEM does); they are assembled into ``<name>_halo.tif``, one pixel larger on every side, so that
terrain at the AOI border can use real neighbours.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np
from affine import Affine
from rasterio.windows import Window
from tqdm import tqdm

from rsgee import __version__
from rsgee.acquire.aoi import AOI, safe_name
from rsgee.catalog import Catalog, SourceSpec, without_recipe_keys
from rsgee.errors import GridError, RsgeeError, StorageError
from rsgee.geotiff import RasterGrid, make_folder, open_for_writing, remove_temporaries, write_json_atomic
from rsgee.grid import TILE_PX, Grid, Tile

MANIFEST = "manifest.json"
WORKDIR = ".partial"


class BlockSource(Protocol):
    """Where pixels come from. Implementations: synthetic, Earth Engine, local files."""

    #: Short name recorded in manifests and GeoTIFF tags ("synthetic", "earthengine", "local").
    name: str

    def request(self) -> dict:
        """The parameters that determine the pixels (seed, dates…); equal requests → equal files."""

    def blocks(self, grid: Grid, sources: Sequence[SourceSpec], workdir: Path) -> Iterator[tuple[Tile, dict[str, np.ndarray]]]:
        """Yield every tile of ``grid`` once, with a (bands, 256, 256) array per source name.

        ``workdir`` is a private folder of the AOI for resumable state; it is deleted after a
        complete export. Optional attributes read after the blocks: ``failures`` (block key →
        message, for blocks delivered as nodata) and ``provenance()`` (extra manifest facts).
        """


@dataclass(frozen=True)
class ExportResult:
    """What happened to one AOI: status "written", "up to date" or "failed"."""

    aoi: str
    path: Path
    status: str
    tiles: int
    failed_blocks: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed" and not self.failed_blocks

    def line(self) -> str:
        if self.status == "failed":
            return f"{self.aoi}: FAILED: {self.error}"
        text = f"{self.aoi}: {self.status} ({self.tiles} tiles) → {self.path}"
        if self.counts:
            text += " [blocks " + ", ".join(f"{k} {v}" for k, v in self.counts.items()) + "]"
        if self.failed_blocks:
            first = next(iter(self.failed_blocks.items()))
            text += (f"; {len(self.failed_blocks)} block(s) failed, e.g. {first[0]}: {first[1]} "
                     "(see manifest.json; re-run with --retry-failed)")
        return text


def export_aois(
    aois: Sequence[AOI], out_dir: str | Path, source: BlockSource, catalog: Catalog, *,
    source_names: Sequence[str] | None = None, overwrite: bool = False, retry_failed: bool = False,
    progress: bool = True,
) -> list[ExportResult]:
    """Export every AOI. An AOI that fails (no images, bad request…) is reported and the run goes on; a full or
    read-only disk stops it, since every AOI after would fail the same way."""
    names = list(source_names or catalog.sources)
    specs = [catalog[n] for n in names]
    results = []
    for aoi in aois:
        try:
            results.append(export_aoi(aoi, Path(out_dir), source, catalog, specs, overwrite=overwrite,
                                      retry_failed=retry_failed, progress=progress))
        except StorageError:
            raise
        except RsgeeError as exc:
            results.append(ExportResult(aoi.name, Path(out_dir) / aoi.name, "failed", 0, error=str(exc)))
    return results


def export_aoi(
    aoi: AOI, out_dir: Path, source: BlockSource, catalog: Catalog, specs: Sequence[SourceSpec], *,
    overwrite: bool = False, retry_failed: bool = False, progress: bool = True,
) -> ExportResult:
    """Export one AOI into ``out_dir/<aoi.name>/``."""
    grid = aoi.grid()
    tiles = list(grid.tiles())
    folder = out_dir / aoi.name
    manifest = _manifest(aoi, grid, source, catalog, specs)
    try:
        existing = read_manifest(folder) if (folder / MANIFEST).exists() else None
    except RsgeeError:
        if not overwrite:
            raise
        existing = {}  # damaged: --overwrite replaces it, and any blocks of whatever request it was
    if existing is not None and not overwrite:
        if not _same_request(existing, manifest):
            raise RsgeeError(f"{folder} already holds an export made with different parameters; pass --overwrite "
                             "to replace it or choose another --out")
        failed = existing.get("failed_blocks", {})
        if not (failed and retry_failed):
            return ExportResult(aoi.name, folder, "up to date", len(tiles), failed_blocks=failed)
    make_folder(folder)
    remove_temporaries(folder)  # files a killed run of this AOI was writing
    if overwrite and existing is not None and not _same_request(existing, manifest):
        shutil.rmtree(folder / WORKDIR, ignore_errors=True)  # blocks of another request
    (folder / MANIFEST).unlink(missing_ok=True)  # from here on the folder is incomplete
    with ExitStack() as stack:
        writers: dict[str, object] = {}

        def writer(key: str, spec: SourceSpec, halo: int):
            if key not in writers:
                grown = RasterGrid(grid.crs, grid.transform @ Affine.translation(-halo, -halo),
                                   grid.width + 2 * halo, grid.height + 2 * halo)
                writers[key] = stack.enter_context(
                    open_for_writing(folder / f"{key}.tif", spec, grown, tags=_tags(source, aoi, spec)))
            return writers[key]

        for spec in specs:
            writer(spec.name, spec, 0)
        bar = tqdm(total=len(tiles), desc=f"export {aoi.name}", unit="tile", disable=not progress, file=sys.stderr)
        seen = 0
        blocks = stack.enter_context(closing(source.blocks(grid, specs, folder / WORKDIR)))  # its workers stop first
        for tile, arrays in blocks:
            window = grid.window(tile)
            for spec in specs:
                writer(spec.name, spec, 0).write(_checked_block(arrays, spec, tile, TILE_PX), window=window)
                halo_block = arrays.get(f"{spec.name}_halo")
                if halo_block is not None:
                    halo = (halo_block.shape[-1] - TILE_PX) // 2
                    _checked_block(arrays, spec, tile, TILE_PX + 2 * halo, key=f"{spec.name}_halo")
                    writer(f"{spec.name}_halo", spec, halo).write(
                        halo_block, window=Window(window.col_off, window.row_off, TILE_PX + 2 * halo, TILE_PX + 2 * halo))
            seen += 1
            bar.update(1)
        bar.close()
        if seen != len(tiles):
            raise RsgeeError(f"source {source.name} delivered {seen} of {len(tiles)} blocks")
        halos = sorted(k for k in writers if k.endswith("_halo"))
    failed = dict(sorted(getattr(source, "failures", {}).items()))
    manifest["files"].update({k: dict(manifest["files"][k[: -len("_halo")]], path=f"{k}.tif", halo_px=1) for k in halos})
    if failed:
        manifest["failed_blocks"] = failed
    provenance = getattr(source, "provenance", None)
    if provenance is not None:
        manifest["provenance"].update(provenance())
    write_json_atomic(folder / MANIFEST, manifest)
    if not failed:
        shutil.rmtree(folder / WORKDIR, ignore_errors=True)
    counts = getattr(source, "counts", None)
    return ExportResult(aoi.name, folder, "written", len(tiles), failed_blocks=failed,
                        counts=counts.to_dict() if counts is not None else {})


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a complete export folder, checked where it is read (error if the export is missing,
    unfinished or damaged): every reader may then take its AOI name, grid and file paths as written."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RsgeeError(f"{folder}: no {MANIFEST}, so this export is missing or unfinished; re-run rsgee export") from None
    except (OSError, ValueError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    else:
        problem = _manifest_problem(manifest)
    if problem:
        raise RsgeeError(f"{path} is damaged ({problem}); re-run rsgee export with --overwrite") from None
    return manifest


def _manifest_problem(manifest: object) -> str | None:
    """What makes a parsed manifest unusable, or None.

    The AOI name becomes an archive's AOI and folder names, so it must be a safe name; every file must lie
    in the export folder (a relative path without ``..``) or in a Cloud Storage bucket (``/vsigs/``, a batch
    export's): a manifest never makes rsgee read files elsewhere.
    """
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    aoi = manifest.get("aoi")
    name = aoi.get("name") if isinstance(aoi, dict) else None
    if not isinstance(name, str) or not name or safe_name(name) != name:
        return f"AOI name {name!r} is not a safe name ([A-Za-z0-9._-], no leading dot)"
    if not isinstance(aoi.get("geometry"), dict) or not isinstance(manifest.get("source"), str):
        return "no AOI geometry or no source"
    for key in ("request", "catalog", "provenance", "failed_blocks"):
        if not isinstance(manifest.get(key, {}), dict):
            return f"{key} is not an object"
    try:
        Grid.from_dict(manifest.get("grid"))
    except (GridError, KeyError, TypeError, ValueError):
        return "no valid grid"
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        return "no file list"
    for key, entry in files.items():
        where = entry.get("path", f"{key}.tif")
        inside = isinstance(where, str) and where and not Path(where).is_absolute() and ".." not in Path(where).parts
        if not (inside or (isinstance(where, str) and where.startswith("/vsigs/"))):
            return f"file {key} is at {where!r}, outside the export folder"
    return None


def export_windows(manifest: dict) -> dict[str, list[str]] | None:
    """Date windows ``[start, end)`` (ISO dates, end excluded) per exported source, from the request.

    Earth Engine records one window per source, the synthetic source one for all; local files carry
    no dates, so their exports give None.
    """
    request = manifest.get("request", {})
    if "windows" in request:
        return {name: list(window) for name, window in sorted(request["windows"].items())}
    if "start" in request and "end" in request:
        names = [name for name in manifest.get("files", {}) if not name.endswith("_halo")]
        return {name: [request["start"], request["end"]] for name in sorted(names)}
    return None


def _checked_block(arrays: dict[str, np.ndarray], spec: SourceSpec, tile: Tile, size: int, key: str | None = None) -> np.ndarray:
    block = arrays.get(key or spec.name)
    expected = (len(spec.bands), size, size)
    if block is None or block.shape != expected:
        got = None if block is None else block.shape
        raise RsgeeError(f"block {tile.id} of source {key or spec.name} has shape {got}, expected {expected}")
    if block.dtype != spec.numpy_dtype:
        raise RsgeeError(f"block {tile.id} of source {spec.name} is {block.dtype}, the catalog says {spec.dtype}")
    return block


def _tags(source: BlockSource, aoi: AOI, spec: SourceSpec) -> dict[str, str]:
    synthetic = source.name == "synthetic"
    return {
        "RSGEE_VERSION": __version__,
        "RSGEE_SOURCE": source.name,
        "RSGEE_SYNTHETIC": "yes" if synthetic else "no",
        "RSGEE_AOI": aoi.name,
        "RSGEE_CATALOG_SOURCE": spec.name,
        "RSGEE_COLLECTION": spec.collection,
        "TIFFTAG_IMAGEDESCRIPTION": (
            f"rsgee {'SYNTHETIC ' if synthetic else ''}{spec.name}: {spec.description} ({spec.units})"
        ),
    }


def _manifest(aoi: AOI, grid: Grid, source: BlockSource, catalog: Catalog, specs: Sequence[SourceSpec]) -> dict:
    return {
        "rsgee_version": __version__,
        "aoi": {"name": aoi.name, "area_km2": round(aoi.area_km2, 6), "geometry": aoi.to_geojson()["geometry"]},
        "source": source.name,
        "synthetic": source.name == "synthetic",
        "request": source.request(),
        "grid": grid.to_dict(),
        "catalog": {"path": str(catalog.path), "sources": {s.name: s.to_dict() for s in specs}},
        "files": {
            s.name: {"path": f"{s.name}.tif", "bands": list(s.band_names), "dtype": s.dtype,
                     "nodata": "nan" if s.nodata_is_nan else s.nodata, "units": s.units}
            for s in specs
        },
        "provenance": {
            "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "python": sys.version.split()[0],
        },
    }


def _same_request(old: dict, new: dict) -> bool:
    files = {k: v for k, v in old.get("files", {}).items() if not k.endswith("_halo")}
    old_sources, new_sources = old.get("catalog", {}).get("sources", {}), new["catalog"]["sources"]
    if new.get("source") != "earthengine":  # recipe-only keys change nothing the offline sources deliver
        old_sources, new_sources = without_recipe_keys(old_sources), without_recipe_keys(new_sources)
    return (all(old.get(k) == new.get(k) for k in ("source", "request", "grid")) and files == new["files"]
            and old_sources == new_sources)
