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
The same per-class least squares on other inputs (:data:`LINEAR_REFERENCES`: SAR's VV and VH in dB, or
SAR and terrain) gives each set of sources of the paper's ablation its own reference.

Segmentation: ``majority-class`` predicts the train split's most frequent class everywhere;
``class-mean-spectrum`` gives each pixel the class whose train mean spectrum is nearest (Euclidean, on
reflectance); ``per-pixel-gaussian`` the most probable class under one Gaussian per class on the log
reflectance (quadratic discriminant analysis with the train class frequencies as priors) — what a pixel
alone says, with no spatial context. All of them learn from the train split only (or from the same subset
of it a low-label run trains on), as the models do, and are scored by the same metric classes on the same
pixels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rsgee.errors import RsgeeError
from rsgee.models.factory import NUM_CLASSES
from rsgee.models.normalisation import S2_SCALE
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.cache import open_split
from rsgee.preprocess.terrain import ASPECT_FLAT_BELOW
from rsgee.radiometry import s1_db_range
from rsgee.train.metrics import FusionMetrics, SegmentationMetrics

IGNORE = 255
FUSION_BASELINES = ("constant-mean", "class-mean", "class-illumination")
#: Per-class least-squares references by the model inputs they read beside land cover: what a model given
#: those sources should at least reach (``class-mean`` is the one for land cover alone).
LINEAR_REFERENCES = {"class-illumination": ("terrain",), "class-sar": ("s1",), "class-illumination-sar": ("s1", "terrain")}
#: Terms of the illumination fit: constant, cos slope, sin slope · sin aspect, sin slope · cos aspect.
ILLUMINATION_TERMS = 4
#: Train pixels a class needs for a fit of its own; a rarer class keeps its mean spectrum (or is not predicted).
MIN_FIT_PIXELS = 1000
SEGMENTATION_BASELINES = ("majority-class", "class-mean-spectrum", "per-pixel-gaussian")
#: Reflectance floor before the logarithm of the Gaussian classifier.
LOG_FLOOR = 1e-4


def band_means(archive: Archive) -> np.ndarray:
    """Per-band mean train reflectance, (bands,)."""
    stats = archive.stats["sources"]["s2"]
    return np.array([stats[b]["mean"] for b in archive.sources()["s2"].band_names]) / S2_SCALE


def _train_samples(archive: Archive, sources: tuple[str, ...], tiles: Sequence[int] | None):
    """The train split's samples (``tiles``: positions of the only ones to read), with the labelled pixels
    that have a Sentinel-2 observation."""
    packed = open_split(archive, "train", progress=False)
    for i in range(len(packed)) if tiles is None else tiles:
        raw = packed.read(i, ("s2", "lulc", *sources))
        labels = raw["lulc"][0]
        yield raw, labels, (raw["s2"] != 0).all(axis=0) & (labels < NUM_CLASSES)


def class_spectra(archive: Archive, tiles: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean train reflectance per land-cover class, (classes, bands) with NaN rows for absent classes,
    and the pixel count per class (pixels with both a class and a valid Sentinel-2 observation)."""
    bands = len(archive.sources()["s2"].bands)
    sums, counts = np.zeros((NUM_CLASSES, bands)), np.zeros(NUM_CLASSES)
    for raw, labels, valid in _train_samples(archive, (), tiles):
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


def linear_terms(raw: dict, sources: Sequence[str], s1_bands: Sequence[str]) -> np.ndarray:
    """The (terms, H, W) a per-class linear reference reads: a constant, the illumination terms with
    ``terrain``, each SAR band's dB over its model range (0…1) with ``s1``; NaN where an input is missing."""
    height, width = raw["lulc"].shape[-2:]
    parts = [np.ones((1, height, width))]
    if "terrain" in sources:
        parts.append(illumination_terms(raw["terrain"])[1:])
    if "s1" in sources:
        for band, values in zip(s1_bands, raw["s1"]):
            low, high = s1_db_range(band)
            parts.append(((np.clip(values, low, high) - low) / (high - low))[None].astype(np.float64))
    return np.concatenate(parts)


def linear_fit(archive: Archive, sources: Sequence[str], tiles: Sequence[int] | None = None) -> np.ndarray:
    """Per class and band, the least-squares weights of :func:`linear_terms` on the train split:
    (classes, terms, bands), NaN for a class with fewer than MIN_FIT_PIXELS train pixels."""
    s1_bands = archive.sources()["s1"].band_names
    bands = len(archive.sources()["s2"].bands)
    gram = moments = None
    for raw, labels, valid in _train_samples(archive, tuple(sources), tiles):
        terms = linear_terms(raw, sources, s1_bands)
        if gram is None:
            gram = np.zeros((NUM_CLASSES, len(terms), len(terms)))
            moments = np.zeros((NUM_CLASSES, len(terms), bands))
        valid &= np.isfinite(terms).all(axis=0)
        x, k = terms[:, valid], labels[valid]
        y = np.clip(raw["s2"][:, valid] / S2_SCALE, 0.0, 1.0)
        for a in range(len(terms)):
            for b in range(a, len(terms)):
                gram[:, a, b] += np.bincount(k, weights=x[a] * x[b], minlength=NUM_CLASSES)
            for band in range(bands):
                moments[:, a, band] += np.bincount(k, weights=x[a] * y[band], minlength=NUM_CLASSES)
    gram = np.triu(gram) + np.triu(gram, 1).transpose(0, 2, 1)
    weights = np.full(moments.shape, np.nan)
    for k in range(NUM_CLASSES):
        if gram[k, 0, 0] >= MIN_FIT_PIXELS:
            ridge = 1e-9 * np.trace(gram[k]) * np.eye(len(gram[k]))  # a flat class: its slope terms vanish
            weights[k] = np.linalg.solve(gram[k] + ridge, moments[k])
    return weights


def linear_prediction(weights: np.ndarray, terms: np.ndarray, labels: np.ndarray,
                      class_mean: np.ndarray) -> np.ndarray:
    """One tile's per-class linear prediction (bands, H, W), in [0, 1]: the fit of each pixel's class, or
    ``class_mean``'s value where the class has no fit or the pixel lacks an input."""
    fit = weights[np.minimum(labels, NUM_CLASSES - 1)]  # (H, W, terms, bands)
    predicted = np.einsum("thw,hwtb->bhw", np.nan_to_num(terms), np.nan_to_num(fit))
    usable = (labels < NUM_CLASSES) & np.isfinite(terms).all(axis=0) & np.isfinite(fit).all(axis=(2, 3))
    return np.clip(np.where(usable[None], predicted, class_mean), 0.0, 1.0)


def _scored_tiles(archive: Archive, split: str, batch_size: int, sources: tuple[str, ...] = ()):
    """(reflectance (B, bands, H, W), valid (B, 1, H, W), labels (B, H, W), raw samples) batches of a split."""
    packed = open_split(archive, split, progress=False)
    if not len(packed):
        raise RsgeeError(f"{archive.root}: the {split} split has no tiles to evaluate on")
    for start in range(0, len(packed), batch_size):
        raws = [packed.read(i, ("s2", "lulc", *sources)) for i in range(start, min(start + batch_size, len(packed)))]
        s2 = np.stack([r["s2"] for r in raws])
        yield (np.clip(s2 / S2_SCALE, 0.0, 1.0).astype(np.float32), (s2 != 0).all(axis=1, keepdims=True),
               np.stack([r["lulc"][0] for r in raws]), raws)


def fusion_baselines(archive: Archive, split: str = "test", batch_size: int = 8,
                     references: Sequence[str] = ("class-illumination",)) -> dict[str, dict]:
    """PSNR/SSIM/SAM of ``constant-mean``, ``class-mean`` and the ``references`` (names of
    :data:`LINEAR_REFERENCES`) on ``split``: name → FusionMetrics.compute()."""
    constant = band_means(archive).astype(np.float32)
    spectra, _ = class_spectra(archive)
    lookup = np.where(np.isnan(spectra), constant[None], spectra).astype(np.float32)
    lookup = np.concatenate([lookup, constant[None]])  # row NUM_CLASSES: pixels without a class
    fits = {name: linear_fit(archive, LINEAR_REFERENCES[name]) for name in references}
    reads = tuple(sorted({s for name in references for s in LINEAR_REFERENCES[name]}))
    s1_bands = archive.sources()["s1"].band_names
    metrics = {name: FusionMetrics() for name in ("constant-mean", "class-mean", *references)}
    for reflectance, valid, labels, raws in _scored_tiles(archive, split, batch_size, reads):
        target, mask = torch.from_numpy(reflectance), torch.from_numpy(valid)
        predictions = {"constant-mean": np.broadcast_to(constant[None, :, None, None], reflectance.shape),
                       "class-mean": lookup[np.minimum(labels, NUM_CLASSES)].transpose(0, 3, 1, 2)}
        for name, weights in fits.items():
            predictions[name] = np.stack([
                linear_prediction(weights, linear_terms(raw, LINEAR_REFERENCES[name], s1_bands), k, painted)
                for raw, k, painted in zip(raws, labels, predictions["class-mean"])])
        for name, prediction in predictions.items():
            metrics[name].update(torch.from_numpy(np.ascontiguousarray(prediction, dtype=np.float32)), target, mask)
    return {name: metric.compute() for name, metric in metrics.items()}


def gaussian_classes(archive: Archive, tiles: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Per-class Gaussian of log reflectance on the train split (or ``tiles`` of it): ``mean`` (K, bands),
    ``precision`` (K, bands, bands), ``offset`` (K,) = log prior − ½ log det Σ; classes with fewer than
    MIN_FIT_PIXELS pixels get offset −inf (never predicted)."""
    bands = len(archive.sources()["s2"].bands)
    counts, sums = np.zeros(NUM_CLASSES), np.zeros((NUM_CLASSES, bands))
    products = np.zeros((NUM_CLASSES, bands, bands))
    for raw, labels, valid in _train_samples(archive, (), tiles):
        x = np.log(np.maximum(raw["s2"][:, valid] / S2_SCALE, LOG_FLOOR))
        k = labels[valid]
        counts += np.bincount(k, minlength=NUM_CLASSES)
        for a in range(bands):
            sums[:, a] += np.bincount(k, weights=x[a], minlength=NUM_CLASSES)
            for b in range(a, bands):
                products[:, a, b] += np.bincount(k, weights=x[a] * x[b], minlength=NUM_CLASSES)
    products = np.triu(products) + np.triu(products, 1).transpose(0, 2, 1)
    fitted = counts >= MIN_FIT_PIXELS
    mean = np.zeros((NUM_CLASSES, bands))
    precision = np.tile(np.eye(bands), (NUM_CLASSES, 1, 1))
    offset = np.full(NUM_CLASSES, -np.inf)
    for k in np.flatnonzero(fitted):
        mean[k] = sums[k] / counts[k]
        covariance = products[k] / counts[k] - np.outer(mean[k], mean[k]) + 1e-6 * np.eye(bands)
        precision[k] = np.linalg.inv(covariance)
        offset[k] = np.log(counts[k] / counts[fitted].sum()) - 0.5 * np.linalg.slogdet(covariance)[1]
    return {"mean": mean, "precision": precision, "offset": offset}


def gaussian_predict(model: dict[str, np.ndarray], reflectance: np.ndarray) -> np.ndarray:
    """The most probable class of each pixel of (B, bands, H, W) reflectance under :func:`gaussian_classes`."""
    x = np.log(np.maximum(reflectance, LOG_FLOOR)).astype(np.float64)
    d = x[:, None] - model["mean"][None, :, :, None, None]  # (B, K, bands, H, W)
    quadratic = np.einsum("bkihw,kij,bkjhw->bkhw", d, model["precision"], d)
    return np.argmax(model["offset"][None, :, None, None] - 0.5 * quadratic, axis=1)


def segmentation_baselines(archive: Archive, split: str = "test", batch_size: int = 8,
                           tiles: Sequence[int] | None = None) -> dict[str, dict]:
    """mIoU/accuracy of :data:`SEGMENTATION_BASELINES` on real ``split`` tiles, with the pixels RS-UNet is
    scored on (labelled, with a Sentinel-2 observation), learnt from the train split or its ``tiles``."""
    spectra, counts = class_spectra(archive, tiles)
    majority = int(np.argmax(counts))
    present = ~np.isnan(spectra[:, 0])
    gaussian = gaussian_classes(archive, tiles)
    metrics = {name: SegmentationMetrics(NUM_CLASSES, ignore_index=IGNORE) for name in SEGMENTATION_BASELINES}
    for reflectance, valid, labels, _ in _scored_tiles(archive, split, batch_size):
        target = torch.from_numpy(np.where((labels < NUM_CLASSES) & valid[:, 0], labels, IGNORE).astype(np.int64))
        distance = ((reflectance[:, None] - spectra[None, :, :, None, None]) ** 2).sum(axis=2)  # (B, K, H, W)
        distance[:, ~present] = np.inf
        metrics["class-mean-spectrum"].update(torch.from_numpy(distance.argmin(axis=1)), target)
        metrics["majority-class"].update(torch.full(target.shape, majority), target)
        metrics["per-pixel-gaussian"].update(torch.from_numpy(gaussian_predict(gaussian, reflectance)), target)
    return {name: metric.compute() for name, metric in metrics.items()}
