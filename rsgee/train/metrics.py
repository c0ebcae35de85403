"""Evaluation metrics for RS-SPADE (image fusion) and RS-UNet (segmentation).

The paper's Table 1 (PSNR 23.14 dB, SSIM 0.84, SAM 0.19) and Table 3 (mIoU 0.480, accuracy 0.746)
are only comparable to other work if every convention behind them is fixed and stated. Each of
these metrics has defaults elsewhere that silently move the number: a data range inferred per batch,
PSNR pooled over the dataset, SSIM border handling, SAM on zero vectors, micro against macro IoU.
This module fixes the conventions in one place. ``research/models.md`` §2 is the spec.

Fusion metrics (:func:`psnr`, :func:`ssim`, :func:`sam`, :class:`FusionMetrics`)
    * Inputs are **reflectance in [0, 1]**: the Sentinel-2 value divided by 10000, band order
      B2, B3, B4, B8, shape ``(B, C, H, W)``. The generator's tanh output in [-1, 1] must be
      de-normalised by the caller first (``(x + 1) / 2`` under the usual ``x = 2·r − 1``
      normalisation). On [-1, 1] with data range 1, PSNR would be **6.02 dB lower**
      (``20·log10 2``) than the correct value. With data range 2 on [-1, 1], PSNR happens to
      match, because MSE and R² both scale by 4. SAM does not carry over that way: on signed
      values it is meaningless, since a sign flip is not a spectral change. So there is a single
      convention, reflectance with R = 1. As a guard,
      values below ``-0.01`` are rejected, and so are values above ``6.5536`` (65535 / 10000, the
      largest value a Sentinel-2 product can store, so anything larger is a raw digital number).
      Reflectance slightly above 1 (snow, cloud) is legitimate and is **not** clipped.
    * The data range is always ``DATA_RANGE = 1``. It is never inferred from the batch.
    * Each metric is computed **per image** and then averaged over images. This matches
      UnCRtainTS, DSen2-CR and GLF-CR.
    * Optional ``valid_mask``: ``True`` marks valid pixels, shape ``(B, H, W)`` or ``(B, 1, H, W)``,
      shared by all bands. Nodata pixels are set to 0 in *both* images before any computation. A
      nodata pixel's values therefore never change any metric. An image with no valid pixel gets
      NaN and is left out of the means; :class:`FusionMetrics` counts such images.

Segmentation metrics (:func:`segmentation_scores`, :class:`SegmentationMetrics`)
    * One confusion matrix is built over the whole dataset. Rows are the true class and columns
      the predicted class, as in torchmetrics. Pixels whose *target* is ``ignore_index`` (255) are
      dropped.
    * mIoU is the macro mean of ``IoU_c = TP/(TP+FP+FN)``. Classes absent from both truth and
      prediction are **excluded**, as in torchmetrics' macro ``MulticlassJaccardIndex``. The
      "absent as 0" variant used by e.g. the DFC2020 baseline is also returned.
    * Pixel accuracy is micro: ``trace / sum``. This is *not* torchmetrics' ``MulticlassAccuracy``
      default, which is macro, i.e. mean per-class recall ("average accuracy").

All metrics are plain torch and torchmetrics. They run on whatever device their inputs are on, and
the two ``Metric`` classes synchronise under DDP through their ``dist_reduce_fx`` states.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "DATA_RANGE",
    "PSNR_CAP_DB",
    "SSIM_SIGMA",
    "SSIM_KERNEL_SIZE",
    "SSIM_K1",
    "SSIM_K2",
    "psnr_per_image",
    "psnr",
    "ssim_per_image",
    "ssim",
    "sam_per_image",
    "sam",
    "FusionMetrics",
    "segmentation_scores",
    "SegmentationMetrics",
]

#: Data range R of reflectance/10000. This is the convention of UnCRtainTS (``20·log10(1/rmse)``),
#: GLF-CR (``PIXEL_MAX = 1``) and DSen2-CR (``10000`` on DN). It is never inferred from the data.
DATA_RANGE = 1.0

#: Upper bound on one image's PSNR in dB, i.e. a floor of ``10**-10`` on its MSE. Identical images
#: have MSE 0 and infinite PSNR. One infinite image would make the mean over images infinite, so
#: such an image is counted at ``PSNR_CAP_DB``, and :class:`FusionMetrics` reports how many were
#: capped (``n_psnr_capped``). Why cap rather than drop: dropping a perfect image would bias the
#: mean *down*. The cap is far above anything a real model reaches. A one-DN error (1e-4) on every
#: pixel already gives 80 dB, and Table 1 is 23 dB. So capping never changes a realistic result,
#: and a non-zero ``n_psnr_capped`` flags that target was fed as prediction.
PSNR_CAP_DB = 100.0

#: SSIM constants of Wang et al. (2004): Gaussian window σ = 1.5, 11×11 (torchmetrics derives the
#: size from σ as ``2·int(3.5σ + 0.5) + 1 = 11``), ``C1 = (K1·R)²``, ``C2 = (K2·R)²``.
SSIM_SIGMA = 1.5
SSIM_KERNEL_SIZE = 11
SSIM_K1 = 0.01
SSIM_K2 = 0.03

#: Smallest accepted value. Exact reflectance is >= 0. Anything clearly negative means the
#: generator's [-1, 1] output was passed without de-normalisation.
_MIN_REFLECTANCE = -0.01
#: Largest value a Sentinel-2 product can hold after /10000 (uint16 65535). Above it the input is
#: surely raw digital numbers.
_MAX_REFLECTANCE = 6.5536


def _prepare(
    pred: Tensor, target: Tensor, valid_mask: Optional[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Check and align fusion inputs, and zero nodata pixels in both images.

    Why: every fusion metric must see the same float dtype, the same validity, and nodata values
    that cannot leak into the result. NaN nodata pixels would poison a sum even when multiplied by
    a zero mask, so they are replaced with ``torch.where``, not masked arithmetically.

    Args:
        pred: Predicted reflectance, ``(B, C, H, W)`` floating point.
        target: Reference reflectance, same shape.
        valid_mask: ``True`` where the pixel is valid, ``(B, H, W)`` or ``(B, 1, H, W)``, or None.

    Returns:
        ``(pred, target, mask)``. The images are at least float32 (half precision is promoted,
        because SSIM's variance terms cancel badly in fp16/bf16), with nodata pixels set to 0.
        ``mask`` is a ``(B, 1, H, W)`` bool tensor.

    Raises:
        TypeError: If the images are not floating point (raw integer DN, for instance).
        ValueError: On a shape mismatch, non-finite valid pixels, or values outside
            ``[-0.01, 6.5536]``, which are not reflectance/10000.
    """
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(
            f"pred and target must both be (B, C, H, W) with equal shapes, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if not (pred.is_floating_point() and target.is_floating_point()):
        raise TypeError(
            f"pred and target must be floating-point reflectance (S2 value / 10000), got "
            f"{pred.dtype} and {target.dtype}"
        )
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    pred = pred.to(dtype)
    target = target.to(dtype)
    b, _, h, w = pred.shape
    if valid_mask is None:
        mask = torch.ones((b, 1, h, w), dtype=torch.bool, device=pred.device)
    else:
        mask = valid_mask.to(device=pred.device, dtype=torch.bool)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
        if mask.shape != (b, 1, h, w):
            raise ValueError(
                f"valid_mask must be (B, H, W) or (B, 1, H, W) = {(b, 1, h, w)}, "
                f"got {tuple(valid_mask.shape)}"
            )
        zero = torch.zeros((), dtype=dtype, device=pred.device)
        pred = torch.where(mask, pred, zero)
        target = torch.where(mask, target, zero)
    if pred.numel():
        # One device sync for all three checks.
        finite, lo, hi = torch.stack(
            [
                (torch.isfinite(pred).all() & torch.isfinite(target).all()).to(dtype),
                torch.minimum(pred.min(), target.min()),
                torch.maximum(pred.max(), target.max()),
            ]
        ).tolist()
        if not finite:
            raise ValueError(
                "pred/target contain NaN or inf at valid pixels; mark them in valid_mask"
            )
        if lo < _MIN_REFLECTANCE or hi > _MAX_REFLECTANCE:
            raise ValueError(
                f"values span [{lo:.4g}, {hi:.4g}], which is not reflectance/10000: de-normalise "
                "tanh outputs to [0, 1] (on [-1, 1] PSNR would be 6.02 dB off and SAM meaningless) "
                "and divide raw Sentinel-2 digital numbers by 10000"
            )
    return pred, target, mask


def psnr_per_image(pred: Tensor, target: Tensor, valid_mask: Optional[Tensor] = None) -> Tensor:
    """PSNR of each image in dB, with data range 1 over all bands and valid pixels.

    ``PSNR_i = 10·log10(1 / MSE_i)``, where ``MSE_i`` averages the squared error over the
    ``C × n_valid`` values of image ``i``. This is skimage's ``peak_signal_noise_ratio(...,
    data_range=1)`` applied to one image. Why per image: torchmetrics' ``PeakSignalNoiseRatio``
    class pools the squared error of the whole dataset into one MSE. That is a different and
    larger-is-easier number, since a few bad images hardly move a pooled MSE.

    Args:
        pred: Predicted reflectance in [0, 1], ``(B, C, H, W)``. Do not pass tanh outputs: on
            [-1, 1] the PSNR would be 6.02 dB lower.
        target: Reference reflectance, same shape.
        valid_mask: Optional ``(B, H, W)`` / ``(B, 1, H, W)`` bool, ``True`` = valid. Nodata
            pixels are excluded from the MSE.

    Returns:
        ``(B,)`` tensor. Identical images (MSE 0), and any PSNR above it, are capped at
        :data:`PSNR_CAP_DB`. An image without valid pixels is NaN.
    """
    return _psnr(*_prepare(pred, target, valid_mask))


def _psnr(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """:func:`psnr_per_image` on inputs already checked by :func:`_prepare`."""
    c = pred.shape[1]
    sse = (pred - target).pow(2).sum(dim=(1, 2, 3))
    n = mask.sum(dim=(1, 2, 3)).to(sse.dtype) * c
    mse = sse / n  # 0/0 = NaN for an image without valid pixels
    floor = DATA_RANGE**2 * 10.0 ** (-PSNR_CAP_DB / 10.0)
    return 10.0 * torch.log10(DATA_RANGE**2 / mse.clamp_min(floor))


def psnr(pred: Tensor, target: Tensor, valid_mask: Optional[Tensor] = None) -> Tensor:
    """Mean over images of :func:`psnr_per_image`. Images without valid pixels are ignored.

    Args:
        pred: Predicted reflectance in [0, 1], ``(B, C, H, W)``.
        target: Reference reflectance, same shape.
        valid_mask: Optional validity mask, see :func:`psnr_per_image`.

    Returns:
        Scalar tensor in dB. NaN if no image has a valid pixel.
    """
    return torch.nanmean(psnr_per_image(pred, target, valid_mask))


def ssim_per_image(pred: Tensor, target: Tensor, valid_mask: Optional[Tensor] = None) -> Tensor:
    """SSIM of each image (Wang et al. 2004), computed with torchmetrics' functional SSIM.

    Settings: Gaussian window 11×11 with σ = 1.5, K1 = 0.01, K2 = 0.03, population (co)variances,
    and ``data_range = 1``. The data range is always passed. torchmetrics' default ``None`` would
    take ``max − min`` *of each batch*, which makes the score depend on the batch. The SSIM map is
    averaged over channels and pixels for each image.

    Borders: torchmetrics 1.9 **reflect-pads** each image by 5 pixels (``F.pad(mode="reflect")``)
    and averages the **full H×W map**, border pixels included. It has not cropped since 1.4.2
    (PR #2721). skimage's ``structural_similarity`` instead **crops** ``(win_size − 1)/2 = 5``
    pixels per side before averaging. Its defaults also differ: a uniform 7×7 window and sample
    covariance. Wang's settings need ``gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1``. With those settings both libraries give the same
    SSIM map on the interior, and the averages differ only through the border band. That is
    typically a few thousandths on 256×256 tiles, so the implementation and version must be stated
    with any SSIM reported.

    Args:
        pred: Predicted reflectance in [0, 1], ``(B, C, H, W)``, with H, W >= 6 (the reflect
            padding needs more pixels than the pad width).
        target: Reference reflectance, same shape.
        valid_mask: Optional ``(B, H, W)`` / ``(B, 1, H, W)`` bool, ``True`` = valid. Nodata
            pixels are zeroed in both images, and the map is averaged only over pixels whose
            window *centre* is valid. Windows that overlap nodata therefore see equal zeros in
            both images. Erode the mask by 5 pixels to drop those windows entirely. Without a
            mask the result is exactly torchmetrics' value.

    Returns:
        ``(B,)`` tensor. An image without valid pixels is NaN.
    """
    return _ssim(*_prepare(pred, target, valid_mask))


def _ssim(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """:func:`ssim_per_image` on inputs already checked by :func:`_prepare`."""
    _, ssim_map = structural_similarity_index_measure(
        pred,
        target,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL_SIZE,
        reduction="none",
        data_range=DATA_RANGE,
        k1=SSIM_K1,
        k2=SSIM_K2,
        return_full_image=True,
    )
    c = pred.shape[1]
    weight = mask.to(ssim_map.dtype)
    total = (ssim_map * weight).sum(dim=(1, 2, 3))
    return total / (weight.sum(dim=(1, 2, 3)) * c)


def ssim(pred: Tensor, target: Tensor, valid_mask: Optional[Tensor] = None) -> Tensor:
    """Mean over images of :func:`ssim_per_image`. Images without valid pixels are ignored.

    Args:
        pred: Predicted reflectance in [0, 1], ``(B, C, H, W)``.
        target: Reference reflectance, same shape.
        valid_mask: Optional validity mask, see :func:`ssim_per_image`.

    Returns:
        Scalar tensor. NaN if no image has a valid pixel.
    """
    return torch.nanmean(ssim_per_image(pred, target, valid_mask))


def _spectral_angles(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel spectral angle in radians, and a mask of the pixels it is defined for.

    The angle is ``arccos(<p,t> / (|p||t|))``, evaluated as ``2·atan2(|p̂ − t̂|, |p̂ + t̂|)`` on the
    unit vectors. The two are equal mathematically. Why the atan2 form: the arccos of a float32
    cosine cannot resolve angles below about 3e-4 rad, so identical spectra would score 3e-4
    instead of 0. The atan2 form is accurate near 0 and near π.

    Args:
        pred: ``(B, C, H, W)`` float, nodata already zeroed.
        target: Same shape.
        mask: ``(B, 1, H, W)`` bool validity.

    Returns:
        ``(angles, defined)``, both ``(B, H, W)``. ``defined`` is False where the pixel is nodata
        or either spectrum is the zero vector. There the angle is undefined, and it is 0 in
        ``angles``.
    """
    pn = pred.norm(dim=1, keepdim=True)
    tn = target.norm(dim=1, keepdim=True)
    defined = mask & (pn > 0) & (tn > 0)
    one = torch.ones((), dtype=pn.dtype, device=pn.device)
    pu = pred / torch.where(defined, pn, one)
    tu = target / torch.where(defined, tn, one)
    angles = 2.0 * torch.atan2((pu - tu).norm(dim=1), (pu + tu).norm(dim=1))
    defined = defined.squeeze(1)
    return torch.where(defined, angles, torch.zeros_like(angles)), defined


def sam_per_image(pred: Tensor, target: Tensor, valid_mask: Optional[Tensor] = None) -> Tensor:
    """Spectral Angle Mapper of each image, in **radians**: the mean angle over valid pixels.

    Per pixel, ``θ = arccos(<p,t> / (|p|·|t|))`` over the band vector (B2, B3, B4, B8). A pixel is
    left out if ``valid_mask`` marks it nodata, or if either spectrum is the zero vector. Sentinel-2
    stores nodata as 0, and torchmetrics' ``spectral_angle_mapper`` returns NaN there. The paper's
    0.19 is in radians (10.9°). Cloud-removal papers usually report degrees.

    Args:
        pred: Predicted reflectance in [0, 1], ``(B, C, H, W)``, C > 1. SAM on [-1, 1] tanh outputs
            is meaningless, so de-normalise first.
        target: Reference reflectance, same shape.
        valid_mask: Optional ``(B, H, W)`` / ``(B, 1, H, W)`` bool, ``True`` = valid.

    Returns:
        ``(B,)`` tensor in radians. An image without any pixel where the angle is defined is NaN.
    """
    return _sam(*_prepare(pred, target, valid_mask))


def _sam(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """:func:`sam_per_image` on inputs already checked by :func:`_prepare`."""
    if pred.shape[1] < 2:
        raise ValueError(f"SAM needs at least 2 bands, got {pred.shape[1]}")
    angles, defined = _spectral_angles(pred, target, mask)
    n = defined.sum(dim=(1, 2)).to(angles.dtype)
    return angles.sum(dim=(1, 2)) / n


def sam(pred: Tensor, target: Tensor, valid_mask: Optional[Tensor] = None) -> Tensor:
    """Mean over images of :func:`sam_per_image`, in radians, ignoring images without valid pixels.

    Args:
        pred: Predicted reflectance in [0, 1], ``(B, C, H, W)``.
        target: Reference reflectance, same shape.
        valid_mask: Optional validity mask, see :func:`sam_per_image`.

    Returns:
        Scalar tensor in radians. NaN if no image has a valid pixel.
    """
    return torch.nanmean(sam_per_image(pred, target, valid_mask))


class FusionMetrics(Metric):
    """Accumulates per-image PSNR, SSIM and SAM over a dataset. Averages are taken over images.

    Why a ``torchmetrics.Metric``: states move with ``.to(device)``, and under DDP ``compute()``
    first gathers the per-image values of all ranks (``dist_reduce_fx="cat"``). Every rank then
    reports the same dataset average. That average is the mean of the per-image values, which no
    combination of per-rank means reproduces when the ranks hold different numbers of images.

    Example::

        metric = FusionMetrics()
        for batch in loader:
            fake = (generator(batch) + 1) / 2          # tanh -> reflectance in [0, 1]
            metric.update(fake, batch["s2"] / 10000, valid_mask=batch["s2_valid"])
        out = metric.compute()   # out["psnr"], out["ssim"], out["sam"], out["psnr_per_image"], ...

    Under DDP the per-image values come back in gather order (rank by rank), not in dataset order.
    Pass ``sample_index`` to :meth:`update` to be able to match rows to samples.
    """

    is_differentiable = False
    higher_is_better: Optional[bool] = None  # PSNR/SSIM higher, SAM lower
    full_state_update = False

    psnr_values: list[Tensor]
    ssim_values: list[Tensor]
    sam_values: list[Tensor]
    sample_index: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        """Create empty per-image states.

        Args:
            **kwargs: Passed to ``torchmetrics.Metric`` (``dist_sync_on_step``, ``sync_on_compute``,
                ``compute_on_cpu``, ...).
        """
        super().__init__(**kwargs)
        self.add_state("psnr_values", default=[], dist_reduce_fx="cat")
        self.add_state("ssim_values", default=[], dist_reduce_fx="cat")
        self.add_state("sam_values", default=[], dist_reduce_fx="cat")
        self.add_state("sample_index", default=[], dist_reduce_fx="cat")

    def update(
        self,
        pred: Tensor,
        target: Tensor,
        valid_mask: Optional[Tensor] = None,
        sample_index: Optional[Tensor] = None,
    ) -> None:
        """Add one batch of images.

        Args:
            pred: Predicted reflectance in [0, 1] (S2 / 10000), ``(B, 4, H, W)``. De-normalise tanh
                outputs first.
            target: Reference reflectance, same shape.
            valid_mask: Optional ``(B, H, W)`` / ``(B, 1, H, W)`` bool, ``True`` = valid.
            sample_index: Optional ``(B,)`` integer ids of the images, kept with their per-image
                values. Defaults to -1.
        """
        # States use the metric's dtype (float32 unless ``set_dtype``), including the ids (exact
        # below 2**24). Why: under DDP a rank that saw no batch contributes an empty tensor of
        # that dtype, and all_gather needs one dtype on every rank.
        dtype = self.dtype
        prepared = _prepare(pred.detach(), target.detach(), valid_mask)  # checked once, not 3×
        self.psnr_values.append(_psnr(*prepared).to(dtype))
        self.ssim_values.append(_ssim(*prepared).to(dtype))
        self.sam_values.append(_sam(*prepared).to(dtype))
        b = pred.shape[0]
        if sample_index is None:
            idx = torch.full((b,), -1, dtype=dtype, device=pred.device)
        else:
            idx = torch.as_tensor(sample_index, device=pred.device).reshape(-1).to(dtype)
            if idx.numel() != b:
                raise ValueError(f"sample_index has {idx.numel()} entries for a batch of {b}")
        self.sample_index.append(idx)

    def _values(self, state: list[Tensor] | Tensor) -> Tensor:
        """One flat tensor from a state that is a list (local) or a tensor (after a DDP sync)."""
        if isinstance(state, Tensor):
            return state.reshape(-1)
        if state:
            return dim_zero_cat(state).reshape(-1)
        return torch.empty(0, dtype=self.dtype, device=self.device)

    def compute(self) -> dict[str, Tensor]:
        """Dataset averages and per-image values.

        Returns:
            A dict with:

            * ``"psnr"`` (dB), ``"ssim"``, ``"sam"`` (radians): scalar means over images. Images
              without valid pixels (NaN) are left out.
            * ``"psnr_per_image"``, ``"ssim_per_image"``, ``"sam_per_image"``: ``(N,)`` tensors,
              one row per image, for a table. ``"sample_index"``: ``(N,)`` int64 ids (-1 if not
              given).
            * ``"n_images"``: N. ``"n_psnr_capped"``: images whose PSNR was capped at
              :data:`PSNR_CAP_DB` (identical to the target). ``"n_psnr_undefined"`` /
              ``"n_sam_undefined"``: images left out of the PSNR/SSIM (no valid pixel) and SAM (no
              valid non-zero spectrum) means.

            The means are NaN before the first update.
        """
        p = self._values(self.psnr_values)
        s = self._values(self.ssim_values)
        a = self._values(self.sam_values)
        idx = self._values(self.sample_index).to(torch.long)
        return {
            "psnr": torch.nanmean(p),
            "ssim": torch.nanmean(s),
            "sam": torch.nanmean(a),
            "psnr_per_image": p,
            "ssim_per_image": s,
            "sam_per_image": a,
            "sample_index": idx,
            "n_images": torch.tensor(p.numel(), device=p.device),
            "n_psnr_capped": (p >= PSNR_CAP_DB).sum(),
            "n_psnr_undefined": torch.isnan(p).sum(),
            "n_sam_undefined": torch.isnan(a).sum(),
        }


def segmentation_scores(confusion: Tensor) -> dict[str, Tensor]:
    """IoU, mIoU and pixel accuracy from one dataset-level confusion matrix.

    Why from the matrix: IoU averaged per image or per batch is a different metric, the one
    torchmetrics' ``segmentation.MeanIoU`` computes. Table 3 needs the dataset-level one.

    Args:
        confusion: ``(K, K)`` counts, rows = true class, columns = predicted class.

    Returns:
        A dict with:

        * ``"iou_per_class"``: ``(K,)`` float64 (float32 on MPS), ``TP/(TP+FP+FN)``. NaN for a
          class absent from both truth and prediction, where IoU is 0/0.
        * ``"miou"``: macro mean over the classes with a defined IoU. Absent classes are
          **excluded**, as in torchmetrics' macro ``MulticlassJaccardIndex``. A class that occurs
          but is never predicted right counts as 0.
        * ``"miou_absent_as_zero"``: mean over all K classes, with absent classes counted as 0,
          the convention of e.g. the DFC2020 baseline. It is never above ``"miou"``.
        * ``"n_classes_present"``: how many classes entered ``"miou"``.
        * ``"accuracy"``: micro pixel accuracy, ``trace / sum``. This is
          ``Accuracy(average="micro")``, not ``MulticlassAccuracy``'s macro default.
        * ``"confusion"``: the matrix itself (int64).

        With an empty matrix every score is NaN.
    """
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square (K, K) matrix, got {tuple(confusion.shape)}")
    # float64 keeps counts of ~1e9 pixels exact; MPS has no float64, so fall back to float32 there
    # (relative error ~1e-7, far below the precision any table reports).
    dtype = torch.float32 if confusion.device.type == "mps" else torch.float64
    cm = confusion.to(dtype)
    tp = cm.diagonal()
    union = cm.sum(dim=0) + cm.sum(dim=1) - tp  # TP + FP + FN
    present = union > 0
    iou = torch.where(present, tp / torch.where(present, union, torch.ones_like(union)), math.nan)
    k = cm.shape[0]
    total = cm.sum()
    nan = torch.tensor(math.nan, dtype=dtype, device=cm.device)
    return {
        "miou": torch.nanmean(iou) if bool(present.any()) else nan,
        "miou_absent_as_zero": torch.nan_to_num(iou, nan=0.0).sum() / k if total > 0 else nan,
        "n_classes_present": present.sum(),
        "accuracy": tp.sum() / total if total > 0 else nan,
        "iou_per_class": iou,
        "confusion": confusion.to(torch.long),
    }


class SegmentationMetrics(MulticlassConfusionMatrix):
    """Dataset-level confusion matrix for RS-UNet, scored as mIoU / pixel accuracy.

    This is torchmetrics' ``MulticlassConfusionMatrix``: a ``(K, K)`` int64 state with
    ``dist_reduce_fx="sum"``, so DDP ranks add their matrices. Pixels whose *target* equals
    ``ignore_index`` are dropped before counting. :meth:`compute` returns the scores of
    :func:`segmentation_scores` instead of the bare matrix. ``update`` takes either class indices
    ``(B, H, W)`` or logits/probabilities ``(B, K, H, W)``, which are argmaxed over dim 1.

    Why one matrix for the whole dataset: mIoU averaged over batches would depend on the batch
    size and weight rare classes by the batches they appear in.
    """

    def __init__(
        self,
        num_classes: int = 9,
        ignore_index: Optional[int] = 255,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        """Create an empty confusion matrix.

        Args:
            num_classes: K. Dynamic World has 9 classes, labelled 0..K-1.
            ignore_index: Target value to drop (nodata), or None.
            validate_args: Check that every kept target and predicted label lies in [0, K).
                This costs one device sync per update.
            **kwargs: Passed to ``torchmetrics.Metric``.
        """
        super().__init__(
            num_classes=num_classes,
            ignore_index=ignore_index,
            normalize=None,
            validate_args=validate_args,
            **kwargs,
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            preds: Class indices ``(B, H, W)``, or scores ``(B, K, H, W)`` (float).
            target: Class indices ``(B, H, W)``. ``ignore_index`` marks pixels to drop.

        Raises:
            ValueError: If ``validate_args`` and a label outside [0, K) is not ``ignore_index``.
                torchmetrics only counts distinct values, which lets e.g. a label 9 with K = 9
                through into the wrong cell of the matrix.
        """
        if self.validate_args:
            keep = target != self.ignore_index if self.ignore_index is not None else None
            t = target[keep] if keep is not None else target
            if t.numel() and (bool((t < 0).any()) or bool((t >= self.num_classes).any())):
                raise ValueError(
                    f"target has labels outside [0, {self.num_classes}) other than ignore_index"
                )
            if not preds.is_floating_point() and preds.shape == target.shape:
                p = preds[keep] if keep is not None else preds
                if p.numel() and (bool((p < 0).any()) or bool((p >= self.num_classes).any())):
                    raise ValueError(f"preds has labels outside [0, {self.num_classes})")
        super().update(preds, target)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        """Scores of the accumulated matrix.

        Returns:
            ``{"miou", "miou_absent_as_zero", "n_classes_present", "accuracy", "iou_per_class",
            "confusion"}``, see :func:`segmentation_scores`.
        """
        return segmentation_scores(self.confmat)
