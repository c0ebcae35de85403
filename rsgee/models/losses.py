"""Losses of the two generators: adversarial (hinge, vanilla), feature matching, L1, VGG19.

Discriminator outputs are accepted in either form the discriminators produce: a tensor of patch
logits (:class:`~rsgee.models.discriminator.Pix2PixPatchDiscriminator`), or one list of features
per scale ending with that scale's logits
(:class:`~rsgee.models.discriminator.MultiScaleDiscriminator`). For the multi-scale form the
adversarial losses use each scale's last entry and average over scales, as SPADE.

Loss weights (λ) are the trainer's business, except feature matching, whose weight is divided by
the number of scales inside (SPADE's convention, λ = 10 by default).

The VGG19 perceptual loss is optional and offline: it builds the conv stack itself and is created
only from a local torchvision ``vgg19`` state-dict file (:meth:`VGGPerceptualLoss.from_file`).
Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsgee.configs import GAN_LOSSES
from rsgee.errors import RsgeeError

#: What a discriminator returns: patch logits, or per-scale lists of features ending with logits.
DiscriminatorOutput = Union[Tensor, Sequence[Sequence[Tensor]]]



def _scale_predictions(output: DiscriminatorOutput) -> list[Tensor]:
    """The patch logits of every scale (a plain tensor is one scale)."""
    if isinstance(output, Tensor):
        return [output]
    predictions = []
    for scale in output:
        if isinstance(scale, Tensor):
            raise TypeError(
                "expected a tensor or a list of per-scale feature lists, got a list of tensors"
            )
        predictions.append(scale[-1])
    if not predictions:
        raise ValueError("discriminator output has no scales")
    return predictions


def _mean_over_scales(values: list[Tensor]) -> Tensor:
    return torch.stack(values).mean()


def hinge_discriminator_loss(real: DiscriminatorOutput, fake: DiscriminatorOutput) -> Tensor:
    """``mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))``, averaged over scales (SPADE's default)."""
    real_terms = [F.relu(1 - p).mean() for p in _scale_predictions(real)]
    fake_terms = [F.relu(1 + p).mean() for p in _scale_predictions(fake)]
    return _mean_over_scales(real_terms) + _mean_over_scales(fake_terms)


def hinge_generator_loss(fake: DiscriminatorOutput) -> Tensor:
    """``−mean(D(fake))``, averaged over scales: the generator raises D's score without a margin."""
    return _mean_over_scales([-p.mean() for p in _scale_predictions(fake)])


def vanilla_discriminator_loss(real: DiscriminatorOutput, fake: DiscriminatorOutput) -> Tensor:
    """``0.5 · (BCE(D(real), 1) + BCE(D(fake), 0))`` on logits, averaged over scales.

    The factor 0.5 is pix2pix's: it halves D's learning rate relative to G.
    """
    real_terms = [
        F.binary_cross_entropy_with_logits(p, torch.ones_like(p)) for p in _scale_predictions(real)
    ]
    fake_terms = [
        F.binary_cross_entropy_with_logits(p, torch.zeros_like(p)) for p in _scale_predictions(fake)
    ]
    return 0.5 * (_mean_over_scales(real_terms) + _mean_over_scales(fake_terms))


def vanilla_generator_loss(fake: DiscriminatorOutput) -> Tensor:
    """``BCE(D(fake), 1)`` on logits (the non-saturating GAN loss), averaged over scales."""
    return _mean_over_scales(
        [F.binary_cross_entropy_with_logits(p, torch.ones_like(p)) for p in _scale_predictions(fake)]
    )


class AdversarialLoss:
    """The pair of adversarial losses of one GAN mode, so a trainer can switch by name.

    Args:
        mode: ``"hinge"`` (SPADE / RS-SPADE) or ``"vanilla"`` (pix2pix; BCE on logits).
    """

    def __init__(self, mode: str = "hinge") -> None:
        if mode not in GAN_LOSSES:
            raise RsgeeError(f"unknown GAN loss {mode!r}; valid: {', '.join(GAN_LOSSES)}")
        self.mode = mode

    def discriminator(self, real: DiscriminatorOutput, fake: DiscriminatorOutput) -> Tensor:
        """D's loss on its outputs for real and generated images (pass ``fake`` detached from G)."""
        if self.mode == "hinge":
            return hinge_discriminator_loss(real, fake)
        return vanilla_discriminator_loss(real, fake)

    def generator(self, fake: DiscriminatorOutput) -> Tensor:
        """G's adversarial loss on D's output for generated images."""
        if self.mode == "hinge":
            return hinge_generator_loss(fake)
        return vanilla_generator_loss(fake)

    def __repr__(self) -> str:
        return f"AdversarialLoss(mode={self.mode!r})"


def feature_matching_loss(
    fake: Sequence[Sequence[Tensor]], real: Sequence[Sequence[Tensor]], weight: float = 10.0
) -> Tensor:
    """L1 between D's intermediate features on generated and real images (SPADE, pix2pixHD).

    Sums the L1 distance of every intermediate feature of every scale — the final prediction of
    each scale is excluded — and multiplies by ``weight / num_scales``. Real features are detached:
    the term trains the generator only. It gives G a dense, stable signal ("look like real images
    to D's eyes") on top of the adversarial one.

    Args:
        fake: per-scale feature lists for the generated image (from the multi-scale D).
        real: the same for the real image.
        weight: λ_feat (10 in SPADE).
    """
    if len(fake) != len(real) or not fake:
        raise ValueError(f"feature lists disagree in scales: {len(fake)} vs {len(real)}")
    total = fake[0][-1].new_zeros(())
    for fake_scale, real_scale in zip(fake, real):
        if len(fake_scale) != len(real_scale):
            raise ValueError("feature lists disagree in layers")
        for fake_feature, real_feature in zip(fake_scale[:-1], real_scale[:-1]):
            total = total + F.l1_loss(fake_feature, real_feature.detach())
    return total * (weight / len(fake))


def masked_l1_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error over valid pixels only.

    Args:
        pred: (B, C, H, W) prediction.
        target: (B, C, H, W) target.
        mask: validity, True/1 where the target is valid; (B, H, W), (B, 1, H, W) or (B, C, H, W),
            bool or float weights. ``None`` = every pixel is valid. Nodata pixels (clouds, gaps of
            the target) then neither pull the prediction towards their fill value nor dilute the
            mean.

    Returns:
        The mean over valid elements (a tile with no valid pixel gives 0, still attached to the
        graph so a step never fails on it).
    """
    error = (pred - target).abs()
    if mask is None:
        return error.mean()
    if mask.dim() == pred.dim() - 1:
        mask = mask.unsqueeze(1)
    weights = mask.to(error.dtype).expand_as(error)
    denominator = weights.sum()
    # No host sync (.item()) on the hot path: with no valid pixel the numerator is 0 and so is
    # the result.
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return (error * weights).sum() / safe


# ---------------------------------------------------------------------------------------------
# VGG19 perceptual loss (optional, local weights only)

#: torchvision's VGG19 ``features`` configuration (numbers are conv widths, "M" a 2×2 max-pool).
VGG19_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip
#: ``features`` index ranges ending at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
VGG_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
#: SPADE's weights for those slices: deeper (more semantic) features count more.
VGG_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features(num_modules: int | None = None) -> nn.Sequential:
    """VGG19's ``features`` stack (randomly initialised) with torchvision's module indices.

    Conv ``i`` of torchvision's ``vgg19().features`` is module ``i`` here too, so the state-dict
    keys (``0.weight``, ``2.weight``, … or ``features.0.weight`` inside a full model) match.

    Args:
        num_modules: keep only the first modules (30 reaches relu5_1); ``None`` = all 37.
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG19_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, int(item), 3, padding=1), nn.ReLU()]
            in_channels = int(item)
    return nn.Sequential(*(layers if num_modules is None else layers[:num_modules]))


def _freeze_as_buffers(module: nn.Module) -> None:
    """Turn every parameter of ``module`` into a non-persistent buffer of the same name."""
    for submodule in module.modules():
        for name, parameter in list(submodule.named_parameters(recurse=False)):
            delattr(submodule, name)
            submodule.register_buffer(name, parameter.detach(), persistent=False)


class VGGPerceptualLoss(nn.Module):
    """L1 between VGG19 features of generated and real images (SPADE's ``VGGLoss``), RGB bands only.

    The RGBN tensors in [-1, 1] are reduced to the RGB bands (B4, B3, B2), mapped to [0, 1]
    reflectance and ImageNet-normalised, which is what VGG19's weights expect; NIR is not seen.
    Features at relu1_1 … relu5_1 are compared with weights 1/32 … 1 (multiply by λ_vgg = 10 in
    the trainer). The VGG weights are frozen and held as non-persistent buffers: they move with
    ``.to(device)``, but no optimiser sees them and they do not bloat checkpoints (a module that
    owns this loss saves and loads its own weights only; it rebuilds the loss from the file).

    Build it with :meth:`from_file`; the constructor takes an already-loaded state dict so that a
    randomly initialised "perceptual" loss can never be created by accident.

    Args:
        features_state: the ``features.*`` entries of a torchvision ``vgg19`` state dict (other
            keys, e.g. ``classifier.*``, are ignored).
        rgb_indices: channels of the input holding red, green, blue (B4, B3, B2 → 2, 1, 0).
    """

    def __init__(
        self, features_state: Mapping[str, Tensor], rgb_indices: Sequence[int] = (2, 1, 0)
    ) -> None:
        super().__init__()
        self.features = vgg19_features(VGG_SLICES[-1][1])
        wanted = self.features.state_dict()
        state = {}
        for key, reference in wanted.items():
            full_key = f"features.{key}"
            if full_key not in features_state:
                raise RsgeeError(
                    f"VGG19 weights lack {full_key!r}; expected a torchvision vgg19 state dict"
                )
            value = features_state[full_key]
            if not isinstance(value, Tensor) or value.shape != reference.shape:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise RsgeeError(
                    f"VGG19 weight {full_key!r} has shape {shape}, expected "
                    f"{tuple(reference.shape)}; not a torchvision vgg19 state dict"
                )
            state[key] = value.to(reference.dtype)
        self.features.load_state_dict(state)
        _freeze_as_buffers(self.features)
        self.features.eval()
        self.rgb_indices = tuple(int(i) for i in rgb_indices)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str | Path, rgb_indices: Sequence[int] = (2, 1, 0)) -> "VGGPerceptualLoss":
        """Load a local torchvision ``vgg19`` weights file (e.g. ``vgg19-dcbb9e9d.pth``).

        The file is read with ``torch.load(..., weights_only=True)``: a state dict
        (``torch.save(model.state_dict(), path)``) is expected; no code in it is run.

        Raises:
            RsgeeError: the file is missing, unreadable, or not a VGG19 state dict.
        """
        path = Path(path)
        if not path.is_file():
            raise RsgeeError(f"VGG19 weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle, zip and weights-only errors alike
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise RsgeeError(
                f"cannot read VGG19 weights {path}: {type(error).__name__}: {first_line}"
            ) from None
        if not isinstance(state, Mapping):
            raise RsgeeError(
                f"{path} holds a {type(state).__name__}, not a state dict; save one with "
                f"torch.save(torchvision.models.vgg19(...).state_dict(), path)"
            )
        try:
            return cls(state, rgb_indices)
        except RsgeeError as error:
            raise RsgeeError(f"{path}: {error}") from None

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        """Keep the VGG in eval mode whatever the enclosing module does (it has no BN, but be safe)."""
        super().train(mode)
        self.features.eval()
        return self

    def _prepare(self, x: Tensor) -> Tensor:
        rgb = x[:, list(self.rgb_indices)]
        return ((rgb + 1) / 2 - self.mean) / self.std

    def forward(self, fake: Tensor, real: Tensor) -> Tensor:
        """Weighted L1 over the five VGG feature levels; real features are detached."""
        batch = fake.shape[0]
        x = self._prepare(torch.cat([fake, real.detach()], dim=0))
        total = fake.new_zeros(())
        for (start, stop), weight in zip(VGG_SLICES, VGG_LAYER_WEIGHTS):
            for index in range(start, stop):
                x = self.features[index](x)
            total = total + weight * F.l1_loss(x[:batch], x[batch:].detach())
        return total
