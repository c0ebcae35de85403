"""On a GPU: the paper-size models trained for a fixed time each, with their val scores over time beside the baselines.

Builds the experiment archive (``rsgee experiment archive``: 16 synthetic AOIs, ~263 tiles) with the machine's
CPUs, then for each model (pix2pix, RS-SPADE, RS-UNet by default): a probe of ``--probe`` steps measures its
time per step, and a run of as many steps as fill ``--minutes`` follows (cosine schedule over them, learning
rate ``--lr``, the default CUDA precision, one GPU), validated ``--validations`` times. Prints per model the
parameters, steps, images/s, peak GPU memory and every validation's val PSNR (or mIoU) with its wall time,
beside the val baselines (constant-mean, class-mean, class-illumination; majority-class, class-mean-spectrum,
per-pixel-gaussian). With the defaults the whole run takes ~13 minutes of GPU time (archive ~1, 3 × 3 minutes
of training, probes and validation).

On a machine without CUDA it says so and exits 0; ``--cpu --size tiny --minutes 0.1 --archive DIR`` runs the
same code on the CPU (a dry run of the script itself, as CI does). The GPU image has PyTorch and Lightning but
not rasterio, pyproj or shapely: ``make gpu-wheels`` downloads them into ``.whl/`` (README, "On a GPU").

Usage: python benchmarks/gpu_converge.py [--work DIR] [--archive DIR] [--minutes 3] [--size paper]
           [--models pix2pix,rs-spade,rs-unet] [--batch-size 16] [--lr 2e-3] [--cpu]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from rsgee.preprocess.archive import Archive
from rsgee.train.baselines import fusion_baselines, segmentation_baselines
from rsgee.configs import FusionConfig, SegmentationConfig
from rsgee.train.fusion import train_fusion
from rsgee.train.segmentation import train_segmentation
from rsgee.train.trainer import read_metrics, read_run


def config_for(model: str, args, steps: int):
    """The run of ``model`` at ``steps`` optimiser steps, validated about ``--validations`` times."""
    every = max(1, steps // args.validations)
    crop = None if args.size == "paper" else args.crop  # unet_256 needs whole tiles
    if model == "rs-unet":
        return SegmentationConfig(size=args.size, batch_size=args.batch_size, steps=steps, crop=crop, lr=args.lr,
                                  schedule="cosine", val_every_steps=every)
    return FusionConfig(model=model, size=args.size, batch_size=args.batch_size, steps=steps, crop=crop,
                        lr_g=args.lr, lr_d=args.lr, val_every_steps=every, val_figures=0)


def train(model: str, archive: Path, run: Path, config, args) -> float:
    """Train one run afresh; returns its wall time in seconds."""
    shutil.rmtree(run, ignore_errors=True)
    accelerator = "cpu" if args.cpu else "gpu"
    started = time.perf_counter()
    (train_segmentation if model == "rs-unet" else train_fusion)(archive, run, config, accelerator=accelerator,
                                                                  devices=1, progress=False)
    return time.perf_counter() - started


def curve(run: Path, metric: str) -> list[tuple[float, int, float]]:
    """(seconds, steps, value) of every validation of a run."""
    return [(float(r["val/seconds"]), int(float(r["val/steps"])), float(r[metric])) for r in read_metrics(run)
            if r.get(metric) and r.get("val/seconds")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rsgee-gpu-converge"))
    parser.add_argument("--archive", type=Path, default=None, help="an existing archive (default: build the "
                                                                     "experiment archive in --work)")
    parser.add_argument("--models", default="pix2pix,rs-spade,rs-unet")
    parser.add_argument("--size", default="paper", choices=["tiny", "small", "paper"])
    parser.add_argument("--minutes", type=float, default=3.0, help="training time per model")
    parser.add_argument("--probe", type=int, default=20, help="steps of the timing probe per model")
    parser.add_argument("--validations", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=128, help="training crops below the paper size")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a dry run of this script)")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_converge: no CUDA device visible; nothing to do here (run it on a GPU machine, or with --cpu)")
        return 0
    started = time.perf_counter()
    device = "CPU" if args.cpu else torch.cuda.get_device_name(0)
    print(f"machine: {platform.node()} {platform.machine()}, {device}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{dt.datetime.now():%Y-%m-%d %H:%M}", flush=True)
    archive = args.archive
    if archive is None:
        from rsgee.api import experiment_archive

        experiment_archive(args.work, workers=min(16, os.cpu_count() or 1), progress=False)
        archive = args.work / "archive"
    tiles = {s: len(Archive(archive).tiles(s)) for s in ("train", "val", "test")}
    print(f"archive {archive}: {tiles} tiles, built or found in {time.perf_counter() - started:.0f} s", flush=True)
    fusion = {k: float(v["psnr"]) for k, v in fusion_baselines(Archive(archive), "val").items()}
    seg = {k: float(v["miou"]) for k, v in segmentation_baselines(Archive(archive), "val").items()}
    print("val baselines: " + ", ".join(f"{k} {v:.2f} dB" for k, v in fusion.items()) + "; " +
          ", ".join(f"{k} mIoU {v:.3f}" for k, v in seg.items()), flush=True)
    results = []
    for model in args.models.split(","):
        probe = train(model, archive, args.work / "runs" / f"{model}-probe", config_for(model, args, args.probe), args)
        per_step = probe / args.probe  # includes start-up and warm-up: the planned run ends inside its budget
        steps = max(args.probe, int(args.minutes * 60 / per_step))
        if torch.cuda.is_available() and not args.cpu:
            torch.cuda.reset_peak_memory_stats()
        run = args.work / "runs" / model
        seconds = train(model, archive, run, config_for(model, args, steps), args)
        metric = "val/miou" if model == "rs-unet" else "val/psnr"
        points = curve(run, metric)
        info = read_run(run)
        results.append({"model": model, "parameters": sum(info["parameters"].values()) if model == "rs-unet"
                        else info["parameters"]["generator"], "steps": steps, "seconds": seconds,
                        "images_per_s": steps * args.batch_size / points[-1][0] if points else float("nan"),
                        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if not args.cpu else float("nan"),
                        "precision": info["launch"]["precision"], "curve": points, "metric": metric})
        print(f"{model}: {steps} steps in {seconds:.0f} s", flush=True)
    print(f"\n{args.size} size, batch {args.batch_size}, lr {args.lr:g} (cosine), {args.minutes:g} min a model, "
          f"{time.perf_counter() - started:.0f} s in all")
    print("| model | parameters | precision | steps | images/s | peak GPU MiB | val after (s: steps → score) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        points = ", ".join(f"{s:.0f} s: {n} → {v:.{3 if r['metric'] == 'val/miou' else 2}f}" for s, n, v in r["curve"])
        print(f"| {r['model']} | {r['parameters'] / 1e6:.1f} M | {r['precision']} | {r['steps']} | "
              f"{r['images_per_s']:.1f} | {r['peak_mib']:.0f} | {points} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
