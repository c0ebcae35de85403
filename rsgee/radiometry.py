"""Radiometric conventions: Sentinel-1 backscatter in dB, and telling dB from linear power.

Sentinel-1 is composited in linear power and only then converted, ``dB = 10·log10(linear)``; a
composite of dB values would be a different (biased) quantity. Rasters that arrive in linear power
are recognised and converted, with a warning, never silently trusted.

Shared numerics below both ``rsgee.acquire`` (local files in linear power) and ``rsgee.preprocess``
(tiling, the packed cache), which do not import each other.
"""

from __future__ import annotations

import numpy as np

#: Lowest dB kept: Sentinel-1's noise-equivalent sigma0 is about -22…-26 dB, so -50 dB is far below
#: any real signal and only guards against log10(0).
DEFAULT_DB_FLOOR = -50.0

#: dB range the models see per Sentinel-1 band (others use the VV range); values outside are clipped.
#: Sentinel-1 land and water backscatter lies well inside; the packed cache keeps exactly this range.
S1_DB_RANGES = {"VV": (-25.0, 0.0), "VH": (-32.5, 0.0)}


def s1_db_range(band: str) -> tuple[float, float]:
    """The (low, high) dB range of a Sentinel-1 band (:data:`S1_DB_RANGES`, VV's for unknown bands)."""
    return S1_DB_RANGES.get(band, S1_DB_RANGES["VV"])


def linear_to_db(linear: np.ndarray, floor_db: float = DEFAULT_DB_FLOOR) -> np.ndarray:
    """10·log10 of linear power as float32; values at or below the floor (zeros included) give
    ``floor_db``; NaN stays NaN."""
    linear = np.asarray(linear, dtype=np.float64)
    floor_linear = 10.0 ** (floor_db / 10.0)
    with np.errstate(invalid="ignore"):
        clamped = np.where(np.isnan(linear), np.nan, np.maximum(linear, floor_linear))
    return (10.0 * np.log10(clamped)).astype(np.float32)


def db_to_linear(db: np.ndarray) -> np.ndarray:
    """Inverse of :func:`linear_to_db` (float64), NaN preserved."""
    return 10.0 ** (np.asarray(db, dtype=np.float64) / 10.0)


def looks_linear(values: np.ndarray) -> bool:
    """Whether backscatter values look like linear power rather than dB.

    dB backscatter of land and water is overwhelmingly negative (median about -10…-20 dB); linear
    power is never negative and its median is well below 1. A raster is called linear when under
    1 % of its finite values are negative and their median lies in (0, 1].
    """
    finite = np.asarray(values)[np.isfinite(values)]
    if finite.size == 0:
        return False
    negative_share = np.count_nonzero(finite < 0) / finite.size
    median = float(np.median(finite))
    return negative_share < 0.01 and 0.0 < median <= 1.0
