"""Trivial predictors scored on the same tiles as the models: what a score must beat to mean anything.

Fusion: ``constant-mean`` paints every pixel with the train split's per-band mean reflectance
(``stats.json``); ``class-mean`` paints each pixel with the mean spectrum of its land-cover class over
the train split (pixels without a class, or of a class absent from train, get the constant mean).
Segmentation: ``majority-class`` predicts the train split's most frequent class everywhere;
``class-mean-spectrum`` gives each pixel the class whose train mean spectrum is nearest (Euclidean, on
reflectance). All of them learn from the train split only, as the models do, and are scored by the
same metric classes on the same pixels.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from rsgee.errors import RsgeeError
from rsgee.models.factory import NUM_CLASSES
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.cache import open_split
from rsgee.train.data import S2_SCALE
from rsgee.train.metrics import FusionMetrics, SegmentationMetrics

IGNORE = 255
FUSION_BASELINES = ("constant-mean", "class-mean")
SEGMENTATION_BASELINES = ("majority-class", "class-mean-spectrum")


def band_means(archive: Archive) -> np.ndarray:
    """Per-band mean train reflectance, (bands,)."""
    stats = json.loads(archive.stats_path.read_text(encoding="utf-8"))["sources"]["s2"]
    return np.array([stats[b]["mean"] for b in archive.sources()["s2"].band_names]) / S2_SCALE


def class_spectra(archive: Archive) -> tuple[np.ndarray, np.ndarray]:
    """Mean train reflectance per land-cover class, (classes, bands) with NaN rows for absent classes,
    and the pixel count per class (pixels with both a class and a valid Sentinel-2 observation)."""
    packed = open_split(archive, "train", progress=False)
    bands = len(archive.sources()["s2"].bands)
    sums, counts = np.zeros((NUM_CLASSES, bands)), np.zeros(NUM_CLASSES)
    for i in range(len(packed)):
        raw = packed.read(i, ("s2", "lulc"))
        labels = raw["lulc"][0]
        valid = (raw["s2"] != 0).all(axis=0) & (labels < NUM_CLASSES)
        reflectance = np.clip(raw["s2"][:, valid] / S2_SCALE, 0.0, 1.0)
        counts += np.bincount(labels[valid], minlength=NUM_CLASSES)
        for b in range(bands):
            sums[:, b] += np.bincount(labels[valid], weights=reflectance[b], minlength=NUM_CLASSES)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None], counts


def _test_tiles(archive: Archive, split: str, batch_size: int):
    """(reflectance (B, bands, H, W), valid (B, 1, H, W), labels (B, H, W)) batches of a split, in order."""
    packed = open_split(archive, split, progress=False)
    if not len(packed):
        raise RsgeeError(f"{archive.root}: the {split} split has no tiles to evaluate on")
    for start in range(0, len(packed), batch_size):
        raws = [packed.read(i, ("s2", "lulc")) for i in range(start, min(start + batch_size, len(packed)))]
        s2 = np.stack([r["s2"] for r in raws])
        yield (np.clip(s2 / S2_SCALE, 0.0, 1.0).astype(np.float32), (s2 != 0).all(axis=1, keepdims=True),
               np.stack([r["lulc"][0] for r in raws]))


def fusion_baselines(archive: Archive, split: str = "test", batch_size: int = 8) -> dict[str, dict]:
    """PSNR/SSIM/SAM of ``constant-mean`` and ``class-mean`` on ``split``: name → FusionMetrics.compute()."""
    constant = band_means(archive).astype(np.float32)
    spectra, _ = class_spectra(archive)
    lookup = np.where(np.isnan(spectra), constant[None], spectra).astype(np.float32)
    lookup = np.concatenate([lookup, constant[None]])  # row NUM_CLASSES: pixels without a class
    metrics = {name: FusionMetrics() for name in FUSION_BASELINES}
    for reflectance, valid, labels in _test_tiles(archive, split, batch_size):
        target, mask = torch.from_numpy(reflectance), torch.from_numpy(valid)
        flat = np.broadcast_to(constant[None, :, None, None], reflectance.shape)
        painted = lookup[np.minimum(labels, NUM_CLASSES)].transpose(0, 3, 1, 2)
        metrics["constant-mean"].update(torch.from_numpy(np.ascontiguousarray(flat)), target, mask)
        metrics["class-mean"].update(torch.from_numpy(np.ascontiguousarray(painted)), target, mask)
    return {name: metric.compute() for name, metric in metrics.items()}


def segmentation_baselines(archive: Archive, split: str = "test", batch_size: int = 8) -> dict[str, dict]:
    """mIoU/accuracy of ``majority-class`` and ``class-mean-spectrum`` on real ``split`` tiles, with the
    pixels RS-UNet is scored on (labelled, with a Sentinel-2 observation)."""
    spectra, counts = class_spectra(archive)
    majority = int(np.argmax(counts))
    present = ~np.isnan(spectra[:, 0])
    metrics = {name: SegmentationMetrics(NUM_CLASSES, ignore_index=IGNORE) for name in SEGMENTATION_BASELINES}
    for reflectance, valid, labels in _test_tiles(archive, split, batch_size):
        target = np.where((labels < NUM_CLASSES) & valid[:, 0], labels, IGNORE).astype(np.int64)
        distance = ((reflectance[:, None] - spectra[None, :, :, None, None]) ** 2).sum(axis=2)  # (B, K, H, W)
        distance[:, ~present] = np.inf
        metrics["class-mean-spectrum"].update(torch.from_numpy(distance.argmin(axis=1)), torch.from_numpy(target))
        metrics["majority-class"].update(torch.full(target.shape, majority), torch.from_numpy(target))
    return {name: metric.compute() for name, metric in metrics.items()}
