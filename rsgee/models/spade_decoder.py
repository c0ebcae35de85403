"""The SPADE decoder generator (``spade-decoder``): NVlabs SPADE's decoder-only layout with RS-SPADE's stems.

Before RS-SPADE followed the paper's pix2pix U-Net (:mod:`rsgee.models.rs_spade`), this was rsgee's
RS-SPADE; it stays as an ablation — the same multi-source modulation (:mod:`rsgee.models.modulation`) in
SPADE's own generator, which has no encoder and no skip path: the image is decoded from the conditioning
alone. Re-implemented from the description of SPADE (Park et al., 2019); no SPADE code is used.

Layout, for ``n_up = 5`` (SPADE's "normal") and a 256² input::

    sources ─► per-source stem (3×3 conv, ReLU, 3×3 conv) at 256² ─► concat = embedding E
    E ─area─► 8² ─► 3×3 conv to 16·ngf
      ─► SPADEBlock(16→16) ─up─► SPADEBlock(16→16) ─► SPADEBlock(16→16) ─up─►
         SPADEBlock(16→8) ─up─► SPADEBlock(8→4) ─up─► SPADEBlock(4→2) ─up─► SPADEBlock(2→1)
      ─► leaky ReLU ─► 3×3 conv to 4 ─► tanh                                 (widths × ngf)

Every SPADE layer reads E resized to its own resolution by area averaging (see
:func:`rsgee.models.layers.resize_to`). Spectral normalisation sits where SPADE puts it: on the residual
blocks' convs, not on the modulation nets, the first conv or the output conv. Which sources exist is
decided only by the keys of the stem dictionary, so every subset of sources runs the same forward code.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsgee.errors import RsgeeError
from rsgee.models.layers import (
    INTERPOLATIONS,
    check_divisible,
    check_norm,
    check_sources,
    init_weights,
    maybe_spectral,
    select_sources,
)
from rsgee.models.modulation import (
    ConditionPyramid,
    SpatiallyAdaptiveNorm,
    embed_sources,
    reset_stems,
    source_stems,
)

#: Slope of the leaky ReLUs inside and after the SPADE blocks (SPADE's ``actvn``).
LEAKY_SLOPE = 0.2


class SPADEResBlock(nn.Module):
    """Pre-activation residual block whose normalisations are all SPADE layers.

    ``dx = conv_1(act(norm_1(conv_0(act(norm_0(x, c))), c)))`` and
    ``out = shortcut(x) + dx``, with ``act`` a leaky ReLU(0.2). The middle width is
    ``min(in, out)``. When the widths differ the shortcut is a learned, bias-free 1×1 conv after its
    own SPADE layer; otherwise it is the identity. The three convs are spectrally normalised (as
    SPADE's ``spectral`` generator norm); the modulation convs are not.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_channels: int,
        hidden: int,
        norm: str = "batch",
        interpolation: str = "area",
        spectral: bool = True,
    ) -> None:
        super().__init__()
        middle = min(in_channels, out_channels)
        self.learned_shortcut = in_channels != out_channels

        def spade(channels: int) -> SpatiallyAdaptiveNorm:
            return SpatiallyAdaptiveNorm(channels, cond_channels, hidden, norm, interpolation)

        self.norm_0 = spade(in_channels)
        self.conv_0 = maybe_spectral(nn.Conv2d(in_channels, middle, 3, padding=1), spectral)
        self.norm_1 = spade(middle)
        self.conv_1 = maybe_spectral(nn.Conv2d(middle, out_channels, 3, padding=1), spectral)
        if self.learned_shortcut:
            self.norm_s = spade(in_channels)
            self.conv_s = maybe_spectral(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), spectral
            )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """Residual update of ``x`` modulated by ``cond`` (at x's resolution or resized to it)."""
        shortcut = self.conv_s(self.norm_s(x, cond)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, cond), LEAKY_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, cond), LEAKY_SLOPE))
        return shortcut + dx


class SpadeDecoderGenerator(nn.Module):
    """SPADE's decoder-only generator over RS-SPADE's per-source embeddings: sources → RGBN in [-1, 1].

    Args:
        source_channels: ``{source name: channels}`` of the enabled sources, e.g.
            ``{"lulc": 10, "s1": 2, "terrain": 5}``; its order fixes the order of the fused
            embedding. Any non-empty subset builds the same architecture apart from the stems.
        out_channels: output bands (4: B2, B3, B4, B8).
        ngf: base width; the decoder runs 16·ngf → … → ngf (SPADE's ``ngf``, 64 in the paper).
        embed_channels: width of each source's embedding.
        spade_hidden: hidden width of every SPADE modulation net (SPADE hard-codes 128).
        n_up: number of 2× nearest upsamplings; the decoder starts at H/2^n_up. 5 is SPADE's
            "normal", 6 "more", 7 "most" (an extra up between the middle blocks, and for 7 a final
            ngf → ngf/2 block); 1–4 stop halving early, so the last block is 2^(5-n_up)·ngf wide.
            Inputs must be divisible by 2^n_up.
        norm: ``"batch"`` (default; convertible with ``SyncBatchNorm.convert_sync_batchnorm``) or
            ``"instance"`` (for one sample per device).
        interpolation: how the embedding is resized to each layer (``"area"``; see
            :func:`rsgee.models.layers.resize_to` for why not ``"nearest"``).
        spectral: spectral normalisation of the residual-block convs (SPADE's default).

    Weights follow SPADE (Xavier-normal, gain 0.02) except the stems, which keep PyTorch's default
    (Kaiming-uniform) init: two extra 0.02-gain layers in front of the modulation nets would shrink
    the conditioning signal by ~10⁻⁴ at initialisation.
    """

    def __init__(
        self,
        source_channels: Mapping[str, int],
        out_channels: int = 4,
        ngf: int = 64,
        embed_channels: int = 32,
        spade_hidden: int = 128,
        n_up: int = 5,
        norm: str = "batch",
        interpolation: str = "area",
        spectral: bool = True,
    ) -> None:
        super().__init__()
        self.source_channels = check_sources(source_channels)
        check_norm(norm)
        if not 1 <= n_up <= 7:
            raise RsgeeError(f"n_up must be 1…7 (5 is SPADE's 'normal'), got {n_up}")
        if min(ngf, embed_channels, spade_hidden) < 1:
            raise RsgeeError("ngf, embed_channels and spade_hidden must be positive")
        if n_up == 7 and ngf < 2:
            raise RsgeeError("n_up=7 ends with an ngf/2 block; ngf must be at least 2")
        if interpolation not in INTERPOLATIONS:
            raise RsgeeError(
                f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}"
            )
        self.n_up = n_up
        self.interpolation = interpolation
        self.stems = source_stems(self.source_channels, embed_channels)
        cond = embed_channels * len(self.source_channels)
        self.cond_channels = cond

        def block(fin: int, fout: int) -> SPADEResBlock:
            return SPADEResBlock(fin, fout, cond, spade_hidden, norm, interpolation, spectral)

        top = 16 * ngf
        self.fc = nn.Conv2d(cond, top, 3, padding=1)
        # SPADE's layout: head, up, middle_0, [up if n_up ≥ 6], middle_1, then (up, halving block)
        # for the remaining upsamplings. upsample_before[i] says whether blocks[i] is preceded by
        # a 2× nearest upsampling; for n_up = 5 the widths run 16,16,16,8,4,2,1 × ngf.
        blocks = [block(top, top), block(top, top), block(top, top)]
        upsample_before = [False, True, n_up >= 6]
        width = top
        for _ in range(n_up - sum(upsample_before)):
            blocks.append(block(width, width // 2))
            upsample_before.append(True)
            width //= 2
        self.blocks = nn.ModuleList(blocks)
        self.upsample_before = tuple(upsample_before)
        self.out_conv = nn.Conv2d(width, out_channels, 3, padding=1)
        self.out_channels = out_channels

        init_weights(self, "xavier", 0.02)
        reset_stems(self.stems)

    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the enabled sources, in the order their embeddings are concatenated."""
        return tuple(self.source_channels)

    def embed(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """The fused conditioning map: every enabled source's embedding, concatenated (full res)."""
        return self._embed(select_sources(inputs, self.source_channels))

    def _embed(self, tensors: list[Tensor]) -> Tensor:
        return embed_sources(self.stems, tensors)

    def output_layer(self) -> nn.Module:
        """The layer right before tanh (its bias sets where an untrained generator starts)."""
        return self.out_conv

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Generate RGBN from a dict of source tensors (extra keys such as the target are ignored).

        Returns:
            (B, out_channels, H, W) in [-1, 1].
        """
        tensors = select_sources(inputs, self.source_channels)
        check_divisible(tensors[0], 2**self.n_up, f"the SPADE decoder with n_up={self.n_up}")
        embedding = self._embed(tensors)
        height, width = embedding.shape[-2:]
        cond = ConditionPyramid(embedding, self.interpolation)

        # the decoder never starts below MIN_START² (a 64-px crop would start at 2×2 with n_up = 5, a
        # 256-px tile at 8×8): on small inputs the first upsamplings are skipped, the blocks all run
        skip = 0
        while (min(height, width) >> (self.n_up - skip)) < min(MIN_START, min(height, width)):
            skip += 1
        x = self.fc(cond.at((height >> (self.n_up - skip), width >> (self.n_up - skip))))
        for block, upsample in zip(self.blocks, self.upsample_before):
            if upsample and skip:
                skip -= 1
            elif upsample:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(x, cond.at(x.shape[-2:]))
        x = self.out_conv(F.leaky_relu(x, LEAKY_SLOPE))
        return torch.tanh(x)


#: Smallest grid the decoder starts from, whatever the input size.
MIN_START = 8
