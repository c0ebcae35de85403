"""The multi-source modulation of RS-SPADE (the paper's Figure 5), shared by both SPADE-style generators.

Two parts, as the paper draws them:

* **Embedding** — each source (land-cover one-hot, SAR, terrain) through a stem of its own
  (:class:`SourceEmbedding`), the stems' outputs concatenated into one fused map at full resolution
  (:func:`embed_sources`). A one-hot label map, a speckled backscatter pair and smooth terrain rasters have
  different statistics; a stem each maps them to features before they are mixed.
* **Modulation** — after a normalisation without learned parameters, a small conv net reads the fused map
  resized to the layer's resolution and predicts a γ and a β per channel and pixel
  (:class:`SpatiallyAdaptiveNorm`): ``norm(x) · (1 + γ) + β`` (SPADE, Park et al., 2019).

Re-implemented from the SPADE paper's description; no SPADE code is used (its licence is non-commercial).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from rsgee.models.layers import param_free_norm, resize_to


class SourceEmbedding(nn.Module):
    """One source's stem: 3×3 conv – ReLU – 3×3 conv, at full resolution.

    The stems run once per forward pass (not once per modulated layer), which keeps their cost to two
    convolutions per source. They keep PyTorch's default (Kaiming-uniform) initialisation: two extra
    0.02-gain layers in front of the modulation nets would shrink the conditioning signal by ~10⁻⁴.
    """

    def __init__(self, in_channels: int, embed_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, embed_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(embed_channels, embed_channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Embed one source: (B, C_source, H, W) → (B, embed_channels, H, W)."""
        return self.layers(x)


def source_stems(source_channels: Mapping[str, int], embed_channels: int) -> nn.ModuleDict:
    """One :class:`SourceEmbedding` per source, keyed and ordered as ``source_channels``."""
    return nn.ModuleDict({name: SourceEmbedding(c, embed_channels) for name, c in source_channels.items()})


def embed_sources(stems: nn.ModuleDict, tensors: list[Tensor]) -> Tensor:
    """The fused conditioning map: each source through its own stem, concatenated in the stems' order."""
    return torch.cat([stem(x) for stem, x in zip(stems.values(), tensors)], dim=1)


def reset_stems(stems: nn.ModuleDict) -> None:
    """Give the stems PyTorch's default initialisation back (after a model-wide small-gain init)."""
    for module in stems.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()


class SpatiallyAdaptiveNorm(nn.Module):
    """Parameter-free normalisation followed by a spatially-varying affine modulation (SPADE).

    ``out = norm(x) · (1 + γ(c)) + β(c)``, where ``c`` is the conditioning map resized to x's
    resolution, and γ, β come from a small conv net: 3×3 conv to ``hidden`` – ReLU – one 3×3 conv
    each for γ and β. The ``1 +`` makes γ = β = 0 the identity modulation, so the layer starts as
    plain normalisation under a small initialisation.

    Args:
        channels: channels of the normalised activation ``x``.
        cond_channels: channels of the conditioning map ``c``.
        hidden: width of the shared hidden conv (SPADE hard-codes 128).
        norm: ``"batch"`` or ``"instance"`` (both without learned affine parameters).
        interpolation: how ``c`` is resized when it is not already at x's resolution.
        kernel_size: kernel of the modulation convs (SPADE's ``3x3``).
    """

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        hidden: int = 128,
        norm: str = "batch",
        interpolation: str = "area",
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.interpolation = interpolation
        self.norm = param_free_norm(norm, channels)
        padding = kernel_size // 2
        self.shared = nn.Sequential(
            nn.Conv2d(cond_channels, hidden, kernel_size, padding=padding), nn.ReLU()
        )
        self.to_gamma = nn.Conv2d(hidden, channels, kernel_size, padding=padding)
        self.to_beta = nn.Conv2d(hidden, channels, kernel_size, padding=padding)

    def modulation(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """The (γ, β) maps for activation ``x`` under condition ``cond``."""
        hidden = self.shared(resize_to(cond, x.shape[-2:], self.interpolation))
        return self.to_gamma(hidden), self.to_beta(hidden)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """Normalise ``x`` without parameters, then modulate it with γ, β predicted from ``cond``."""
        normalised = self.norm(x)
        gamma, beta = self.modulation(x, cond)
        return normalised * (1 + gamma) + beta


class ConditionPyramid:
    """The fused embedding resized once per resolution and shared by every layer at that resolution."""

    def __init__(self, embedding: Tensor, interpolation: str) -> None:
        self.interpolation = interpolation
        self._sizes: dict[tuple[int, int], Tensor] = {tuple(embedding.shape[-2:]): embedding}
        self._full = embedding

    def at(self, size) -> Tensor:
        """The embedding at ``size`` (H, W)."""
        size = (int(size[0]), int(size[1]))
        if size not in self._sizes:
            self._sizes[size] = resize_to(self._full, size, self.interpolation)
        return self._sizes[size]
