"""The first thing to run on a GPU machine: paper-size models for a few steps on every visible GPU.

Builds a small synthetic archive, then trains RS-SPADE, pix2pix and RS-UNet at ``--size paper`` for
a few steps each on all visible GPUs (DDP when there are several) with the default CUDA precision,
and prints, per model: images/s over all GPUs after a warm-up, peak GPU memory of rank 0, and
whether every logged loss was finite; then times ``rsgee predict seg`` and ``predict fusion
--fill-clouds`` of the archive's AOI on one GPU (km²/s). Meant to finish in well under 5 minutes; on a machine without
CUDA it says so and exits 0. ``--cpu --size tiny`` runs the same code on the CPU (a dry run of the
script itself, as CI can do).

Usage: python benchmarks/gpu_smoke.py [--work DIR] [--steps 8] [--warmup 2] [--batch-size 4] [--cpu --size tiny]

Every process of a multi-GPU run re-executes this script (Lightning's launcher); the archive is
built once, by the first process, in ``--work``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import rasterio
import torch

from rsgee.train.distributed import is_main_process
from rsgee.train.data import FusionData
from rsgee.configs import FusionConfig, SegmentationConfig
from rsgee.train.fusion import FusionTask
from rsgee.train.segmentation import SegmentationData, SegmentationTask
from rsgee.train.trainer import default_precision, make_trainer, resolve_launch, seed_everything

AOI = "smoke=10.60,46.60,10.72,46.66"  # ~30 tiles of synthetic Alpine valley


class Timer(L.Callback):
    """Wall time of the batches after the warm-up, on rank 0, with the GPU synchronised."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.batches = warmup, None, None, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if batch_idx + 1 == self.warmup:
            self.start = time.perf_counter()
        elif batch_idx + 1 > self.warmup:
            self.batches += 1
            self.end = time.perf_counter()


def build_archive(work: Path) -> Path:
    from rsgee.acquire.aoi import parse_aois
    from rsgee.acquire.export import export_aois
    from rsgee.acquire.synthetic import SyntheticSource
    from rsgee.catalog import load_catalog
    from rsgee.preprocess.split import SplitConfig
    from rsgee.preprocess.tiling import build_archive as tile

    archive = work / "archive"
    if (archive / "stats.json").exists():
        return archive
    source = SyntheticSource(seed=0, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    export_aois(parse_aois([AOI]), work / "exports", source, load_catalog(), progress=False)
    tile([work / "exports"], archive, load_catalog(), split=SplitConfig(block=1), progress=False)
    return archive


def losses_finite(run: Path) -> bool:
    with open(run / "logs" / "metrics.csv", encoding="utf-8") as handle:
        values = [float(v) for row in csv.DictReader(handle) for k, v in row.items() if k.startswith("train/") and v]
    return bool(values) and all(math.isfinite(v) for v in values)


def smoke(model: str, archive: Path, run: Path, args, launch) -> dict:
    seed_everything(0)
    if is_main_process():
        shutil.rmtree(run, ignore_errors=True)
    if model == "rs-unet":
        config = SegmentationConfig(size=args.size, batch_size=args.batch_size, epochs=1)
        data, kind = SegmentationData(archive, config, progress=False), "segmentation"
        data.prepare_data()
        data.setup()
        task = SegmentationTask(asdict(config))
    else:
        config = FusionConfig(model=model, size=args.size, batch_size=args.batch_size, epochs=1)
        data, kind = FusionData(archive, config.sources, batch_size=args.batch_size, progress=False), "fusion"
        data.prepare_data()
        data.setup()
        task = FusionTask(asdict(config), data.norm)
    trainer = make_trainer(run, kind=kind, max_epochs=1, launch=launch, limit_train_batches=args.warmup + args.steps,
                           limit_val_batches=1, progress=False)
    timer = Timer(args.warmup)
    trainer.callbacks.append(timer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(task, datamodule=data)
    seconds = (timer.end or math.nan) - (timer.start or math.nan)
    images = timer.batches * args.batch_size * trainer.world_size
    return {"model": model, "precision": trainer.precision, "gpus": trainer.world_size,
            "images_per_s": images / seconds if timer.batches else math.nan,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else math.nan,
            "finite": losses_finite(run) if trainer.is_global_zero else None,
            "parameters": sum(p.numel() for p in task.parameters())}


def predict_smoke(archive: Path, args) -> list[dict]:
    """One-step runs of RS-UNet and RS-SPADE, then predict over the archive's AOI on one device, timed."""
    from rsgee.train.fusion import train_fusion
    from rsgee.predict import predict_fusion, predict_seg
    from rsgee.train.segmentation import train_segmentation

    accelerator, device = ("cpu", "cpu") if args.cpu else ("gpu", "cuda")
    export = args.work / "exports" / AOI.split("=")[0]
    runs = args.work / "predict-runs"
    shutil.rmtree(runs, ignore_errors=True)
    seg = train_segmentation(archive, runs / "seg", SegmentationConfig(size=args.size, batch_size=2, epochs=1,
                             steps_per_epoch=1), accelerator=accelerator, devices=1, progress=False)
    gan = train_fusion(archive, runs / "gan", FusionConfig(size=args.size, batch_size=2, epochs=1, steps_per_epoch=1),
                       accelerator=accelerator, devices=1, progress=False)
    results = []
    for kind, predict, run in (("seg", predict_seg, seg), ("fusion --fill-clouds", predict_fusion, gan)):
        options = {"fill_clouds": True} if kind.startswith("fusion") else {}
        started = time.perf_counter()
        result = predict(run, export, runs / f"{kind.split()[0]}.tif", device=device, batch_size=args.batch_size * 4,
                         progress=False, **options)
        seconds = time.perf_counter() - started
        with rasterio.open(result.path) as src:
            pixels = src.width * src.height
        results.append({"kind": kind, "pixels": f"{pixels:,}", "windows": result.windows, "seconds": seconds,
                        "km2_per_s": pixels * 1e-4 / seconds})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rsgee-gpu-smoke"))
    parser.add_argument("--size", default="paper", choices=["tiny", "small", "paper"])
    parser.add_argument("--steps", type=int, default=8, help="timed batches per model (per GPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="per GPU")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a dry run of this script)")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device visible; nothing to do here (run it on a GPU machine, or with --cpu)")
        return 0
    launch = resolve_launch("cpu" if args.cpu else "gpu", "auto", "auto")
    if is_main_process():
        device = "CPU" if args.cpu else f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}"
        print(f"machine: {platform.node()} {platform.machine()}, {device}, torch {torch.__version__}, lightning "
              f"{L.__version__}, default precision: GAN {default_precision('fusion', launch)}, "
              f"RS-UNet {default_precision('segmentation', launch)}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    archive = build_archive(args.work)  # before the first fit: only the launching process gets here first
    results = [smoke(model, archive, args.work / "runs" / model, args, launch)
               for model in ("rs-spade", "pix2pix", "rs-unet")]
    predictions = predict_smoke(archive, args) if is_main_process() else []
    if is_main_process():
        print(f"\n{args.size} size, batch {args.batch_size} per device, {args.steps} timed steps after {args.warmup} "
              f"warm-up, {time.perf_counter() - started:.0f} s in all")
        print("| model | parameters | devices | precision | images/s | peak GPU MiB (rank 0) | losses finite |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['model']} | {r['parameters'] / 1e6:.1f} M | {r['gpus']} | {r['precision']} | "
                  f"{r['images_per_s']:.1f} | {r['peak_mib']:.0f} | {r['finite']} |")
        print("\n| predict | AOI pixels | windows | seconds | km²/s |\n|---|---|---|---|---|")
        for r in predictions:
            print(f"| {r['kind']} | {r['pixels']} | {r['windows']} | {r['seconds']:.1f} | {r['km2_per_s']:.1f} |")
    return 0 if all(r["finite"] is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
