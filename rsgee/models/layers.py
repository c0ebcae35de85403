"""Building blocks shared by the generators, discriminators and the segmenter.

Everything here is small and stateless on purpose: the architectures (one module each) read as a
list of these pieces, and the rules they share — how sources are concatenated, which sizes a model
accepts, how weights are initialised — are written once.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from rsgee.errors import RsgeeError

#: Normalisations a model can be built with. "batch" is the references' default; "instance" is
#: the alternative when the per-device batch is 1 (BatchNorm statistics of one sample are noise).
NORMS = ("batch", "instance")

#: How a conditioning map is resized to a layer's resolution (see :func:`resize_to`).
INTERPOLATIONS = ("area", "bilinear", "nearest")


def check_norm(norm: str) -> str:
    """Return ``norm`` if it is a known normalisation, else raise a one-line error."""
    if norm not in NORMS:
        raise RsgeeError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    return norm


def param_free_norm(norm: str, channels: int) -> nn.Module:
    """A normalisation without learned scale and shift.

    SPADE removes the affine part of the normalisation because the spatially-varying γ, β that
    follow replace it. BatchNorm is kept as a module (not a functional call) so that
    :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm` finds and converts it for DDP.
    """
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=False)
    return nn.InstanceNorm2d(channels, affine=False)


def affine_norm(norm: str, channels: int) -> nn.Module:
    """The normalisation pix2pix uses: affine BatchNorm, or InstanceNorm without running stats."""
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True)
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def maybe_spectral(module: nn.Module, enabled: bool) -> nn.Module:
    """Wrap ``module``'s weight in spectral normalisation when ``enabled``.

    Uses the parametrization API, so the wrapped conv deep-copies, pickles, and survives
    ``convert_sync_batchnorm`` and DDP; its trainable tensor is ``parametrizations.weight.original``.
    """
    return spectral_norm(module) if enabled else module


def resize_to(x: Tensor, size: Sequence[int], mode: str) -> Tensor:
    """Resize a feature map to ``size`` (H, W); a no-op when it already has that size.

    ``area`` averages every input pixel of the output cell (a box filter). For the conditioning
    maps of RS-SPADE it is the default because the maps are downsampled by powers of two: a
    one-hot land-cover map becomes class fractions instead of losing thin classes (rivers, roads),
    and SAR speckle is averaged like multilooking instead of being sampled (``nearest``, SPADE's
    choice for label maps, keeps one speckled pixel in 2^k×2^k and aliases; ``bilinear`` without
    antialiasing reads only 4 of them). Upsampling with ``area`` is nearest-neighbour.
    """
    if mode not in INTERPOLATIONS:
        raise RsgeeError(f"unknown interpolation {mode!r}; valid: {', '.join(INTERPOLATIONS)}")
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(x, size=size, mode=mode)


def check_divisible(x: Tensor, multiple: int, model: str) -> None:
    """Raise a one-line error unless the height and width of ``x`` are multiples of ``multiple``.

    Models that halve the resolution k times need sizes divisible by 2^k; otherwise a skip
    connection or the generator's starting grid would silently be off by a pixel.
    """
    if x.dim() != 4:
        raise RsgeeError(f"{model} expects (B, C, H, W) tensors, got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height % multiple or width % multiple:
        raise RsgeeError(
            f"{model} needs height and width divisible by {multiple}, got {height}×{width}; "
            f"crop or pad the tiles (archive tiles are 256×256)"
        )


def concat_sources(inputs: Mapping[str, Tensor], source_channels: Mapping[str, int]) -> Tensor:
    """Concatenate the enabled sources along channels, in the order of ``source_channels``.

    This is the one place that fixes the channel order of a concatenated condition, so that a
    generator and the discriminator it is trained with always see the same layout. Keys of
    ``inputs`` that are not enabled sources (a target image, a mask) are ignored.

    Raises:
        RsgeeError: a source is missing, has the wrong channel count, or the shapes disagree.
    """
    return torch.cat(select_sources(inputs, source_channels), dim=1)


def select_sources(inputs: Mapping[str, Tensor], source_channels: Mapping[str, int]) -> list[Tensor]:
    """The enabled sources of ``inputs`` in order, checked for presence, channels and shape."""
    tensors = []
    reference: tuple[int, ...] | None = None
    for name, channels in source_channels.items():
        if name not in inputs:
            raise RsgeeError(
                f"model input lacks source {name!r}; it has {sorted(inputs)}, "
                f"the model was built for {list(source_channels)}"
            )
        x = inputs[name]
        if x.dim() != 4 or x.shape[1] != channels:
            raise RsgeeError(
                f"source {name!r} must be (B, {channels}, H, W), got {tuple(x.shape)}"
            )
        batch_and_size = (x.shape[0], *x.shape[2:])
        if reference is None:
            reference = batch_and_size
        elif batch_and_size != reference:
            raise RsgeeError(
                f"sources disagree in batch or size: {name!r} is {tuple(x.shape)}, "
                f"expected (B, H, W) = {reference}"
            )
        tensors.append(x)
    return tensors


def check_sources(source_channels: Mapping[str, int]) -> dict[str, int]:
    """Validate a {source name: channel count} mapping and return it as a plain dict."""
    result = dict(source_channels)
    if not result:
        raise RsgeeError("a model needs at least one input source")
    for name, channels in result.items():
        if int(channels) < 1:
            raise RsgeeError(f"source {name!r} has {channels} channels; need at least 1")
    return {name: int(channels) for name, channels in result.items()}


def init_weights(module: nn.Module, scheme: str, gain: float = 0.02) -> None:
    """Initialise convolutions and norms like the reference implementations.

    * ``"xavier"`` — SPADE's default (``init_type='xavier'``, ``init_variance=0.02``): Xavier-normal
      conv weights with gain 0.02, zero biases. The small gain makes the SPADE modulation start
      near γ = β = 0, i.e. the generator starts as plain normalised convolutions.
    * ``"normal"`` — pix2pix's default (``init_type='normal'``, ``init_gain=0.02``): N(0, 0.02)
      conv weights, zero biases.
    * ``"kaiming"`` — He-normal (fan-in, ReLU), the Gaussian of the original U-Net paper.

    Affine norm layers get weight N(1, gain) for xavier/normal (both references) and 1 for
    kaiming; biases 0. For a spectrally-normalised conv the trainable tensor
    (``parametrizations.weight.original``) is initialised; only its direction matters after the
    normalisation.
    """
    if scheme not in ("xavier", "normal", "kaiming"):
        raise RsgeeError(f"unknown init scheme {scheme!r}; valid: xavier, normal, kaiming")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            weight = _raw_weight(m)
            if scheme == "xavier":
                nn.init.xavier_normal_(weight, gain=gain)
            elif scheme == "normal":
                nn.init.normal_(weight, 0.0, gain)
            else:
                nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase) and m.affine:
            if scheme == "kaiming":
                nn.init.ones_(m.weight)
            else:
                nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


def _raw_weight(module: nn.Module) -> Tensor:
    """The trainable weight tensor of a layer, looking through a spectral-norm parametrization."""
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        return parametrizations.weight.original
    return module.weight


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; spectral norm's power-iteration vectors are buffers."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

