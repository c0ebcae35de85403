"""S1 dB conversion against math.log10, and linear-vs-dB detection on real chips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio

from rsgee.radiometry import db_to_linear, linear_to_db, looks_linear


@pytest.mark.parametrize("linear, db", [(1.0, 0.0), (0.1, -10.0), (0.01, -20.0), (0.5, -3.0103), (2.0, 3.0103)])
def test_known_values(linear, db):
    assert float(linear_to_db(np.array([linear]))[0]) == pytest.approx(db, abs=1e-4)


def test_matches_math_log10_and_round_trips():
    rng = np.random.default_rng(0)
    linear = rng.gamma(4.4, 0.05 / 4.4, size=10_000)
    db = linear_to_db(linear)
    reference = np.array([10 * math.log10(v) for v in linear], dtype=np.float32)
    assert db.dtype == np.float32
    np.testing.assert_allclose(db, reference, atol=1e-5)
    np.testing.assert_allclose(db_to_linear(db), linear, rtol=1e-5)


def test_floor_zero_and_nan():
    out = linear_to_db(np.array([0.0, 1e-9, np.nan, -1.0]), floor_db=-40.0)
    assert out[0] == out[1] == out[3] == np.float32(-40.0)
    assert np.isnan(out[2])


def test_mean_of_db_is_not_db_of_mean():
    """Why compositing must happen in linear power: the two differ by several dB under speckle."""
    rng = np.random.default_rng(1)
    looks = rng.gamma(1.0, 0.1, size=(50, 1000))  # single-look speckle around 0.1 (-10 dB)
    db_of_mean = linear_to_db(looks.mean(axis=0))
    mean_of_db = linear_to_db(looks).mean(axis=0)
    assert np.median(db_of_mean) == pytest.approx(-10.0, abs=0.5)
    assert np.median(db_of_mean - mean_of_db) > 2.0  # -2.5 dB bias of log-averaging (Euler gamma)


def test_looks_linear_on_synthetic_values():
    rng = np.random.default_rng(2)
    linear = rng.gamma(4.4, 0.05 / 4.4, size=(2, 64, 64))
    assert looks_linear(linear)
    assert not looks_linear(linear_to_db(linear))
    assert not looks_linear(np.full(10, np.nan))


def test_looks_linear_on_the_real_sen1floods11_chip(real_data):
    with rasterio.open(real_data / "sen1floods11" / "Spain_7370579_S1Hand.tif") as src:
        db = src.read()
    assert not looks_linear(db)  # the chip is in dB
    assert looks_linear(db_to_linear(db))
    finite = db[np.isfinite(db)]
    assert -40 < np.median(finite) < 0
