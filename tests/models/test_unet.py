"""RS-UNet: shapes, size errors, structure, and an overfit of one batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsgee.errors import RsgeeError
from rsgee.models import RsUNet, build_segmenter


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
def test_logits_shape_and_dtype(size: int, upsampling: str) -> None:
    torch.manual_seed(0)
    model = build_segmenter("rs-unet", in_channels=4, num_classes=9, size="tiny", upsampling=upsampling)
    x = torch.rand(2, 4, size, size) * 2 - 1
    logits = model(x)
    assert logits.shape == (2, 9, size, size) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # logits, not probabilities: unbounded and not summing to 1
    assert not torch.allclose(logits.sum(1), torch.ones(2, size, size))
    assert (logits[0] - logits[1]).abs().max() > 1e-3


def test_five_levels_with_capped_widths() -> None:
    model = RsUNet(in_channels=10, num_classes=3, base_channels=8, max_channels=32)
    assert model.widths == (8, 16, 32, 32, 32, 32)
    assert len(model.down) == len(model.up) == 5
    # (batch 2: BatchNorm needs more than one value per channel at the 1×1 bottleneck of 32²)
    assert model(torch.rand(2, 10, 32, 32)).shape == (2, 3, 32, 32)
    # the bottleneck of a 256² tile is 8×8
    seen = []
    model.down[-1].register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape[-2:])))
    model(torch.rand(1, 10, 256, 256))
    assert seen == [(8, 8)]


def test_input_not_divisible_by_32_is_a_clear_error() -> None:
    model = build_segmenter("rs-unet", size="tiny")
    with pytest.raises(RsgeeError, match=r"divisible by 32, got 100×96"):
        model(torch.rand(1, 4, 100, 96))
    with pytest.raises(RsgeeError, match="4 input bands, got 3"):
        model(torch.rand(1, 3, 64, 64))


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = build_segmenter("rs-unet", size="tiny")
    x, y = torch.rand(2, 4, 64, 64), torch.randint(0, 9, (2, 64, 64))
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_tiny_unet_overfits_one_batch() -> None:
    torch.manual_seed(0)
    # blocky 9-class label maps; each class has its own RGBN signature plus noise
    labels = torch.randint(0, 9, (2, 8, 8)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    signatures = torch.rand(9, 4) * 2 - 1
    image = signatures[labels].permute(0, 3, 1, 2) + 0.1 * torch.randn(2, 4, 64, 64)
    model = build_segmenter("rs-unet", size="tiny")
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(50):
        optimiser.zero_grad()
        loss = F.cross_entropy(model(image), labels)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        accuracy = (model(image).argmax(1) == labels).float().mean().item()
    assert loss.item() < 0.2
    assert accuracy > 0.98, accuracy
