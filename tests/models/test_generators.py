"""RS-SPADE, pix2pix and the SPADE decoder at the tiny preset: structure, shapes, ranges, sources, gradients, training."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from rsgee.errors import RsgeeError
from rsgee.models import (
    SOURCE_CHANNELS,
    count_parameters,
    Pix2PixGenerator,
    RsSpadeGenerator,
    SpadeDecoderGenerator,
    SpatiallyAdaptiveNorm,
    build_generator,
    masked_l1_loss,
)

GENERATORS = ("rs-spade", "pix2pix", "spade-decoder")
ALL_SUBSETS = [
    subset
    for k in range(1, len(SOURCE_CHANNELS) + 1)
    for subset in itertools.combinations(SOURCE_CHANNELS, k)
]


def make_inputs(batch: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch shaped like the data module's: one-hot land cover, SAR in [0,1], terrain, target."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (batch, size // 8, size // 8), generator=g)
    labels = labels.repeat_interleave(8, 1).repeat_interleave(8, 2)
    lulc = torch.nn.functional.one_hot(labels, 10).permute(0, 3, 1, 2).float()
    return {
        "lulc": lulc,
        "s1": torch.rand(batch, 2, size, size, generator=g),
        "terrain": torch.randn(batch, 5, size, size, generator=g),
        "s2": torch.rand(batch, 4, size, size, generator=g) * 2 - 1,
    }


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("size", [64, 128])
def test_output_shape_dtype_and_range(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_generator(name, size="tiny")
    inputs = make_inputs(2, size)
    out = model(inputs)
    assert out.shape == (2, 4, size, size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.abs().max() < 1  # tanh
    assert out.std() > 1e-4  # not a constant image
    # the output differs between the two samples of the batch: it depends on the inputs
    assert (out[0] - out[1]).abs().max() > 1e-4


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("sources", ALL_SUBSETS, ids=lambda s: "+".join(s))
def test_every_subset_of_sources_builds_and_runs(name: str, sources: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    model = build_generator(name, sources, size="tiny")
    assert model.sources == sources
    inputs = make_inputs(2, 64)
    # extra keys (other sources, the target) are ignored; absent ones are not needed
    only = {k: inputs[k] for k in sources}
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(inputs), model(only))
    assert model(only).shape == (2, 4, 64, 64)


def test_spade_decoder_differs_from_subset_only_in_stems() -> None:
    full = build_generator("spade-decoder", size="tiny")
    sar = build_generator("spade-decoder", ("s1",), size="tiny")
    assert set(full.stems) == {"lulc", "s1", "terrain"} and set(sar.stems) == {"s1"}
    assert full.cond_channels == 3 * 8 and sar.cond_channels == 8
    assert len(full.blocks) == len(sar.blocks) == 7
    assert full.upsample_before == sar.upsample_before == (False, True, False, True, True, True, True)


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("source", list(SOURCE_CHANNELS))
def test_each_source_changes_the_output(name: str, source: str) -> None:
    torch.manual_seed(0)
    model = build_generator(name, size="tiny").eval()
    inputs = make_inputs(2, 64)
    changed = dict(inputs)
    changed[source] = make_inputs(2, 64, seed=1)[source]
    with torch.no_grad():
        diff = (model(inputs) - model(changed)).abs()
    assert diff.mean() > 1e-4, f"{source} has no effect on {name}"


@pytest.mark.parametrize("name", ["rs-spade", "spade-decoder"])
def test_each_source_has_its_own_embedding(name: str) -> None:
    torch.manual_seed(0)
    model = build_generator(name, size="tiny")
    inputs = make_inputs(1, 64)
    changed = dict(inputs, s1=torch.zeros_like(inputs["s1"]))
    a, b = model.embed(inputs), model.embed(changed)
    # channels 0–7 are lulc, 8–15 s1, 16–23 terrain: only the s1 block of the fused map changes
    assert torch.equal(a[:, :8], b[:, :8]) and torch.equal(a[:, 16:], b[:, 16:])
    assert not torch.equal(a[:, 8:16], b[:, 8:16])


@pytest.mark.parametrize(("n_up", "width"), [(4, 16), (5, 8), (6, 8), (7, 4)])
def test_spade_decoder_n_up_sets_start_size_and_final_width(n_up: int, width: int) -> None:
    model = SpadeDecoderGenerator({"s1": 2}, ngf=8, embed_channels=4, spade_hidden=4, n_up=n_up)
    assert sum(model.upsample_before) == n_up
    assert model.out_conv.in_channels == width
    seen = []
    model.fc.register_forward_hook(lambda m, args, out: seen.append(out.shape[-1]))
    size = 8 * 2**n_up  # large enough that the decoder starts at H / 2^n_up
    assert model({"s1": torch.rand(2, 2, size, size)}).shape == (2, 4, size, size)
    assert seen == [8]


@pytest.mark.parametrize(("size", "ups"), [(32, 2), (64, 3), (128, 4), (256, 5), (512, 5)])
def test_spade_decoder_never_starts_below_8x8(size: int, ups: int) -> None:
    model = SpadeDecoderGenerator({"s1": 2}, ngf=8, embed_channels=4, spade_hidden=4, n_up=5)
    seen = []
    model.fc.register_forward_hook(lambda m, args, out: seen.append(out.shape[-1]))
    assert model({"s1": torch.rand(2, 2, size, size)}).shape == (2, 4, size, size)
    assert seen == [size >> ups] and seen[0] >= 8  # small crops skip the first upsamplings


def test_rs_spade_is_pix2pix_with_a_modulation_after_every_norm() -> None:
    """Every BatchNorm of RS-SPADE is parameter-free and modulated, at each resolution H/2 … H/2^(num_downs−1)."""
    model = RsSpadeGenerator({"s1": 2, "terrain": 5}, ngf=4, num_downs=6, embed_channels=3, spade_hidden=5)
    norms = [m for m in model.modules() if isinstance(m, SpatiallyAdaptiveNorm)]
    assert len(norms) == 2 * 6 - 3
    assert all(not m.norm.affine for m in norms)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == len(norms)
    assert all(n.shared[0].in_channels == 2 * 3 for n in norms)  # each reads the fused embedding
    seen = []
    for norm in norms:
        norm.register_forward_hook(lambda m, args, out: seen.append(out.shape[-1]))
    model({"s1": torch.rand(2, 2, 128, 128), "terrain": torch.rand(2, 5, 128, 128)})
    # encoder levels 1–4 (not the outermost, not the bottleneck), then every decoder level but the outermost
    assert seen == [32, 16, 8, 4, 4, 8, 16, 32, 64]


def test_rs_spade_with_identity_modulation_computes_pix2pix() -> None:
    """γ = β = 0 turns every modulated norm into plain normalisation: the U-Net is then exactly pix2pix's."""
    torch.manual_seed(0)
    sources = {"lulc": 10, "s1": 2, "terrain": 5}
    spade = RsSpadeGenerator(sources, ngf=4, num_downs=6, embed_channels=3, spade_hidden=5, dropout=False)
    pix2pix = Pix2PixGenerator(sources, ngf=4, num_downs=6, dropout=False)
    for norm in (m for m in spade.modules() if isinstance(m, SpatiallyAdaptiveNorm)):
        for layer in (norm.to_gamma, norm.to_beta):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    for bn in (m for m in pix2pix.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        torch.nn.init.ones_(bn.weight)
        torch.nn.init.zeros_(bn.bias)
    # pix2pix registers its convs outermost down … bottleneck, then the ups from the bottleneck outwards
    theirs = [m for m in pix2pix.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    ours = [d.conv for d in spade.downs] + [u.conv for u in reversed(spade.ups)]
    assert len(theirs) == len(ours) == 12
    for a, b in zip(ours, theirs):
        assert a.weight.shape == b.weight.shape and (a.bias is None) == (b.bias is None)
        a.load_state_dict(b.state_dict())
    inputs = make_inputs(2, 64)
    torch.testing.assert_close(spade(inputs), pix2pix(inputs))  # training mode: batch statistics
    spade.eval(), pix2pix.eval()
    torch.testing.assert_close(spade(inputs), pix2pix(inputs))  # the running statistics moved alike
    assert count_parameters(spade) > count_parameters(pix2pix)


def test_rs_spade_modulation_alone_carries_each_source(monkeypatch) -> None:
    """With the encoder's input held fixed, changing only what the modulation reads changes the output."""
    from rsgee.models import rs_spade

    torch.manual_seed(0)
    model = build_generator("rs-spade", size="tiny").eval()
    inputs = make_inputs(2, 64)
    with torch.no_grad():
        base = model(inputs)
    embed = rs_spade.embed_sources
    for source in SOURCE_CHANNELS:
        changed = dict(inputs, **{source: make_inputs(2, 64, seed=1)[source]})
        monkeypatch.setattr(rs_spade, "embed_sources",
                            lambda stems, tensors: embed(stems, [changed[n] for n in model.sources]))
        with torch.no_grad():  # γ, β start small (N(0, 0.02) weights): a small but certain change
            assert (base - model(inputs)).abs().mean() > 1e-3 * base.abs().mean(), source
        monkeypatch.setattr(rs_spade, "embed_sources", embed)


@pytest.mark.parametrize("name", GENERATORS)
def test_input_size_not_divisible_is_a_clear_error(name: str) -> None:
    model = build_generator(name, ("s1",), size="tiny")
    with pytest.raises(RsgeeError, match="divisible by 32"):
        model({"s1": torch.rand(1, 2, 80, 80)})
    with pytest.raises(RsgeeError, match="lacks source 's1'"):
        model({"lulc": torch.rand(1, 10, 64, 64)})
    with pytest.raises(RsgeeError, match=r"\(B, 2, H, W\)"):
        model({"s1": torch.rand(1, 3, 64, 64)})


def test_pix2pix_structure_follows_unet_256() -> None:
    model = Pix2PixGenerator({"x": 15}, ngf=4, num_downs=8)
    downs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in downs] == [4, 8, 16, 32, 32, 32, 32, 32]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in downs)
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 3
    assert isinstance(model.unet.up[-1], torch.nn.Tanh)
    out = model({"x": torch.rand(1, 15, 256, 256)})
    assert out.shape == (1, 4, 256, 256)


@pytest.mark.parametrize("name", GENERATORS)
def test_instance_norm_variant_runs_at_batch_one(name: str) -> None:
    model = build_generator(name, size="tiny", norm="instance")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model(make_inputs(1, 64)).shape == (1, 4, 64, 64)


@pytest.mark.parametrize(("name", "norms"), [("rs-spade", 2 * 5 - 3), ("spade-decoder", 3 * 2 + 4 * 3)])
def test_sync_batchnorm_conversion(name: str, norms: int) -> None:
    torch.manual_seed(0)
    model = build_generator(name, size="tiny")
    reference = copy.deepcopy(model)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # RS-SPADE: 2·num_downs − 3 modulated norms; the decoder: three equal-width blocks with 2 SPADE norms
    # each, four halving blocks with 3 (shortcut)
    assert n_bn == norms
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()) == n_bn
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    # without a process group SyncBatchNorm falls back to BatchNorm: same output
    inputs = make_inputs(2, 64)
    torch.testing.assert_close(converted(inputs), reference(inputs))


def test_gradients_reach_every_generator_parameter() -> None:
    for name in GENERATORS:
        torch.manual_seed(0)
        model = build_generator(name, size="tiny")
        inputs = make_inputs(2, 64)
        masked_l1_loss(model(inputs), inputs["s2"]).backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{name}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: {pname}"


@pytest.mark.parametrize("name", GENERATORS)
def test_a_few_l1_steps_reduce_the_loss(name: str) -> None:
    torch.manual_seed(0)
    model = build_generator(name, size="tiny")
    inputs = make_inputs(2, 32)  # the tiny presets run at 32²
    # a learnable target: one RGBN colour per land-cover class, as a real scene roughly is
    palette = torch.linspace(-0.8, 0.8, 40).reshape(10, 4)[torch.randperm(10)]
    target = torch.einsum("bkhw,kc->bchw", inputs["lulc"], palette)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.5, 0.999))
    losses = []
    for _ in range(20):  # RS-SPADE's head runs at 8×8 even on 32² inputs (not 1×1): a few more steps
        optimiser.zero_grad()
        loss = masked_l1_loss(model(inputs), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    # the SPADE generators start slower: their modulation nets are initialised near zero, as SPADE's
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses
    assert max(losses[-3:]) < min(losses[:3]), losses
