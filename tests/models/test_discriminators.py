"""Multi-scale (SPADE) and 70×70 (pix2pix) PatchGAN discriminators."""

from __future__ import annotations

import pytest
import torch

from rsgee.models import (
    MultiScaleDiscriminator,
    PatchDiscriminator,
    Pix2PixPatchDiscriminator,
    build_discriminator,
    discriminator_in_channels,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
)


def _patch_size(size: int, strides: list[int], padding: int) -> int:
    for stride in strides:
        size = (size + 2 * padding - 4) // stride + 1
    return size


@pytest.mark.parametrize("size", [64, 128])
def test_multiscale_returns_per_scale_feature_lists(size: int) -> None:
    torch.manual_seed(0)
    channels = discriminator_in_channels(("lulc", "s1", "terrain"))
    assert channels == 21
    model = build_discriminator("multiscale", channels, size="tiny")
    out = model(torch.randn(2, channels, size, size))
    assert isinstance(out, list) and len(out) == 2
    for scale, features in enumerate(out):
        assert len(features) == 5  # 4 conv stages + the prediction
        widths = [f.shape[1] for f in features]
        assert widths == [8, 16, 32, 64, 1]
        # kernel 4, padding 2, strides 2, 2, 2, 1, 1; the coarse scale sees a half-size input
        side = size // 2**scale
        assert features[-1].shape == (2, 1, *(2 * [_patch_size(side, [2, 2, 2, 1, 1], 2)]))
        assert all(torch.isfinite(f).all() for f in features)


def test_multiscale_second_scale_sees_the_average_pooled_input() -> None:
    torch.manual_seed(0)
    model = MultiScaleDiscriminator(3, ndf=4, n_layers=2).eval()  # no power-iteration updates
    x = torch.randn(1, 3, 32, 32)
    pooled = torch.nn.functional.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    out = model(x)
    expected = model.scales[1](pooled)
    for a, b in zip(out[1], expected):
        torch.testing.assert_close(a, b)
    # count_include_pad=False: a constant image stays constant at the border after pooling
    ones = torch.nn.functional.avg_pool2d(torch.ones(1, 1, 8, 8), 3, 2, 1, count_include_pad=False)
    assert torch.equal(ones, torch.ones(1, 1, 4, 4))


def test_patch_discriminator_norms_and_spectral_norm_placement() -> None:
    model = PatchDiscriminator(21, ndf=8, n_layers=4)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    first, *middle, last = convs
    assert not hasattr(first, "parametrizations") and first.bias is not None
    assert not hasattr(last, "parametrizations") and last.out_channels == 1
    for conv in middle:
        assert "weight" in conv.parametrizations and conv.bias is None
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == 3 and not any(n.affine for n in norms)


def test_pix2pix_patchgan_is_70x70_with_30x30_output() -> None:
    torch.manual_seed(0)
    model = build_discriminator("patchgan70", 21, size="tiny")
    out = model(torch.randn(2, 21, 256, 256))
    assert out.shape == (2, 1, 30, 30)
    # receptive field: the gradient of one output patch reaches exactly a 70×70 input window
    x = torch.randn(1, 21, 256, 256, requires_grad=True)
    model.eval()
    model(x)[0, 0, 15, 15].backward()
    rows, cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1)), as_tuple=True)
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 3


def test_pix2pix_patchgan_instance_variant_has_biases() -> None:
    model = Pix2PixPatchDiscriminator(7, ndf=4, norm="instance")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    assert model(torch.randn(1, 7, 64, 64)).shape == (1, 1, 6, 6)


def test_gradients_reach_every_discriminator_parameter() -> None:
    for name in ("multiscale", "patchgan70"):
        torch.manual_seed(0)
        model = build_discriminator(name, 21, size="tiny")
        real, fake = torch.randn(2, 21, 64, 64), torch.randn(2, 21, 64, 64)
        hinge_discriminator_loss(model(real), model(fake)).backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{name}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: {pname}"
            if pname.endswith(("stages.4.0.bias", "layers.11.bias")):
                # the last bias shifts real and fake logits alike: while all |D| < 1 the two hinge
                # terms' gradients cancel exactly (d/db = −1 + 1)
                torch.testing.assert_close(p.grad, torch.zeros_like(p.grad))
            else:
                assert p.grad.abs().sum() > 0, f"{name}: {pname}"
        model.zero_grad()
        hinge_generator_loss(model(fake)).backward()
        assert all(p.grad.abs().sum() > 0 for p in model.parameters())


def test_feature_matching_on_real_discriminator_features() -> None:
    torch.manual_seed(0)
    model = build_discriminator("multiscale", 21, size="tiny").eval()
    x = torch.randn(2, 21, 64, 64)
    with torch.no_grad():
        same = feature_matching_loss(model(x), model(x.clone()))
        other = feature_matching_loss(model(x), model(x + 0.5 * torch.randn_like(x)))
    assert same.item() == 0.0
    assert other.item() > 0.0
