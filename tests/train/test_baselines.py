"""Baselines in every table, checked against a hand computation on the archive's GeoTIFFs (not the cache)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from rsgee.train.baselines import class_spectra, fusion_baselines, segmentation_baselines


def read(archive, split):
    """(reflectance, valid, labels) per tile of a split, straight from the GeoTIFFs."""
    for tile in archive.tiles(split):
        with rasterio.open(archive.tile_path("s2", tile["tile_id"])) as src:
            s2 = src.read()
        with rasterio.open(archive.tile_path("lulc", tile["tile_id"])) as src:
            labels = src.read(1)
        yield np.clip(s2 / 10000.0, 0, 1), (s2 != 0).all(axis=0), labels


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
