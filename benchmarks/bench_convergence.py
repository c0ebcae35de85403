"""How many optimiser steps — and how much wall time — each generator needs to pass ``class-mean``, side by side.

Trains pix2pix, RS-SPADE (the paper's U-Net form) and the SPADE decoder on one archive with one recipe, one
learning-rate schedule and the same budgets of optimiser steps (each budget a run of its own, so a decaying
schedule ends where the run does), then scores each run's final weights (raw and EMA) on the val split beside
the baselines ``constant-mean``, ``class-mean`` and ``class-illumination`` on the same tiles. Prints one row
per model and budget (wall time of the training, seconds per step, val PSNR) and, per model, the wall time of
the first budget whose val PSNR beats ``class-mean`` ("time to pass class-mean"). Val only: test tiles are
never looked at here. Every run is kept in ``--out`` and reused when the script runs again with the same
settings (its wall time is then the one recorded in the run).

Without ``--archive`` the demo's archive is built first (its three synthetic AOIs, 1×1 split blocks at 5:3:2).

Usage: python benchmarks/bench_convergence.py [--archive DIR] [--out DIR] [--models rs-spade,pix2pix,spade-decoder]
           [--budgets 250,500,1000,2000] [--recipe pix2pix] [--lr 1e-3] [--schedule cosine] [--augment none]
           [--crop 64] [--batch-size 4] [--size tiny] [--seeds 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from rsgee.preprocess.archive import Archive
from rsgee.train.baselines import fusion_baselines
from rsgee.train.evaluate import evaluate_fusion
from rsgee.configs import FusionConfig, MODELS
from rsgee.train.fusion import train_fusion
from rsgee.train.trainer import read_run, write_run


def demo_archive(folder: Path) -> Path:
    """The demo's archive (export + tile only), built in ``folder`` unless it is there already."""
    from rsgee.acquire.aoi import parse_aois
    from rsgee.acquire.export import export_aois
    from rsgee.acquire.synthetic import SyntheticSource
    from rsgee.catalog import load_catalog
    from rsgee.demo import DEMO_AOIS, DemoSettings
    from rsgee.preprocess.split import SplitConfig
    from rsgee.preprocess.tiling import build_archive

    settings, catalog = DemoSettings(), load_catalog()
    source = SyntheticSource(seed=settings.seed, cloud_cover=settings.cloud_cover, start=dt.date(2023, 6, 1),
                             end=dt.date(2023, 9, 1))
    for result in export_aois(parse_aois([str(DEMO_AOIS)]), folder / "exports", source, catalog, progress=False):
        if not result.ok:
            raise SystemExit(result.line())
    build_archive([folder / "exports"], folder / "archive", catalog, progress=False,
                  split=SplitConfig(settings.split_ratios, block=settings.split_block, seed=settings.seed))
    return folder / "archive"


def train_timed(archive: Path, run: Path, config: FusionConfig) -> float:
    """Train ``config`` into ``run`` (or reuse it) and return the training's wall time in seconds."""
    if (run / "run.json").exists() and read_run(run).get("bench_seconds") is not None:
        info = read_run(run)
        if info["config"] == json.loads(json.dumps(config.__dict__)):
            return float(info["bench_seconds"])
    start = time.perf_counter()
    train_fusion(archive, run, config, progress=False)
    seconds = time.perf_counter() - start
    write_run(run, dict(read_run(run), bench_seconds=seconds))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench-convergence"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--budgets", default="250,500,1000,2000", help="Optimiser steps of each run.")
    parser.add_argument("--recipe", default="pix2pix")
    parser.add_argument("--lr", type=float, default=1e-3, help="Learning rate of G and D (both).")
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--augment", default="none")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--sources", default="lulc,s1,terrain")
    args = parser.parse_args()

    torch.set_num_threads(torch.get_num_threads())
    archive = args.archive or demo_archive(args.out / "demo")
    val = fusion_baselines(Archive(archive), "val")
    floor = float(val["class-mean"]["psnr"])
    models, budgets = args.models.split(","), [int(b) for b in args.budgets.split(",")]
    print(f"# {platform.node()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {dt.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# archive {archive}: recipe {args.recipe}, lr {args.lr:g}, schedule {args.schedule}, augment "
          f"{args.augment}, batch {args.batch_size}, {args.crop}-px crops, {args.size} models, {args.seeds} seed(s)")
    print("\nval baselines: " + ", ".join(f"{name} {float(v['psnr']):.2f} dB" for name, v in val.items()))
    print("\n| model | steps | seed | train s | s/step | val PSNR raw | val PSNR EMA | beats class-mean |")
    print("|---|---|---|---|---|---|---|---|")
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for model in models:
        for budget in budgets:
            for seed in range(args.seeds):
                config = FusionConfig(model=model, recipe=args.recipe, sources=tuple(args.sources.split(",")),
                                      size=args.size, batch_size=args.batch_size, steps=budget, crop=args.crop,
                                      lr_g=args.lr, lr_d=args.lr, schedule=args.schedule, augment=args.augment,
                                      seed=seed, val_every=10**6, val_figures=0)
                run = args.out / f"{model}_{args.recipe}_{args.schedule}_{args.augment}_lr{args.lr:g}_{budget}_seed{seed}"
                seconds = train_timed(archive, run, config)
                rows = evaluate_fusion([run], split="val", progress=False, baselines=False)
                psnr = {r["weights"]: r["psnr"] for r in rows}
                results.setdefault((model, budget), []).append((seconds, psnr["raw"], psnr.get("ema", float("nan"))))
                best = max(psnr.values())
                print(f"| {model} | {budget} | {seed} | {seconds:.0f} | {seconds / budget:.3f} | {psnr['raw']:.2f} | "
                      f"{psnr.get('ema', float('nan')):.2f} | {'yes' if best > floor else 'no'} |", flush=True)
    print("\n| model | steps | mean train s | val PSNR raw (mean ± sd) | val PSNR EMA (mean ± sd) |")
    print("|---|---|---|---|---|")
    for (model, budget), values in results.items():
        print(f"| {model} | {budget} | {statistics.mean(v[0] for v in values):.0f} | {_mean_sd([v[1] for v in values])} "
              f"| {_mean_sd([v[2] for v in values])} |")
    print(f"\ntime to pass class-mean ({floor:.2f} dB on val; raw or EMA, mean over seeds):")
    for model in models:
        passed = [(b, statistics.mean(v[0] for v in results[(model, b)])) for b in budgets
                  if statistics.mean(max(v[1], v[2]) for v in results[(model, b)]) > floor]
        print(f"  {model}: " + (f"{passed[0][0]} steps, {passed[0][1]:.0f} s of training" if passed
                                else f"not within {budgets[-1]} steps"))


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


if __name__ == "__main__":
    main()
