"""Pixels as the models read and write them: the per-source normalisation of DESIGN.md, both ways.

Training (:mod:`rsgee.train.data`), prediction (:mod:`rsgee.predict`) and exported models
(:mod:`rsgee.portable`) share these functions, so that a model sees the same numbers whichever reads
its inputs. They live here, beside the models and without Lightning, so that predicting from an
exported model needs only torch. Sentinel-2 reflectance/10000 clipped to [0, 1], then mapped to
[-1, 1] (the generators' tanh range); Sentinel-1 dB clipped to [-25, 0] (VH [-32.5, 0]) and mapped to
[0, 1]; land cover one-hot with a don't-care channel for 255; terrain as the standardised DEM,
slope/90, the sine and cosine of aspect (0, 0 where flat) and hillshade/255.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rsgee.models.factory import NUM_CLASSES
from rsgee.preprocess.terrain import ASPECT_FLAT_BELOW
from rsgee.radiometry import s1_db_range

#: Sentinel-2 surface reflectance is stored × this (uint16; 0 is nodata).
S2_SCALE = 10000.0


def s2_to_model(s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint16 reflectance×10000 (4, H, W) → values in [-1, 1] and the (1, H, W) validity mask."""
    valid = (s2 != 0).all(axis=0, keepdims=True)
    reflectance = np.clip(s2.astype(np.float32) / S2_SCALE, 0.0, 1.0)
    return reflectance * 2.0 - 1.0, valid


def model_to_reflectance(x: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] → reflectance in [0, 1] (what the metrics are computed on)."""
    return ((x.clamp(-1.0, 1.0) + 1.0) / 2.0).float()


def reflectance_to_s2(reflectance: np.ndarray) -> np.ndarray:
    """Reflectance in [0, 1] → uint16 ×10000, never 0 (0 is the archive's nodata)."""
    return np.clip(np.rint(reflectance * S2_SCALE), 1, S2_SCALE).astype(np.uint16)


def s1_to_model(s1: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """dB → [0, 1] per band's range; nodata (NaN) becomes 0, the bottom of the range."""
    out = np.empty(s1.shape, dtype=np.float32)
    for i, band in enumerate(bands):
        low, high = s1_db_range(band)
        out[i] = (np.clip(np.nan_to_num(s1[i], nan=low), low, high) - low) / (high - low)
    return out


def lulc_to_model(labels: np.ndarray) -> np.ndarray:
    """(1, H, W) Dynamic World labels → (10, H, W) one-hot; 255 (and anything ≥ 9) → don't-care channel."""
    index = np.where(labels[0] < NUM_CLASSES, labels[0], NUM_CLASSES).astype(np.int64)
    return (np.arange(NUM_CLASSES + 1)[:, None, None] == index[None]).astype(np.float32)


def terrain_to_model(terrain: np.ndarray, dem_mean: float, dem_std: float) -> np.ndarray:
    """(dem, slope, aspect, hillshade) → (dem standardised, slope/90, sin aspect, cos aspect, hillshade/255)."""
    dem, slope, aspect, hillshade = terrain.astype(np.float32)
    flat = aspect < ASPECT_FLAT_BELOW
    radians = np.deg2rad(aspect)
    channels = np.stack([
        (dem - dem_mean) / max(dem_std, 1e-6),
        slope / 90.0,
        np.where(flat, 0.0, np.sin(radians)),
        np.where(flat, 0.0, np.cos(radians)),
        hillshade / 255.0,
    ]).astype(np.float32)
    return np.nan_to_num(channels, nan=0.0)


def s2_to_segmenter(s2: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint16 reflectance×10000 (bands, H, W) → RS-UNet's input: reflectance in [0, 1] standardised per band
    with the train split's ``mean`` and ``std`` (reflectance units, one value per band)."""
    mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, np.float32).reshape(-1, 1, 1)
    return (np.clip(s2.astype(np.float32) / S2_SCALE, 0, 1) - mean) / std
