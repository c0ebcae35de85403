"""The SPADE layer, the residual block and the shared helpers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsgee.errors import RsgeeError
from rsgee.models.layers import check_divisible, concat_sources, init_weights, resize_to
from rsgee.models.modulation import SpatiallyAdaptiveNorm
from rsgee.models.spade_decoder import SPADEResBlock


def _zero_modulation(layer: SpatiallyAdaptiveNorm) -> None:
    with torch.no_grad():
        for conv in (layer.to_gamma, layer.to_beta):
            conv.weight.zero_()
            conv.bias.zero_()


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_spade_with_zero_gamma_beta_is_parameter_free_norm(norm: str) -> None:
    torch.manual_seed(0)
    layer = SpatiallyAdaptiveNorm(6, cond_channels=5, hidden=8, norm=norm)
    _zero_modulation(layer)
    x = torch.randn(3, 6, 8, 8) * 4 + 2
    cond = torch.randn(3, 5, 32, 32)
    expected = (
        F.batch_norm(x, None, None, training=True, eps=1e-5)
        if norm == "batch"
        else F.instance_norm(x, eps=1e-5)
    )
    torch.testing.assert_close(layer(x, cond), expected)
    # and the normalised activation really is standardised per channel (over batch and space)
    if norm == "batch":
        out = layer(x, cond)
        torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(6), atol=1e-5, rtol=0)
        variance = out.var(dim=(0, 2, 3), unbiased=False)
        torch.testing.assert_close(variance, torch.ones(6), atol=1e-3, rtol=0)


def test_spade_modulation_is_applied_after_the_norm() -> None:
    torch.manual_seed(1)
    layer = SpatiallyAdaptiveNorm(4, cond_channels=3, hidden=8)
    seen: dict[str, torch.Tensor] = {}
    layer.norm.register_forward_hook(lambda m, args, out: seen.update(norm_in=args[0], norm_out=out))
    x = torch.randn(2, 4, 8, 8)
    cond = torch.randn(2, 3, 16, 16)
    out = layer(x, cond)
    # The norm sees the raw activation, not a modulated one ...
    assert torch.equal(seen["norm_in"], x)
    # ... and the output is norm(x)·(1+γ)+β with γ, β from the condition resized to x's size.
    gamma, beta = layer.modulation(x, cond)
    assert gamma.shape == beta.shape == x.shape
    torch.testing.assert_close(out, seen["norm_out"] * (1 + gamma) + beta)
    # modulating before normalising would give something else entirely
    assert not torch.allclose(out, F.batch_norm(x * (1 + gamma) + beta, None, None, training=True))


def test_spade_resizes_the_condition_with_area_averaging() -> None:
    torch.manual_seed(2)
    layer = SpatiallyAdaptiveNorm(2, cond_channels=1, hidden=4)
    cond = torch.randn(1, 1, 16, 16)
    x = torch.randn(1, 2, 4, 4)
    pooled = F.avg_pool2d(cond, 4)
    gamma_full, _ = layer.modulation(x, cond)
    gamma_pooled, _ = layer.modulation(x, pooled)
    torch.testing.assert_close(gamma_full, gamma_pooled)


def test_resize_to_area_gives_class_fractions_and_rejects_unknown_modes() -> None:
    onehot = torch.zeros(1, 2, 4, 4)
    onehot[0, 0, :, :1] = 1  # a one-pixel-wide river in class 0
    onehot[0, 1, :, 1:] = 1
    coarse = resize_to(onehot, (1, 1), "area")
    torch.testing.assert_close(coarse.flatten(), torch.tensor([0.25, 0.75]))
    # nearest keeps one pixel of the block and loses the river entirely
    assert resize_to(onehot, (1, 1), "nearest").flatten().tolist() == [1.0, 0.0]
    assert resize_to(onehot, (4, 4), "area") is onehot
    with pytest.raises(RsgeeError, match="interpolation"):
        resize_to(onehot, (2, 2), "cubic")


def test_resblock_learned_shortcut_only_when_widths_differ() -> None:
    torch.manual_seed(3)
    same = SPADEResBlock(8, 8, cond_channels=3, hidden=4)
    diff = SPADEResBlock(8, 4, cond_channels=3, hidden=4)
    assert not same.learned_shortcut and not hasattr(same, "conv_s")
    assert diff.learned_shortcut and diff.conv_s.weight.shape == (4, 8, 1, 1)
    assert diff.conv_s.bias is None
    # spectral norm sits on the block convs, not on the modulation convs
    for conv in (diff.conv_0, diff.conv_1, diff.conv_s):
        assert hasattr(conv, "parametrizations") and "weight" in conv.parametrizations
    assert not hasattr(diff.norm_0.to_gamma, "parametrizations")
    x = torch.randn(2, 8, 8, 8)
    cond = torch.randn(2, 3, 8, 8)
    assert diff(x, cond).shape == (2, 4, 8, 8)
    # the identity shortcut: out − x is exactly the residual branch
    same.eval()
    hidden = same.conv_0(F.leaky_relu(same.norm_0(x, cond), 0.2))
    dx = same.conv_1(F.leaky_relu(same.norm_1(hidden, cond), 0.2))
    torch.testing.assert_close(same(x, cond) - x, dx)


def test_concat_sources_orders_by_model_and_checks_inputs() -> None:
    inputs = {
        "s1": torch.full((1, 2, 4, 4), 2.0),
        "lulc": torch.ones(1, 3, 4, 4),
        "s2": torch.zeros(1, 4, 4, 4),
    }
    out = concat_sources(inputs, {"lulc": 3, "s1": 2})
    assert out.shape == (1, 5, 4, 4)
    assert out[0, :3].eq(1).all() and out[0, 3:].eq(2).all()
    with pytest.raises(RsgeeError, match="lacks source 'terrain'"):
        concat_sources(inputs, {"terrain": 5})
    with pytest.raises(RsgeeError, match=r"must be \(B, 4, H, W\)"):
        concat_sources(inputs, {"s1": 4})
    with pytest.raises(RsgeeError, match="disagree"):
        concat_sources({"a": torch.ones(1, 1, 4, 4), "b": torch.ones(1, 1, 8, 8)}, {"a": 1, "b": 1})


def test_check_divisible_message_is_one_line() -> None:
    with pytest.raises(RsgeeError) as error:
        check_divisible(torch.zeros(1, 1, 96, 100), 32, "X")
    assert "96×100" in str(error.value) and "\n" not in str(error.value)


def test_init_weights_reference_statistics() -> None:
    torch.manual_seed(4)
    conv = torch.nn.Conv2d(64, 64, 3)
    bn = torch.nn.BatchNorm2d(64)
    model = torch.nn.Sequential(conv, bn)
    init_weights(model, "normal", 0.02)
    assert abs(conv.weight.std().item() - 0.02) < 0.002
    assert conv.bias.abs().max().item() == 0
    assert abs(bn.weight.mean().item() - 1) < 0.01 and bn.bias.abs().max().item() == 0
    init_weights(model, "xavier", 0.02)
    expected = 0.02 * (2 / (64 * 9 + 64 * 9)) ** 0.5
    assert abs(conv.weight.std().item() - expected) / expected < 0.05
    with pytest.raises(RsgeeError):
        init_weights(model, "orthogonal")
