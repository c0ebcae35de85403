"""Trivial predictors scored on the same tiles as the models: what a score must beat to mean anything.

Fusion: ``constant-mean`` paints every pixel with the train split's per-band mean reflectance
(``stats.json``); ``class-mean`` paints each pixel with the mean spectrum of its land-cover class over
the train split (pixels without a class, or of a class absent from train, get the constant mean);
``class-illumination`` scales each class's spectrum by the terrain's illumination: per class and band, a
least-squares fit on the train split of reflectance against (1, cos slope, sin slope · sin aspect, sin
slope · cos aspect). Lambert's cos i = cos z · cos slope + sin z · sin slope · cos(aspect − sun azimuth) is
linear in these for a sun at any zenith z and azimuth, so the fit learns the scene's sun without being
told it (gdaldem's hillshade assumes a sun at 315°, 45°, which is not Sentinel-2's). It is what a
remote-sensing engineer would try first after land cover; pixels without terrain get the class mean.
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
from rsgee.preprocess.terrain import ASPECT_FLAT_BELOW
from rsgee.train.data import S2_SCALE
from rsgee.train.metrics import FusionMetrics, SegmentationMetrics

IGNORE = 255
FUSION_BASELINES = ("constant-mean", "class-mean", "class-illumination")
#: Terms of the illumination fit: constant, cos slope, sin slope · sin aspect, sin slope · cos aspect.
ILLUMINATION_TERMS = 4
#: Train pixels a class needs for its own illumination fit; a rarer class keeps its mean spectrum.
MIN_FIT_PIXELS = 1000
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


def illumination_terms(terrain: np.ndarray) -> np.ndarray:
    """(dem, slope, aspect, hillshade) rasters → the (ILLUMINATION_TERMS, H, W) terms of the illumination fit.

    Flat pixels (aspect −1) have slope 0, so their aspect terms are 0; pixels without terrain are NaN.
    """
    slope, aspect = np.deg2rad(terrain[1].astype(np.float64)), np.deg2rad(terrain[2].astype(np.float64))
    flat = terrain[2] < ASPECT_FLAT_BELOW
    tilt = np.where(flat, 0.0, np.sin(slope))
    return np.stack([np.where(np.isnan(slope), np.nan, 1.0), np.cos(slope), tilt * np.sin(aspect),
                     tilt * np.cos(aspect)])


def illumination_fit(archive: Archive) -> np.ndarray:
    """Per class and band, the least-squares weights of the illumination terms on the train split:
    (classes, ILLUMINATION_TERMS, bands), NaN for a class with fewer than MIN_FIT_PIXELS train pixels."""
    packed = open_split(archive, "train", progress=False)
    bands = len(archive.sources()["s2"].bands)
    gram = np.zeros((NUM_CLASSES, ILLUMINATION_TERMS, ILLUMINATION_TERMS))
    moments = np.zeros((NUM_CLASSES, ILLUMINATION_TERMS, bands))
    for i in range(len(packed)):
        raw = packed.read(i, ("s2", "lulc", "terrain"))
        terms = illumination_terms(raw["terrain"])
        labels = raw["lulc"][0]
        valid = (raw["s2"] != 0).all(axis=0) & (labels < NUM_CLASSES) & np.isfinite(terms).all(axis=0)
        x, k = terms[:, valid], labels[valid]
        y = np.clip(raw["s2"][:, valid] / S2_SCALE, 0.0, 1.0)
        for a in range(ILLUMINATION_TERMS):
            for b in range(a, ILLUMINATION_TERMS):
                gram[:, a, b] += np.bincount(k, weights=x[a] * x[b], minlength=NUM_CLASSES)
            for band in range(bands):
                moments[:, a, band] += np.bincount(k, weights=x[a] * y[band], minlength=NUM_CLASSES)
    gram = np.triu(gram) + np.triu(gram, 1).transpose(0, 2, 1)
    weights = np.full((NUM_CLASSES, ILLUMINATION_TERMS, bands), np.nan)
    for k in range(NUM_CLASSES):
        if gram[k, 0, 0] >= MIN_FIT_PIXELS:
            ridge = 1e-9 * np.trace(gram[k]) * np.eye(ILLUMINATION_TERMS)  # a flat class: its slope terms vanish
            weights[k] = np.linalg.solve(gram[k] + ridge, moments[k])
    return weights


def _test_tiles(archive: Archive, split: str, batch_size: int, terrain: bool = False):
    """(reflectance (B, bands, H, W), valid (B, 1, H, W), labels (B, H, W)[, terrain (B, 4, H, W)]) batches of a
    split, in order."""
    packed = open_split(archive, split, progress=False)
    if not len(packed):
        raise RsgeeError(f"{archive.root}: the {split} split has no tiles to evaluate on")
    sources = ("s2", "lulc", "terrain") if terrain else ("s2", "lulc")
    for start in range(0, len(packed), batch_size):
        raws = [packed.read(i, sources) for i in range(start, min(start + batch_size, len(packed)))]
        s2 = np.stack([r["s2"] for r in raws])
        batch = (np.clip(s2 / S2_SCALE, 0.0, 1.0).astype(np.float32), (s2 != 0).all(axis=1, keepdims=True),
                 np.stack([r["lulc"][0] for r in raws]))
        yield batch + ((np.stack([r["terrain"] for r in raws]),) if terrain else ())


def fusion_baselines(archive: Archive, split: str = "test", batch_size: int = 8) -> dict[str, dict]:
    """PSNR/SSIM/SAM of :data:`FUSION_BASELINES` on ``split``: name → FusionMetrics.compute()."""
    constant = band_means(archive).astype(np.float32)
    spectra, _ = class_spectra(archive)
    lookup = np.where(np.isnan(spectra), constant[None], spectra).astype(np.float32)
    lookup = np.concatenate([lookup, constant[None]])  # row NUM_CLASSES: pixels without a class
    weights = illumination_fit(archive)
    metrics = {name: FusionMetrics() for name in FUSION_BASELINES}
    for reflectance, valid, labels, terrain in _test_tiles(archive, split, batch_size, terrain=True):
        target, mask = torch.from_numpy(reflectance), torch.from_numpy(valid)
        flat = np.broadcast_to(constant[None, :, None, None], reflectance.shape)
        painted = lookup[np.minimum(labels, NUM_CLASSES)].transpose(0, 3, 1, 2)
        lit = np.stack([illuminated(weights, t, k, p) for t, k, p in zip(terrain, labels, painted)])
        for name, prediction in (("constant-mean", flat), ("class-mean", painted), ("class-illumination", lit)):
            metrics[name].update(torch.from_numpy(np.ascontiguousarray(prediction, dtype=np.float32)), target, mask)
    return {name: metric.compute() for name, metric in metrics.items()}


def illuminated(weights: np.ndarray, terrain: np.ndarray, labels: np.ndarray, class_mean: np.ndarray) -> np.ndarray:
    """One tile's ``class-illumination`` prediction (bands, H, W), in [0, 1]: the fit of each pixel's class,
    or ``class_mean``'s value where the class has no fit or the pixel no terrain."""
    terms = illumination_terms(terrain)
    fit = weights[np.minimum(labels, NUM_CLASSES - 1)]  # (H, W, terms, bands)
    predicted = np.einsum("thw,hwtb->bhw", np.nan_to_num(terms), np.nan_to_num(fit))
    usable = (labels < NUM_CLASSES) & np.isfinite(terms).all(axis=0) & np.isfinite(fit).all(axis=(2, 3))
    return np.clip(np.where(usable[None], predicted, class_mean), 0.0, 1.0)


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
