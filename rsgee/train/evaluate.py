"""``rsgee evaluate``: the paper's comparison tables, computed on the real test split.

Fusion (Tables 1 and 2): model, input sources, PSNR (dB, per-image mean, data range 1 on
reflectance), SSIM (Gaussian 11×11, σ 1.5) and SAM (radians, mean over valid pixels) of each run's
best checkpoint. Segmentation (Table 3): training set, mIoU (macro mean over the classes present in
truth or prediction of one confusion matrix over all test pixels) and pixel accuracy, on real tiles
only. Tables are printed and written as CSV and Markdown.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from rsgee.errors import RsgeeError, check_number
from rsgee.geotiff import atomic_path
from rsgee.models.layers import count_parameters
from rsgee.models.normalisation import model_to_reflectance
from rsgee.preprocess.archive import Archive
from rsgee.train.data import FusionSamples, collate
from rsgee.train.fusion import load_fusion, sources_label
from rsgee.train.baselines import fusion_baselines, segmentation_baselines
from rsgee.train.distributed import EvenShards
from rsgee.train.metrics import FusionMetrics
from rsgee.train.trainer import read_run, start_processes

#: What each fusion baseline reads, in the sources column of the tables.
BASELINE_SOURCES = {"constant-mean": "—", "class-mean": "lulc", "class-illumination": "lulc+dem"}


def run_archive(run: str | Path, info: dict, archive: str | Path | None) -> Archive:
    """The archive to score a run on: ``archive`` when given, else the one its run.json names, which must
    still be an archive (a moved or deleted one is one line, not a missing catalog.yaml)."""
    root = Archive(archive or info["archive"])
    if archive is None and not root.exists():
        raise RsgeeError(f"{run} was trained on {root.root}, which is no longer an rsgee archive (moved or deleted?); "
                         "pass --archive with the archive to evaluate on")
    return root


def evaluate_fusion(runs: Sequence[str | Path], *, archive: str | Path | None = None, split: str = "test",
                    batch_size: int = 8, progress: bool = True, accelerator: str = "auto", devices: int | str = 1,
                    num_nodes: int | str = "auto", baselines: bool = True) -> list[dict]:
    """One row per run and weights (``raw``, and ``ema`` when the run kept an average): model, sources,
    PSNR, SSIM, SAM on ``split`` (the run's own archive by default), after the rows of the trivial
    baselines on the same tiles (:mod:`rsgee.train.baselines`).

    A run whose PSNR does not beat ``constant-mean`` or ``class-mean`` (it has not learned more than a
    lookup of its land cover) says so in its ``note``. On several devices each
    process scores its share of the tiles and the metrics are computed over all of them; every
    process returns the same rows.
    """
    check_number("--batch-size", batch_size, 1, whole=True)
    fabric = start_processes(accelerator, devices, num_nodes)
    rows = []
    for run in runs:
        info = read_run(run)
        task = load_fusion(run).to(fabric.device)
        root = run_archive(run, info, archive)
        samples = FusionSamples(root, split, task.config.sources, info["normalisation"], progress=progress)
        if not len(samples):
            raise RsgeeError(f"{root.root}: the {split} split has no tiles to evaluate on")
        generators = {"raw": task.generator}
        if task.generator_ema is not None:
            generators["ema"] = task.generator_ema.module
        metrics = {name: FusionMetrics().to(fabric.device) for name in generators}
        loader = DataLoader(EvenShards(samples, fabric.global_rank, fabric.world_size), batch_size=batch_size,
                            collate_fn=collate)
        for batch in tqdm(loader, desc=f"evaluate {Path(run).name}", unit="batch",
                          disable=not progress or fabric.global_rank > 0, file=sys.stderr):
            batch = fabric.to_device(batch)
            counted = batch["counted"]
            if not counted.any():
                continue
            real = model_to_reflectance(batch["target"][counted])
            for name, generator in generators.items():
                with torch.no_grad():
                    fake = generator(batch["cond"])
                metrics[name].update(model_to_reflectance(fake[counted]), real, batch["valid"][counted])
        for name, metric in metrics.items():
            rows.append({"run": str(run), "model": task.config.model, "weights": name,
                         "sources": sources_label(task.config.sources), **_fusion_scores(metric.compute()),
                         "params": _millions(task.generator), "split": split, "archive": str(root.root.resolve()),
                         "note": ""})
    if not baselines:
        return rows
    references = []
    for root in dict.fromkeys(r["archive"] for r in rows):
        scores = fusion_baselines(Archive(root), split, batch_size)
        references += [{"run": "baseline", "model": name, "weights": "—", "sources": BASELINE_SOURCES[name],
                        **_fusion_scores(values), "params": "0", "split": split, "archive": root, "note": ""}
                       for name, values in scores.items()]
    for row in rows:
        for floor in ("constant-mean", "class-mean"):  # the first one it does not beat
            reference = next(r for r in references if r["archive"] == row["archive"] and r["model"] == floor)
            if not row["psnr"] > reference["psnr"]:
                row["note"] = f"below {floor}"
                break
    return references + rows



def _fusion_scores(values: dict) -> dict:
    return {"psnr": round(float(values["psnr"]), 3), "ssim": round(float(values["ssim"]), 4),
            "sam": round(float(values["sam"]), 4), "tiles": int(values["n_images"])}


def _millions(module: torch.nn.Module) -> str:
    return f"{count_parameters(module) / 1e6:.2f} M"


FUSION_COLUMNS = ("model", "weights", "sources", "psnr", "ssim", "sam", "params", "tiles", "note", "run")
FUSION_HEADERS = ("model", "weights", "sources", "PSNR (dB)", "SSIM", "SAM (rad)", "generator params", "test tiles",
                  "note", "run")


def markdown_table(rows: list[dict], columns: Sequence[str], headers: Sequence[str]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], out_dir: str | Path, name: str, columns: Sequence[str],
                headers: Sequence[str]) -> tuple[Path, Path]:
    """Write ``<name>.csv`` and ``<name>.md`` into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown_table(rows, columns, headers), encoding="utf-8")
    return csv_path, md_path


SEG_COLUMNS = ("training_set", "miou", "accuracy", "miou_absent_as_zero", "classes_present", "params", "tiles", "note",
               "run")
SEG_HEADERS = ("training set", "mIoU", "accuracy", "mIoU (absent = 0)", "classes present", "params", "test tiles",
               "note", "run")


def evaluate_segmentation(runs: Sequence[str | Path], out_dir: str | Path, *, archive: str | Path | None = None,
                          split: str = "test", batch_size: int = 8, figure_tiles: int = 4, progress: bool = True,
                          accelerator: str = "auto", devices: int | str = 1, num_nodes: int | str = "auto",
                          baselines: bool = True) -> tuple[list[dict], list[Path]]:
    """Table 3 rows (real test tiles only) and the figures: mIoU-vs-epoch curves (Figure 8), one
    confusion matrix per run, and predictions side by side on test tiles (Figure 9).

    The rows of ``majority-class`` and ``class-mean-spectrum`` (:mod:`rsgee.train.baselines`) on the
    same tiles come first; a run that does not beat one of them by mIoU says so in its ``note``.

    On several devices each process predicts its share and the confusion matrices are summed over
    all of them; the main process draws the figures (from the tiles of its own share).
    """
    from rsgee.train.figures import confusion_figure, curves, prediction_grid
    from rsgee.train.metrics import SegmentationMetrics
    from rsgee.train.segmentation import (IGNORE, NUM_CLASSES, collate_segmentation, counted_labels, load_segmentation,
                                          real_test_samples)

    check_number("--batch-size", batch_size, 1, whole=True)
    fabric = start_processes(accelerator, devices, num_nodes)
    main = fabric.global_rank == 0
    out_dir = Path(out_dir)
    rows, figures, shown, series = [], [], {}, {}
    truth = reflectance = titles = None
    classes = None
    for run in runs:
        info = read_run(run)
        task = load_segmentation(run).to(fabric.device)
        root = run_archive(run, info, archive)
        classes = classes or list(root.sources()["lulc"].classes)
        samples = real_test_samples(root, split)
        if not len(samples):
            raise RsgeeError(f"{root.root}: the {split} split has no tiles to evaluate on")
        metrics = SegmentationMetrics(NUM_CLASSES, ignore_index=IGNORE).to(fabric.device)
        loader = DataLoader(EvenShards(samples, fabric.global_rank, fabric.world_size), batch_size=batch_size,
                            collate_fn=collate_segmentation)
        kept = []  # the first figure_tiles counted tiles: (image, labels, prediction, tile id)
        for batch in tqdm(loader, desc=f"evaluate {Path(run).name}", unit="batch", disable=not progress or not main,
                          file=sys.stderr):
            batch = fabric.to_device(batch)
            with torch.no_grad():
                predicted = task(batch["image"]).argmax(1)
            metrics.update(predicted, counted_labels(batch))
            kept += [(batch["image"][i].cpu(), batch["labels"][i].cpu(), predicted[i].cpu(), batch["tile_id"][i])
                     for i in range(len(predicted)) if batch["counted"][i]][: figure_tiles - len(kept)]
        scores = metrics.compute()
        label = f"{info['mix_label']} — {Path(run).name}"
        rows.append({"training_set": info["mix_label"], **_seg_scores(scores), "tiles": len(samples),
                     "params": _millions(task.model), "run": str(run), "archive": str(root.root.resolve()),
                     "note": ""})
        if not main:
            continue
        figures.append(confusion_figure(out_dir / f"confusion_{Path(run).name}.png",
                                        scores["confusion"].cpu().numpy(), classes, f"{label}: {split} split"))
        series[label] = _val_miou_by_epoch(Path(run))
        shown[label] = torch.stack([k[2] for k in kept]).numpy()
        if truth is None:
            labels = torch.stack([k[1] for k in kept]).numpy()
            truth = np.where(labels == IGNORE, NUM_CLASSES, labels)
            reflectance = torch.stack([k[0] for k in kept]).numpy() * samples.std + samples.mean
            titles = [k[3] for k in kept]
    if main:
        figures.append(curves(out_dir / "miou_curves.png", series, ylabel="val mIoU", title="mIoU during training"))
        figures.append(prediction_grid(out_dir / "predictions.png", reflectance=reflectance, truth=truth,
                                       predictions=shown, titles=titles, suptitle=f"RS-UNet predictions, {split} tiles"))
    if baselines:
        rows = _with_seg_baselines(rows, split, batch_size)
    return rows, figures


def _seg_scores(scores: dict) -> dict:
    return {"miou": round(float(scores["miou"]), 4), "accuracy": round(float(scores["accuracy"]), 4),
            "miou_absent_as_zero": round(float(scores["miou_absent_as_zero"]), 4),
            "classes_present": int(scores["n_classes_present"])}


def _with_seg_baselines(rows: list[dict], split: str, batch_size: int) -> list[dict]:
    references = []
    for root in dict.fromkeys(r["archive"] for r in rows):
        archive = Archive(root)
        tiles = len(archive.tiles(split))
        references += [{"training_set": f"{name} (baseline)", **_seg_scores(scores), "tiles": tiles, "params": "0",
                        "run": "baseline", "archive": root, "note": ""}
                       for name, scores in segmentation_baselines(archive, split, batch_size).items()]
    for row in rows:
        below = [r["training_set"].removesuffix(" (baseline)") for r in references
                 if r["archive"] == row["archive"] and not row["miou"] > r["miou"]]
        row["note"] = "below " + ", ".join(below) if below else ""
    return references + rows


def _val_miou_by_epoch(run: Path) -> tuple[list[int], list[float]]:
    from rsgee.train.trainer import read_metrics

    points = {int(r["epoch"]): float(r["val/miou"]) for r in read_metrics(run) if r.get("val/miou")}
    epochs = sorted(points)
    return epochs, [points[e] for e in epochs]


def logged_test_scores(run_dir: Path, kind: str) -> dict[str, float]:
    """``test/<metric>`` of the best checkpoint (``test/ema/<metric>`` for an EMA generator) and
    ``test/<baseline>/<metric>`` of the baselines: what a run's loggers keep of it (``--logger``)."""
    if kind == "fusion":
        rows, metrics = evaluate_fusion([run_dir], split="test", progress=False), ("psnr", "ssim", "sam")
    else:
        rows, _ = evaluate_segmentation([run_dir], run_dir / "test", split="test", progress=False, figure_tiles=1)
        metrics = ("miou", "accuracy")
    scores = {}
    for row in rows:
        if row["run"] == "baseline":
            name = f"test/{row.get('model') or row['training_set'].removesuffix(' (baseline)')}/"
        else:
            name = "test/ema/" if row.get("weights") == "ema" else "test/"
        scores.update({name + m: float(row[m]) for m in metrics if isinstance(row.get(m), (int, float))})
    return scores
