"""RS-UNet: the classic U-Net (Ronneberger et al., 2015) deepened to 5 levels, for land cover.

The paper's segmenter (section 4.2) "extends the classical U-net by increasing the input data
channel count and deepening the down-sampling layers": 5 down-sampling and 5 up-sampling levels,
3×3 convolutions, 4 input bands (RGBN), 9 Dynamic World classes, 256² tiles. Each level is a
double 3×3 conv (+ BatchNorm + ReLU); going down is a 2×2 max-pool, going up a 2×2 transposed
conv (or bilinear upsampling + 1×1 conv) followed by concatenation with the encoder activation of
the same level. Widths are ``base·2^k`` for level k = 0…5, optionally capped.

The network returns logits; the paper's final softmax belongs to the loss (cross-entropy) and to
prediction (argmax), where it is numerically safer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rsgee.errors import RsgeeError
from rsgee.models.layers import check_divisible, init_weights

UPSAMPLINGS = ("transpose", "bilinear")


class DoubleConv(nn.Module):
    """(3×3 conv → BatchNorm → ReLU) × 2; convs have no bias because BatchNorm shifts anyway."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Two conv-BN-ReLU layers at unchanged resolution."""
        return self.layers(x)


class UpLevel(nn.Module):
    """Double the resolution, concatenate the skip, double-conv back to the skip's width."""

    def __init__(self, in_channels: int, skip_channels: int, upsampling: str) -> None:
        super().__init__()
        if upsampling == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, skip_channels, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, skip_channels, 1),
            )
        self.conv = DoubleConv(2 * skip_channels, skip_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """Upsample ``x``, concatenate ``skip`` (same level of the encoder), double-conv."""
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class RsUNet(nn.Module):
    """RS-UNet segmenter: (B, in_channels, H, W) image → (B, num_classes, H, W) logits.

    Args:
        in_channels: input bands (4 = B2, B3, B4, B8; more when extra bands are added).
        num_classes: output classes (9 Dynamic World classes).
        base_channels: width of the first level; level k has ``base·2^k`` channels.
        max_channels: cap on any level's width (``None`` = no cap). The classic U-Net's widest
            layer is 1024; capping there keeps a 5-level, base-64 network at 82 M parameters
            instead of 124 M (512 gives 33 M).
        depth: number of down-sampling (and up-sampling) levels; 5 as in the paper. Inputs must be
            divisible by 2^depth (32).
        upsampling: ``"transpose"`` (2×2 transposed conv, the original U-Net's up-conv) or
            ``"bilinear"`` (bilinear + 1×1 conv; no checkerboard artefacts, fewer parameters).

    Convs use He-normal initialisation (the Gaussian of the U-Net paper), BatchNorm weights 1.
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 9,
        base_channels: int = 64,
        max_channels: int | None = None,
        depth: int = 5,
        upsampling: str = "transpose",
    ) -> None:
        super().__init__()
        if upsampling not in UPSAMPLINGS:
            raise RsgeeError(f"unknown upsampling {upsampling!r}; valid: {', '.join(UPSAMPLINGS)}")
        if min(in_channels, num_classes, base_channels, depth) < 1:
            raise RsgeeError("in_channels, num_classes, base_channels and depth must be positive")
        cap = max_channels if max_channels is not None else float("inf")
        widths = [int(min(base_channels * 2**k, cap)) for k in range(depth + 1)]
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.depth = depth
        self.widths = tuple(widths)
        self.stem = DoubleConv(in_channels, widths[0])
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList([DoubleConv(widths[k - 1], widths[k]) for k in range(1, depth + 1)])
        self.up = nn.ModuleList(
            [UpLevel(widths[k + 1], widths[k], upsampling) for k in reversed(range(depth))]
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        init_weights(self, "kaiming")

    def forward(self, x: Tensor) -> Tensor:
        """Class logits at the input resolution."""
        if x.dim() == 4 and x.shape[1] != self.in_channels:
            raise RsgeeError(
                f"RS-UNet was built for {self.in_channels} input bands, got {x.shape[1]}"
            )
        check_divisible(x, 2**self.depth, f"RS-UNet with depth {self.depth}")
        skips = [self.stem(x)]
        for level in self.down:
            skips.append(level(self.pool(skips[-1])))
        y = skips.pop()
        for level in self.up:
            y = level(y, skips.pop())
        return self.head(y)
