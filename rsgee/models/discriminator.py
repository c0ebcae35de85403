"""Conditional PatchGAN discriminators: SPADE's multi-scale one and pix2pix's 70×70 one.

Both judge overlapping patches rather than whole images, and both are conditional: their input is
the condition (the enabled sources, concatenated with :func:`rsgee.models.layers.concat_sources`)
concatenated with a real or generated 4-band image, so ``in_channels`` = source channels + 4.

* :class:`MultiScaleDiscriminator` (for RS-SPADE, re-implemented from the SPADE paper's
  description): two :class:`PatchDiscriminator` s, the second on a 2× average-pooled copy of the
  input, each returning all intermediate features so the generator can be trained with feature
  matching.
* :class:`Pix2PixPatchDiscriminator` (the pix2pix baseline's ``basic``/``n_layers=3`` D, whose
  receptive field is 70×70 pixels).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from rsgee.errors import RsgeeError
from rsgee.models.layers import affine_norm, check_norm, init_weights, maybe_spectral

#: Kernel width of every PatchGAN conv.
KERNEL = 4
#: Widths stop doubling here (both references cap at 512 for ndf = 64, i.e. 8·ndf).
MAX_WIDTH_MULTIPLIER = 8


class PatchDiscriminator(nn.Module):
    """SPADE-style N-layer PatchGAN that returns every intermediate feature map.

    Layers (kernel 4, padding 2, leaky ReLU 0.2): a stride-2 conv to ``ndf`` without norm; then
    ``n_layers − 1`` convs doubling the width (capped at 8·ndf), stride 2 except the last (stride
    1), each spectrally normalised, bias-free and followed by InstanceNorm without affine
    parameters (SPADE's ``spectralinstance``); then a stride-1 conv to 1 channel (the patch logits).

    Args:
        in_channels: condition channels + image channels.
        ndf: width of the first conv (64 in SPADE).
        n_layers: number of convs before the final one (4 in SPADE).
        spectral: spectral normalisation on the middle convs.
    """

    def __init__(
        self, in_channels: int, ndf: int = 64, n_layers: int = 4, spectral: bool = True
    ) -> None:
        super().__init__()
        if n_layers < 1 or ndf < 1 or in_channels < 1:
            raise RsgeeError("in_channels, ndf and n_layers must be positive")
        padding = math.ceil((KERNEL - 1) / 2)
        stages: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_channels, ndf, KERNEL, stride=2, padding=padding),
                nn.LeakyReLU(0.2),
            )
        ]
        width = ndf
        for n in range(1, n_layers):
            previous, width = width, min(width * 2, ndf * MAX_WIDTH_MULTIPLIER)
            stride = 1 if n == n_layers - 1 else 2
            conv = nn.Conv2d(previous, width, KERNEL, stride=stride, padding=padding, bias=False)
            stages.append(
                nn.Sequential(
                    maybe_spectral(conv, spectral),
                    nn.InstanceNorm2d(width, affine=False),
                    nn.LeakyReLU(0.2),
                )
            )
        stages.append(nn.Sequential(nn.Conv2d(width, 1, KERNEL, stride=1, padding=padding)))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        """The output of every stage; the last one is the (B, 1, h, w) patch prediction."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class MultiScaleDiscriminator(nn.Module):
    """SPADE's multi-scale PatchGAN: the same architecture applied at full and halved resolution.

    The coarse scale sees a 3×3/stride-2 average-pooled copy (``count_include_pad=False``, so border
    pixels are not darkened), giving it twice the receptive field in image pixels: the fine D judges
    texture, the coarse one layout.

    Args:
        in_channels: condition channels + image channels.
        ndf, n_layers, spectral: per-scale :class:`PatchDiscriminator` settings.
        num_scales: number of scales (2 in SPADE).

    Returns (from ``forward``):
        One list per scale (finest first) of the intermediate features, each ending with that
        scale's patch logits — the layout :func:`rsgee.models.losses.feature_matching_loss` and the
        adversarial losses expect.

    Weights follow SPADE's init (Xavier-normal, gain 0.02).
    """

    def __init__(
        self,
        in_channels: int,
        ndf: int = 64,
        n_layers: int = 4,
        num_scales: int = 2,
        spectral: bool = True,
    ) -> None:
        super().__init__()
        if num_scales < 1:
            raise RsgeeError(f"num_scales must be at least 1, got {num_scales}")
        self.in_channels = in_channels
        self.scales = nn.ModuleList(
            [PatchDiscriminator(in_channels, ndf, n_layers, spectral) for _ in range(num_scales)]
        )
        init_weights(self, "xavier", 0.02)

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        """Per-scale feature lists for the (B, in_channels, H, W) condition+image tensor."""
        outputs = []
        for index, discriminator in enumerate(self.scales):
            if index:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(discriminator(x))
        return outputs


class Pix2PixPatchDiscriminator(nn.Module):
    """pix2pix's N-layer PatchGAN; with ``n_layers=3`` its patches are 70×70 pixels.

    Layers (kernel 4, padding 1, leaky ReLU 0.2): a stride-2 conv to ``ndf`` without norm;
    ``n_layers − 1`` stride-2 convs doubling the width (capped at 8·ndf) with norm; one stride-1
    conv doubling again (capped) with norm; a stride-1 conv to 1 channel. Convs followed by
    BatchNorm have no bias.

    Args:
        in_channels: condition channels + image channels.
        ndf: width of the first conv (64 in pix2pix).
        n_layers: 3 gives the 70×70 receptive field.
        norm: ``"batch"`` (pix2pix default) or ``"instance"``.

    Weights are initialised as pix2pix: N(0, 0.02) convs, BatchNorm weights N(1, 0.02).
    """

    def __init__(
        self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch"
    ) -> None:
        super().__init__()
        check_norm(norm)
        if n_layers < 1 or ndf < 1 or in_channels < 1:
            raise RsgeeError("in_channels, ndf and n_layers must be positive")
        self.in_channels = in_channels
        bias = norm == "instance"
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, KERNEL, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        multiplier = 1
        for n in range(1, n_layers + 1):
            previous, multiplier = multiplier, min(2**n, MAX_WIDTH_MULTIPLIER)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * previous, ndf * multiplier, KERNEL, stride, padding=1, bias=bias),
                affine_norm(norm, ndf * multiplier),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(ndf * multiplier, 1, KERNEL, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)
        init_weights(self, "normal", 0.02)

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits (B, 1, h, w); 30×30 for a 256² input with ``n_layers=3``."""
        return self.layers(x)
