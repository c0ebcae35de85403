"""``rsgee demo``: the whole paper pipeline on the offline synthetic source, small enough for a laptop CPU.

export (synthetic AOIs of rsgee/demo_aois.geojson) → tile → train fusion (RS-SPADE and pix2pix, tiny)
→ evaluate fusion → generate (RS-SPADE) → train seg (1:0 and 1:1, tiny) → evaluate seg. Every step
reuses what an earlier, possibly interrupted, run left: exports and tiles are skipped, trainings
resume from their last checkpoint, generated tiles are kept. The synthetic scene checks the pipeline,
not the paper's numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rsgee.errors import RsgeeError

log = logging.getLogger("rsgee")

#: The AOIs the demo exports (three synthetic landscapes: mountains, a lowland, a lake plain).
DEMO_AOIS = Path(__file__).resolve().parent / "demo_aois.geojson"


@dataclass
class DemoSettings:
    """Sizes of the demo: tiny models trained just long enough to learn, so the pipeline fits in minutes on 2 cores.

    The budgets, learning rates and schedules were chosen on the demo's val split (BENCHMARKS.md,
    "Convergence"); the test split is only scored.
    """

    seed: int = 0
    cloud_cover: float = 0.05
    split_block: int = 1
    split_ratios: tuple[float, float, float] = (5.0, 3.0, 2.0)  # val 12 and test 10 of the 51 tiles
    fusion_steps: int = 2000  # optimiser steps (GAN iterations) of each generator
    fusion_batch: int = 4
    fusion_crop: int = 64
    # the recipes' learning rates are made for 10⁵+ iterations; for 2,000 the generators learn far more at this
    # rate, decayed to 0 along a cosine; every other part of each model's recipe is kept
    fusion_lr: float | None = 2e-3
    fusion_schedule: str = "cosine"
    fusion_val_every: int = 100  # epochs (7 steps each); the last step is always validated
    seg_steps: int = 400
    seg_batch: int = 8
    seg_crop: int = 128
    seg_lr: float = 2e-3
    seg_schedule: str = "constant"
    workers: int = 2


@dataclass
class DemoResult:
    fusion_table: list[dict] = field(default_factory=list)
    seg_table: list[dict] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings(), *, aois: str | Path = DEMO_AOIS,
             progress: bool = True, say=print) -> DemoResult:
    """Run (or resume) every step of the demo into ``out``."""
    from rsgee.optional import require

    require("train")  # before minutes of export and tiling, not after
    from rsgee.acquire import WINDOW
    from rsgee.acquire.aoi import parse_aois
    from rsgee.acquire.export import export_aois
    from rsgee.acquire.synthetic import SyntheticSource
    from rsgee.catalog import load_catalog
    from rsgee.configs import FusionConfig, SegmentationConfig
    from rsgee.preprocess.check import check_archive
    from rsgee.preprocess.split import SplitConfig
    from rsgee.preprocess.tiling import build_archive
    from rsgee.train.evaluate import (FUSION_COLUMNS, FUSION_HEADERS, SEG_COLUMNS, SEG_HEADERS, evaluate_fusion,
                                      evaluate_segmentation, write_table)
    from rsgee.train.fusion import train_fusion
    from rsgee.train.generate import generate
    from rsgee.train.segmentation import train_segmentation
    from rsgee.train.trainer import train_or_reuse

    out, s, result = Path(out), settings, DemoResult()
    catalog = load_catalog()
    say("1/7 export: synthetic AOIs (offline stand-in for Earth Engine)")
    source = SyntheticSource(seed=s.seed, cloud_cover=s.cloud_cover, start=WINDOW[0], end=WINDOW[1])
    for r in export_aois(parse_aois([str(aois)]), out / "exports", source, catalog, progress=progress):
        if not r.ok:
            raise RsgeeError(r.line())
        say(f"    {r.line()}")
    say("2/7 tile: archive with terrain, filters, splits, stats")
    summary = build_archive([out / "exports"], out / "archive", catalog, split=SplitConfig(s.split_ratios,
                            block=s.split_block, seed=s.seed), workers=s.workers, progress=progress)
    for line in summary.lines():
        say(f"    {line}")
    report = check_archive(out / "archive", workers=s.workers, progress=False)
    if not report.ok:
        raise RsgeeError(f"the demo archive failed its check: {report.problems[0]}")
    archive = out / "archive"
    runs = out / "runs"
    fusion_runs = {}
    for step, model in (("3/7", "rs-spade"), ("3/7", "pix2pix")):
        config = FusionConfig(model=model, size="tiny", batch_size=s.fusion_batch, steps=s.fusion_steps,
                              crop=s.fusion_crop, seed=s.seed, lr_g=s.fusion_lr, lr_d=s.fusion_lr,
                              schedule=s.fusion_schedule, val_every=s.fusion_val_every)
        say(f"{step} train fusion: {model} (tiny, {config.recipe} recipe, lr {config.lr_g:g} with a {config.schedule} "
            f"schedule, {s.fusion_steps} steps of {s.fusion_batch} × {s.fusion_crop}-px crops, no flips/rotations)")
        fusion_runs[model] = train_or_reuse(train_fusion, archive, runs / model, config, progress)
    say("4/7 evaluate fusion on the test split (Table 1)")
    result.fusion_table = evaluate_fusion(list(fusion_runs.values()), progress=progress)
    result.tables += write_table(result.fusion_table, out / "evaluation", "fusion_table", FUSION_COLUMNS, FUSION_HEADERS)
    say("5/7 generate pseudo-Sentinel-2 for every tile with RS-SPADE")
    generated = generate(fusion_runs["rs-spade"], archive, progress=progress)
    say(f"    {generated.written} generated, {generated.skipped} already there → {generated.folder}")
    seg_runs = []
    for mix in ((1, 0), (1, 1)):
        say(f"6/7 train seg: RS-UNet, mix {mix[0]}:{mix[1]} (tiny, lr {s.seg_lr:g} with a {s.seg_schedule} schedule, "
            f"{s.seg_steps} steps of {s.seg_batch} × {s.seg_crop}-px crops)")
        config = SegmentationConfig(mix=mix, size="tiny", batch_size=s.seg_batch, steps=s.seg_steps, crop=s.seg_crop,
                                    lr=s.seg_lr, schedule=s.seg_schedule, seed=s.seed)
        seg_runs.append(train_or_reuse(train_segmentation, archive, runs / f"seg_{mix[0]}_{mix[1]}", config, progress))
    say("7/7 evaluate seg on real test tiles (Table 3, Figures 8 and 9)")
    result.seg_table, result.figures = evaluate_segmentation(seg_runs, out / "evaluation", progress=progress)
    result.tables += write_table(result.seg_table, out / "evaluation", "seg_table", SEG_COLUMNS, SEG_HEADERS)
    result.figures += sorted((runs / "rs-spade" / "val").glob("*.png"))[-1:]
    return result
