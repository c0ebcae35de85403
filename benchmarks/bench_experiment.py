"""The controlled experiment behind the paper's two claims, on the synthetic scene, over seeds.

Fusion (Table 1): every generator × every recipe × ``--seeds`` seeds at an equal budget of GAN
iterations, scored on the test split beside the constant-mean and class-mean baselines; reported as
mean ± sd over seeds, with the paired difference RS-SPADE − pix2pix (same seed, same recipe). A
winner is named only where |mean difference| > 2 sd of the paired differences and both beat
constant-mean. Segmentation (Table 3): RS-UNet on real tiles (1:0) and on the 1:1 mix (tiles generated
by the default RS-SPADE run of seed 0), the mix both matched on optimiser steps and in the paper's
protocol (whole mixed epochs: twice the steps, the same real-sample exposure), beside the
majority-class and class-mean-spectrum baselines; paired differences against 1:0.

The archive is the demo's three AOIs tiled with 1×1 blocks and ratios 5:3:2 (train 29, val 12, test
10). Models are the tiny presets (what a 2-core CPU can train many times); the numbers say what this
set-up supports, not what the paper's GPU-sized models would do.

Usage: python benchmarks/bench_experiment.py [--work DIR] [--seeds 5] [--epochs 10] [--steps 12]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import torch

from rsgee.demo import DEMO_AOIS
from rsgee.preprocess.archive import Archive
from rsgee.train.evaluate import evaluate_fusion, evaluate_segmentation
from rsgee.train.fusion import DEFAULT_RECIPE, MODELS, RECIPES, FusionConfig, train_fusion
from rsgee.train.generate import generate
from rsgee.train.segmentation import SegmentationConfig, train_segmentation


def build(work: Path) -> Path:
    from rsgee.acquire.aoi import parse_aois
    from rsgee.acquire.export import export_aois
    from rsgee.acquire.synthetic import SyntheticSource
    from rsgee.catalog import load_catalog
    from rsgee.preprocess.split import SplitConfig
    from rsgee.preprocess.tiling import build_archive

    archive = work / "archive"
    if not (archive / "stats.json").exists():
        source = SyntheticSource(seed=0, cloud_cover=0.05, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
        export_aois(parse_aois([str(DEMO_AOIS)]), work / "exports", source, load_catalog(), progress=False)
        build_archive([work / "exports"], archive, load_catalog(), split=SplitConfig(ratios=(5, 3, 2), block=1),
                      workers=2, progress=False)
    return archive


def trained(train, archive: Path, run: Path, config) -> Path:
    """Train once; a re-run of the script reuses finished runs."""
    if (run / "run.json").exists() and (run / "checkpoints" / "last.ckpt").exists():
        return run
    return train(archive, run, config, progress=False)


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def verdict(differences: list[float], both_beat_floor: bool, names: tuple[str, str]) -> str:
    mean = statistics.mean(differences)
    sd = statistics.stdev(differences) if len(differences) > 1 else float("inf")
    if abs(mean) > 2 * sd and both_beat_floor:
        return names[0] if mean > 0 else names[1]
    return "none (|mean| ≤ 2 sd" + ("" if both_beat_floor else ", or one does not beat constant-mean") + ")"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rsgee-experiment"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10, help="fusion epochs (the demo's)")
    parser.add_argument("--steps", type=int, default=12, help="fusion batches per epoch (the demo's)")
    parser.add_argument("--seg-epochs", type=int, default=12)
    args = parser.parse_args()
    started = time.perf_counter()
    archive = build(args.work)
    seeds = range(args.seeds)
    print(f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}; archive {archive}", flush=True)

    # -- fusion: generator × recipe × seed at an equal budget ---------------------------------------
    scores: dict[tuple[str, str], list[dict]] = {}
    baselines = None
    for recipe in RECIPES:
        for model in MODELS:
            for seed in seeds:
                config = FusionConfig(model=model, recipe=recipe, size="tiny", batch_size=4, epochs=args.epochs,
                                      steps_per_epoch=args.steps, crop=64, seed=seed)
                run = trained(train_fusion, archive, args.work / "fusion" / f"{model}_{recipe}_{seed}", config)
                rows = evaluate_fusion([run], progress=False, baselines=baselines is None)
                if baselines is None:
                    baselines, rows = rows[:-1], rows[-1:]
                scores.setdefault((model, recipe), []).append(rows[0])
            print(f"  fusion {model} {recipe}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    floor = next(r["psnr"] for r in baselines if r["model"] == "constant-mean")
    print(f"\nFusion, test split ({baselines[0]['tiles']} tiles), {args.epochs}×{args.steps} GAN iterations, "
          f"batch 4, 64-px crops, tiny models, {args.seeds} seeds (mean ± sd):\n")
    print("| generator | recipe | PSNR (dB) | SSIM | SAM (rad) | beats constant-mean |")
    print("|---|---|---|---|---|---|")
    for r in baselines:
        print(f"| {r['model']} (baseline) | — | {r['psnr']:.3f} | {r['ssim']:.4f} | {r['sam']:.4f} | |")
    for (model, recipe), rows in scores.items():
        psnr = [r["psnr"] for r in rows]
        default = " (default)" if DEFAULT_RECIPE[model] == recipe else ""
        print(f"| {model} | {recipe}{default} | {mean_sd(psnr)} | {mean_sd([r['ssim'] for r in rows])} | "
              f"{mean_sd([r['sam'] for r in rows])} | {sum(p > floor for p in psnr)}/{len(psnr)} seeds |")
    print("\nPaired PSNR difference RS-SPADE − pix2pix (same recipe and seed):\n")
    print("| recipe | mean ± sd (dB) | winner |\n|---|---|---|")
    for recipe in RECIPES:
        a, b = ([r["psnr"] for r in scores[(m, recipe)]] for m in ("rs-spade", "pix2pix"))
        differences = [x - y for x, y in zip(a, b)]
        beat = statistics.mean(a) > floor and statistics.mean(b) > floor
        print(f"| {recipe} | {mean_sd(differences)} | {verdict(differences, beat, ('rs-spade', 'pix2pix'))} |")

    # -- segmentation arms ---------------------------------------------------------------------------
    generator_run = args.work / "fusion" / f"rs-spade_{DEFAULT_RECIPE['rs-spade']}_0"
    generate(generator_run, archive, progress=False, overwrite=True)
    n_train = len(Archive(archive).tiles("train"))
    batches = -(-n_train // 8)  # 1:0 batches per epoch at batch 8
    arms = {"real only 1:0": dict(mix=(1, 0)),
            "1:1, steps matched": dict(mix=(1, 1), steps_per_epoch=batches),
            "1:1, paper protocol (2× steps, same real exposure)": dict(mix=(1, 1))}
    seg: dict[str, list[dict]] = {}
    seg_baselines = None
    for arm, options in arms.items():
        for seed in seeds:
            config = SegmentationConfig(size="tiny", batch_size=8, epochs=args.seg_epochs, crop=128, seed=seed, **options)
            name = arm.split(",")[0].replace(" ", "_").replace(":", "-") + ("_steps" if "matched" in arm else "")
            run = trained(train_segmentation, archive, args.work / "seg" / f"{name}_{seed}", config)
            rows, _ = evaluate_segmentation([run], args.work / "seg-eval", progress=False,
                                            baselines=seg_baselines is None)
            if seg_baselines is None:
                seg_baselines, rows = rows[:-1], rows[-1:]
            seg.setdefault(arm, []).append(rows[0])
        print(f"  seg {arm}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\nSegmentation, real test tiles ({seg_baselines[0]['tiles']}), RS-UNet tiny, {args.seg_epochs} epochs, "
          f"batch 8, 128-px crops, {args.seeds} seeds (mean ± sd):\n")
    print("| training set | mIoU | accuracy |\n|---|---|---|")
    for r in seg_baselines:
        print(f"| {r['training_set']} | {r['miou']:.4f} | {r['accuracy']:.4f} |")
    for arm, rows in seg.items():
        print(f"| {arm} | {mean_sd([r['miou'] for r in rows])} | {mean_sd([r['accuracy'] for r in rows])} |")
    print("\nPaired mIoU difference against real only 1:0 (same seed):\n")
    print("| arm | mean ± sd | better than 1:0 |\n|---|---|---|")
    real = [r["miou"] for r in seg["real only 1:0"]]
    for arm, rows in list(seg.items())[1:]:
        differences = [r["miou"] - x for r, x in zip(rows, real)]
        print(f"| {arm} | {mean_sd(differences)} | {verdict(differences, True, ('yes', 'no, worse'))} |")
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
