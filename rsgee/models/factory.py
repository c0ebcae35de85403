"""Build the models by name and size preset; the one place that knows the sources' channel counts.

Generators: ``rs-spade`` (the paper's: pix2pix's U-Net with the multi-source modulation after every
normalisation), ``pix2pix`` (the baseline U-Net on the concatenated sources) and ``spade-decoder``
(SPADE's decoder-only generator with the same modulation, kept as an ablation). Three presets each:

* ``"paper"`` — the published defaults (pix2pix and RS-SPADE: ``unet_256`` with ngf 64, RS-SPADE's
  modulation nets 128 wide as SPADE's; SPADE decoder: ngf 64, hidden 128; discriminators ndf 64, the
  70×70 PatchGAN or 2 scales × 4 layers; RS-UNet: the classic U-Net widths 64…1024 over 5 levels). For GPUs.
* ``"small"`` — the same architectures at a quarter to half the width, for CPU or small-GPU runs
  on real archives.
* ``"tiny"`` — 0.25–2 M parameters, for tests and the offline demo; a generator + discriminator
  step at batch 2, 128² takes 0.1–0.4 s on a 2-core CPU.

Every keyword of the architecture's constructor can be overridden
(``build_generator("rs-spade", ("lulc", "s1"), "small", norm="instance")``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping

from torch import nn

from rsgee.errors import RsgeeError
from rsgee.models.discriminator import MultiScaleDiscriminator, Pix2PixPatchDiscriminator
from rsgee.models.pix2pix import Pix2PixGenerator
from rsgee.models.rs_spade import RsSpadeGenerator
from rsgee.models.spade_decoder import SpadeDecoderGenerator
from rsgee.models.unet import RsUNet

#: Channels of each model input source as the data module delivers them: Dynamic World one-hot
#: (9 classes + don't-care), Sentinel-1 VV/VH, terrain (dem, slope, sin/cos aspect, hillshade).
#: The order is the canonical order of concatenation.
SOURCE_CHANNELS: dict[str, int] = {"lulc": 10, "s1": 2, "terrain": 5}

#: Bands the generators produce and the discriminators judge: Sentinel-2 B2, B3, B4, B8.
IMAGE_CHANNELS = 4

#: Land-cover classes RS-UNet predicts (Dynamic World).
NUM_CLASSES = 9


GENERATOR_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # num_downs: the bottleneck must stay ≥ 1 px, so tiny (5 levels) runs on any multiple of 32,
    # small (7) on multiples of 128, paper (8, unet_256) on multiples of 256. RS-SPADE's U-Net is
    # pix2pix's at the same size.
    "rs-spade": {
        "tiny": {"ngf": 8, "num_downs": 5, "embed_channels": 8, "spade_hidden": 16},
        "small": {"ngf": 32, "num_downs": 7, "embed_channels": 16, "spade_hidden": 32},
        "paper": {"ngf": 64, "num_downs": 8, "embed_channels": 32, "spade_hidden": 128},
    },
    "pix2pix": {
        "tiny": {"ngf": 8, "num_downs": 5},
        "small": {"ngf": 32, "num_downs": 7},
        "paper": {"ngf": 64, "num_downs": 8},
    },
    "spade-decoder": {
        "tiny": {"ngf": 8, "embed_channels": 8, "spade_hidden": 16},
        "small": {"ngf": 16, "embed_channels": 16, "spade_hidden": 32},
        "paper": {"ngf": 64, "embed_channels": 32, "spade_hidden": 128},
    },
}

DISCRIMINATOR_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "multiscale": {
        "tiny": {"ndf": 8, "n_layers": 4, "num_scales": 2},
        "small": {"ndf": 32, "n_layers": 4, "num_scales": 2},
        "paper": {"ndf": 64, "n_layers": 4, "num_scales": 2},
    },
    "patchgan70": {
        "tiny": {"ndf": 8, "n_layers": 3},
        "small": {"ndf": 32, "n_layers": 3},
        "paper": {"ndf": 64, "n_layers": 3},
    },
}

SEGMENTER_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "rs-unet": {
        "tiny": {"base_channels": 8, "max_channels": None},
        "small": {"base_channels": 16, "max_channels": None},
        "paper": {"base_channels": 64, "max_channels": 1024},
    },
}

_GENERATORS: dict[str, Callable[..., nn.Module]] = {
    "rs-spade": RsSpadeGenerator,
    "pix2pix": Pix2PixGenerator,
    "spade-decoder": SpadeDecoderGenerator,
}
_DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {
    "multiscale": MultiScaleDiscriminator,
    "patchgan70": Pix2PixPatchDiscriminator,
}
_SEGMENTERS: dict[str, Callable[..., nn.Module]] = {"rs-unet": RsUNet}


def source_channels(sources: Iterable[str]) -> dict[str, int]:
    """``{source: channels}`` for the enabled sources, in canonical order.

    The order of ``sources`` does not matter: ``("s1", "lulc")`` and ``("lulc", "s1")`` build the
    same model, so checkpoints and discriminator inputs never depend on how a user listed them.

    Raises:
        RsgeeError: empty, unknown or repeated source names.
    """
    if isinstance(sources, str):
        sources = (sources,)
    names = list(sources)
    if not names:
        raise RsgeeError(f"enable at least one source; valid: {', '.join(SOURCE_CHANNELS)}")
    unknown = [n for n in names if n not in SOURCE_CHANNELS]
    if unknown:
        raise RsgeeError(
            f"unknown source(s) {', '.join(map(repr, unknown))}; valid: {', '.join(SOURCE_CHANNELS)}"
        )
    if len(set(names)) != len(names):
        raise RsgeeError(f"sources listed more than once: {names}")
    return {n: c for n, c in SOURCE_CHANNELS.items() if n in names}


def discriminator_in_channels(sources: Iterable[str]) -> int:
    """Channels of a conditional discriminator's input: the enabled sources + the 4-band image."""
    return sum(source_channels(sources).values()) + IMAGE_CHANNELS


def preset(
    presets: Mapping[str, Mapping[str, Mapping[str, Any]]], name: str, size: str
) -> dict[str, Any]:
    """A copy of one named preset, or a one-line error listing the valid names and sizes."""
    if name not in presets:
        raise RsgeeError(f"unknown model {name!r}; valid: {', '.join(presets)}")
    if size not in presets[name]:
        raise RsgeeError(f"unknown size {size!r}; valid: {', '.join(presets[name])}")
    return dict(presets[name][size])


def _settings(
    constructor: Callable[..., nn.Module],
    name: str,
    settings: dict[str, Any],
    overrides: Mapping[str, Any],
    fixed: Mapping[str, Any],
) -> dict[str, Any]:
    """Every keyword of ``constructor``: the fixed arguments, preset settings, checked overrides, defaults."""
    parameters = inspect.signature(constructor).parameters
    allowed = [p for p in parameters if p not in fixed]
    bad = [key for key in overrides if key not in allowed]
    if bad:
        raise RsgeeError(
            f"{name} has no setting {', '.join(map(repr, bad))}; valid: {', '.join(allowed)}"
        )
    settings.update(overrides)
    bound = inspect.signature(constructor).bind(**fixed, **settings)
    bound.apply_defaults()
    return dict(bound.arguments)


def _build(
    constructor: Callable[..., nn.Module],
    name: str,
    settings: dict[str, Any],
    overrides: Mapping[str, Any],
    fixed: Mapping[str, Any],
) -> nn.Module:
    """Call ``constructor`` with preset settings, checked overrides and the fixed arguments."""
    return constructor(**_settings(constructor, name, settings, overrides, fixed))


def build_generator(
    name: str,
    sources: Iterable[str] = tuple(SOURCE_CHANNELS),
    size: str = "paper",
    **overrides: Any,
) -> nn.Module:
    """Build a generator that maps the enabled sources to RGBN.

    Args:
        name: ``"rs-spade"``, ``"pix2pix"`` or ``"spade-decoder"``.
        sources: any non-empty subset of :data:`SOURCE_CHANNELS` (order irrelevant).
        size: ``"tiny"``, ``"small"`` or ``"paper"`` (see :data:`GENERATOR_PRESETS`).
        **overrides: constructor keywords replacing preset values (e.g. ``ngf=32``,
            ``norm="instance"``).

    Raises:
        RsgeeError: unknown name, size, source or setting.
    """
    settings = generator_settings(name, sources, size, **overrides)  # checks the name first
    return _GENERATORS[name](**settings)


def generator_settings(
    name: str,
    sources: Iterable[str] = tuple(SOURCE_CHANNELS),
    size: str = "paper",
    **overrides: Any,
) -> dict[str, Any]:
    """Every constructor keyword :func:`build_generator` passes (defaults included), for :func:`rebuild`."""
    settings = preset(GENERATOR_PRESETS, name, size)
    fixed = {"source_channels": source_channels(sources)}
    return _settings(_GENERATORS[name], name, settings, overrides, fixed)


def build_discriminator(
    name: str, in_channels: int, size: str = "paper", **overrides: Any
) -> nn.Module:
    """Build a conditional discriminator.

    Args:
        name: ``"multiscale"`` (RS-SPADE's; returns per-scale feature lists) or ``"patchgan70"``
            (pix2pix's; returns patch logits). The training recipe chooses one
            (:data:`rsgee.train.fusion.RECIPES`).
        in_channels: condition + image channels, see :func:`discriminator_in_channels`.
        size: ``"tiny"``, ``"small"`` or ``"paper"``.
        **overrides: constructor keywords replacing preset values.
    """
    if int(in_channels) < 1:
        raise RsgeeError(f"in_channels must be positive, got {in_channels}")
    settings = preset(DISCRIMINATOR_PRESETS, name, size)
    return _build(_DISCRIMINATORS[name], name, settings, overrides, {"in_channels": int(in_channels)})


def build_segmenter(
    name: str = "rs-unet",
    in_channels: int = IMAGE_CHANNELS,
    num_classes: int = NUM_CLASSES,
    size: str = "paper",
    **overrides: Any,
) -> nn.Module:
    """Build the land-cover segmenter.

    Args:
        name: ``"rs-unet"``.
        in_channels: input bands (4 = RGBN).
        num_classes: classes (9 Dynamic World classes).
        size: ``"tiny"``, ``"small"`` or ``"paper"`` (see :data:`SEGMENTER_PRESETS`).
        **overrides: constructor keywords replacing preset values (e.g. ``upsampling="bilinear"``).
    """
    settings = segmenter_settings(name, in_channels, num_classes, size, **overrides)  # checks the name first
    return _SEGMENTERS[name](**settings)


def segmenter_settings(
    name: str = "rs-unet",
    in_channels: int = IMAGE_CHANNELS,
    num_classes: int = NUM_CLASSES,
    size: str = "paper",
    **overrides: Any,
) -> dict[str, Any]:
    """Every constructor keyword :func:`build_segmenter` passes (defaults included), for :func:`rebuild`."""
    settings = preset(SEGMENTER_PRESETS, name, size)
    fixed = {"in_channels": int(in_channels), "num_classes": int(num_classes)}
    return _settings(_SEGMENTERS[name], name, settings, overrides, fixed)


def rebuild(name: str, settings: Mapping[str, Any]) -> nn.Module:
    """The generator or segmenter ``name`` built from the complete keywords :func:`generator_settings` or
    :func:`segmenter_settings` gave (as an exported model's config.json records them), not from a preset,
    so that a later change of a preset or a default never changes a saved model.

    Raises:
        RsgeeError: an unknown architecture, or keywords its constructor does not take or lacks.
    """
    constructors = {**_GENERATORS, **_SEGMENTERS}
    if name not in constructors:
        raise RsgeeError(f"unknown architecture {name!r}; this rsgee builds {', '.join(constructors)}")
    constructor = constructors[name]
    parameters = inspect.signature(constructor).parameters
    unknown = sorted(set(settings) - set(parameters))
    missing = sorted(n for n, p in parameters.items() if p.default is p.empty and n not in settings)
    if unknown or missing:
        problem = "; ".join(filter(None, (unknown and f"no setting {', '.join(unknown)}",
                                          missing and f"lacks {', '.join(missing)}")))
        raise RsgeeError(f"{name}: the recorded settings do not fit this rsgee's {name} ({problem})")
    return constructor(**settings)
