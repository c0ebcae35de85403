"""What defines a training run: its config, every default and choice of it, and the checks on it.

The command line, :mod:`rsgee.api` and the trainers all take run settings from here: a
:class:`FusionConfig` or :class:`SegmentationConfig` field's default is the only place that default is
written (the CLI's options read theirs from the fields), and ``__post_init__`` refuses a value in one line,
from the command line and from Python alike, before anything is written. Importable without the ``train``
extra (no torch), so ``rsgee --help`` and ``rsgee export`` stay light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from rsgee.errors import RsgeeError, check_number

#: Where a command runs its model (auto: CUDA when present), and the numeric precisions a run may ask for.
ACCELERATORS = ("auto", "cpu", "gpu")
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
#: Where a run logs besides ``logs/metrics.csv`` (always written): each from its optional extra.
LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")
#: A generator's trained weights, or their exponential moving average.
WEIGHTS = ("raw", "ema")
#: Model width presets: paper = the published widths (GPU), small for CPUs and small GPUs, tiny for tests.
SIZES = ("tiny", "small", "paper")
#: Command-line names of conditioning sources (the paper calls terrain "dem"), in the models' channel order.
SOURCE_ALIASES = {"lulc": "lulc", "s1": "s1", "sar": "s1", "dem": "terrain", "terrain": "terrain"}
CONDITION_SOURCES = tuple(dict.fromkeys(SOURCE_ALIASES.values()))


def parse_sources(text: str | Sequence[str]) -> tuple[str, ...]:
    """'lulc,s1,dem' → ('lulc', 's1', 'terrain') in canonical order; unknown names are an error."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in SOURCE_ALIASES]
    if unknown or not names:
        raise RsgeeError(f"--sources {text!r}: choose a non-empty subset of lulc, s1, dem")
    chosen = {SOURCE_ALIASES[n] for n in names}
    return tuple(s for s in CONDITION_SOURCES if s in chosen)


#: Learning-rate schedules over a run's optimiser steps (after ``warmup`` steps of linear warm-up):
#: ``constant``; ``linear``, pix2pix's (constant for the first half, then linearly down to 0 at the last
#: step); ``cosine`` (half a cosine from the base rate down to 0).
SCHEDULES = ("constant", "linear", "cosine")
#: Epochs a run trains when neither ``epochs`` nor ``steps`` is given.
DEFAULT_EPOCHS = 50


def check_length(config) -> None:
    """Validate and complete a config's run length: ``epochs`` or ``steps`` (not both), schedule and warm-up.

    Called by the configs' ``__post_init__``: fills in :data:`DEFAULT_EPOCHS` when neither is given.
    """
    if config.steps is not None and config.epochs is not None:
        raise RsgeeError(f"give --epochs ({config.epochs}) or --steps ({config.steps}), not both: --steps trains "
                         "exactly that many optimiser steps, --epochs whole passes over the train split")
    if config.steps is None and config.epochs is None:
        config.epochs = DEFAULT_EPOCHS
    for name in ("epochs", "steps"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise RsgeeError(f"--{name} {value}: use a positive number")
    if config.schedule not in SCHEDULES:
        raise RsgeeError(f"--schedule {config.schedule!r}: choose {', '.join(SCHEDULES)}")
    if config.warmup < 0:
        raise RsgeeError(f"--warmup {config.warmup}: use 0 or more optimiser steps")


def check_options(config) -> None:
    """Range-check the options both kinds of run share (after :func:`check_length`), for the configs'
    ``__post_init__``: a value the optimiser, the loader or numpy's seeding would refuse only after
    run.json is written is refused here, in one line, from the CLI and from Python alike."""
    check_length(config)
    if config.size not in SIZES:
        raise RsgeeError(f"--size {config.size!r}: choose {', '.join(SIZES)}")
    check_number("--batch-size", config.batch_size, 1, whole=True)
    check_number("--seed", config.seed, 0, 2**32 - 1, whole=True)
    check_number("--workers", config.num_workers, 0, whole=True)
    for option, value in (("--steps-per-epoch", config.steps_per_epoch), ("--checkpoint-every", config.checkpoint_every),
                          ("--train-tiles", config.train_tiles)):
        if value is not None:
            check_number(option, value, 1, whole=True)
    if config.clip_grad_norm is not None:
        check_number("--clip-grad-norm", config.clip_grad_norm, 0.0, above=True)
    if config.crop is not None and (not isinstance(config.crop, int) or config.crop % 32 or not 32 <= config.crop <= 256):
        raise RsgeeError(f"--crop {config.crop!r}: use a multiple of 32 between 32 and 256 pixels")


#: Augmentations a training run can draw from: none, the four flips (identity, mirror E–W, mirror N–S,
#: half turn) or all eight flips and rotations.
AUGMENTATIONS = ("none", "flip", "dihedral")


def check_augmentation(name: str) -> str:
    """Return ``name`` if it is one of :data:`AUGMENTATIONS`, else a one-line error."""
    if name not in AUGMENTATIONS:
        raise RsgeeError(f"--augment {name!r}: choose {', '.join(AUGMENTATIONS)}")
    return name


# -- fusion ---------------------------------------------------------------------------------------

#: Generators: the paper's RS-SPADE (pix2pix's U-Net + multi-source modulation), the pix2pix baseline, and
#: SPADE's decoder-only generator with the same modulation (an ablation).
MODELS = ("rs-spade", "pix2pix", "spade-decoder")
#: Adversarial losses (SPADE's hinge, pix2pix's vanilla BCE) and conditional discriminators (SPADE's 2-scale
#: one, pix2pix's 70×70 PatchGAN) a recipe can be given.
GAN_LOSSES = ("hinge", "vanilla")
DISCRIMINATORS = ("multiscale", "patchgan70")
#: Training recipes, apart from architectures. ``pix2pix``: Isola et al.'s (vanilla GAN + L1 ×100, Adam
#: 2e-4 (0.5, 0.999), 70×70 PatchGAN). ``spade``: NVlabs/SPADE's (hinge + feature matching ×10 (+ VGG ×10
#: with --vgg-weights), no L1, TTUR 1e-4/4e-4, betas (0, 0.999), 2-scale D). ``hybrid``: SPADE's with an L1
#: ×10 term added — what rsgee trained RS-SPADE with before recipes were separate.
RECIPES = {
    "pix2pix": {"gan_loss": "vanilla", "lr_g": 2e-4, "lr_d": 2e-4, "betas": (0.5, 0.999), "l1_weight": 100.0,
                "fm_weight": 0.0, "discriminator": "patchgan70"},
    "spade": {"gan_loss": "hinge", "lr_g": 1e-4, "lr_d": 4e-4, "betas": (0.0, 0.999), "l1_weight": 0.0,
              "fm_weight": 10.0, "discriminator": "multiscale"},
    "hybrid": {"gan_loss": "hinge", "lr_g": 1e-4, "lr_d": 4e-4, "betas": (0.0, 0.999), "l1_weight": 10.0,
               "fm_weight": 10.0, "discriminator": "multiscale"},
}
#: The recipe every generator trains with unless told otherwise: on the demo's val split each of the three
#: learned most with it (BENCHMARKS.md, "Convergence"), and one recipe for all keeps comparisons fair.
DEFAULT_RECIPE = "pix2pix"
#: The source subsets of the sources ablation (Table 2): land cover alone, with SAR, with terrain, and all three.
ABLATION_SOURCES = (("lulc",), ("lulc", "s1"), ("lulc", "terrain"), ("lulc", "s1", "terrain"))


@dataclass
class FusionConfig:
    """Everything that defines a fusion run (stored in run.json)."""

    model: str = "rs-spade"
    sources: tuple[str, ...] = ("lulc", "s1", "terrain")
    recipe: str | None = None  # pix2pix | spade | hybrid; None = DEFAULT_RECIPE
    gan_loss: str | None = None  # hinge | vanilla (None = the recipe's)
    discriminator: str | None = None  # multiscale | patchgan70 (None = the recipe's)
    size: str = "small"
    batch_size: int = 4
    epochs: int | None = None  # passes over the train split (DEFAULT_EPOCHS when steps is None too)
    steps: int | None = None  # or exactly this many optimiser steps (GAN iterations)
    steps_per_epoch: int | None = None  # batches per epoch; None = the whole train split
    schedule: str = "cosine"  # learning-rate schedule over the run's steps (trainer.SCHEDULES)
    warmup: int = 0  # optimiser steps of linear learning-rate warm-up
    augment: str = "none"  # none | flip | dihedral: the sun does not turn (rsgee.train.data)
    crop: int | None = None  # train on random crops of this size (pixels); None = whole tiles
    train_tiles: int | None = None  # train on only this many train tiles (seeded choice, data.train_subset)
    lr_g: float | None = None
    lr_d: float | None = None
    betas: tuple[float, float] | None = None
    l1_weight: float | None = None
    fm_weight: float | None = None
    vgg_weights: str | None = None
    vgg_weight: float = 10.0
    seed: int = 0
    num_workers: int = 0
    val_figures: int = 4
    checkpoint_every: int | None = None  # also write last.ckpt every N batches
    skip_nonfinite: bool = False  # skip batches with a non-finite loss instead of stopping
    clip_grad_norm: float | None = None  # clip each optimiser's gradient norm to this
    start_at_band_means: bool = True  # output bias so that an untrained generator paints the train band means
    ema_decay: float = 0.999  # EMA of the generator weights (warmed up: min(decay, (1+n)/(10+n))); 0 = none
    val_every: int = 1  # validate every N epochs
    val_every_steps: int | None = None  # or every N optimiser steps (with steps)
    overrides: dict = field(default_factory=dict)  # architecture overrides (ngf, …)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise RsgeeError(f"unknown fusion model '{self.model}'; choose {', '.join(MODELS)}")
        self.sources = parse_sources(self.sources)
        check_options(self)
        check_augmentation(self.augment)
        check_number("--val-figures", self.val_figures, 0, whole=True)
        check_number("--val-every", self.val_every, 1, whole=True)
        if self.val_every_steps is not None and (self.val_every_steps < 1 or not self.steps):
            raise RsgeeError(f"--val-every-steps {self.val_every_steps}: give a positive number, with --steps "
                             "(a run of --epochs validates every --val-every epochs)")
        self.recipe = self.recipe or DEFAULT_RECIPE
        if self.recipe not in RECIPES:
            raise RsgeeError(f"unknown recipe '{self.recipe}'; choose {', '.join(RECIPES)}")
        for key, value in RECIPES[self.recipe].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        for option, value, choices in (("--gan-loss", self.gan_loss, GAN_LOSSES),
                                       ("--discriminator", self.discriminator, DISCRIMINATORS)):
            if value not in choices:
                raise RsgeeError(f"{option} {value!r}: choose {', '.join(choices)}")
        for option, value in (("--lr-g", self.lr_g), ("--lr-d", self.lr_d)):
            check_number(option, value, 0.0, above=True)
        for option, value in (("--l1-weight", self.l1_weight), ("--fm-weight", self.fm_weight),
                              ("--vgg-weight", self.vgg_weight)):
            check_number(option, value, 0.0)
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise RsgeeError(f"--betas {self.betas!r}: give two numbers like 0.5,0.999")
        for beta in self.betas:
            check_number("--betas", beta, 0.0, 1.0, below=True)
        self.betas = tuple(float(b) for b in self.betas)  # torch 2.13 Adam wants both floats
        check_number("--ema-decay", self.ema_decay, 0.0, 1.0, below=True)
        if self.fm_weight and self.discriminator != "multiscale":
            raise RsgeeError(f"feature matching (--fm-weight {self.fm_weight:g}) needs the multiscale discriminator, "
                             f"whose intermediate features it compares; the {self.discriminator} discriminator returns "
                             "only patch logits — use --discriminator multiscale or --fm-weight 0")

    @classmethod
    def from_dict(cls, data: dict) -> "FusionConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


# -- segmentation ---------------------------------------------------------------------------------

def parse_mix(text: str) -> tuple[int, int]:
    """'1:1' → (1, 1); a, b non-negative integers, not both zero."""
    try:
        a, b = (int(p) for p in text.split(":"))
    except ValueError:
        raise RsgeeError(f"--mix '{text}': expected REAL:GENERATED with whole numbers, e.g. 1:1 or 1:0") from None
    if a < 0 or b < 0 or a + b == 0:
        raise RsgeeError(f"--mix '{text}': use non-negative numbers, not both zero")
    return a, b


@dataclass
class SegmentationConfig:
    """Everything that defines a segmentation run (stored in run.json)."""

    mix: tuple[int, int] = (1, 0)
    size: str = "small"
    batch_size: int = 4
    epochs: int | None = None  # passes over the (mixed) train epoch (DEFAULT_EPOCHS when steps is None too)
    steps: int | None = None  # or exactly this many optimiser steps
    steps_per_epoch: int | None = None
    schedule: str = "constant"  # learning-rate schedule over the run's steps (trainer.SCHEDULES)
    warmup: int = 0  # optimiser steps of linear learning-rate warm-up
    augment: str = "dihedral"  # none | flip | dihedral (segmentation reads only Sentinel-2)
    crop: int | None = None
    # only this many train tiles with their real image (seeded, data.train_subset); a mix with generated
    # tiles then takes the other tiles' generated twins (the low-label protocol)
    train_tiles: int | None = None
    val_every_steps: int | None = None  # validate every N optimiser steps instead of every epoch
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    num_workers: int = 0
    checkpoint_every: int | None = None  # also write last.ckpt every N batches
    skip_nonfinite: bool = False  # skip batches with a non-finite loss instead of stopping
    clip_grad_norm: float | None = None  # clip the gradient norm to this

    def __post_init__(self) -> None:
        if not isinstance(self.mix, (tuple, list)) or len(self.mix) != 2:
            raise RsgeeError(f"--mix {self.mix!r}: give REAL:GENERATED, two whole numbers such as 1:1 or 1:0")
        for share in self.mix:
            check_number("--mix", share, 0, whole=True)
        if not any(self.mix):
            raise RsgeeError("--mix 0:0: give real or generated tiles a share, e.g. 1:0 or 1:1")
        self.mix = tuple(int(v) for v in self.mix)
        check_options(self)
        check_augmentation(self.augment)
        check_number("--lr", self.lr, 0.0, above=True)
        check_number("--weight-decay", self.weight_decay, 0.0)
        if self.val_every_steps is not None and (self.val_every_steps < 1 or not self.steps):
            raise RsgeeError(f"--val-every-steps {self.val_every_steps}: give a positive number, with --steps "
                             "(a run of --epochs validates after every epoch)")

    @property
    def mix_label(self) -> str:
        a, b = self.mix
        return "real only (True Data)" if b == 0 else ("generated only" if a == 0 else f"real:generated {a}:{b}")
