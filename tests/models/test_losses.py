"""Adversarial, feature-matching, masked L1 and VGG19 perceptual losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rsgee.errors import RsgeeError
from rsgee.models import (
    AdversarialLoss,
    VGGPerceptualLoss,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    masked_l1_loss,
    vanilla_discriminator_loss,
    vanilla_generator_loss,
)
from rsgee.models.losses import vgg19_features


def test_hinge_losses_equal_their_closed_forms() -> None:
    real = torch.tensor([[2.0, 0.5], [-1.0, 1.0]])
    fake = torch.tensor([[-2.0, 0.0], [0.5, -0.5]])
    # mean(relu(1 - real)) = (0 + 0.5 + 2 + 0) / 4; mean(relu(1 + fake)) = (0 + 1 + 1.5 + 0.5) / 4
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(2.5 / 4 + 3.0 / 4)
    # −mean(fake) = −(−2 + 0 + 0.5 − 0.5) / 4
    assert hinge_generator_loss(fake).item() == pytest.approx(0.5)
    # multi-scale form: last entry of each scale, averaged over scales
    feature = torch.full((1, 3, 2, 2), 9.0)  # intermediate features are ignored
    real_ms = [[feature, torch.tensor([2.0])], [feature, torch.tensor([0.0])]]
    fake_ms = [[feature, torch.tensor([-3.0])], [feature, torch.tensor([1.0])]]
    assert hinge_discriminator_loss(real_ms, fake_ms).item() == pytest.approx((0 + 1) / 2 + (0 + 2) / 2)
    assert hinge_generator_loss(fake_ms).item() == pytest.approx((3.0 - 1.0) / 2)


def test_vanilla_losses_equal_bce_on_logits() -> None:
    torch.manual_seed(0)
    real, fake = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    sigmoid = torch.sigmoid
    bce_real = -(torch.log(sigmoid(real))).mean()
    bce_fake = -(torch.log(1 - sigmoid(fake))).mean()
    torch.testing.assert_close(vanilla_discriminator_loss(real, fake), 0.5 * (bce_real + bce_fake))
    torch.testing.assert_close(vanilla_generator_loss(fake), -(torch.log(sigmoid(fake))).mean())
    # a zero logit is a coin toss: log 2
    assert vanilla_generator_loss(torch.zeros(3)).item() == pytest.approx(math.log(2))


def test_adversarial_loss_dispatches_by_mode() -> None:
    real, fake = torch.tensor([0.3, -2.0]), torch.tensor([1.5, -0.2])
    hinge, vanilla = AdversarialLoss("hinge"), AdversarialLoss("vanilla")
    assert torch.equal(hinge.discriminator(real, fake), hinge_discriminator_loss(real, fake))
    assert torch.equal(hinge.generator(fake), hinge_generator_loss(fake))
    assert torch.equal(vanilla.discriminator(real, fake), vanilla_discriminator_loss(real, fake))
    assert torch.equal(vanilla.generator(fake), vanilla_generator_loss(fake))
    with pytest.raises(RsgeeError, match="hinge, vanilla"):
        AdversarialLoss("wgan")


def test_feature_matching_zero_for_identical_and_weighted_per_scale() -> None:
    a = [[torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 2, 2), torch.zeros(1, 1, 2, 2)]] * 2
    b = [[torch.ones(1, 2, 4, 4), torch.zeros(1, 4, 2, 2), torch.full((1, 1, 2, 2), 7.0)]] * 2
    assert feature_matching_loss(a, a).item() == 0.0
    # per scale: L1 of layer 0 is 1, layer 1 is 0, the prediction (7) is excluded;
    # two scales → sum 2, times λ / num_scales = 10 / 2
    assert feature_matching_loss(a, b).item() == pytest.approx(10.0)
    assert feature_matching_loss(a, b, weight=1.0).item() == pytest.approx(1.0)
    # the real features are detached: only the generated side receives gradients
    fake = [[torch.zeros(1, 2, 2, 2, requires_grad=True), torch.zeros(1, 1, 1, 1)]]
    real = [[torch.ones(1, 2, 2, 2, requires_grad=True), torch.zeros(1, 1, 1, 1)]]
    feature_matching_loss(fake, real).backward()
    assert fake[0][0].grad is not None and real[0][0].grad is None


def test_masked_l1_ignores_invalid_pixels() -> None:
    pred = torch.zeros(1, 4, 2, 2)
    target = torch.ones(1, 4, 2, 2)
    target[..., 0, 0] = 100.0  # a nodata fill value
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = False
    assert masked_l1_loss(pred, target, mask).item() == pytest.approx(1.0)
    assert masked_l1_loss(pred, target, mask.unsqueeze(1)).item() == pytest.approx(1.0)
    assert masked_l1_loss(pred, target).item() == pytest.approx((3 * 1 + 100) / 4)
    # per-channel masks and float weights
    channel_mask = torch.ones(1, 4, 2, 2)
    channel_mask[:, 0] = 0
    channel_mask[..., 0, 0] = 0
    assert masked_l1_loss(pred, target, channel_mask).item() == pytest.approx(1.0)
    # an all-invalid tile gives 0 and still backpropagates
    pred.requires_grad_(True)
    loss = masked_l1_loss(pred, target, torch.zeros(1, 2, 2))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


class _FakeTorchvisionVGG19(torch.nn.Module):
    """The state-dict layout of torchvision's vgg19 (features.* + a classifier), random weights."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg19_features()
        self.classifier = torch.nn.Linear(8, 2)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg19-random.pth"
    torch.save(_FakeTorchvisionVGG19().state_dict(), path)
    return path


def test_vgg_features_have_torchvision_indices() -> None:
    features = vgg19_features()
    assert len(features) == 37
    convs = [i for i, m in enumerate(features) if isinstance(m, torch.nn.Conv2d)]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    assert isinstance(features[29], torch.nn.ReLU)  # relu5_1 ends the last slice


def test_vgg_loss_from_local_file(vgg_file) -> None:
    loss_fn = VGGPerceptualLoss.from_file(vgg_file)
    reference = _FakeTorchvisionVGG19()
    reference.load_state_dict(torch.load(vgg_file, weights_only=True))
    torch.testing.assert_close(loss_fn.features[28].weight, reference.features[28].weight)
    # frozen: no parameters for an optimiser, nothing added to a checkpoint
    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {}
    torch.manual_seed(1)
    real = torch.rand(2, 4, 32, 32) * 2 - 1
    fake = (torch.rand(2, 4, 32, 32) * 2 - 1).requires_grad_(True)
    assert loss_fn(real, real).item() == 0.0
    loss = loss_fn(fake, real)
    assert loss.item() > 0
    loss.backward()
    # only the RGB bands (B4, B3, B2 = channels 2, 1, 0) are seen; NIR gets no gradient
    assert fake.grad[:, :3].abs().sum() > 0 and fake.grad[:, 3].abs().sum() == 0
    # changing NIR alone changes nothing
    nir = real.clone()
    nir[:, 3] = -1
    assert loss_fn(nir, real).item() == 0.0


def test_vgg_loss_matches_hand_computation(vgg_file) -> None:
    loss_fn = VGGPerceptualLoss.from_file(vgg_file)
    torch.manual_seed(2)
    a, b = torch.rand(1, 4, 32, 32) * 2 - 1, torch.rand(1, 4, 32, 32) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    xa = ((a[:, [2, 1, 0]] + 1) / 2 - mean) / std
    xb = ((b[:, [2, 1, 0]] + 1) / 2 - mean) / std
    expected = 0.0
    slices = [(0, 2), (2, 7), (7, 12), (12, 21), (21, 30)]
    for (start, stop), weight in zip(slices, [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1]):
        xa, xb = loss_fn.features[start:stop](xa), loss_fn.features[start:stop](xb)
        expected += weight * F.l1_loss(xa, xb).item()
    assert loss_fn(a, b).item() == pytest.approx(expected, rel=1e-5)


def test_vgg_bad_files_are_one_line_errors(tmp_path, vgg_file) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint\nat all")
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    state = torch.load(vgg_file, weights_only=True)
    wrong_shape = tmp_path / "vgg16ish.pth"
    torch.save({**state, "features.28.weight": torch.zeros(512, 256, 3, 3)}, wrong_shape)
    truncated = tmp_path / "truncated.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("features.2")}, truncated)
    cases = {
        tmp_path / "missing.pth": "not found",
        garbage: "cannot read",
        tensor_file: "not a state dict",
        wrong_shape: "features.28.weight",
        truncated: "lack",
    }
    for path, message in cases.items():
        with pytest.raises(RsgeeError) as error:
            VGGPerceptualLoss.from_file(path)
        assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
