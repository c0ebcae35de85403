"""The factory: names, presets, sources, overrides, and parameter counts of the paper presets."""

from __future__ import annotations

import pytest
import torch

from rsgee.errors import RsgeeError
from rsgee.models import (
    SOURCE_CHANNELS,
    MultiScaleDiscriminator,
    Pix2PixGenerator,
    Pix2PixPatchDiscriminator,
    RsSpadeGenerator,
    RsUNet,
    SpadeDecoderGenerator,
    build_discriminator,
    build_generator,
    build_segmenter,
    count_parameters,
    discriminator_in_channels,
    source_channels,
)


def test_source_channels_contract() -> None:
    # the data module imports this: one-hot 9 classes + don't-care, VV/VH, 5 terrain bands
    assert SOURCE_CHANNELS == {"lulc": 10, "s1": 2, "terrain": 5}
    assert list(source_channels(("terrain", "lulc"))) == ["lulc", "terrain"]  # canonical order
    assert source_channels("s1") == {"s1": 2}
    assert discriminator_in_channels(("s1",)) == 6
    bad_sources = [((), "at least one"), (("sar",), "unknown source"), (("s1", "s1"), "more than once")]
    for bad, message in bad_sources:
        with pytest.raises(RsgeeError, match=message):
            source_channels(bad)


def test_builders_return_the_named_architectures() -> None:
    assert isinstance(build_generator("rs-spade", size="tiny"), RsSpadeGenerator)
    assert isinstance(build_generator("pix2pix", size="tiny"), Pix2PixGenerator)
    assert isinstance(build_generator("spade-decoder", size="tiny"), SpadeDecoderGenerator)
    assert isinstance(build_discriminator("multiscale", 21, "tiny"), MultiScaleDiscriminator)
    assert isinstance(build_discriminator("patchgan70", 21, "tiny"), Pix2PixPatchDiscriminator)
    segmenter = build_segmenter("rs-unet", 4, 9, "tiny")
    assert isinstance(segmenter, RsUNet) and segmenter.widths == (8, 16, 32, 64, 128, 256)


def test_tiny_presets_match_the_documented_widths() -> None:
    rs_spade = build_generator("rs-spade", size="tiny")
    assert rs_spade.num_downs == 5 and rs_spade.cond_channels == 3 * 8
    assert [d.conv.out_channels for d in rs_spade.downs] == [8, 16, 32, 64, 64]
    assert rs_spade.downs[1].norm.shared[0].out_channels == 16
    spade = build_generator("spade-decoder", size="tiny")
    assert spade.fc.out_channels == 16 * 8 and spade.cond_channels == 3 * 8
    assert spade.blocks[0].norm_0.shared[0].out_channels == 16
    disc = build_discriminator("multiscale", 21, "tiny")
    assert disc.scales[0].stages[0][0].out_channels == 8


def test_overrides_replace_preset_values_and_are_checked() -> None:
    model = build_generator("spade-decoder", ("s1",), "tiny", ngf=4, norm="instance")
    assert model.fc.out_channels == 64
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in model.modules())
    with pytest.raises(RsgeeError, match=r"no setting 'ndf'.*valid: out_channels, ngf"):
        build_generator("spade-decoder", size="tiny", ndf=8)
    with pytest.raises(RsgeeError, match="no setting 'source_channels'"):
        build_generator("pix2pix", size="tiny", source_channels={"x": 1})
    with pytest.raises(RsgeeError, match="norm"):
        build_generator("pix2pix", size="tiny", norm="group")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build_generator("spade"), "unknown model 'spade'; valid: rs-spade, pix2pix, spade-decoder"),
        (
            lambda: build_generator("pix2pix", size="huge"),
            "unknown size 'huge'; valid: tiny, small, paper",
        ),
        (lambda: build_discriminator("nlayer", 21), "valid: multiscale, patchgan70"),
        (lambda: build_segmenter("unet"), "valid: rs-unet"),
    ],
)
def test_unknown_names_are_one_line_errors(call, message: str) -> None:
    with pytest.raises(RsgeeError) as error:
        call()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_paper_preset_parameter_counts() -> None:
    # Built on the meta device: structure and counts without allocating ~0.7 GB of weights.
    with torch.device("meta"):
        pix2pix_15 = count_parameters(Pix2PixGenerator({"x": 15}, ngf=64, num_downs=8))
        pix2pix_g = count_parameters(build_generator("pix2pix", size="paper"))
        patch70_19 = count_parameters(Pix2PixPatchDiscriminator(19, ndf=64, n_layers=3))
        multiscale = count_parameters(build_discriminator("multiscale", 21, "paper"))
        # spectral norm re-parametrises a weight without adding parameters, and is slow to set up
        # on the meta device, so the count is taken without it (checked on tiny below)
        spade = count_parameters(build_generator("spade-decoder", size="paper", spectral=False))
        rs_spade = count_parameters(build_generator("rs-spade", size="paper"))
        unet_32 = count_parameters(RsUNet(4, 9, base_channels=32))
        unet_64_cap512 = count_parameters(RsUNet(4, 9, base_channels=64, max_channels=512))
        unet_paper = count_parameters(build_segmenter("rs-unet", size="paper"))
    # pix2pix unet_256, 15 → 4 channels: 54.4 M (perf.md §3); each extra input channel adds 64·4·4
    assert pix2pix_15 == pytest.approx(54.43e6, abs=0.01e6)
    assert pix2pix_g - pix2pix_15 == 2 * 64 * 16
    # 70×70 PatchGAN, 19 channels in: 19·64·16+64 + 64·128·16 + 128·256·16 + 256·512·16
    # + BN (2·(128+256+512)) + 512·16+1 = 2,782,017 (perf.md: 2.78 M)
    assert patch70_19 == 2_782_017
    # SPADE multi-scale D: 2 × (21·64·16+64 + 64·128·16 + 128·256·16 + 256·512·16 + 512·16+1)
    per_scale = 21 * 64 * 16 + 64 + 64 * 128 * 16 + 128 * 256 * 16 + 256 * 512 * 16 + 512 * 16 + 1
    assert multiscale == 2 * per_scale
    # SPADE G ngf 64 is 92.4 M with 15 label channels (perf.md); the decoder adds 3 stems and feeds
    # 96 embedding channels (instead of 15) to every modulation net
    assert 92e6 < spade < 97e6
    assert rs_spade == expected_rs_spade(pix2pix_g, ngf=64, num_downs=8, embed=32, hidden=128)
    tiny = [build_generator("spade-decoder", size="tiny", spectral=s) for s in (True, False)]
    assert count_parameters(tiny[0]) == count_parameters(tiny[1])
    # U-Nets of perf.md: base 32 → 31.1 M, base 64 capped at 512 → 33.4 M
    assert unet_32 == pytest.approx(31.10e6, abs=0.01e6)
    assert unet_64_cap512 == pytest.approx(33.40e6, abs=0.01e6)
    assert unet_paper == pytest.approx(82.43e6, abs=0.01e6)  # base 64, capped at 1024


def test_small_and_tiny_presets_run_at_128() -> None:
    torch.manual_seed(0)
    inputs = {
        "lulc": torch.rand(1, 10, 128, 128),
        "s1": torch.rand(1, 2, 128, 128),
        "terrain": torch.randn(1, 5, 128, 128),
    }
    for size in ("tiny", "small"):
        model = build_generator("pix2pix", size=size).eval()
        with torch.no_grad():
            assert model(inputs).shape == (1, 4, 128, 128)
    counts = {
        size: count_parameters(build_generator("spade-decoder", size=size)) for size in ("tiny", "small")
    }
    assert counts["tiny"] < 2e6 < counts["small"] < 10e6
    pix2pix_tiny = count_parameters(build_generator("pix2pix", size="tiny"))
    rs_spade_tiny = count_parameters(build_generator("rs-spade", size="tiny"))
    assert rs_spade_tiny == expected_rs_spade(pix2pix_tiny, ngf=8, num_downs=5, embed=8, hidden=16)
    assert rs_spade_tiny / pix2pix_tiny == pytest.approx(1.357, abs=1e-3)



def expected_rs_spade(pix2pix: int, *, ngf: int, num_downs: int, embed: int, hidden: int) -> int:
    """RS-SPADE's parameters from pix2pix's (same U-Net, 15 input channels): minus pix2pix's BatchNorm
    scale and shift (its norms are parameter-free), plus 3 stems and one modulation net (cond → hidden →
    γ and β, 3×3) per normalised layer."""
    encoder = [min(2**i, 8) * ngf for i in range(num_downs)]
    normalised = encoder[1:-1] + encoder[:-1]  # encoder levels 1 … n−2, decoder levels n−1 … 1
    batchnorm_affine = 2 * sum(normalised)
    stems = sum(c * embed * 9 + embed + embed * embed * 9 + embed for c in (10, 2, 5))
    cond = 3 * embed
    modulation = sum(cond * hidden * 9 + hidden + 2 * (hidden * c * 9 + c) for c in normalised)
    return pix2pix - batchnorm_affine + stems + modulation
