"""``rsgee experiment``: the paper's comparisons as controlled experiments, repeated over seeds.

Fusion (Tables 1 and 2): every generator × recipe with all sources (Table 1), and one generator with
its default recipe on each subset of the sources (the ablation, Table 2), each repeated over seeds at
one budget of GAN iterations, scored on the test split beside the ``constant-mean`` and
``class-mean`` baselines, with the raw and the EMA generator weights. Segmentation (Table 3): RS-UNet
on real tiles (1:0) and on the 1:1 real:generated mix, the mix both matched on optimiser steps (the
same number of batches as 1:0) and in the paper's protocol (whole mixed epochs: twice the steps, the
same real-sample exposure), beside ``majority-class`` and ``class-mean-spectrum``.

Every table gives mean ± sd over seeds and the paired difference (same seed) against a reference
arm. A winner is named only where |mean difference| > 2 sd of the paired differences and both arms
learned: they beat ``class-mean`` (a lookup of the land cover; for segmentation, ``majority-class``).
Runs are kept in ``OUT/runs/`` and reused, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from rsgee.errors import RsgeeError
from rsgee.geotiff import atomic_path
from rsgee.preprocess.archive import Archive
from rsgee.train.data import parse_sources
from rsgee.train.evaluate import evaluate_fusion, evaluate_segmentation
from rsgee.train.fusion import DEFAULT_RECIPE, MODELS, RECIPES, FusionConfig, sources_label, train_fusion
from rsgee.train.segmentation import SegmentationConfig, train_segmentation
from rsgee.train.trainer import batches_per_epoch, read_run, train_or_reuse

#: The source subsets of the ablation (Table 2): land cover alone, with SAR, with terrain, and all three.
ABLATION_SOURCES = (("lulc",), ("lulc", "s1"), ("lulc", "terrain"), ("lulc", "s1", "terrain"))
#: The segmentation arms: name → SegmentationConfig changes (``steps`` is filled in with 1:0's batches).
SEG_ARMS = ("real 1:0", "1:1 steps matched", "1:1 paper protocol")


@dataclass
class FusionExperiment:
    """What a fusion experiment trains: ``base`` (one budget for every run) varied by the grid."""

    base: FusionConfig = field(default_factory=lambda: FusionConfig(size="tiny", batch_size=4, epochs=10, crop=64))
    models: tuple[str, ...] = MODELS
    recipes: tuple[str, ...] = tuple(RECIPES)
    ablation_model: str | None = "rs-spade"  # None: no ablation
    ablation_sources: tuple[tuple[str, ...], ...] = ABLATION_SOURCES
    seeds: int = 3

    def __post_init__(self) -> None:
        unknown = [m for m in (*self.models, self.ablation_model or MODELS[0]) if m not in MODELS]
        unknown += [r for r in self.recipes if r not in RECIPES]
        if unknown:
            raise RsgeeError(f"unknown model or recipe {', '.join(unknown)}; models: {', '.join(MODELS)}, recipes: "
                             f"{', '.join(RECIPES)}")
        if self.seeds < 2:
            raise RsgeeError(f"--seeds {self.seeds}: a spread needs at least 2 seeds (3 or more to name a winner)")
        self.ablation_sources = tuple(parse_sources(s) for s in self.ablation_sources)

    def runs(self) -> dict[str, FusionConfig]:
        """Run name → config, Table 1's grid first, then the ablation's (a run in both is trained once)."""
        out = {}
        every = tuple(self.base.sources)
        for recipe in self.recipes:
            for model in self.models:
                for seed in range(self.seeds):
                    out[_run_name(model, recipe, every, seed)] = self._config(model, recipe, every, seed)
        if self.ablation_model:
            recipe = DEFAULT_RECIPE
            for sources in self.ablation_sources:
                for seed in range(self.seeds):
                    out[_run_name(self.ablation_model, recipe, sources, seed)] = self._config(
                        self.ablation_model, recipe, sources, seed)
        return out

    def _config(self, model: str, recipe: str, sources: tuple[str, ...], seed: int) -> FusionConfig:
        fields = {k: getattr(self.base, k) for k in self.base.__dataclass_fields__}
        # the recipe's parts come from the recipe, not from the base's defaults filled in for its own
        for key in RECIPES[recipe]:
            fields[key] = None
        return FusionConfig(**dict(fields, model=model, recipe=recipe, sources=sources, seed=seed))


@dataclass
class ExperimentResult:
    """The tables (Markdown) and the files they were written to."""

    tables: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join(f"{title}\n\n{table}" for title, table in self.tables.items())


def run_fusion_experiment(archive: str | Path, out: str | Path, experiment: FusionExperiment, *,
                          progress: bool = True, say: Callable[[str], None] = print) -> ExperimentResult:
    """Train (or reuse) every run of ``experiment`` on ``archive``, score them, write the tables into ``out``."""
    archive, out = Archive(archive), Path(out)
    archive.read_meta()
    runs = experiment.runs()
    rows, baselines = [], None
    for i, (name, config) in enumerate(runs.items(), 1):
        say(f"[{i}/{len(runs)}] {name}")
        run = train_or_reuse(train_fusion, archive.root, out / "runs" / name, config, progress)
        scored = evaluate_fusion([run], progress=False, baselines=baselines is None)
        if baselines is None:
            baselines = [r for r in scored if r["run"] == "baseline"]
        for row in scored:
            if row["run"] != "baseline":
                rows.append(dict(row, recipe=config.recipe, seed=config.seed))
    floor = next(r["psnr"] for r in baselines if r["model"] == "class-mean")
    base = experiment.base
    iterations = batches_per_epoch(len(archive.tiles("train")), base.batch_size, base.steps_per_epoch, drop_last=True)
    length = f"{base.steps} GAN iterations" if base.steps else f"{base.epochs} epochs × {iterations} GAN iterations"
    budget = (f"{length}, {base.schedule} schedule, augment {base.augment}, "
              f"batch {base.batch_size}, {f'{base.crop}-px crops' if base.crop else 'whole tiles'}, {base.size} models, "
              f"{experiment.seeds} seeds, test split ({baselines[0]['tiles']} tiles)")
    result = ExperimentResult(rows=baselines + rows)
    every = sources_label(base.sources)
    table1 = [r for r in rows if r["sources"] == every and r["model"] in experiment.models
              and r["recipe"] in experiment.recipes]
    result.tables[f"Table 1 — generator × recipe, {budget}"] = _fusion_table(baselines, table1, ("model", "recipe"),
                                                                              floor)
    if len(experiment.models) == 2:
        pairs = []
        for recipe in experiment.recipes:
            for weights in ("raw", "ema"):
                arms = [[r for r in table1 if r["model"] == m and r["recipe"] == recipe and r["weights"] == weights]
                        for m in experiment.models]
                if all(arms):
                    pairs.append(_paired(f"{recipe}, {weights}", *arms, "psnr", floor, experiment.models))
        result.tables[f"Table 1 — paired PSNR difference {' − '.join(experiment.models)} (same recipe, weights, "
                      "seed)"] = _pairs_table(pairs, "dB")
    if experiment.ablation_model:
        model = experiment.ablation_model
        recipe = DEFAULT_RECIPE
        ablation = [r for r in rows if r["model"] == model and r["recipe"] == recipe]
        labels = [sources_label(s) for s in experiment.ablation_sources]
        ablation = [r for r in ablation if r["sources"] in labels]
        result.tables[f"Table 2 — sources ablation, {model} ({recipe} recipe), {budget}"] = _fusion_table(
            baselines, ablation, ("sources",), floor)
        reference = sources_label(max(experiment.ablation_sources, key=len))
        pairs = []
        for label in labels:
            if label == reference:
                continue
            for weights in ("raw", "ema"):
                arms = [[r for r in ablation if r["sources"] == s and r["weights"] == weights] for s in (label, reference)]
                if all(arms):
                    pairs.append(_paired(f"{label}, {weights}", *arms, "psnr", floor, (label, reference)))
        result.tables[f"Table 2 — paired PSNR difference against {reference} (same weights, seed)"] = _pairs_table(
            pairs, "dB")
    result.files = _write(out, "fusion", result)
    return result


def run_seg_experiment(archive: str | Path, out: str | Path, base: SegmentationConfig | None = None, *, seeds: int = 3,
                       progress: bool = True, say: Callable[[str], None] = print) -> ExperimentResult:
    """Train (or reuse) the segmentation arms × seeds on ``archive`` (which must hold generated tiles)."""
    archive, out = Archive(archive), Path(out)
    archive.read_meta()
    if seeds < 2:
        raise RsgeeError(f"--seeds {seeds}: a spread needs at least 2 seeds (3 or more to name a winner)")
    if not archive.generated_meta_path.exists():
        raise RsgeeError(f"{archive.root} holds no generated tiles; run `rsgee generate RUN "
                         f"{archive.root}` first (the 1:1 arms mix them with the real tiles)")
    base = base or SegmentationConfig(size="tiny", batch_size=8, epochs=12, crop=128)
    real_batches = batches_per_epoch(len(archive.tiles("train")), base.batch_size, base.steps_per_epoch, drop_last=False)
    arms = {"real 1:0": replace(base, mix=(1, 0)),
            "1:1 steps matched": replace(base, mix=(1, 1), steps_per_epoch=real_batches),
            "1:1 paper protocol": replace(base, mix=(1, 1), steps_per_epoch=base.steps_per_epoch)}
    rows, baselines = [], None
    for i, arm in enumerate(SEG_ARMS):
        for seed in range(seeds):
            name = f"{arm.replace(' ', '_').replace(':', '-')}_seed{seed}"
            say(f"[{i * seeds + seed + 1}/{len(SEG_ARMS) * seeds}] {name}")
            run = train_or_reuse(train_segmentation, archive.root, out / "runs" / name, replace(arms[arm], seed=seed),
                           progress)
            scored, _ = evaluate_segmentation([run], out / "figures" / name, progress=False,
                                              baselines=baselines is None)
            if baselines is None:
                baselines = [r for r in scored if r["run"] == "baseline"]
            rows += [dict(r, arm=arm, seed=seed, steps=read_run(run).get("global_step"))
                     for r in scored if r["run"] != "baseline"]
    floor = next(r["miou"] for r in baselines if r["training_set"].startswith("majority-class"))
    budget = (f"RS-UNet {base.size}, {base.epochs} epochs, batch {base.batch_size}, "
              f"{f'{base.crop}-px crops' if base.crop else 'whole tiles'}, {seeds} seeds, real test tiles "
              f"({baselines[0]['tiles']})")
    result = ExperimentResult(rows=baselines + rows)
    lines = ["| training set | optimiser steps | mIoU | accuracy | beats majority-class |", "|---|---|---|---|---|"]
    lines += [f"| {r['training_set']} | — | {r['miou']:.4f} | {r['accuracy']:.4f} | |" for r in baselines]
    for arm in SEG_ARMS:
        group = [r for r in rows if r["arm"] == arm]
        lines.append(f"| {arm} | {_mean_sd([r['steps'] for r in group], 0)} | {_mean_sd([r['miou'] for r in group])} | "
                     f"{_mean_sd([r['accuracy'] for r in group])} | "
                     f"{sum(r['miou'] > floor for r in group)}/{len(group)} seeds |")
    result.tables[f"Table 3 — segmentation arms, {budget}"] = "\n".join(lines) + "\n"
    reference = [r for r in rows if r["arm"] == SEG_ARMS[0]]
    pairs = [_paired(arm, [r for r in rows if r["arm"] == arm], reference, "miou", floor, (arm, SEG_ARMS[0]))
             for arm in SEG_ARMS[1:]]
    result.tables[f"Table 3 — paired mIoU difference against {SEG_ARMS[0]} (same seed)"] = _pairs_table(pairs, "")
    result.files = _write(out, "seg", result)
    return result


# -- helpers -----------------------------------------------------------------------------------

def _run_name(model: str, recipe: str, sources: Sequence[str], seed: int) -> str:
    return f"{model}_{recipe}_{sources_label(sources)}_seed{seed}"


def _mean_sd(values: list[float], digits: int = 3) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def _fusion_table(baselines: list[dict], rows: list[dict], keys: tuple[str, ...], floor: float) -> str:
    """Baselines, then one line per arm (mean ± sd over seeds) with how many seeds beat ``class-mean`` (``floor``)."""
    header = [*keys, "weights", "PSNR (dB)", "SSIM", "SAM (rad)", "generator params", "beats class-mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in baselines:
        lines.append("| " + " | ".join([f"{r['model']} (baseline)", *["—"] * len(keys)]) +
                     f" | {r['psnr']:.3f} | {r['ssim']:.4f} | {r['sam']:.4f} | 0 | |")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((*(r[k] for k in keys), r["weights"]), []).append(r)
    for key, group in groups.items():
        psnr = [r["psnr"] for r in group]
        lines.append("| " + " | ".join(str(k) for k in key) + f" | {_mean_sd(psnr)} | "
                     f"{_mean_sd([r['ssim'] for r in group], 4)} | {_mean_sd([r['sam'] for r in group], 4)} | "
                     f"{group[0]['params']} | {sum(p > floor for p in psnr)}/{len(psnr)} seeds |")
    return "\n".join(lines) + "\n"


def _paired(label: str, a: list[dict], b: list[dict], metric: str, floor: float, names: Sequence[str]) -> dict:
    """The paired difference a − b over the seeds both have, and the winner by the 2-sd rule."""
    by_seed = {r["seed"]: r[metric] for r in b}
    differences = [r[metric] - by_seed[r["seed"]] for r in a if r["seed"] in by_seed]
    mean = statistics.mean(differences)
    sd = statistics.stdev(differences) if len(differences) > 1 else float("inf")
    beat = statistics.mean(r[metric] for r in a) > floor and statistics.mean(by_seed.values()) > floor
    if abs(mean) > 2 * sd and beat:
        winner = names[0] if mean > 0 else names[1]
    else:
        winner = "none (|mean| ≤ 2 sd)" if beat else "none (an arm did not learn: not above the baseline)"
    return {"arm": label, "mean": mean, "sd": sd, "seeds": len(differences), "winner": winner}


def _pairs_table(pairs: list[dict], unit: str) -> str:
    lines = [f"| arm | mean ± sd{f' ({unit})' if unit else ''} | seeds | winner |", "|---|---|---|---|"]
    lines += [f"| {p['arm']} | {p['mean']:.3f} ± {p['sd']:.3f} | {p['seeds']} | {p['winner']} |" for p in pairs]
    return "\n".join(lines) + "\n"


def _write(out: Path, kind: str, result: ExperimentResult) -> list[Path]:
    """``<kind>_tables.md`` (every table) and ``<kind>_runs.csv`` (every scored row), atomically."""
    out.mkdir(parents=True, exist_ok=True)
    md, rows_csv = out / f"{kind}_tables.md", out / f"{kind}_runs.csv"
    with atomic_path(md) as tmp:
        tmp.write_text("\n".join(f"## {title}\n\n{table}" for title, table in result.tables.items()), encoding="utf-8")
    columns = list(dict.fromkeys(k for row in result.rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.rows)
    with atomic_path(rows_csv) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return [md, rows_csv]
