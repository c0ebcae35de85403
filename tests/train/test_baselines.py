"""Baselines in every table, checked against a hand computation on the archive's GeoTIFFs (not the cache)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from rsgee.train.baselines import (MIN_FIT_PIXELS, class_spectra, fusion_baselines, illumination_terms,
                                   segmentation_baselines)


def read(archive, split, terrain: bool = False):
    """(reflectance, valid, labels[, terrain]) per tile of a split, straight from the GeoTIFFs."""
    for tile in archive.tiles(split):
        with rasterio.open(archive.tile_path("s2", tile["tile_id"])) as src:
            s2 = src.read()
        with rasterio.open(archive.tile_path("lulc", tile["tile_id"])) as src:
            labels = src.read(1)
        out = (np.clip(s2 / 10000.0, 0, 1), (s2 != 0).all(axis=0), labels)
        if terrain:
            with rasterio.open(archive.tile_path("terrain", tile["tile_id"])) as src:
                out += (src.read(),)
        yield out


def test_class_spectra_are_the_train_means_per_class(ddp_archive):
    sums, counts = np.zeros((9, 4)), np.zeros(9)
    for reflectance, valid, labels in read(ddp_archive, "train"):
        for k in range(9):
            where = valid & (labels == k)
            sums[k] += reflectance[:, where].sum(axis=1)
            counts[k] += where.sum()
    spectra, got_counts = class_spectra(ddp_archive)
    assert np.array_equal(got_counts, counts)
    present = counts > 0
    assert np.allclose(spectra[present], sums[present] / counts[present, None])
    assert np.isnan(spectra[~present]).all()


def test_fusion_baselines_match_a_hand_computation(ddp_archive):
    stats = json.loads(ddp_archive.stats_path.read_text())["sources"]["s2"]
    constant = np.array([stats[b]["mean"] for b in ("B2", "B3", "B4", "B8")]) / 10000
    spectra, _ = class_spectra(ddp_archive)
    psnr = {"constant-mean": [], "class-mean": []}
    for reflectance, valid, labels in read(ddp_archive, "val"):
        painted = np.where(((labels < 9) & ~np.isnan(spectra[np.minimum(labels, 8), 0]))[None],
                           spectra[np.minimum(labels, 8)].transpose(2, 0, 1), constant[:, None, None])
        for name, prediction in (("constant-mean", np.broadcast_to(constant[:, None, None], reflectance.shape)),
                                 ("class-mean", painted)):
            mse = ((prediction - reflectance)[:, valid] ** 2).mean()
            psnr[name].append(10 * np.log10(1 / mse))
    scores = fusion_baselines(ddp_archive, "val")
    for name in psnr:
        assert float(scores[name]["psnr"]) == pytest.approx(np.mean(psnr[name]), abs=1e-3)
        assert int(scores[name]["n_images"]) == 3
    assert scores["class-mean"]["psnr"] > scores["constant-mean"]["psnr"]  # land cover carries information here


def test_illumination_terms_make_lamberts_cosine_linear_for_any_sun():
    rng = np.random.default_rng(0)
    slope, aspect = rng.uniform(0, 60, (8, 8)), rng.uniform(0, 360, (8, 8))
    slope[0, 0], aspect[0, 0] = 0.0, -1.0  # flat
    terrain = np.stack([np.zeros((8, 8)), slope, aspect, np.zeros((8, 8))])
    terms = illumination_terms(terrain)
    s, a = np.deg2rad(slope), np.deg2rad(np.where(aspect < 0, 0, aspect))
    normal = np.stack([np.sin(s) * np.sin(a), np.sin(s) * np.cos(a), np.cos(s)])  # east, north, up
    for zenith, azimuth in [(45, 150), (30, 315), (60, 90)]:
        z, phi = np.deg2rad(zenith), np.deg2rad(azimuth)
        sun = np.array([np.sin(z) * np.sin(phi), np.sin(z) * np.cos(phi), np.cos(z)])
        weights = np.array([0.0, np.cos(z), np.sin(z) * np.sin(phi), np.sin(z) * np.cos(phi)])
        np.testing.assert_allclose(np.einsum("t,thw->hw", weights, terms), np.einsum("c,chw->hw", sun, normal),
                                   atol=1e-12)
    terrain[1, 3, 3] = np.nan
    assert np.isnan(illumination_terms(terrain)[:, 3, 3]).all()


def test_class_illumination_matches_a_least_squares_fit_on_the_geotiffs(ddp_archive):
    """Per class and band, reflectance ~ (1, cos slope, sin slope·sin aspect, sin slope·cos aspect) on train."""
    stats = json.loads(ddp_archive.stats_path.read_text())["sources"]["s2"]
    constant = np.array([stats[b]["mean"] for b in ("B2", "B3", "B4", "B8")]) / 10000
    spectra, _ = class_spectra(ddp_archive)
    spectra = np.vstack([np.where(np.isnan(spectra), constant, spectra), constant])  # row 9: no class
    gram, moments = np.zeros((9, 4, 4)), np.zeros((9, 4, 4))
    for reflectance, valid, labels, terrain in read(ddp_archive, "train", terrain=True):
        x = illumination_terms(terrain)
        keep = valid & (labels < 9) & np.isfinite(x).all(axis=0)
        for k in np.unique(labels[keep]):
            rows = keep & (labels == k)
            gram[k] += x[:, rows] @ x[:, rows].T
            moments[k] += x[:, rows] @ reflectance[:, rows].T
    fitted = [k for k in range(9) if gram[k, 0, 0] >= MIN_FIT_PIXELS]
    assert fitted  # the ridge's classes have enough pixels for a fit of their own
    psnr = []
    for reflectance, valid, labels, terrain in read(ddp_archive, "val", terrain=True):
        x = illumination_terms(terrain)
        prediction = spectra[np.minimum(labels, 9)].transpose(2, 0, 1).copy()
        for k in fitted:
            rows = (labels == k) & np.isfinite(x).all(axis=0)
            weights = np.linalg.lstsq(gram[k], moments[k], rcond=None)[0]
            prediction[:, rows] = np.clip(weights.T @ x[:, rows], 0, 1)
        mse = ((prediction - reflectance)[:, valid] ** 2).mean()
        psnr.append(10 * np.log10(1 / mse))
    scores = fusion_baselines(ddp_archive, "val")
    # the baseline reads terrain from the compact cache (slope within 0.18°, aspect within 0.71° of the GeoTIFFs)
    assert float(scores["class-illumination"]["psnr"]) == pytest.approx(np.mean(psnr), abs=0.02)
    assert scores["class-illumination"]["psnr"] > scores["class-mean"]["psnr"]  # the synthetic sun lights slopes


def test_segmentation_baselines_match_a_hand_computation(ddp_archive):
    spectra, counts = class_spectra(ddp_archive)
    confusion = {"majority-class": np.zeros((9, 9)), "class-mean-spectrum": np.zeros((9, 9))}
    present = np.flatnonzero(counts > 0)
    for reflectance, valid, labels in read(ddp_archive, "test"):
        keep = valid & (labels < 9)
        pixels = reflectance[:, keep].T  # (n, 4)
        nearest = present[np.argmin(((pixels[:, None] - spectra[present][None]) ** 2).sum(-1), axis=1)]
        for name, predicted in (("majority-class", np.full(len(pixels), np.argmax(counts))),
                                ("class-mean-spectrum", nearest)):
            np.add.at(confusion[name], (labels[keep], predicted), 1)
    scores = segmentation_baselines(ddp_archive, "test")
    for name, matrix in confusion.items():
        tp = np.diag(matrix)
        union = matrix.sum(0) + matrix.sum(1) - tp
        assert float(scores[name]["miou"]) == pytest.approx((tp[union > 0] / union[union > 0]).mean(), abs=1e-6)
        assert float(scores[name]["accuracy"]) == pytest.approx(tp.sum() / matrix.sum(), abs=1e-6)


def test_the_per_pixel_gaussian_matches_scipys_densities_on_the_geotiffs(ddp_archive):
    """QDA on log reflectance: per class a Gaussian fitted on train pixels, priors from the class frequencies."""
    from scipy.stats import multivariate_normal

    pixels = {k: [] for k in range(9)}
    for reflectance, valid, labels in read(ddp_archive, "train"):
        keep = valid & (labels < 9)
        x = np.log(np.maximum(reflectance[:, keep], 1e-4)).T
        for k in range(9):
            pixels[k].append(x[labels[keep] == k])
    pixels = {k: np.concatenate(v) for k, v in pixels.items()}
    fitted = [k for k, v in pixels.items() if len(v) >= MIN_FIT_PIXELS]
    total = sum(len(pixels[k]) for k in fitted)
    confusion = np.zeros((9, 9))
    for reflectance, valid, labels in read(ddp_archive, "test"):
        keep = valid & (labels < 9)
        x = np.log(np.maximum(reflectance[:, keep], 1e-4)).T
        scores = np.stack([multivariate_normal(pixels[k].mean(0), np.cov(pixels[k].T, bias=True) + 1e-6 * np.eye(4))
                           .logpdf(x) + np.log(len(pixels[k]) / total) for k in fitted])
        np.add.at(confusion, (labels[keep], np.array(fitted)[scores.argmax(0)]), 1)
    scores = segmentation_baselines(ddp_archive, "test")
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    assert float(scores["per-pixel-gaussian"]["miou"]) == pytest.approx((tp[union > 0] / union[union > 0]).mean(),
                                                                       abs=1e-6)
    assert scores["per-pixel-gaussian"]["miou"] > scores["class-mean-spectrum"]["miou"]  # covariances matter


def test_baselines_of_a_low_label_run_learn_from_its_tiles_only(ddp_archive):
    every = segmentation_baselines(ddp_archive, "test")
    _, counts_one = class_spectra(ddp_archive, tiles=[0])
    _, counts_all = class_spectra(ddp_archive)
    assert 0 < counts_one.sum() < counts_all.sum()
    one = segmentation_baselines(ddp_archive, "test", tiles=[0])
    assert float(one["per-pixel-gaussian"]["miou"]) != float(every["per-pixel-gaussian"]["miou"])


def test_a_linear_reference_per_source_set(ddp_archive):
    """class-sar and class-illumination-sar fit the same least squares on SAR (and terrain) as class-illumination does
    on terrain; on the synthetic scene each input adds something on val."""
    scores = fusion_baselines(ddp_archive, "val", references=("class-illumination", "class-sar",
                                                                 "class-illumination-sar"))
    psnr = {name: float(v["psnr"]) for name, v in scores.items()}
    assert list(psnr) == ["constant-mean", "class-mean", "class-illumination", "class-sar", "class-illumination-sar"]
    assert psnr["class-illumination-sar"] > max(psnr["class-illumination"], psnr["class-sar"]) > psnr["class-mean"]
