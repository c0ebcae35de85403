"""``rsgee generate``: a pseudo-Sentinel-2 for every archive tile, from a trained fusion run.

Each tile gets ``ARCHIVE/gen/<tile_id>.tif`` on exactly the grid of its real ``s2`` file (same CRS
and transform), uint16 reflectance × 10000 like the archive's Sentinel-2 (values ≥ 1: 0 stays
nodata), tagged with the run that made it. ``gen/generated.json`` records the run and the checkpoint
(with its hash); re-running skips finished tiles, and tiles made by another run are never mixed in.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from rsgee.errors import RsgeeError, check_number
from rsgee.geotiff import GDAL_READ_ENV, RasterGrid, write_array, write_json_atomic
from rsgee.grid import TILE_PX, Tile
from rsgee.models.normalisation import reflectance_to_s2
from rsgee.preprocess.archive import Archive, file_sha256
from rsgee.preprocess.cache import open_split
from rsgee.preprocess.split import SPLITS
from rsgee.train.data import FusionSamples, collate
from rsgee.train.fusion import load_fusion, reflectance_batch, sources_label
from rsgee.train.distributed import EvenShards
from rsgee.train.trainer import checkpoint_of, read_run, start_processes


@dataclass
class GenerateSummary:
    written: int = 0
    skipped: int = 0
    folder: Path | None = None


def generate(run_dir: str | Path, archive_root: str | Path, *, batch_size: int = 8, overwrite: bool = False,
             progress: bool = True, accelerator: str = "auto", devices: int | str = 1,
             num_nodes: int | str = "auto", weights: str = "raw") -> GenerateSummary:
    """Write gen/<tile_id>.tif for every tile of every split of the archive, with the run's ``raw`` or
    ``ema`` generator weights.

    On several devices each process writes its share of the tiles (each tile once); every process
    returns the totals. The first holds the archive's lock throughout: a second ``generate`` (whose
    ``--overwrite`` would mix two runs' tiles) or ``tile`` on the archive waits or fails meanwhile.
    """
    check_number("--batch-size", batch_size, 1, whole=True)
    run_dir, archive = Path(run_dir), Archive(archive_root)
    archive.read_meta()
    info = read_run(run_dir)
    if info["kind"] != "fusion":
        raise RsgeeError(f"{run_dir} is a {info['kind']} run; rsgee generate needs a fusion run")
    fabric = start_processes(accelerator, devices, num_nodes)
    main = fabric.global_rank == 0
    ckpt = checkpoint_of(run_dir, "best")
    record = {"run": str(run_dir.resolve()), "checkpoint": ckpt.name, "checkpoint_sha256": file_sha256(ckpt),
              "model": info["config"]["model"], "sources": sources_label(info["config"]["sources"]), "weights": weights}
    task = load_fusion(run_dir, weights=weights).to(fabric.device)  # a damaged checkpoint stops it before the claim
    with archive.lock(wait=True) if main else contextlib.nullcontext():
        listed = archive.splits  # and so does a damaged index
        if main:
            _claim(archive, record, overwrite)
        fabric.barrier()  # every process sees what the claim left before listing what is to do
        spec = archive.sources()["s2"]
        tags = {"RSGEE_GENERATED_BY": record["run"], "RSGEE_CHECKPOINT": ckpt.name, "RSGEE_MODEL": record["model"],
                "RSGEE_SOURCES": record["sources"], "RSGEE_WEIGHTS": weights,
                "RSGEE_SYNTHETIC_S2": "generated, not observed"}
        todo = {split: [t for t in listed.get(split, []) if not _done(archive, t)] for split in SPLITS}
        if main:  # the caches built under this process's lock: no other rank waits for it
            for split, tile_ids in todo.items():
                if tile_ids:
                    open_split(archive, split, progress=progress)
        fabric.barrier()  # the lists are taken and the caches current before anyone writes
        written = 0
        bar = tqdm(total=sum(len(v) for v in todo.values()), desc="generate", unit="tile",
                   disable=not progress or not main, file=sys.stderr)
        for split, tile_ids in todo.items():
            if not tile_ids:
                continue
            samples = FusionSamples(archive, split, task.config.sources, info["normalisation"], progress=progress)
            wanted = set(tile_ids)
            indices = [i for i, t in enumerate(samples.packed.tile_ids) if t in wanted]
            shard = EvenShards(torch.utils.data.Subset(samples, indices), fabric.global_rank, fabric.world_size)
            for batch in DataLoader(shard, batch_size=batch_size, collate_fn=collate):
                reflectance = reflectance_batch(task, fabric.to_device(batch["cond"]))
                for tile_id, image, counted in zip(batch["tile_id"], reflectance, batch["counted"].tolist()):
                    if not counted:
                        continue
                    tile = Tile.from_id(tile_id)
                    write_array(archive.generated_path(tile_id), reflectance_to_s2(image), spec,
                                RasterGrid(tile.crs, tile.transform, TILE_PX, TILE_PX), tags=tags)
                    written += 1
                bar.update(int(batch["counted"].sum()) * fabric.world_size)
        bar.close()
        written = int(fabric.all_reduce(torch.tensor(written, device=fabric.device), reduce_op="sum"))
        todo_total = sum(len(v) for v in todo.values())
        return GenerateSummary(written=written, skipped=sum(map(len, listed.values())) - todo_total,
                               folder=archive.generated_dir)


def _claim(archive: Archive, record: dict, overwrite: bool) -> None:
    """gen/ belongs to one run and checkpoint; another run's tiles are replaced only with --overwrite."""
    try:
        previous = archive.generated_record()
    except RsgeeError:
        if not overwrite:
            raise
        previous = {}  # damaged: --overwrite replaces it and the tiles it would have named
    if previous is not None:
        previous.setdefault("weights", "raw")  # gen/ folders written before EMA weights existed
        same = all(previous.get(k) == record[k] for k in ("run", "checkpoint_sha256", "weights"))
        if not same and not overwrite:
            raise RsgeeError(f"{archive.generated_dir} holds tiles generated by {previous.get('run')} "
                             f"({previous.get('checkpoint')}, {previous['weights']} weights); pass "
                             "--overwrite to replace them with these")
        if not same:
            for tif in archive.generated_dir.glob("*.tif"):
                tif.unlink()
    write_json_atomic(archive.generated_meta_path, record)


def _done(archive: Archive, tile_id: str) -> bool:
    path = archive.generated_path(tile_id)
    if not path.exists():
        return False
    try:
        with rasterio.Env(**GDAL_READ_ENV), rasterio.open(path) as src:
            return src.count == 4 and src.width == TILE_PX and src.height == TILE_PX
    except rasterio.errors.RasterioError:
        return False


def read_generated(archive: Archive, tile_id: str) -> np.ndarray:
    """The generated (4, 256, 256) uint16 pseudo-S2 of a tile."""
    with rasterio.Env(**GDAL_READ_ENV), rasterio.open(archive.generated_path(tile_id)) as src:
        return src.read()
