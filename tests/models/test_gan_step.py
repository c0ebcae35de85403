"""One full adversarial iteration of each generator with its discriminator and losses."""

from __future__ import annotations

import pytest
import torch

from rsgee.models import (
    AdversarialLoss,
    build_discriminator,
    build_generator,
    concat_sources,
    discriminator_in_channels,
    feature_matching_loss,
    masked_l1_loss,
)


def _inputs(batch: int, size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (batch, size, size), generator=g)
    return {
        "lulc": torch.nn.functional.one_hot(labels, 10).permute(0, 3, 1, 2).float(),
        "s1": torch.rand(batch, 2, size, size, generator=g),
        "terrain": torch.randn(batch, 5, size, size, generator=g),
        "s2": torch.rand(batch, 4, size, size, generator=g) * 2 - 1,
        "valid": torch.rand(batch, size, size, generator=g) > 0.1,
    }


def _split(output, batch: int):
    """Split a D output computed on cat([fake, real]) into its fake and real halves."""
    if isinstance(output, torch.Tensor):
        return output[:batch], output[batch:]
    fake = [[f[:batch] for f in scale] for scale in output]
    real = [[f[batch:] for f in scale] for scale in output]
    return fake, real


@pytest.mark.parametrize(
    ("name", "disc", "mode", "l1_weight"),
    [("rs-spade", "multiscale", "hinge", 10.0), ("rs-spade", "patchgan70", "vanilla", 100.0),
     ("spade-decoder", "multiscale", "hinge", 10.0), ("pix2pix", "patchgan70", "vanilla", 100.0)],
)
def test_one_gan_iteration_updates_every_parameter(name: str, disc: str, mode: str, l1_weight: float) -> None:
    torch.manual_seed(0)
    sources = ("lulc", "s1", "terrain")
    generator = build_generator(name, sources, size="tiny")
    discriminator = build_discriminator(
        disc, discriminator_in_channels(sources), size="tiny"
    )
    adversarial = AdversarialLoss(mode)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-4, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=4e-4, betas=(0.0, 0.999))
    batch = _inputs(2, 64)
    condition = concat_sources(batch, generator.source_channels)
    real = batch["s2"]
    before_g = [p.detach().clone() for p in generator.parameters()]
    before_d = {n: p.detach().clone() for n, p in discriminator.named_parameters()}

    # D step: fake and real in one batch, as SPADE (shared InstanceNorm/BatchNorm statistics)
    fake = generator(batch)
    real_pair = torch.cat([condition, real], 1)
    d_out = discriminator(torch.cat([torch.cat([condition, fake.detach()], 1), real_pair]))
    d_fake, d_real = _split(d_out, 2)
    d_loss = adversarial.discriminator(d_real, d_fake)
    opt_d.zero_grad()
    d_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in discriminator.parameters())
    assert all(p.grad is None for p in generator.parameters())  # fake was detached
    opt_d.step()

    # G step: adversarial + L1 on valid pixels (+ feature matching for the multi-scale D)
    d_out = discriminator(torch.cat([torch.cat([condition, fake], 1), real_pair]))
    d_fake, d_real = _split(d_out, 2)
    g_loss = adversarial.generator(d_fake) + l1_weight * masked_l1_loss(fake, real, batch["valid"])
    if disc == "multiscale":
        g_loss = g_loss + feature_matching_loss(d_fake, d_real)
    opt_g.zero_grad()
    g_loss.backward()
    for pname, p in generator.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    opt_g.step()

    assert torch.isfinite(d_loss) and torch.isfinite(g_loss)
    assert all(not torch.equal(a, b) for a, b in zip(before_g, generator.parameters()))
    unchanged_d = [n for n, p in discriminator.named_parameters() if torch.equal(before_d[n], p)]
    # every D weight moves; only a final conv's bias may not (with the hinge loss its real and fake
    # gradients cancel exactly while all |D| < 1)
    final_biases = {"scales.0.stages.4.0.bias", "scales.1.stages.4.0.bias", "layers.11.bias"}
    assert set(unchanged_d) <= final_biases, unchanged_d
