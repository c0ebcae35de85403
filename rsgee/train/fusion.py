"""Fusion training: RS-SPADE, pix2pix or the SPADE decoder generating Sentinel-2 from land cover, SAR and terrain.

One GAN iteration per batch under Lightning's manual optimisation: a discriminator step on real and
generated images (conditioned on the inputs), then a generator step. The generator (architecture) and
the recipe (GAN loss, loss weights, optimiser, discriminator) are separate choices, so that an
architecture comparison can hold the recipe fixed: any generator trains with any of :data:`RECIPES`,
and every part of a recipe can be overridden. A VGG perceptual loss is added only when a local
weights file is given.

An exponential moving average (EMA) of the generator's weights is kept beside the trained ones (GAN
generators' raw weights oscillate with the discriminator; the average is usually the better image
model), and both are scored. Validation computes PSNR, SSIM and SAM on reflectance on whole tiles
(``val/psnr``, the monitored metric, as the test tables are) for the raw and the EMA weights, and, when
training on crops (of a size that divides the tile), also on the tiles cut into crop-size windows and stitched back (``val/psnr_crop``):
a generator whose output depends on its input size shows the gap there. It writes a PNG grid.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from rsgee.configs import WEIGHTS, FusionConfig
from rsgee.errors import RsgeeError
from rsgee.grid import TILE_PX
from rsgee.models import losses
from rsgee.models.layers import count_parameters
from rsgee.models.factory import build_discriminator, build_generator, discriminator_in_channels
from rsgee.models.normalisation import model_to_reflectance
from rsgee.preprocess.archive import Archive
from rsgee.train.data import FusionData, condition_tensor
from rsgee.train.figures import fusion_grid
from rsgee.train.metrics import FusionMetrics
from rsgee.train.trainer import (GuardedTask, batches_per_epoch, checkpoint_of, fit, load_checkpoint,
                                 make_trainer, planned_steps, read_run, resolve_launch, restore_task, run_inputs,
                                 scheduled, seed_everything, start_run)

class FusionTask(GuardedTask):
    """Generator + conditional discriminator trained as a GAN (manual optimisation)."""

    def __init__(self, config: dict, normalisation: dict | None = None, planned_steps: int | None = None):
        super().__init__(planned_steps)
        self.save_hyperparameters()
        self.config = FusionConfig.from_dict(config)
        self.norm = normalisation
        c = self.config
        self.generator = build_generator(c.model, c.sources, c.size, **c.overrides)
        if c.start_at_band_means and normalisation and "s2_mean" in normalisation:
            start_at(self.generator, normalisation["s2_mean"])
        self.generator_ema = generator_average(self.generator, c.ema_decay) if c.ema_decay else None
        self.discriminator = build_discriminator(c.discriminator, discriminator_in_channels(c.sources), c.size)
        self.adversarial = losses.AdversarialLoss(c.gan_loss)
        self.vgg = losses.VGGPerceptualLoss.from_file(c.vgg_weights) if c.vgg_weights else None
        self.val_metrics = torch.nn.ModuleDict({name: FusionMetrics() for name in self.validation_variants()})
        self.test_metrics = FusionMetrics()
        self._figure_batch: dict | None = None

    def forward(self, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.generator(cond)

    def validation_variants(self) -> tuple[str, ...]:
        """What validation scores: ``full`` (raw weights, whole tiles), ``ema``, ``crop`` (crop-size windows)."""
        crop = self.config.crop
        windows = bool(crop) and crop < TILE_PX and TILE_PX % crop == 0  # 96-px crops do not tile 256-px tiles
        return ("full",) + (("ema",) if self.config.ema_decay else ()) + (("crop",) if windows else ())

    def use_ema(self) -> None:
        """Generate with the averaged weights from now on (evaluation and generation of a loaded run)."""
        if self.generator_ema is None:
            raise RsgeeError("this run kept no EMA of its generator (trained with --ema-decay 0); use the raw weights")
        self.generator = self.generator_ema.module

    def _discriminate(self, condition: torch.Tensor, fake: torch.Tensor, real: torch.Tensor):
        """Fake and real through D in one batch (same normalisation statistics), split back."""
        both = self.discriminator(torch.cat([torch.cat([condition, fake], 1), torch.cat([condition, real], 1)], 0))
        n = len(fake)
        if torch.is_tensor(both):  # the 70×70 PatchGAN: one map of patch logits
            return both[:n], both[n:]
        return [[f[:n] for f in scale] for scale in both], [[f[n:] for f in scale] for scale in both]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        c = self.config
        self.start_step()
        opt_g, opt_d = self.optimizers()
        cond, real, valid = batch["cond"], batch["target"], batch["valid"]
        condition = condition_tensor(cond, c.sources)
        fake = self(cond)
        real = observed(real, fake, valid)

        fake_d, real_d = self._discriminate(condition, fake.detach(), real)
        d_loss = self.adversarial.discriminator(real_d, fake_d)
        if not self.optimise(opt_d, d_loss, {"d_loss": d_loss}, "discriminator"):
            return

        fake_g, real_g = self._discriminate(condition, fake, real)
        g_gan = self.adversarial.generator(fake_g)
        g_l1 = losses.masked_l1_loss(fake, real, valid)
        g_loss = g_gan + c.l1_weight * g_l1
        logs = {"train/d_loss": d_loss, "train/g_gan": g_gan, "train/g_l1": g_l1}
        if c.fm_weight:
            g_fm = losses.feature_matching_loss(fake_g, real_g, weight=c.fm_weight)  # λ/num_scales inside
            g_loss = g_loss + g_fm
            logs["train/g_fm"] = g_fm
        if self.vgg is not None:
            g_vgg = self.vgg(fake, real)
            g_loss = g_loss + c.vgg_weight * g_vgg
            logs["train/g_vgg"] = g_vgg
        logs["train/g_loss"] = g_loss
        if not self.optimise(opt_g, g_loss, {k.removeprefix("train/"): v for k, v in logs.items() if k != "train/d_loss"},
                             "generator"):
            return
        if self.generator_ema is not None:
            self.generator_ema.update_parameters(self.generator)
        self.log_train(logs, batch_size=len(real))
        self.log("g_l1", g_l1, prog_bar=True, on_step=True, on_epoch=False, logger=False)

    def _score(self, fake: torch.Tensor, batch: dict, metrics: FusionMetrics) -> None:
        counted = batch.get("counted", torch.ones(len(fake), dtype=torch.bool, device=fake.device))
        if counted.any():  # padding repeats of the rank shards are never scored
            metrics.update(model_to_reflectance(fake[counted]), model_to_reflectance(batch["target"][counted]),
                           batch["valid"][counted])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        fake = self(batch["cond"])
        self._score(fake, batch, self.val_metrics["full"])
        if "ema" in self.val_metrics:
            self._score(self.generator_ema(batch["cond"]), batch, self.val_metrics["ema"])
        if "crop" in self.val_metrics:
            self._score(in_windows(self.generator, batch["cond"], self.config.crop), batch, self.val_metrics["crop"])
        if batch_idx == 0 and self.trainer.is_global_zero and self.config.val_figures:
            self._figure_batch = {"fake": fake[: self.config.val_figures].detach().cpu(), "batch": batch}

    def on_validation_epoch_end(self) -> None:
        for variant, metrics in self.val_metrics.items():
            values = metrics.compute()
            suffix = "" if variant == "full" else f"_{variant}"
            self.log_dict({f"val/{k}{suffix}": values[k] for k in ("psnr", "ssim", "sam")}, prog_bar=variant == "full",
                          sync_dist=True)
            metrics.reset()
        self.log_position()
        if self._figure_batch is not None:
            self._write_figure(Path(self.trainer.default_root_dir) / "val" / f"epoch_{self.current_epoch:04d}.png")
        self._figure_batch = None

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._score(self(batch["cond"]), batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        self.log_dict({f"test/{k}": values[k] for k in ("psnr", "ssim", "sam")}, sync_dist=True)
        self.test_metrics.reset()

    def _write_figure(self, path: Path) -> None:
        n = len(self._figure_batch["fake"])
        batch = self._figure_batch["batch"]
        cond = batch["cond"]
        labels = cond["lulc"][:n].argmax(1).cpu().numpy() if "lulc" in cond else None
        sar = cond["s1"][:n, 0].cpu().numpy() if "s1" in cond else None
        fusion_grid(path, generated=model_to_reflectance(self._figure_batch["fake"]).numpy(),
                    real=model_to_reflectance(batch["target"][:n]).cpu().numpy(), labels=labels, sar_vv=sar,
                    titles=batch["tile_id"][:n],
                    suptitle=f"{self.config.model} ({', '.join(self.config.sources)}), epoch {self.current_epoch}")

    def configure_optimizers(self):
        c = self.config
        opt_g = scheduled(torch.optim.Adam(self.generator.parameters(), lr=c.lr_g, betas=c.betas))
        opt_d = scheduled(torch.optim.Adam(self.discriminator.parameters(), lr=c.lr_d, betas=c.betas))
        return [opt_g, opt_d]


def observed(real: torch.Tensor, fake: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The real image as D, feature matching and VGG see it: cloud gaps filled with the (detached) fake.

    Nodata is −1 after normalisation; left in, it tells D which image is real, and feature matching
    would pull the generator towards painting holes.
    """
    return torch.where(valid, real, fake.detach())


def generator_average(generator: torch.nn.Module, decay: float) -> AveragedModel:
    """A frozen copy of ``generator`` whose weights follow theirs as an exponential moving average.

    The decay is warmed up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that a short
    run's average is not dominated by the initial weights. Buffers (BatchNorm statistics, spectral-norm
    vectors) are copied from the trained generator, not averaged, as StyleGAN's EMA does.
    """

    @torch.no_grad()
    def ema(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        weight = 1.0 - min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        torch._foreach_lerp_(averaged, current, weight)

    average = AveragedModel(generator, multi_avg_fn=ema, use_buffers=False)
    return average.requires_grad_(False)


def in_windows(generator: torch.nn.Module, cond: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """Generate each ``size``×``size`` window of the inputs on its own and stitch the outputs back.

    This is how a generator trained on crops sees the world; comparing it with whole-tile output
    shows how much the result depends on the input size (``val/psnr_crop`` against ``val/psnr``).
    """
    first = next(iter(cond.values()))
    batch, _, height, width = first.shape
    if height % size or width % size:
        raise RsgeeError(f"tiles of {height}×{width} px do not split into {size}-px windows")
    rows, cols = height // size, width // size

    def split(x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        return (x.reshape(batch, channels, rows, size, cols, size).permute(0, 2, 4, 1, 3, 5)
                .reshape(batch * rows * cols, channels, size, size))

    out = generator({name: split(x) for name, x in cond.items()})
    bands = out.shape[1]
    return (out.reshape(batch, rows, cols, bands, size, size).permute(0, 3, 1, 4, 2, 5)
            .reshape(batch, bands, height, width))


def start_at(generator: torch.nn.Module, band_means: Sequence[float]) -> None:
    """Set the generator's output bias so that tanh(bias) is the train mean of each band.

    Targets are 2·reflectance − 1, around −0.9 for visible bands: a zero bias starts every pixel at
    reflectance 0.5, in tanh's flat region, and the first hundreds of steps only walk to the means.
    """
    target = torch.as_tensor(band_means, dtype=torch.float32).clamp(1e-3, 1 - 1e-3) * 2 - 1
    with torch.no_grad():
        generator.output_layer().bias.copy_(torch.atanh(target))


def train_fusion(archive: str | Path, run_dir: str | Path, config: FusionConfig, *, resume: bool = False,
                 accelerator: str = "auto", devices: int | str = "auto", num_nodes: int | str = "auto",
                 precision: str | None = None, progress: bool = True, loggers: Sequence[str] = ("csv",),
                 score: Callable[[Path], dict] | None = None) -> Path:
    """Train (or resume) a fusion run; returns the run folder.

    With several devices (or under torchrun/srun) every process calls this; ``config.batch_size`` is
    per device, so an optimiser step sees ``batch_size × devices × nodes`` samples. ``loggers`` and
    ``score``: :func:`~rsgee.train.trainer.make_loggers`, :func:`~rsgee.train.trainer.log_summary`.
    """
    run_dir, archive = Path(run_dir), Archive(archive)
    archive.read_meta()
    launch = resolve_launch(accelerator, devices, num_nodes)
    ckpt = start_run(run_dir, "fusion", asdict(config), resume=resume)
    seed_everything(config.seed)
    data = FusionData(archive.root, config.sources, batch_size=config.batch_size, num_workers=config.num_workers,
                      crop=config.crop, augment=config.augment, seed=config.seed, train_tiles=config.train_tiles,
                      progress=progress)
    data.prepare_data()
    data.setup("fit")
    shard = -(-len(data.splits["train"]) // launch.world_size)  # each device's share of the train split
    steps = planned_steps(config, batches_per_epoch(shard, config.batch_size, config.steps_per_epoch, drop_last=True))
    task = FusionTask(asdict(config), data.norm, steps)
    trainer = make_trainer(run_dir, kind="fusion", max_epochs=config.epochs or -1, launch=launch,
                           limit_train_batches=config.steps_per_epoch, monitor="val/psnr", mode="max",
                           precision=precision, progress=progress, checkpoint_every=config.checkpoint_every,
                           val_every=config.val_every, val_every_steps=config.val_every_steps, loggers=loggers)
    info = {"kind": "fusion", "archive": str(archive.root.resolve()), "config": asdict(config), "normalisation": data.norm,
            "planned_steps": steps, **run_inputs(archive),
            "parameters": {"generator": count_parameters(task.generator),
                           "discriminator": count_parameters(task.discriminator)}}
    return fit(run_dir, task, data, trainer, ckpt, info, score)


#: Which generator weights of a run to use: the trained ones or their moving average.


def load_fusion(run_dir: str | Path, which: str = "best", map_location: str = "cpu", weights: str = "raw") -> FusionTask:
    """The trained task of a run, in eval mode, generating with its ``raw`` or ``ema`` weights."""
    info = read_run(run_dir)
    if info.get("kind") != "fusion":
        raise RsgeeError(f"{run_dir} is not a fusion run")
    if weights not in WEIGHTS:
        raise RsgeeError(f"unknown weights '{weights}'; choose raw or ema")
    path = checkpoint_of(run_dir, which)
    checkpoint = load_checkpoint(path, "fusion", map_location)
    hparams = dict(checkpoint["hyper_parameters"])
    if hparams["config"].get("model") == "rs-spade" and "generator.fc.weight" in checkpoint["state_dict"]:
        # trained before RS-SPADE became the paper's U-Net: the generator is today's spade-decoder
        hparams["config"] = dict(hparams["config"], model="spade-decoder")
    task = restore_task(FusionTask, checkpoint, path, hparams)
    if weights == "ema":
        task.use_ema()
    return task.eval()


def sources_label(sources: Sequence[str]) -> str:
    """'lulc+s1+dem', the paper's way of naming an input set."""
    return "+".join("dem" if s == "terrain" else s for s in sources)


def reflectance_batch(task: FusionTask, cond: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        return model_to_reflectance(task(cond)).cpu().numpy()
