"""RS-SPADE as the paper builds it: pix2pix's U-Net generator, every normalisation followed by the multi-source modulation.

How it follows the paper (section 3.1):

* **Figure 4, "based on the Pix2pix model"**: the generator is pix2pix's U-Net (``unet_256`` for the
  paper size, :mod:`rsgee.models.pix2pix`): ``num_downs`` 4×4 stride-2 convolutions halve the
  concatenated sources down to H/2^num_downs, widths ngf, 2ngf, 4ngf, 8ngf, 8ngf, …; the decoder mirrors
  them with 4×4 stride-2 transposed convolutions, each fed its own output concatenated with the matching
  encoder activation (the skip path). LeakyReLU 0.2 down, ReLU up, dropout 0.5 in the ``num_downs − 5``
  8·ngf decoder levels next to the bottleneck, tanh out. Normalisation sits where pix2pix puts it: after
  every conv except the outermost down, the innermost (bottleneck) down and the outermost up.
* **"LULC/SAR/DEM data are used as label inputs, and embedding processing is applied to different types
  separately"**: each source has its own stem (:class:`~rsgee.models.modulation.SourceEmbedding`); the
  stems' outputs are concatenated into one fused embedding at full resolution.
* **Figure 5 and "applied following each Batch Normalization (BN) operation within the generative
  model"**: every normalisation of the U-Net is parameter-free and followed by a spatial modulation whose γ
  and β (per channel and pixel) a small conv net predicts from the fused embedding resized (area) to that
  layer's resolution (:class:`~rsgee.models.modulation.SpatiallyAdaptiveNorm`). For ``num_downs`` levels
  that is 2·num_downs − 3 modulated layers, at every resolution from H/2 down to H/2^(num_downs−1).

The U-Net's encoder reads the sources concatenated, as pix2pix's does, so RS-SPADE is pix2pix plus the
modulation: an architecture comparison of the two isolates what the paper adds (with γ = β = 0 it computes
exactly pix2pix's function, tested). As in pix2pix with BatchNorm, only the outermost up conv has a bias
(the modulation's β replaces the others). Weights start as pix2pix's
(N(0, 0.02)); the modulation nets then give γ, β ≈ 0 (plain normalisation), and the stems keep PyTorch's
default initialisation. Which sources exist is decided only by ``source_channels``, so every subset runs
the same forward code (the paper's ablation, Table 2).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from rsgee.errors import RsgeeError
from rsgee.models.layers import (
    INTERPOLATIONS,
    check_divisible,
    check_norm,
    check_sources,
    init_weights,
    select_sources,
)
from rsgee.models.modulation import (
    ConditionPyramid,
    SpatiallyAdaptiveNorm,
    embed_sources,
    reset_stems,
    source_stems,
)

#: Slope of the encoder's leaky ReLUs (pix2pix's).
LEAKY_SLOPE = 0.2


class ModulatedConv(nn.Module):
    """One U-Net conv: activation – conv (down, or transposed up) – [modulated normalisation] – [dropout].

    Args:
        in_channels, out_channels: the conv's widths.
        up: a 4×4 stride-2 transposed conv (decoder) instead of a 4×4 stride-2 conv (encoder).
        activation: ``"leaky"`` (encoder), ``"relu"`` (decoder) or ``None`` (the outermost down conv).
        modulated: follow the conv by a :class:`SpatiallyAdaptiveNorm`; ``None`` for no normalisation.
        dropout: dropout 0.5 after the normalisation.
    """

    def __init__(self, in_channels: int, out_channels: int, *, up: bool, activation: str | None,
                 modulated: dict | None, dropout: bool = False) -> None:
        super().__init__()
        conv = nn.ConvTranspose2d if up else nn.Conv2d
        self.activation = {"leaky": nn.LeakyReLU(LEAKY_SLOPE), "relu": nn.ReLU(), None: nn.Identity()}[activation]
        # as pix2pix with BatchNorm: only the outermost up conv (no normalisation after it) has a bias
        self.conv = conv(in_channels, out_channels, 4, stride=2, padding=1, bias=up and modulated is None)
        self.norm = SpatiallyAdaptiveNorm(out_channels, **modulated) if modulated is not None else None
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()

    def forward(self, x: Tensor, cond: ConditionPyramid) -> Tensor:
        """Run the conv; the normalisation reads the condition at the conv output's resolution."""
        y = self.conv(self.activation(x))
        if self.norm is not None:
            y = self.norm(y, cond.at(y.shape[-2:]))
        return self.dropout(y)


class RsSpadeGenerator(nn.Module):
    """RS-SPADE: the pix2pix U-Net over the concatenated sources, modulated by their fused embedding → RGBN in [-1, 1].

    Args:
        source_channels: ``{source name: channels}`` of the enabled sources, e.g.
            ``{"lulc": 10, "s1": 2, "terrain": 5}``; their order fixes both the concatenation the encoder
            reads and the order of the fused embedding. Any non-empty subset builds the same U-Net.
        out_channels: output bands (4: B2, B3, B4, B8).
        ngf: width of the outermost level (64 in pix2pix).
        num_downs: stride-2 levels; 8 is ``unet_256`` (256² → 1×1 bottleneck). At least 5. Inputs must be
            divisible by 2^num_downs.
        embed_channels: width of each source's embedding.
        spade_hidden: hidden width of every modulation net (SPADE's 128).
        norm: ``"batch"`` (the paper's BN; convertible with ``SyncBatchNorm.convert_sync_batchnorm``) or
            ``"instance"`` (for one sample per device); both without learned affine parameters.
        dropout: dropout 0.5 in the ``num_downs − 5`` 8·ngf decoder levels next to the bottleneck.
        interpolation: how the embedding is resized to each layer (``"area"``: class fractions and
            multilooked SAR; see :func:`rsgee.models.layers.resize_to`).
    """

    def __init__(
        self,
        source_channels: Mapping[str, int],
        out_channels: int = 4,
        ngf: int = 64,
        num_downs: int = 8,
        embed_channels: int = 32,
        spade_hidden: int = 128,
        norm: str = "batch",
        dropout: bool = True,
        interpolation: str = "area",
    ) -> None:
        super().__init__()
        self.source_channels = check_sources(source_channels)
        check_norm(norm)
        if num_downs < 5:
            raise RsgeeError(f"the RS-SPADE U-Net needs num_downs ≥ 5, got {num_downs}")
        if min(ngf, embed_channels, spade_hidden) < 1:
            raise RsgeeError("ngf, embed_channels and spade_hidden must be positive")
        if interpolation not in INTERPOLATIONS:
            raise RsgeeError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
        self.num_downs = num_downs
        self.interpolation = interpolation
        self.out_channels = out_channels
        self.stems = source_stems(self.source_channels, embed_channels)
        self.cond_channels = embed_channels * len(self.source_channels)
        modulated = {"cond_channels": self.cond_channels, "hidden": spade_hidden, "norm": norm,
                     "interpolation": interpolation}

        # encoder widths, outermost first: ngf, 2ngf, 4ngf, 8ngf, 8ngf, …
        widths = [min(2**i, 8) * ngf for i in range(num_downs)]
        inputs = [sum(self.source_channels.values())] + widths[:-1]
        innermost = num_downs - 1
        self.downs = nn.ModuleList(
            ModulatedConv(inputs[i], widths[i], up=False, activation=None if i == 0 else "leaky",
                          modulated=None if i in (0, innermost) else modulated)
            for i in range(num_downs))
        # decoder level i maps (its own width, doubled by the skip except at the bottleneck) back to the
        # width level i received; the outermost one to the image, with tanh and no normalisation
        self.ups = nn.ModuleList(
            ModulatedConv(widths[i] * (1 if i == innermost else 2), out_channels if i == 0 else inputs[i],
                          up=True, activation="relu", modulated=None if i == 0 else modulated,
                          dropout=dropout and 0 < i < innermost and num_downs - 1 - i <= num_downs - 5)
            for i in range(num_downs))

        init_weights(self, "normal", 0.02)
        reset_stems(self.stems)

    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the enabled sources, in concatenation (and embedding) order."""
        return tuple(self.source_channels)

    def embed(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """The fused conditioning map: every enabled source's embedding, concatenated (full resolution)."""
        return embed_sources(self.stems, select_sources(inputs, self.source_channels))

    def output_layer(self) -> nn.Module:
        """The layer right before tanh (its bias sets where an untrained generator starts)."""
        return self.ups[0].conv

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Generate RGBN from a dict of source tensors (extra keys such as the target are ignored).

        Returns:
            (B, out_channels, H, W) in [-1, 1].
        """
        tensors = select_sources(inputs, self.source_channels)
        x = torch.cat(tensors, dim=1)
        check_divisible(x, 2**self.num_downs, f"the RS-SPADE U-Net with num_downs={self.num_downs}")
        cond = ConditionPyramid(embed_sources(self.stems, tensors), self.interpolation)
        skips = []
        for down in self.downs:
            x = down(x, cond)
            skips.append(x)
        y = self.ups[-1](skips[-1], cond)
        for i in range(self.num_downs - 2, -1, -1):
            y = self.ups[i](torch.cat([skips[i], y], dim=1), cond)
        return torch.tanh(y)
