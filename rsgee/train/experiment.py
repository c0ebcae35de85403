"""``rsgee experiment``: the paper's three tables as controlled experiments, repeated over seeds.

Fusion (Tables 1 and 2): every generator × recipe with all sources at one budget of optimiser steps
(Table 1), then the generator that scored best on the val split with the default recipe on each subset of
the sources (the ablation, Table 2). Every run is scored once on the test split and on val (where its
budget is judged: has it learned, i.e. beaten ``class-mean``?), with the raw and the EMA weights, beside
the baselines on the same tiles — and, in Table 2, beside each source set's per-class least-squares
reference (:data:`rsgee.train.baselines.LINEAR_REFERENCES`): what an ideal model of those inputs reaches.

Segmentation (Table 3), two protocols. The paper's: RS-UNet on every real train tile (1:0) against the
1:1 mix with their generated twins, matched on optimiser steps, and with twice the steps (the same real
exposure as whole mixed epochs). The low-label one, where the paper's motivation (scarce clear optical
images) lives: RS-UNet on k real labelled tiles against those k plus generated Sentinel-2 for the other
train tiles, whose real Sentinel-2 is withheld, steps matched; the generator is trained on the k tiles'
real pairs only. Each generator's tiles go into a hard-linked copy of the archive of their own. Scores:
mIoU and accuracy on real test tiles, and the steps each run needed to reach a fixed val mIoU (the paper's
Figure 8), beside baselines learnt from the same tiles.

Every table gives mean ± sd over seeds and paired differences (same seed). A winner is named only where
|mean difference| > 2 sd of the paired differences and both arms learned: they beat ``class-mean`` (fusion)
or ``class-mean-spectrum`` (segmentation) on val and on test. Runs are kept in ``OUT/runs/`` and reused,
so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from rsgee.configs import DEFAULT_RECIPE, MODELS, RECIPES, FusionConfig, SegmentationConfig, parse_sources
from rsgee.errors import RsgeeError
from rsgee.geotiff import atomic_path
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.cache import open_split
from rsgee.train.baselines import LINEAR_REFERENCES, fusion_baselines, segmentation_baselines
from rsgee.train.data import train_subset
from rsgee.train.evaluate import evaluate_fusion, evaluate_segmentation
from rsgee.train.fusion import sources_label, train_fusion
from rsgee.train.generate import generate
from rsgee.train.segmentation import train_segmentation
from rsgee.train.trainer import read_metrics, read_run, train_or_reuse

#: The reference each source set of the ablation is read against.
SOURCE_REFERENCE = {"lulc": "class-mean", "lulc+s1": "class-sar", "lulc+dem": "class-illumination",
                    "lulc+s1+dem": "class-illumination-sar"}


@dataclass
class FusionExperiment:
    """What a fusion experiment trains: ``base`` (one budget for every run) varied by the grid (the defaults of
    every field: :func:`rsgee.api.experiment_fusion`).

    ``ablation_model`` ``"best"`` takes the Table 1 generator with the highest mean val PSNR (default recipe).
    """

    base: FusionConfig
    models: tuple[str, ...]
    recipes: tuple[str, ...]
    ablation_model: str | None  # a model name, "best", or None: no ablation
    ablation_sources: tuple[tuple[str, ...], ...]
    seeds: int

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in MODELS]
        unknown += [self.ablation_model] if self.ablation_model not in (*MODELS, "best", None) else []
        unknown += [r for r in self.recipes if r not in RECIPES]
        if unknown:
            raise RsgeeError(f"unknown model or recipe {', '.join(unknown)}; models: {', '.join(MODELS)}, recipes: "
                             f"{', '.join(RECIPES)}")
        if self.seeds < 2:
            raise RsgeeError(f"--seeds {self.seeds}: a spread needs at least 2 seeds (3 or more to name a winner)")
        self.ablation_sources = tuple(parse_sources(s) for s in self.ablation_sources)

    def table1(self) -> dict[str, FusionConfig]:
        """Run name → config of Table 1: every generator × recipe with all the base's sources."""
        every = tuple(self.base.sources)
        return {_run_name(model, recipe, every, seed): self.config(model, recipe, every, seed)
                for recipe in self.recipes for model in self.models for seed in range(self.seeds)}

    def table2(self, model: str) -> dict[str, FusionConfig]:
        """Run name → config of the ablation with ``model`` (a run also in Table 1 has the same name)."""
        return {_run_name(model, DEFAULT_RECIPE, sources, seed): self.config(model, DEFAULT_RECIPE, sources, seed)
                for sources in self.ablation_sources for seed in range(self.seeds)}

    def config(self, model: str, recipe: str, sources: tuple[str, ...], seed: int) -> FusionConfig:
        fields = {k: getattr(self.base, k) for k in self.base.__dataclass_fields__}
        # the recipe's parts come from the recipe, not from the base's defaults filled in for its own; the
        # base's learning rates are the budget's and hold for every recipe
        for key in RECIPES[recipe]:
            if key not in ("lr_g", "lr_d"):
                fields[key] = None
        return FusionConfig(**dict(fields, model=model, recipe=recipe, sources=sources, seed=seed))

    def budget(self, archive: Archive) -> str:
        b = self.base
        return (f"{b.steps or b.epochs} {'steps' if b.steps else 'epochs'} at lr {b.lr_g:g}/{b.lr_d:g} ({b.schedule}), "
                f"augment {b.augment}, batch {b.batch_size}, {f'{b.crop}-px crops' if b.crop else 'whole tiles'}, "
                f"{b.size} models, {self.seeds} seeds, "
                f"{f'checkpoint chosen on val every {b.val_every_steps} steps' if b.val_every_steps else 'last step'}, "
                f"train {len(archive.tiles('train'))} / val "
                f"{len(archive.tiles('val'))} / test {len(archive.tiles('test'))} tiles")


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
    references = tuple(LINEAR_REFERENCES)
    baselines = {split: fusion_baselines(archive, split, references=references) for split in ("val", "test")}
    floors = {split: float(values["class-mean"]["psnr"]) for split, values in baselines.items()}
    rows: list[dict] = []
    runs = experiment.table1()
    _train_and_score(archive, out, runs, rows, say, progress)
    result = ExperimentResult()
    parts = {"Table 1": set(runs)}
    budget = experiment.budget(archive)
    every = sources_label(experiment.base.sources)
    table1 = [r for r in rows if r["sources"] == every]
    result.tables[f"Table 1 — generators, {budget}"] = _fusion_table(baselines, table1, ("model", "recipe"),
                                                                     ("class-mean", "class-illumination"))
    pairs = [_paired(f"{a} − {b}, {recipe}, {weights}", [r for r in table1 if r["model"] == a], [r for r in table1
                     if r["model"] == b], recipe, weights, floors, (a, b))
             for recipe in experiment.recipes for i, a in enumerate(experiment.models)
             for b in experiment.models[i + 1:] for weights in ("raw", "ema")]
    result.tables["Table 1 — paired test PSNR differences (same recipe, weights, seed)"] = _pairs_table(pairs, "dB")
    if experiment.ablation_model:
        model = experiment.ablation_model
        if model == "best":
            val = {m: statistics.mean(r["val_psnr"] for r in table1 if r["model"] == m and r["recipe"] == DEFAULT_RECIPE
                                      and r["weights"] == "raw") for m in experiment.models}
            model = max(val, key=val.get)
            say(f"ablation with {model}: the best mean val PSNR of Table 1 ({val[model]:.2f} dB)")
        ablation_runs = experiment.table2(model)
        _train_and_score(archive, out, ablation_runs, rows, say, progress)
        parts["Table 2 (its runs not in Table 1)"] = set(ablation_runs) - set(runs)
        labels = [sources_label(s) for s in experiment.ablation_sources]
        ablation = [r for r in rows if r["model"] == model and r["recipe"] == DEFAULT_RECIPE and r["sources"] in labels]
        result.tables[f"Table 2 — sources ablation, {model} ({DEFAULT_RECIPE} recipe), {budget}"] = _fusion_table(
            baselines, ablation, ("sources",), ("class-mean", "class-sar", "class-illumination", "class-illumination-sar"),
            reference_of=lambda r: SOURCE_REFERENCE.get(r["sources"]))
        reference = sources_label(max(experiment.ablation_sources, key=len))
        pairs = [_paired(f"{label} − {reference}, {weights}", [r for r in ablation if r["sources"] == label],
                         [r for r in ablation if r["sources"] == reference], DEFAULT_RECIPE, weights, floors,
                         (label, reference))
                 for label in labels if label != reference for weights in ("raw", "ema")]
        result.tables[f"Table 2 — paired test PSNR differences against {reference} (same weights, seed)"] = \
            _pairs_table(pairs, "dB")
    seconds = {r["run_name"]: r["train_seconds"] for r in rows}
    result.tables["Training time"] = _time_table({part: [seconds[n] for n in names] for part, names in parts.items()})
    result.rows = [{"model": name, "split": split, **{k: float(v) for k, v in values.items() if k in ("psnr", "ssim",
                                                                                                       "sam")}}
                   for split, scores in baselines.items() for name, values in scores.items()] + rows
    result.files = _write(out, "fusion", result)
    return result


def _train_and_score(archive: Archive, out: Path, runs: dict[str, FusionConfig], rows: list[dict], say, progress):
    """Train (or reuse) ``runs`` and append one row per run and weights, with its test and val scores."""
    done = {(r["run_name"], r["weights"]) for r in rows}
    for i, (name, config) in enumerate(runs.items(), 1):
        if (name, "raw") in done:
            continue
        say(f"[{i}/{len(runs)}] {name}")
        run = train_or_reuse(train_fusion, archive.root, out / "runs" / name, config, progress)
        val = {r["weights"]: r for r in evaluate_fusion([run], split="val", progress=False, baselines=False)}
        for row in evaluate_fusion([run], split="test", progress=False, baselines=False):
            rows.append(dict(row, run_name=name, recipe=config.recipe, seed=config.seed,
                             val_psnr=val[row["weights"]]["psnr"], train_seconds=_train_seconds(run)))


def _fusion_table(baselines: dict, rows: list[dict], keys: tuple[str, ...], shown: Sequence[str],
                  reference_of: Callable[[dict], str | None] | None = None) -> str:
    """Baselines, then one line per arm: test scores (mean ± sd over seeds), val PSNR, and how many seeds
    learned (beat ``class-mean``) on val and on test; with ``reference_of``, the arm's own reference on test."""
    test, val = baselines["test"], baselines["val"]
    header = [*keys, "weights", "test PSNR (dB)", "SSIM", "SAM (rad)", "val PSNR (dB)", "generator params",
              "beats class-mean val / test"] + (["its reference (test PSNR)"] if reference_of else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in ("constant-mean", *shown):
        t = test[name]
        lines.append("| " + " | ".join([f"{name} (baseline)", *["—"] * len(keys)]) +
                     f" | {float(t['psnr']):.3f} | {float(t['ssim']):.4f} | {float(t['sam']):.4f} | "
                     f"{float(val[name]['psnr']):.3f} | 0 | |" + (" |" if reference_of else ""))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((*(r[k] for k in keys), r["weights"]), []).append(r)
    floor = {split: float(b["class-mean"]["psnr"]) for split, b in baselines.items()}
    for key, group in groups.items():
        learned_val = sum(r["val_psnr"] > floor["val"] for r in group)
        learned_test = sum(r["psnr"] > floor["test"] for r in group)
        line = ("| " + " | ".join(str(k) for k in key) + f" | {_mean_sd([r['psnr'] for r in group])} | "
                f"{_mean_sd([r['ssim'] for r in group], 4)} | {_mean_sd([r['sam'] for r in group], 4)} | "
                f"{_mean_sd([r['val_psnr'] for r in group])} | {group[0]['params']} | "
                f"{learned_val}/{len(group)} / {learned_test}/{len(group)} |")
        if reference_of:
            name = reference_of(group[0])
            line += f" {name} {float(test[name]['psnr']):.3f} |" if name else " — |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _paired(label: str, a: list[dict], b: list[dict], recipe: str, weights: str, floors: dict[str, float],
            names: Sequence[str], metric: str = "psnr") -> dict:
    """The paired test difference a − b over the seeds both have, and the winner by the 2-sd rule.

    Both arms must have learned — mean val and mean test above the floor (``class-mean`` or
    ``class-mean-spectrum``) — before a winner is named.
    """
    a = [r for r in a if r.get("recipe", recipe) == recipe and r["weights"] == weights]
    b = {r["seed"]: r for r in b if r.get("recipe", recipe) == recipe and r["weights"] == weights}
    pairs = [(r, b[r["seed"]]) for r in a if r["seed"] in b]
    if not pairs:
        return {"arm": label, "mean": float("nan"), "sd": float("nan"), "seeds": 0, "winner": "none (no pairs)"}
    differences = [x[metric] - y[metric] for x, y in pairs]
    mean = statistics.mean(differences)
    sd = statistics.stdev(differences) if len(differences) > 1 else float("inf")
    val_key = f"val_{metric}"
    learned = all(statistics.mean(r[val_key] for r in arm) > floors["val"] and
                  statistics.mean(r[metric] for r in arm) > floors["test"]
                  for arm in ([x for x, _ in pairs], [y for _, y in pairs]))
    if abs(mean) > 2 * sd and learned:
        winner = names[0] if mean > 0 else names[1]
    else:
        winner = "none (|mean| ≤ 2 sd)" if learned else "none (an arm did not learn: not above the baseline)"
    return {"arm": label, "mean": mean, "sd": sd, "seeds": len(differences), "winner": winner}


def _pairs_table(pairs: list[dict], unit: str) -> str:
    lines = [f"| arms | mean ± sd{f' ({unit})' if unit else ''} | seeds | winner |", "|---|---|---|---|"]
    lines += [f"| {p['arm']} | {p['mean']:.3f} ± {p['sd']:.3f} | {p['seeds']} | {p['winner']} |" for p in pairs]
    return "\n".join(lines) + "\n"


# -- segmentation ------------------------------------------------------------------------------

@dataclass
class SegExperiment:
    """What a segmentation experiment trains: RS-UNet runs at ``base``'s budget, generators at ``generator``'s.

    ``labelled``: the k of the low-label protocol (real labelled tiles per run); empty for the paper's protocol only.
    """

    base: SegmentationConfig
    generator: FusionConfig
    labelled: tuple[int, ...]
    seeds: int

    def __post_init__(self) -> None:
        if self.seeds < 2:
            raise RsgeeError(f"--seeds {self.seeds}: a spread needs at least 2 seeds (3 or more to name a winner)")
        if any(k < 1 for k in self.labelled):
            raise RsgeeError(f"--labelled {','.join(map(str, self.labelled))}: use positive numbers of tiles")
        if not self.base.steps:
            raise RsgeeError("the segmentation experiment matches runs on optimiser steps: give its base --steps")


#: The paper's protocol: arm → (mix, steps factor).
PAPER_ARMS = {"real 1:0": ((1, 0), 1), "1:1 steps matched": ((1, 1), 1), "1:1 twice the steps": ((1, 1), 2)}


def run_seg_experiment(archive: str | Path, out: str | Path, experiment: SegExperiment, *, progress: bool = True,
                       say: Callable[[str], None] = print) -> ExperimentResult:
    """Train (or reuse) the generators and RS-UNet arms of both protocols × seeds; score; write the tables."""
    archive, out = Archive(archive), Path(out)
    archive.read_meta()
    n_train = len(archive.tiles("train"))
    too_many = [k for k in experiment.labelled if k >= n_train]
    if too_many:
        raise RsgeeError(f"--labelled {too_many[0]}: the train split has {n_train} tiles; a low-label run needs fewer")
    train_ids = open_split(archive, "train", progress=progress).tile_ids
    val_floor = float(segmentation_baselines(archive, "val")["class-mean-spectrum"]["miou"])
    rows, references = [], []
    seconds: dict[str, list[float]] = {}
    plan = [("all", None)] + [(f"k{k}", k) for k in experiment.labelled]
    for seed in range(experiment.seeds):
        for group, k in plan:
            generator = replace(experiment.generator, seed=seed, train_tiles=k)
            say(f"seed {seed}, {group}: generator trained on {k or n_train} tiles")
            run = train_or_reuse(train_fusion, archive.root, out / "runs" / f"generator_{group}_seed{seed}", generator,
                                 progress)
            seconds.setdefault(f"generators ({experiment.generator.model})", []).append(_train_seconds(run))
            copy = archive.linked_copy(out / "archives" / f"{group}_seed{seed}")
            generate(run, copy.root, progress=progress)
            tiles = train_subset(train_ids, k, seed) if k else None
            arms = PAPER_ARMS if k is None else {f"{k} real": ((1, 0), 1), f"{k} real + generated 1:1": ((1, 1), 1)}
            for arm, (mix, factor) in arms.items():
                config = replace(experiment.base, mix=mix, steps=experiment.base.steps * factor, train_tiles=k, seed=seed)
                name = f"seg_{group}_{arm.replace(' ', '_').replace(':', '-').replace('+', 'and')}_seed{seed}"
                say(f"seed {seed}: {arm}")
                run = train_or_reuse(train_segmentation, copy.root, out / "runs" / name, config, progress)
                seconds.setdefault(f"RS-UNet, {'paper' if k is None else f'k = {k}'} protocol", []).append(
                    _train_seconds(run))
                scored, _ = evaluate_segmentation([run], out / "figures" / name, progress=False, baselines=False)
                rows.append(dict(scored[0], arm=arm, protocol="paper" if k is None else f"k = {k}", seed=seed,
                                 steps=read_run(run).get("steps_done"), val_miou=_last_val(run),
                                 steps_to_target=_steps_to(run, val_floor)))
            baselines = segmentation_baselines(archive, "test", tiles=tiles)
            references += [{"protocol": "paper" if k is None else f"k = {k}", "seed": seed, "name": name,
                            "miou": float(v["miou"]), "accuracy": float(v["accuracy"])} for name, v in baselines.items()]
    result = ExperimentResult(rows=references + rows)
    b = experiment.base
    budget = (f"RS-UNet {b.size}, {b.steps} steps (×2 where said) at lr {b.lr:g} ({b.schedule}), batch {b.batch_size}, "
              f"{f'{b.crop}-px crops' if b.crop else 'whole tiles'}, {experiment.seeds} seeds; generators "
              f"{experiment.generator.model} {experiment.generator.steps} steps; real test tiles "
              f"({len(archive.tiles('test'))})")
    result.tables[f"Table 3 — segmentation, {budget}"] = _seg_table(rows, references, val_floor)
    pairs = []
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        arms = list(dict.fromkeys(r["arm"] for r in rows if r["protocol"] == protocol))
        floor = statistics.mean(r["miou"] for r in references if r["protocol"] == protocol
                                and r["name"] == "class-mean-spectrum")
        for arm in arms[1:]:
            pairs.append(_paired(f"{arm} − {arms[0]}", [dict(r, weights="—") for r in rows if r["arm"] == arm],
                                 [dict(r, weights="—") for r in rows if r["arm"] == arms[0]], "", "—",
                                 {"val": val_floor, "test": floor}, (arm, arms[0]), metric="miou"))
    result.tables["Table 3 — paired test mIoU differences (same seed)"] = _pairs_table(pairs, "")
    result.tables["Training time"] = _time_table(seconds)
    result.files = _write(out, "seg", result)
    return result


def _last_val(run: Path) -> float:
    values = [float(r["val/miou"]) for r in read_metrics(run) if r.get("val/miou")]
    return values[-1] if values else float("nan")


def _train_seconds(run: Path) -> float:
    """The seconds the run's last training process had trained at its last validation (NaN if never validated)."""
    values = [float(r["val/seconds"]) for r in read_metrics(run) if r.get("val/seconds")]
    return values[-1] if values else float("nan")


def _time_table(seconds: dict[str, list[float]]) -> str:
    """Per part of an experiment: its runs and their training time (with their validations; without the final
    scoring and, in segmentation, the generation of tiles)."""
    lines = ["| part | runs | training time (min) | per run (s) |", "|---|---|---|---|"]
    for part, values in seconds.items():
        total = sum(values)
        per_run = f"{total / len(values):.0f}" if values else "—"
        lines.append(f"| {part} | {len(values)} | {total / 60:.1f} | {per_run} |")
    return "\n".join(lines) + "\n"


def _steps_to(run: Path, target: float) -> float | None:
    """The optimiser steps after which the run's val mIoU first reached ``target`` (None: never)."""
    for row in read_metrics(run):
        if row.get("val/miou") and float(row["val/miou"]) >= target:
            return float(row["val/steps"])
    return None


def _seg_table(rows: list[dict], references: list[dict], val_floor: float) -> str:
    header = ["protocol", "training set", "optimiser steps", "test mIoU", "test accuracy", "val mIoU",
              f"steps to val mIoU {val_floor:.3f}", "beats class-mean-spectrum (test)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        refs = [r for r in references if r["protocol"] == protocol]
        for name in dict.fromkeys(r["name"] for r in refs):
            group = [r for r in refs if r["name"] == name]
            lines.append(f"| {protocol} | {name} (baseline, same tiles) | — | {_mean_sd([r['miou'] for r in group])} | "
                         f"{_mean_sd([r['accuracy'] for r in group])} | — | — | |")
        floor = {r["seed"]: r["miou"] for r in refs if r["name"] == "class-mean-spectrum"}
        for arm in dict.fromkeys(r["arm"] for r in rows if r["protocol"] == protocol):
            group = [r for r in rows if r["arm"] == arm]
            reached = [r["steps_to_target"] for r in group if r["steps_to_target"] is not None]
            to_target = f"{statistics.mean(reached):.0f} ({len(reached)}/{len(group)} seeds)" if reached else "never"
            lines.append(f"| {protocol} | {arm} | {_mean_sd([r['steps'] for r in group], 0)} | "
                         f"{_mean_sd([r['miou'] for r in group])} | {_mean_sd([r['accuracy'] for r in group])} | "
                         f"{_mean_sd([r['val_miou'] for r in group])} | {to_target} | "
                         f"{sum(r['miou'] > floor[r['seed']] for r in group)}/{len(group)} seeds |")
    return "\n".join(lines) + "\n"


# -- helpers -----------------------------------------------------------------------------------

def _run_name(model: str, recipe: str, sources: Sequence[str], seed: int) -> str:
    return f"{model}_{recipe}_{sources_label(sources)}_seed{seed}"


def _mean_sd(values: list[float], digits: int = 3) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


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
