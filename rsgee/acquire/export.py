"""Writing per-AOI exports: ``<out>/<aoi>/{s1,s2,lulc,dem}.tif`` plus ``manifest.json``.

A *block source* (synthetic, Earth Engine, local files) yields 256×256 blocks of every requested
catalog source on the AOI's lattice grid; this module writes them into one tiled, compressed
GeoTIFF per source and finishes with the manifest. The folder's layout and manifest are the
contract of :mod:`rsgee.exports`, which every reader goes through.

A source may also deliver ``<name>_halo`` blocks with a ring of extra pixels (the Earth Engine
DEM does); they are assembled into ``<name>_halo.tif``, one pixel larger on every side, so that
terrain at the AOI border can use real neighbours.
"""

from __future__ import annotations

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

from rsgee.acquire.aoi import AOI
from rsgee.catalog import Catalog, SourceSpec
from rsgee.errors import RsgeeError, StorageError
from rsgee.exports import (WORKDIR, add_halo, existing_manifest, file_tags, mark_incomplete, new_manifest,
                           same_request, write_manifest)
from rsgee.geotiff import RasterGrid, make_folder, open_for_writing, remove_temporaries
from rsgee.grid import TILE_PX, Grid, Tile


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

    def as_dict(self) -> dict:
        """What ``rsgee export --json`` prints for the AOI."""
        return {"aoi": self.aoi, "path": str(self.path), "status": self.status, "ok": self.ok, "tiles": self.tiles,
                "failed_blocks": dict(self.failed_blocks), "counts": dict(self.counts), "error": self.error}

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
    manifest = new_manifest(aoi, grid, source.name, source.request(), catalog, specs)
    try:
        existing = existing_manifest(folder)
    except RsgeeError:
        if not overwrite:
            raise
        existing = {}  # damaged: --overwrite replaces it, and any blocks of whatever request it was
    if existing is not None and not overwrite:
        if not same_request(existing, manifest):
            raise RsgeeError(f"{folder} already holds an export made with different parameters; pass --overwrite "
                             "to replace it or choose another --out")
        failed = existing.get("failed_blocks", {})
        if not (failed and retry_failed):
            return ExportResult(aoi.name, folder, "up to date", len(tiles), failed_blocks=failed)
    make_folder(folder)
    remove_temporaries(folder)  # files a killed run of this AOI was writing
    if overwrite and existing is not None and not same_request(existing, manifest):
        shutil.rmtree(folder / WORKDIR, ignore_errors=True)  # blocks of another request
    mark_incomplete(folder)
    with ExitStack() as stack:
        writers: dict[str, object] = {}

        def writer(key: str, spec: SourceSpec, halo: int):
            if key not in writers:
                grown = RasterGrid(grid.crs, grid.transform @ Affine.translation(-halo, -halo),
                                   grid.width + 2 * halo, grid.height + 2 * halo)
                writers[key] = stack.enter_context(
                    open_for_writing(folder / f"{key}.tif", spec, grown, tags=file_tags(source.name, aoi.name, spec)))
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
    for key in halos:
        add_halo(manifest, key.removesuffix("_halo"), 1)
    if failed:
        manifest["failed_blocks"] = failed
    provenance = getattr(source, "provenance", None)
    if provenance is not None:
        manifest["provenance"].update(provenance())
    write_manifest(folder, manifest)
    if not failed:
        shutil.rmtree(folder / WORKDIR, ignore_errors=True)
    counts = getattr(source, "counts", None)
    return ExportResult(aoi.name, folder, "written", len(tiles), failed_blocks=failed,
                        counts=counts.to_dict() if counts is not None else {})


def _checked_block(arrays: dict[str, np.ndarray], spec: SourceSpec, tile: Tile, size: int, key: str | None = None) -> np.ndarray:
    block = arrays.get(key or spec.name)
    expected = (len(spec.bands), size, size)
    if block is None or block.shape != expected:
        got = None if block is None else block.shape
        raise RsgeeError(f"block {tile.id} of source {key or spec.name} has shape {got}, expected {expected}")
    if block.dtype != spec.numpy_dtype:
        raise RsgeeError(f"block {tile.id} of source {spec.name} is {block.dtype}, the catalog says {spec.dtype}")
    return block
