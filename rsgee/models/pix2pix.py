"""The pix2pix baseline generator: a U-Net over the concatenated sources (Isola et al., 2017).

Re-implemented from the description of pix2pix's ``unet_256`` (junyanz/pytorch-CycleGAN-and-pix2pix,
BSD): ``num_downs`` 4×4 stride-2 convolutions halve the input down to H/2^num_downs, with widths
ngf, 2ngf, 4ngf, 8ngf, 8ngf, …; the decoder mirrors them with 4×4 stride-2 transposed convolutions,
each fed the concatenation of the layer below and the matching encoder activation (skip). LeakyReLU
0.2 on the way down, ReLU on the way up, normalisation everywhere except the outermost down conv
and the innermost (bottleneck) down conv, dropout 0.5 in the ``num_downs − 5`` 8·ngf decoder blocks
next to the bottleneck (the 3 "innermost" ones for unet_256), tanh out.

The paper compares RS-SPADE against this network fed with the same sources, concatenated.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from rsgee.errors import RsgeeError
from rsgee.models.layers import (
    affine_norm,
    check_divisible,
    check_norm,
    check_sources,
    concat_sources,
    init_weights,
)


class UNetSkipBlock(nn.Module):
    """One level of the pix2pix U-Net: down conv, the inner levels, up conv, skip concatenation.

    Args:
        outer_channels: channels this level returns to the level above (before the skip concat).
        inner_channels: channels of this level's down conv output.
        in_channels: channels this level receives (defaults to ``outer_channels``; the outermost
            level receives the input image instead).
        inner: the next level down, or ``None`` for the innermost level.
        outermost: the top level: no activation before its down conv, tanh after its up conv and
            no skip concatenation.
        norm: ``"batch"`` or ``"instance"``; convs directly followed by a norm have no bias when
            the norm is BatchNorm (its shift replaces the bias), as pix2pix.
        dropout: dropout 0.5 after the up path (the 8·ngf blocks next to the bottleneck).
    """

    def __init__(
        self,
        outer_channels: int,
        inner_channels: int,
        in_channels: int | None = None,
        inner: "UNetSkipBlock | None" = None,
        outermost: bool = False,
        norm: str = "batch",
        dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        innermost = inner is None
        in_channels = outer_channels if in_channels is None else in_channels
        bias = norm == "instance"
        down_conv = nn.Conv2d(in_channels, inner_channels, 4, stride=2, padding=1, bias=bias)
        up_in = inner_channels if innermost else 2 * inner_channels
        if outermost:
            down = [down_conv]
            up = [
                nn.ReLU(),
                nn.ConvTranspose2d(up_in, outer_channels, 4, stride=2, padding=1),
                nn.Tanh(),
            ]
        elif innermost:
            down = [nn.LeakyReLU(0.2), down_conv]
            up = [
                nn.ReLU(),
                nn.ConvTranspose2d(up_in, outer_channels, 4, stride=2, padding=1, bias=bias),
                affine_norm(norm, outer_channels),
            ]
        else:
            down = [nn.LeakyReLU(0.2), down_conv, affine_norm(norm, inner_channels)]
            up = [
                nn.ReLU(),
                nn.ConvTranspose2d(up_in, outer_channels, 4, stride=2, padding=1, bias=bias),
                affine_norm(norm, outer_channels),
            ]
            if dropout:
                up.append(nn.Dropout(0.5))
        self.down = nn.Sequential(*down)
        self.inner = inner
        self.up = nn.Sequential(*up)

    def forward(self, x: Tensor) -> Tensor:
        """Run this level and everything below it; concatenate the skip unless outermost."""
        y = self.down(x)
        if self.inner is not None:
            y = self.inner(y)
        y = self.up(y)
        if self.outermost:
            return y
        return torch.cat([x, y], dim=1)


class Pix2PixGenerator(nn.Module):
    """pix2pix U-Net generator over the concatenated enabled sources → RGBN in [-1, 1].

    Args:
        source_channels: ``{source name: channels}`` of the enabled sources; they are concatenated
            in this order (see :func:`rsgee.models.layers.concat_sources`).
        out_channels: output bands (4: B2, B3, B4, B8).
        ngf: width of the outermost level (64 in pix2pix).
        num_downs: number of stride-2 levels; 8 is ``unet_256`` (256² → 1×1 bottleneck). At least
            5. Inputs must be divisible by 2^num_downs; use fewer levels for small inputs.
        norm: ``"batch"`` (pix2pix's default) or ``"instance"``.
        dropout: dropout 0.5 in the ``num_downs − 5`` 8·ngf decoder blocks next to the
            bottleneck (pix2pix's only source of noise).

    Weights are initialised as pix2pix: N(0, 0.02) convs, BatchNorm weights N(1, 0.02), zero biases.
    """

    def __init__(
        self,
        source_channels: Mapping[str, int],
        out_channels: int = 4,
        ngf: int = 64,
        num_downs: int = 8,
        norm: str = "batch",
        dropout: bool = True,
    ) -> None:
        super().__init__()
        self.source_channels = check_sources(source_channels)
        check_norm(norm)
        if num_downs < 5:
            raise RsgeeError(f"the pix2pix U-Net needs num_downs ≥ 5, got {num_downs}")
        if ngf < 1:
            raise RsgeeError(f"ngf must be positive, got {ngf}")
        self.num_downs = num_downs
        self.in_channels = sum(self.source_channels.values())
        self.out_channels = out_channels
        level = UNetSkipBlock(8 * ngf, 8 * ngf, norm=norm)
        for _ in range(num_downs - 5):
            level = UNetSkipBlock(8 * ngf, 8 * ngf, inner=level, norm=norm, dropout=dropout)
        level = UNetSkipBlock(4 * ngf, 8 * ngf, inner=level, norm=norm)
        level = UNetSkipBlock(2 * ngf, 4 * ngf, inner=level, norm=norm)
        level = UNetSkipBlock(ngf, 2 * ngf, inner=level, norm=norm)
        self.unet = UNetSkipBlock(
            out_channels, ngf, in_channels=self.in_channels, inner=level, outermost=True, norm=norm
        )
        init_weights(self, "normal", 0.02)

    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the enabled sources, in concatenation order."""
        return tuple(self.source_channels)

    def output_layer(self) -> nn.Module:
        """The layer right before tanh (its bias sets where an untrained generator starts)."""
        return self.unet.up[1]

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Generate RGBN from a dict of source tensors (extra keys are ignored).

        Returns:
            (B, out_channels, H, W) in [-1, 1].
        """
        x = concat_sources(inputs, self.source_channels)
        check_divisible(x, 2**self.num_downs, f"the pix2pix U-Net with num_downs={self.num_downs}")
        return self.unet(x)
