"""Fusion (PSNR/SSIM/SAM) and segmentation (mIoU/accuracy) metrics against independent references.

The references are scikit-image, closed-form values, hand-computed numbers and numpy. torchmetrics
is only used as a reference where the claim is *about* torchmetrics (pooled PSNR, NaN SAM on zero
vectors, macro Jaccard).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rsgee.train.metrics import (
    PSNR_CAP_DB,
    FusionMetrics,
    SegmentationMetrics,
    psnr,
    psnr_per_image,
    sam,
    sam_per_image,
    segmentation_scores,
    ssim,
    ssim_per_image,
)

PAD = 5  # (11 - 1) / 2: half the Gaussian window, the border band skimage crops


def _pair(seed: int, shape=(3, 4, 40, 40), noise=0.05) -> tuple[np.ndarray, np.ndarray]:
    """Random float64 reflectance target and a noisy prediction, both inside [0, 1]."""
    rng = np.random.default_rng(seed)
    target = rng.uniform(0.05, 0.6, size=shape)
    pred = np.clip(target + noise * rng.standard_normal(shape), 0.0, 1.0)
    return pred, target


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


# --------------------------------------------------------------------------------------------- PSNR


def test_psnr_equals_skimage_per_image():
    pred, target = _pair(0)
    ours = psnr_per_image(_t(pred), _t(target)).numpy()
    ref = [peak_signal_noise_ratio(target[i], pred[i], data_range=1) for i in range(len(pred))]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    assert psnr(_t(pred), _t(target)).item() == pytest.approx(np.mean(ref), rel=1e-12)


@pytest.mark.parametrize("d", [0.1, 0.01, 0.003])
def test_psnr_constant_offset_is_analytic(d):
    _, target = _pair(1, shape=(2, 4, 16, 16))
    value = psnr_per_image(_t(target + d), _t(target)).numpy()
    np.testing.assert_allclose(value, -20.0 * math.log10(d), rtol=1e-10)


def test_psnr_is_mean_over_images_not_pooled_mse():
    # Image A off by 0.1 everywhere (20 dB), image B off by 0.001 (60 dB).
    target = torch.full((2, 4, 8, 8), 0.3, dtype=torch.float64)
    pred = target.clone()
    pred[0] += 0.1
    pred[1] += 0.001
    per_image_mean = (20.0 + 60.0) / 2
    pooled = 10 * math.log10(1 / ((0.1**2 + 0.001**2) / 2))  # ≈ 23.01 dB
    assert psnr(pred, target).item() == pytest.approx(per_image_mean, rel=1e-9)

    # torchmetrics' class default pools the MSE: the number this module must NOT return.
    from torchmetrics.image import PeakSignalNoiseRatio

    tm = PeakSignalNoiseRatio(data_range=1.0)
    tm.update(pred[:1], target[:1])
    tm.update(pred[1:], target[1:])
    assert tm.compute().item() == pytest.approx(pooled, rel=1e-6)

    metric = FusionMetrics().set_dtype(torch.float64)
    metric.update(pred[:1], target[:1])
    metric.update(pred[1:], target[1:])
    assert metric.compute()["psnr"].item() == pytest.approx(per_image_mean, rel=1e-9)
    assert abs(per_image_mean - pooled) > 15


def test_identical_images_are_capped_and_counted():
    _, target = _pair(2, shape=(2, 4, 16, 16))
    t = _t(target)
    values = psnr_per_image(t, t)
    assert torch.all(values == PSNR_CAP_DB)
    assert torch.isfinite(psnr(t, t))

    off = t + 0.01  # 40 dB
    metric = FusionMetrics().set_dtype(torch.float64)
    metric.update(t, t)
    metric.update(off, t)
    out = metric.compute()
    assert out["psnr"].item() == pytest.approx((PSNR_CAP_DB + 40.0) / 2, rel=1e-9)
    assert out["n_psnr_capped"].item() == 2
    assert out["n_images"].item() == 4


def test_psnr_mask_excludes_nodata():
    pred, target = _pair(3, shape=(2, 4, 24, 24))
    rng = np.random.default_rng(30)
    valid = rng.random((2, 24, 24)) > 0.3
    base = psnr_per_image(_t(pred), _t(target), _t(valid)).numpy()
    # Reference: skimage on the valid pixels only (all bands of each valid pixel).
    for i in range(2):
        sel = valid[i]
        ref = peak_signal_noise_ratio(target[i][:, sel], pred[i][:, sel], data_range=1)
        assert base[i] == pytest.approx(ref, rel=1e-12)
    # Whatever the masked pixels hold (even NaN or DN-scale values), nothing changes.
    for junk in (0.0, 0.9, 4000.0, np.nan):
        p2, t2 = pred.copy(), target.copy()
        for i in range(2):
            p2[i][:, ~valid[i]] = junk
            t2[i][:, ~valid[i]] = -junk
        masked = psnr_per_image(_t(p2), _t(t2), _t(valid)).numpy()
        np.testing.assert_array_equal(masked, base)


def test_image_without_valid_pixels_is_nan_and_left_out():
    pred, target = _pair(4, shape=(2, 4, 16, 16))
    valid = np.ones((2, 16, 16), dtype=bool)
    valid[1] = False
    per = psnr_per_image(_t(pred), _t(target), _t(valid))
    assert torch.isnan(per[1]) and torch.isfinite(per[0])
    assert psnr(_t(pred), _t(target), _t(valid)).item() == pytest.approx(per[0].item())
    metric = FusionMetrics()
    metric.update(_t(pred), _t(target), valid_mask=_t(valid))
    out = metric.compute()
    assert out["n_psnr_undefined"].item() == 1 and out["n_sam_undefined"].item() == 1
    assert all(torch.isfinite(out[key]) for key in ("psnr", "ssim", "sam"))


@pytest.mark.parametrize(
    "pred, match",
    [
        (torch.full((1, 4, 8, 8), -0.8), "de-normalise"),  # tanh output passed as is
        (torch.full((1, 4, 8, 8), 3000.0), "digital numbers"),  # raw S2 DN
    ],
)
def test_inputs_that_are_not_reflectance_are_rejected(pred, match):
    with pytest.raises(ValueError, match=match):
        psnr(pred, torch.full((1, 4, 8, 8), 0.3))


def test_nan_at_a_valid_pixel_is_an_error_not_a_dropped_image():
    pred = torch.full((2, 4, 8, 8), 0.3)
    pred[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        FusionMetrics().update(pred, torch.full((2, 4, 8, 8), 0.3))


def test_integer_inputs_are_rejected():
    dn = torch.full((1, 4, 8, 8), 3000, dtype=torch.int16)
    with pytest.raises(TypeError):
        sam(dn, dn)


# --------------------------------------------------------------------------------------------- SSIM


def _skimage_ssim_map(pred: np.ndarray, target: np.ndarray, pad_mode: str | None) -> np.ndarray:
    """skimage's Wang et al. SSIM map (C, H', W') of one image, with the settings in the docstring.

    With ``pad_mode=None`` this is skimage's own cropped interior (H-10, W-10). With
    ``pad_mode="reflect"`` the image is first padded by numpy's reflect (no edge repeat, like
    ``torch.nn.functional.pad(mode="reflect")``). Cropping then yields the full H×W map that
    torchmetrics averages.
    """
    if pad_mode is not None:
        width = ((0, 0), (PAD, PAD), (PAD, PAD))
        pred = np.pad(pred, width, mode=pad_mode)
        target = np.pad(target, width, mode=pad_mode)
    _, full = structural_similarity(
        target,
        pred,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1,
        channel_axis=0,
        full=True,
    )
    return full[:, PAD:-PAD, PAD:-PAD]


def test_ssim_identical_images_is_one():
    _, target = _pair(5, shape=(2, 4, 32, 32))
    t = _t(target).float()
    np.testing.assert_allclose(ssim_per_image(t, t).numpy(), 1.0, atol=1e-6)
    assert ssim(t, t).item() == pytest.approx(1.0, abs=1e-6)


def test_ssim_interior_map_matches_skimage():
    from torchmetrics.functional.image import structural_similarity_index_measure

    pred, target = _pair(6, shape=(2, 4, 48, 48), noise=0.1)
    for i in range(2):
        # skimage crops 5 px per side; on that interior both implementations give the same map.
        mssim, _ = structural_similarity(
            target[i],
            pred[i],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
            channel_axis=0,
            full=True,
        )
        interior = _skimage_ssim_map(pred[i], target[i], pad_mode=None)
        _, tm_map = structural_similarity_index_measure(
            _t(pred[i : i + 1]), _t(target[i : i + 1]), data_range=1.0, return_full_image=True
        )
        np.testing.assert_allclose(tm_map[0, :, PAD:-PAD, PAD:-PAD].numpy(), interior, atol=1e-12)
        assert interior.mean() == pytest.approx(mssim, abs=1e-12)


def test_ssim_per_image_equals_reflect_padded_skimage_mean():
    """Whole value, borders included: skimage on a reflect-padded image, then the full-map mean."""
    pred, target = _pair(7, shape=(3, 4, 40, 40), noise=0.1)
    ours = ssim_per_image(_t(pred), _t(target)).numpy()
    ref = [_skimage_ssim_map(pred[i], target[i], "reflect").mean() for i in range(3)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert ssim(_t(pred), _t(target)).item() == pytest.approx(np.mean(ref), abs=1e-12)
    # The documented border difference from plain skimage (cropped mean) is small but non-zero.
    cropped = [
        structural_similarity(
            target[i],
            pred[i],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
            channel_axis=0,
        )
        for i in range(3)
    ]
    diff = np.abs(np.asarray(ours) - np.asarray(cropped))
    assert np.all(diff < 0.02) and np.all(diff > 0)


def test_ssim_data_range_is_fixed_at_one():
    from torchmetrics.functional.image import structural_similarity_index_measure

    pred, target = _pair(8, shape=(1, 4, 32, 32), noise=0.1)
    scale = 0.25
    p, t = _t(pred * scale), _t(target * scale)
    ours = ssim_per_image(p, t).item()
    # Fixed R = 1: equals skimage with data_range=1 on the scaled images...
    ref = _skimage_ssim_map(pred[0] * scale, target[0] * scale, "reflect").mean()
    assert ours == pytest.approx(ref, abs=1e-12)
    # ...and is NOT the scale-invariant value an inferred range (max - min) would give.
    inferred = structural_similarity_index_measure(p, t, data_range=None).item()
    unscaled_inferred = structural_similarity_index_measure(_t(pred), _t(target), data_range=None)
    assert inferred == pytest.approx(unscaled_inferred.item(), abs=1e-9)
    assert abs(ours - inferred) > 1e-3

    # Batch independence: one image's SSIM doesn't depend on what else is in the batch.
    other = np.full((1, 4, 32, 32), 0.02) + 0.01 * np.random.default_rng(80).random((1, 4, 32, 32))
    batch = ssim_per_image(torch.cat([p, _t(other)]), torch.cat([t, _t(other[:, ::-1].copy())]))
    assert batch[0].item() == pytest.approx(ours, abs=1e-12)


def test_ssim_mask_ignores_nodata_values():
    pred, target = _pair(9, shape=(1, 4, 32, 32), noise=0.1)
    valid = np.ones((1, 32, 32), dtype=bool)
    valid[0, 10:18, 4:20] = False
    base = ssim_per_image(_t(pred), _t(target), _t(valid)).item()
    p2, t2 = pred.copy(), target.copy()
    p2[:, :, ~valid[0]] = np.nan
    t2[:, :, ~valid[0]] = 0.77
    assert ssim_per_image(_t(p2), _t(t2), _t(valid)).item() == pytest.approx(base, abs=1e-12)
    # Reference: nodata zeroed in both images, skimage map averaged over valid centres.
    pz, tz = pred.copy(), target.copy()
    pz[:, :, ~valid[0]] = 0.0
    tz[:, :, ~valid[0]] = 0.0
    full = _skimage_ssim_map(pz[0], tz[0], "reflect")
    assert base == pytest.approx(full[:, valid[0]].mean(), abs=1e-12)


# ---------------------------------------------------------------------------------------------- SAM


def test_sam_identical_and_scaled_spectra_are_zero():
    _, target = _pair(10, shape=(2, 4, 16, 16))
    t = _t(target).float()
    assert torch.all(sam_per_image(t, t) == 0)
    assert sam(0.5 * t, t).item() == pytest.approx(0.0, abs=1e-6)  # SAM ignores brightness


def test_sam_orthogonal_spectra_are_right_angle():
    pred = torch.zeros(1, 4, 3, 3)
    target = torch.zeros(1, 4, 3, 3)
    pred[:, 0] = 0.4
    pred[:, 2] = 0.1
    target[:, 1] = 0.3
    target[:, 3] = 0.2
    assert sam(pred, target).item() == pytest.approx(math.pi / 2, abs=1e-6)


def test_sam_hand_computed_two_pixels():
    p = np.array([[0.10, 0.20, 0.30, 0.40], [0.05, 0.05, 0.05, 0.50]])
    t = np.array([[0.12, 0.18, 0.25, 0.45], [0.30, 0.20, 0.10, 0.05]])
    angles = [
        np.arccos(p[i] @ t[i] / (np.linalg.norm(p[i]) * np.linalg.norm(t[i]))) for i in range(2)
    ]
    pred = _t(p.T.reshape(1, 4, 1, 2))
    target = _t(t.T.reshape(1, 4, 1, 2))
    assert sam(pred, target).item() == pytest.approx(np.mean(angles), rel=1e-12)


def test_sam_excludes_zero_vectors_and_masked_pixels():
    from torchmetrics.functional.image import spectral_angle_mapper

    pred, target = _pair(11, shape=(1, 4, 4, 4))
    ref_angles = np.arccos(
        np.einsum("bchw,bchw->bhw", pred, target)
        / (np.linalg.norm(pred, axis=1) * np.linalg.norm(target, axis=1))
    )[0]
    pz, tz = pred.copy(), target.copy()
    pz[0, :, 0, 0] = 0.0  # zero predicted spectrum
    tz[0, :, 1, 1] = 0.0  # zero reference spectrum (S2 nodata)
    valid = np.ones((1, 4, 4), dtype=bool)
    valid[0, 2, 3] = False  # masked nodata, with junk values
    pz[0, :, 2, 3] = 0.9
    keep = valid[0].copy()
    keep[0, 0] = keep[1, 1] = False
    value = sam(_t(pz), _t(tz), _t(valid))
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(ref_angles[keep].mean(), rel=1e-9)
    # torchmetrics has no such exclusion: a zero vector poisons its mean.
    assert torch.isnan(spectral_angle_mapper(_t(pz), _t(tz)))


def test_sam_is_mean_over_images_of_per_image_means():
    pred = torch.zeros(2, 4, 2, 2, dtype=torch.float64)
    target = torch.zeros(2, 4, 2, 2, dtype=torch.float64)
    target[:, 0] = 0.5  # spectra along band 0
    # Image 0: one valid pixel at 90°; image 1: four valid pixels at 45°.
    pred[0, 1, 0, 0] = 0.5
    pred[1, 0] = 0.3
    pred[1, 1] = 0.3
    valid = torch.zeros(2, 2, 2, dtype=torch.bool)
    valid[0, 0, 0] = True
    valid[1] = True
    per = sam_per_image(pred, target, valid)
    np.testing.assert_allclose(per.numpy(), [math.pi / 2, math.pi / 4], rtol=1e-12)
    assert sam(pred, target, valid).item() == pytest.approx(3 * math.pi / 8, rel=1e-12)
    # pixel-pooled would be (π/2 + 4·π/4) / 5 = 0.3π: not what we return
    assert abs(sam(pred, target, valid).item() - 0.3 * math.pi) > 0.1


def test_sam_matches_torchmetrics_on_dense_data():
    from torchmetrics.functional.image import spectral_angle_mapper

    pred, target = _pair(12, shape=(3, 4, 16, 16), noise=0.1)
    pred = np.maximum(pred, 0.01)  # no zero spectra: here the definitions coincide
    assert sam(_t(pred), _t(target)).item() == pytest.approx(
        spectral_angle_mapper(_t(pred), _t(target)).item(), rel=1e-9
    )


# ----------------------------------------------------------------------------------- FusionMetrics


def test_fusion_metrics_accumulates_per_image():
    pred, target = _pair(13, shape=(5, 4, 24, 24), noise=0.08)
    p, t = _t(pred), _t(target)
    one = FusionMetrics().set_dtype(torch.float64)
    one.update(p, t, sample_index=torch.arange(5))
    two = FusionMetrics().set_dtype(torch.float64)
    two.update(p[:2], t[:2], sample_index=torch.arange(2))
    two.update(p[2:], t[2:], sample_index=torch.arange(2, 5))
    a, b = one.compute(), two.compute()
    for key in ("psnr", "ssim", "sam", "psnr_per_image", "ssim_per_image", "sam_per_image"):
        torch.testing.assert_close(a[key], b[key])
    ref = [peak_signal_noise_ratio(target[i], pred[i], data_range=1) for i in range(5)]
    np.testing.assert_allclose(a["psnr_per_image"].numpy(), ref, rtol=1e-10)
    assert a["psnr"].item() == pytest.approx(np.mean(ref), rel=1e-10)
    assert a["sample_index"].tolist() == [0, 1, 2, 3, 4]
    one.reset()
    one.update(p[:1], t[:1])
    assert one.compute()["n_images"].item() == 1


def _fake_gather(other: FusionMetrics):
    """A ``dist_sync_fn`` for a two-rank world whose other rank holds ``other``'s states.

    torchmetrics gathers the states in ``_reductions`` order, list states pre-concatenated (or an
    empty tensor of the metric dtype on a rank without data), and then replaces each list state
    with the reduced *tensor*: the path a real DDP ``compute()`` takes.
    """
    queue = []
    for attr in other._reductions:
        state = getattr(other, attr)
        queue.append(torch.cat(state) if state else torch.tensor([], dtype=other.dtype))

    def gather(tensor, group=None):
        return [tensor, queue.pop(0)]

    return gather


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
@pytest.mark.parametrize("rank0_images", [0, 1, 3])
def test_fusion_metrics_sync_like_ddp(rank0_images):
    """Per-image values of all ranks are gathered ("cat"), so the mean is over all images."""
    pred, target = _pair(16, shape=(4, 4, 16, 16))
    p, t = _t(pred).float(), _t(target).float()
    rank1 = FusionMetrics()
    rank1.update(p[rank0_images:], t[rank0_images:], sample_index=torch.arange(rank0_images, 4))
    rank0 = FusionMetrics(dist_sync_fn=_fake_gather(rank1), distributed_available_fn=lambda: True)
    if rank0_images:
        rank0.update(p[:rank0_images], t[:rank0_images], sample_index=torch.arange(rank0_images))
    whole = FusionMetrics()
    whole.update(p, t, sample_index=torch.arange(4))
    synced, ref = rank0.compute(), whole.compute()
    for key in ("psnr", "ssim", "sam", "psnr_per_image", "ssim_per_image", "sam_per_image"):
        torch.testing.assert_close(synced[key], ref[key])
    assert synced["sample_index"].tolist() == [0, 1, 2, 3]
    assert synced["n_images"].item() == 4


def test_fusion_metrics_merge_like_ddp():
    """States reduce with their dist_reduce_fx ("cat"), exactly as a DDP sync would."""
    pred, target = _pair(14, shape=(4, 4, 16, 16))
    p, t = _t(pred), _t(target)
    rank0, rank1, whole = (FusionMetrics().set_dtype(torch.float64) for _ in range(3))
    rank0.update(p[:1], t[:1])  # unequal shards: a mean of rank means would be wrong
    rank1.update(p[1:], t[1:])
    whole.update(p, t)
    rank0.merge_state(rank1)
    merged, ref = rank0.compute(), whole.compute()
    for key in ("psnr", "ssim", "sam"):
        assert merged[key].item() == pytest.approx(ref[key].item(), rel=1e-12)


# ------------------------------------------------------------------------------------ Segmentation

# Hand-written 3-class confusion matrix, 20 pixels, rows = truth, columns = prediction.
#   TP = 5, 6, 4 ; truth totals 6, 9, 5 ; predicted totals 7, 8, 5
#   IoU0 = 5/(6+7-5) = 5/8, IoU1 = 6/(9+8-6) = 6/11, IoU2 = 4/(5+5-4) = 2/3
#   accuracy = 15/20
CM3 = np.array([[5, 1, 0], [2, 6, 1], [0, 1, 4]])
IOU3 = [5 / 8, 6 / 11, 2 / 3]


def _pixels_from_confusion(cm: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled (target, pred) label vectors that realise the confusion matrix ``cm``."""
    t, p = [], []
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            t += [i] * int(cm[i, j])
            p += [j] * int(cm[i, j])
    order = np.random.default_rng(seed).permutation(len(t))
    return np.asarray(t)[order], np.asarray(p)[order]


def _bincount_confusion(target: np.ndarray, pred: np.ndarray, k: int, ignore: int = 255):
    keep = target != ignore
    return np.bincount(target[keep] * k + pred[keep], minlength=k * k).reshape(k, k)


def test_segmentation_hand_computed_example():
    t, p = _pixels_from_confusion(CM3)
    metric = SegmentationMetrics(num_classes=3, ignore_index=255)
    metric.update(_t(p.reshape(1, 4, 5)), _t(t.reshape(1, 4, 5)))
    out = metric.compute()
    np.testing.assert_array_equal(out["confusion"].numpy(), CM3)
    np.testing.assert_allclose(out["iou_per_class"].numpy(), IOU3, rtol=1e-15)
    assert out["miou"].item() == pytest.approx(np.mean(IOU3), rel=1e-15)
    assert out["accuracy"].item() == pytest.approx(15 / 20, rel=1e-15)


def test_segmentation_ignore_index_is_dropped():
    t, p = _pixels_from_confusion(CM3)
    t = np.concatenate([t, [255, 255, 255, 255]])
    p = np.concatenate([p, [0, 1, 2, 2]])  # whatever is predicted on nodata
    metric = SegmentationMetrics(num_classes=3, ignore_index=255)
    metric.update(_t(p.reshape(2, 2, 6)), _t(t.reshape(2, 2, 6)))
    out = metric.compute()
    np.testing.assert_array_equal(out["confusion"].numpy(), CM3)
    assert out["accuracy"].item() == pytest.approx(0.75)


def test_segmentation_absent_class_excluded_from_macro_mean():
    from torchmetrics.classification import MulticlassJaccardIndex

    t, p = _pixels_from_confusion(CM3)  # class 3 never occurs in truth or prediction
    metric = SegmentationMetrics(num_classes=4, ignore_index=255)
    metric.update(_t(p), _t(t))
    out = metric.compute()
    iou = out["iou_per_class"].numpy()
    np.testing.assert_allclose(iou[:3], IOU3, rtol=1e-15)
    assert np.isnan(iou[3])
    assert out["miou"].item() == pytest.approx(np.mean(IOU3), rel=1e-15)
    assert out["miou_absent_as_zero"].item() == pytest.approx(sum(IOU3) / 4, rel=1e-15)
    assert out["n_classes_present"].item() == 3
    # Same convention as torchmetrics' macro Jaccard.
    jac = MulticlassJaccardIndex(num_classes=4, average="macro", ignore_index=255)
    assert jac(_t(p), _t(t)).item() == pytest.approx(out["miou"].item(), rel=1e-6)


def test_segmentation_class_present_but_never_right_counts_as_zero():
    cm = np.array([[4, 2], [0, 0]])  # class 1 predicted twice, never true: IoU 0, not absent
    scores = segmentation_scores(torch.from_numpy(cm))
    np.testing.assert_allclose(scores["iou_per_class"].numpy(), [4 / 6, 0.0])
    assert scores["miou"].item() == pytest.approx(1 / 3)


def test_segmentation_two_batches_equal_one_and_match_bincount():
    rng = np.random.default_rng(15)
    target = rng.integers(0, 9, size=(4, 32, 32))
    target[rng.random(target.shape) < 0.1] = 255
    right = np.where(target == 255, 0, target)
    pred = np.where(rng.random(target.shape) < 0.6, right, rng.integers(0, 9, target.shape))
    ref = _bincount_confusion(target.ravel(), pred.ravel(), 9)

    one = SegmentationMetrics()
    one.update(_t(pred), _t(target))
    two = SegmentationMetrics()
    two.update(_t(pred[:1]), _t(target[:1]))
    two.update(_t(pred[1:]), _t(target[1:]))
    a, b = one.compute(), two.compute()
    np.testing.assert_array_equal(a["confusion"].numpy(), ref)
    np.testing.assert_array_equal(b["confusion"].numpy(), ref)
    assert a["miou"].item() == b["miou"].item()
    assert a["accuracy"].item() == pytest.approx(np.trace(ref) / ref.sum(), rel=1e-15)

    # Logits are argmaxed over the class dimension.
    logits = torch.nn.functional.one_hot(_t(pred), 9).permute(0, 3, 1, 2).double()
    c = SegmentationMetrics()
    c.update(logits + 0.01 * torch.rand_like(logits), _t(target))
    np.testing.assert_array_equal(c.compute()["confusion"].numpy(), ref)

    # DDP-style merge (sum of the per-rank matrices), on metrics not yet computed: torchmetrics
    # caches compute() and merge_state does not clear that cache.
    rank0, rank1 = SegmentationMetrics(), SegmentationMetrics()
    rank0.update(_t(pred[:3]), _t(target[:3]))
    rank1.update(_t(pred[3:]), _t(target[3:]))
    rank0.merge_state(rank1)
    np.testing.assert_array_equal(rank0.compute()["confusion"].numpy(), ref)


def test_segmentation_rejects_out_of_range_labels():
    metric = SegmentationMetrics(num_classes=9)
    with pytest.raises(ValueError, match="target"):
        metric.update(torch.tensor([[0, 1]]), torch.tensor([[0, 9]]))
    with pytest.raises(ValueError, match="preds"):
        metric.update(torch.tensor([[0, 12]]), torch.tensor([[0, 1]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_run_on_cuda():
    pred, target = _pair(17, shape=(2, 4, 32, 32))
    p, t = _t(pred).float(), _t(target).float()
    cpu, gpu = FusionMetrics(), FusionMetrics().to("cuda")
    cpu.update(p, t)
    gpu.update(p.cuda(), t.cuda())
    a, b = cpu.compute(), gpu.compute()
    assert b["psnr"].device.type == "cuda"
    for key in ("psnr", "ssim", "sam"):
        assert b[key].item() == pytest.approx(a[key].item(), rel=1e-5)
    labels = torch.randint(0, 9, (2, 32, 32))
    seg_cpu, seg_gpu = SegmentationMetrics(), SegmentationMetrics().to("cuda")
    seg_cpu.update(labels.flip(-1), labels)
    seg_gpu.update(labels.flip(-1).cuda(), labels.cuda())
    assert torch.equal(seg_gpu.compute()["confusion"].cpu(), seg_cpu.compute()["confusion"])
