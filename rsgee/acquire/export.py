"""Per-AOI exports: ``<out>/<aoi>/{s1,s2,lulc,dem}.tif`` plus ``manifest.json``.

A *block source* (synthetic, Earth Engine, local files) yields 256×256 blocks of every requested
catalog source on the AOI's lattice grid; this module writes them into one tiled, compressed
GeoTIFF per source and finishes with the manifest. The manifest is written last and atomically:
an AOI folder without ``manifest.json`` is incomplete, whatever else it holds.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from rsgee import __version__
from rsgee.acquire.aoi import AOI
from rsgee.catalog import Catalog, SourceSpec
from rsgee.errors import RsgeeError
from rsgee.geotiff import RasterGrid, open_for_writing, write_json_atomic
from rsgee.grid import Grid, Tile

MANIFEST = "manifest.json"


class BlockSource(Protocol):
    """Where pixels come from. Implementations: synthetic, Earth Engine, local files."""

    #: Short name recorded in manifests and GeoTIFF tags ("synthetic", "earthengine", "local").
    name: str

    def request(self) -> dict:
        """The parameters that determine the pixels (seed, dates…); equal requests → equal files."""

    def blocks(self, grid: Grid, sources: Sequence[SourceSpec]) -> Iterator[tuple[Tile, dict[str, np.ndarray]]]:
        """Yield every tile of ``grid`` once, with a (bands, 256, 256) array per source name."""


@dataclass(frozen=True)
class ExportResult:
    aoi: str
    path: Path
    status: str  # "written" | "up to date"
    tiles: int


def export_aois(
    aois: Sequence[AOI], out_dir: str | Path, source: BlockSource, catalog: Catalog, *,
    source_names: Sequence[str] | None = None, overwrite: bool = False, progress: bool = True,
) -> list[ExportResult]:
    """Export every AOI; an AOI already exported with the same request is left as it is."""
    names = list(source_names or catalog.sources)
    specs = [catalog[n] for n in names]
    return [
        export_aoi(aoi, Path(out_dir), source, catalog, specs, overwrite=overwrite, progress=progress)
        for aoi in aois
    ]


def export_aoi(
    aoi: AOI, out_dir: Path, source: BlockSource, catalog: Catalog, specs: Sequence[SourceSpec], *,
    overwrite: bool = False, progress: bool = True,
) -> ExportResult:
    """Export one AOI into ``out_dir/<aoi.name>/``."""
    grid = aoi.grid()
    folder = out_dir / aoi.name
    manifest = _manifest(aoi, grid, source, catalog, specs)
    existing = read_manifest(folder) if (folder / MANIFEST).exists() else None
    if existing is not None and not overwrite:
        if _same_request(existing, manifest):
            return ExportResult(aoi.name, folder, "up to date", len(list(grid.tiles())))
        raise RsgeeError(
            f"{folder} already holds an export made with different parameters; pass --overwrite to replace it "
            "or choose another --out"
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # from here on the folder is incomplete
    raster = RasterGrid(grid.crs, grid.transform, grid.width, grid.height)
    tiles = list(grid.tiles())
    with ExitStack() as stack:
        writers = {
            spec.name: stack.enter_context(
                open_for_writing(folder / f"{spec.name}.tif", spec, raster, tags=_tags(source, aoi, spec))
            )
            for spec in specs
        }
        bar = tqdm(total=len(tiles), desc=f"export {aoi.name}", unit="tile", disable=not progress, file=sys.stderr)
        seen = 0
        for tile, arrays in source.blocks(grid, specs):
            window = grid.window(tile)
            for spec in specs:
                writers[spec.name].write(_checked_block(arrays, spec, tile), window=window)
            seen += 1
            bar.update(1)
        bar.close()
        if seen != len(tiles):
            raise RsgeeError(f"source {source.name} delivered {seen} of {len(tiles)} blocks for AOI '{aoi.name}'")
    write_json_atomic(folder / MANIFEST, manifest)
    return ExportResult(aoi.name, folder, "written", len(tiles))


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a complete export folder (error if the export is missing or unfinished)."""
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RsgeeError(f"{folder}: no {MANIFEST}, so this export is missing or unfinished; re-run rsgee export") from None
    except (OSError, ValueError) as exc:
        raise RsgeeError(f"{path}: unreadable manifest ({exc}); re-run rsgee export with --overwrite") from None


def _checked_block(arrays: dict[str, np.ndarray], spec: SourceSpec, tile: Tile) -> np.ndarray:
    block = arrays.get(spec.name)
    expected = (len(spec.bands), 256, 256)
    if block is None or block.shape != expected:
        got = None if block is None else block.shape
        raise RsgeeError(f"block {tile.id} of source {spec.name} has shape {got}, expected {expected}")
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
    keys = ("source", "request", "grid", "files")
    return all(old.get(k) == new.get(k) for k in keys) and old.get("catalog", {}).get("sources") == new["catalog"]["sources"]
