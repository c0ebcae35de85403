"""Segmentation training: RS-UNet on real Sentinel-2 tiles, or on a mix of real and generated ones.

``--mix a:b`` composes every training epoch of real and generated (``ARCHIVE/gen/``) train tiles in
exactly that ratio: with N real and G generated tiles, an epoch holds a·k real and b·k generated
ones, k = min(N // a, G // b) (lowered, on several devices, until the epoch splits evenly over
them), drawn afresh (seeded) each epoch; the ratio holds over all ranks together. ``1:0`` is the paper's "True Data"
baseline, ``1:1`` its "Mix Data" (every real tile and its generated twin). Validation and test use
real tiles only; generated tiles never enter them. Each tile is paired with its own land-cover map;
pixels whose label is nodata (255) or whose real Sentinel-2 is nodata are ignored by the loss.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MeanMetric

from rsgee.configs import SegmentationConfig, check_augmentation
from rsgee.errors import RsgeeError
from rsgee.models.factory import NUM_CLASSES, build_segmenter
from rsgee.models.layers import count_parameters
from rsgee.models.normalisation import S2_SCALE
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.cache import open_split
from rsgee.train.data import augment, crop, draw_transform, train_subset
from rsgee.train.generate import read_generated
from rsgee.train.metrics import SegmentationMetrics
from rsgee.train.distributed import EpochSampler, EvenShards, ResumableLoader
from rsgee.train.trainer import (GuardedTask, batches_per_epoch, checkpoint_of, fit, load_checkpoint,
                                 make_trainer, planned_steps, read_run, resolve_launch, restore_task, run_inputs,
                                 scheduled, seed_everything, start_run)


IGNORE = 255


def epoch_counts(mix: tuple[int, int], n_real: int, n_generated: int, world_size: int = 1) -> tuple[int, int]:
    """How many real and generated tiles one epoch holds: (a·k, b·k) with the largest k available.

    A true mix on several ranks lowers k until the epoch, (a + b)·k tiles, divides evenly over them:
    padding would repeat tiles of one kind and break the ratio. A single kind (1:0, 0:1) is padded
    instead, so that every tile is seen each epoch.
    """
    a, b = mix
    k = min(n_real // a if a else np.inf, n_generated // b if b else np.inf)
    k = int(k) if np.isfinite(k) else 0
    while a and b and k >= 1 and ((a + b) * k) % world_size:
        k -= 1
    if k < 1:
        raise RsgeeError(f"--mix {a}:{b} on {world_size} device(s) needs at least {a} real and {b} generated train "
                         f"tiles per device; there are {n_real} and {n_generated}")
    return a * k, b * k


def image_stats(archive: Archive) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of train-split reflectance (stats.json), for standardising images."""
    stats = archive.stats["sources"]["s2"]
    bands = archive.sources()["s2"].band_names
    mean = np.array([stats[b]["mean"] for b in bands], np.float32) / S2_SCALE
    std = np.array([stats[b]["std"] for b in bands], np.float32) / S2_SCALE
    return mean, np.maximum(std, 1e-6)


class SegmentationSamples(Dataset):
    """Real tiles of a split, optionally followed by generated twins of train tiles.

    Index ``i < n_real`` is the i-th real tile; ``n_real + j`` the j-th generated one. With ``tiles`` (the
    low-label protocol) only those tiles are served with their real image, and the generated twins are those
    of the *other* tiles, whose real Sentinel-2 is never read; without it, every tile is served real and every
    tile's twin generated. A sample is ``{"image": (4, H, W) standardised reflectance, "labels": (H, W) int64
    (255 = ignore), "generated": bool, "tile_id"}``.
    """

    def __init__(self, archive: Archive, split: str, mean: np.ndarray, std: np.ndarray, *,
                 with_generated: bool = False, augment: str = "none", crop: int | None = None, seed: int = 0,
                 progress: bool = False, tiles: Sequence[int] | None = None):
        self.archive = archive
        self.packed = open_split(archive, split, progress=progress)
        everything = range(len(self.packed))
        self.real = list(everything) if tiles is None else list(tiles)
        twins = everything if tiles is None else sorted(set(everything) - set(tiles))
        self.generated = list(twins) if with_generated else []
        self.mean, self.std = mean[:, None, None], std[:, None, None]
        self.augment, self.crop, self.seed = check_augmentation(augment), crop, seed

    @property
    def n_real(self) -> int:
        return len(self.real)

    def __len__(self) -> int:
        return self.n_real + len(self.generated)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        generated = i >= self.n_real
        position = self.generated[i - self.n_real] if generated else self.real[i]
        raw = self.packed.read(position, ("s2", "lulc"))  # the only sources segmentation reads
        labels = raw["lulc"][0].astype(np.int64)
        labels[labels >= NUM_CLASSES] = IGNORE
        if generated:
            s2 = read_generated(self.archive, self.packed.tile_ids[position])
        else:
            s2 = raw["s2"]
            labels[(s2 == 0).any(axis=0)] = IGNORE  # no optical observation: nothing to learn from
        image = (np.clip(s2.astype(np.float32) / S2_SCALE, 0, 1) - self.mean) / self.std
        sample = {"cond": {}, "target": torch.from_numpy(image.astype(np.float32)),
                  "labels": torch.from_numpy(labels)[None], "generated": generated,
                  "tile_id": self.packed.tile_ids[position]}
        digest = hashlib.sha256(f"seg:{self.seed}:{epoch}:{i}".encode()).digest()
        transform = draw_transform(self.augment, digest)
        if transform:
            sample = augment(sample, *transform)
        if self.crop and self.crop < image.shape[-1]:
            room = image.shape[-1] - self.crop
            sample = crop(sample, int.from_bytes(digest[2:4], "big") % (room + 1),
                          int.from_bytes(digest[4:6], "big") % (room + 1), self.crop)
        return {"image": sample["target"], "labels": sample["labels"][0], "generated": sample["generated"],
                "tile_id": sample["tile_id"]}


class MixSampler(EpochSampler):
    """Each epoch: a·k real and b·k generated indices, chosen and shuffled with a per-epoch seed.

    The order is drawn for the whole epoch and then cut into rank shards, so the ratio is exact over
    all ranks together (a true mix never needs padding: its length divides by the ranks).
    """

    def __init__(self, n_real: int, n_generated: int, mix: tuple[int, int], seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.n_real, self.n_generated, self.mix = n_real, n_generated, mix
        self.real_count, self.generated_count = epoch_counts(mix, n_real, n_generated, world_size)
        super().__init__(self.real_count + self.generated_count, seed, rank, world_size)

    def epoch_order(self, epoch: int) -> list[int]:
        rng = random.Random(f"mix:{self.seed}:{epoch}")
        real = rng.sample(range(self.n_real), self.real_count)
        generated = [self.n_real + j for j in rng.sample(range(self.n_generated), self.generated_count)]
        order = real + generated
        rng.shuffle(order)
        return order


def counted_labels(batch: dict) -> torch.Tensor:
    """The batch's labels with the padding repeats of an evaluation shard (``counted`` False) ignored."""
    labels = batch["labels"]
    if "counted" in batch and not batch["counted"].all():
        labels = torch.where(batch["counted"].to(labels.device)[:, None, None], labels, IGNORE)
    return labels


def collate_segmentation(samples: list[dict]) -> dict:
    batch = {"image": torch.stack([s["image"] for s in samples]), "labels": torch.stack([s["labels"] for s in samples]),
             "generated": torch.tensor([s["generated"] for s in samples]), "tile_id": [s["tile_id"] for s in samples]}
    if "counted" in samples[0]:
        batch["counted"] = torch.tensor([s["counted"] for s in samples])
    return batch


class SegmentationTask(GuardedTask):
    """RS-UNet with cross-entropy (255 ignored), Adam, and dataset-level mIoU / accuracy."""

    def __init__(self, config: dict, in_channels: int = 4, planned_steps: int | None = None):
        super().__init__(planned_steps)
        self.save_hyperparameters()
        self.config = SegmentationConfig(**{k: v for k, v in config.items() if k in SegmentationConfig.__dataclass_fields__})
        self.model = build_segmenter("rs-unet", in_channels, NUM_CLASSES, self.config.size)
        self.val_metrics = SegmentationMetrics(NUM_CLASSES, ignore_index=IGNORE)
        self.val_loss = MeanMetric()
        self.test_metrics = SegmentationMetrics(NUM_CLASSES, ignore_index=IGNORE)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        self.start_step()
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["labels"], ignore_index=IGNORE)
        if not self.optimise(self.optimizers(), loss, {"loss": loss}, "RS-UNet"):
            return
        self.log_train({"train/loss": loss, "train/generated_share": batch["generated"].float().mean()},
                       batch_size=len(logits))
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, logger=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        labels = counted_labels(batch)
        scored = int((labels != IGNORE).sum())
        if scored:  # a batch of padding or of unlabelled pixels has no loss
            self.val_loss.update(F.cross_entropy(logits, labels, ignore_index=IGNORE), weight=scored)
        self.val_metrics.update(logits.argmax(1), labels)

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metrics.compute()
        self.log_dict({"val/miou": scores["miou"], "val/accuracy": scores["accuracy"]}, prog_bar=True, sync_dist=True)
        self.log_position()
        self.log("val/loss", self.val_loss.compute(), sync_dist=True)  # pixel mean over the whole split
        self.val_loss.reset()
        self.val_metrics.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_metrics.update(self(batch["image"]).argmax(1), counted_labels(batch))

    def configure_optimizers(self):
        return scheduled(torch.optim.Adam(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay))


class SegmentationData(L.LightningDataModule):
    """Mixed training set (MixSampler), real-only validation and test sets, sharded per rank."""

    def __init__(self, archive: str | Path, config: SegmentationConfig, progress: bool = True):
        super().__init__()
        self.archive, self.config, self.progress = Archive(archive), config, progress
        self.splits: dict[str, SegmentationSamples] = {}

    def prepare_data(self) -> None:
        for split in ("train", "val", "test"):
            open_split(self.archive, split, progress=self.progress)

    def setup(self, stage: str | None = None) -> None:
        c = self.config
        mean, std = image_stats(self.archive)
        needs_generated = c.mix[1] > 0
        if needs_generated:
            check_generated(self.archive)
        if not self.splits:
            tiles = None
            if c.train_tiles:
                tiles = train_subset(open_split(self.archive, "train", progress=False).tile_ids, c.train_tiles, c.seed)
            self.splits["train"] = SegmentationSamples(self.archive, "train", mean, std, with_generated=needs_generated,
                                                       augment=c.augment, crop=c.crop, seed=c.seed, tiles=tiles)
            for split in ("val", "test"):
                self.splits[split] = SegmentationSamples(self.archive, split, mean, std)
        for split in ("val", "test"):  # test too: evaluate would fail only after training
            if not len(self.splits[split]):
                raise RsgeeError(f"{self.archive.root}: the {split} split has no tiles; add AOIs, use a smaller "
                                 "--split-block when tiling, or change --split-ratios")

    def sampler(self, rank: int = 0, world_size: int = 1) -> MixSampler:
        train = self.splits["train"]
        return MixSampler(train.n_real, len(train.generated), self.config.mix, self.config.seed, rank, world_size)

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(self.splits["train"], self.sampler(*self._ranks()), batch_size=self.config.batch_size,
                               num_workers=self.config.num_workers, collate_fn=collate_segmentation, drop_last=False)

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(EvenShards(self.splits[split], *self._ranks()), batch_size=self.config.batch_size,
                          num_workers=self.config.num_workers, collate_fn=collate_segmentation)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


def check_generated(archive: Archive) -> dict:
    """The generation record, after checking every train tile has its generated twin."""
    if not archive.generated_meta_path.exists():
        raise RsgeeError(f"{archive.root}/gen is missing: this --mix needs generated tiles; run "
                         f"`rsgee generate RUN {archive.root}` with a trained fusion run first")
    missing = [t["tile_id"] for t in archive.tiles("train") if not archive.generated_path(t["tile_id"]).exists()]
    if missing:
        raise RsgeeError(f"{len(missing)} train tile(s) have no generated twin in {archive.generated_dir} "
                         f"(e.g. {missing[0]}); re-run `rsgee generate`")
    return archive.generated_record()


def train_segmentation(archive: str | Path, run_dir: str | Path, config: SegmentationConfig, *, resume: bool = False,
                       accelerator: str = "auto", devices: int | str = "auto", num_nodes: int | str = "auto",
                       precision: str | None = None, progress: bool = True, loggers: Sequence[str] = ("csv",),
                       score: Callable[[Path], dict] | None = None) -> Path:
    """Train (or resume) RS-UNet on the archive with the configured real:generated mix.

    ``config.batch_size`` is per device; the mix is exact per epoch over all devices together. ``loggers``
    and ``score``: :func:`~rsgee.train.trainer.make_loggers`, :func:`~rsgee.train.trainer.log_summary`.
    """
    run_dir, archive = Path(run_dir), Archive(archive)
    archive.read_meta()
    launch = resolve_launch(accelerator, devices, num_nodes)
    ckpt = start_run(run_dir, "segmentation", asdict(config), resume=resume)
    seed_everything(config.seed)
    data = SegmentationData(archive.root, config, progress=progress)
    data.prepare_data()
    data.setup("fit")
    sampler = data.sampler(0, launch.world_size)
    generated = check_generated(archive) if config.mix[1] else None
    steps = planned_steps(config, batches_per_epoch(len(sampler), config.batch_size, config.steps_per_epoch,
                                                    drop_last=False))
    task = SegmentationTask(asdict(config), in_channels=len(archive.sources()["s2"].bands), planned_steps=steps)
    mean, std = image_stats(archive)
    trainer = make_trainer(run_dir, kind="segmentation", max_epochs=config.epochs or -1, launch=launch,
                           limit_train_batches=config.steps_per_epoch, monitor="val/miou", mode="max",
                           precision=precision, progress=progress, checkpoint_every=config.checkpoint_every,
                           val_every_steps=config.val_every_steps, loggers=loggers)
    info = {"kind": "segmentation", "archive": str(archive.root.resolve()), "config": asdict(config),
            "mix_label": config.mix_label, "generated_by": generated,
            "epoch_tiles": {"real": sampler.real_count, "generated": sampler.generated_count}, "planned_steps": steps,
            "parameters": {"rs-unet": count_parameters(task.model)}, **run_inputs(archive),
            "normalisation": {"s2_mean": [float(v) for v in mean], "s2_std": [float(v) for v in std]}}
    return fit(run_dir, task, data, trainer, ckpt, info, score)


def load_segmentation(run_dir: str | Path, which: str = "best") -> SegmentationTask:
    info = read_run(run_dir)
    if info.get("kind") != "segmentation":
        raise RsgeeError(f"{run_dir} is not a segmentation run")
    path = checkpoint_of(run_dir, which)
    return restore_task(SegmentationTask, load_checkpoint(path, "segmentation"), path).eval()


def real_test_samples(archive: Archive, split: str = "test") -> SegmentationSamples:
    mean, std = image_stats(archive)
    return SegmentationSamples(archive, split, mean, std)
