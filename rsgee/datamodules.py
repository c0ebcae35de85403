"""A Lightning data module over an archive's three splits, in torchgeo's batch convention.

Kept apart from :mod:`rsgee.datasets` (as torchgeo keeps ``datamodules`` apart from ``datasets``) so that
a plain torch user of :class:`~rsgee.datasets.ArchiveDataset` needs no Lightning. Batches are
:func:`rsgee.datasets.collate` of the samples: ``image`` (B, C, 256, 256), ``mask`` (B, 256, 256), and
``crs``, ``bounds``, ``tile_id`` as lists, which is what torchgeo's trainers
(``SemanticSegmentationTask``) read.
"""

from __future__ import annotations

import os
from typing import Sequence

from rsgee.optional import require

require("train")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from rsgee.datasets import ArchiveDataset, collate  # noqa: E402
from rsgee.errors import RsgeeError  # noqa: E402
from rsgee.preprocess.archive import Archive  # noqa: E402
from rsgee.preprocess.cache import update_caches  # noqa: E402
from rsgee.preprocess.split import SPLITS  # noqa: E402

#: The splits each Lightning stage reads.
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


class ArchiveDataModule(L.LightningDataModule):
    """Train, val and test loaders of :class:`~rsgee.datasets.ArchiveDataset` samples.

    The train loader shuffles (seeded), val and test keep the split's order; under several devices Lightning
    shares them out. The packed caches are built (or found current) in :meth:`prepare_data`, once per machine.

    Args:
        archive: the archive folder.
        sources: input sources stacked into ``image`` (:attr:`ArchiveDataset.all_sources`).
        batch_size: samples per batch (per device).
        num_workers: loader worker processes (0 reads in the training process).
        normalisation: ``"rsgee"`` (the default here: batches a model can take, without NaN) or ``"raw"``
            (the archive's units; see :class:`~rsgee.datasets.ArchiveDataset`).
        seed: the train loader's shuffling.
        progress: show a progress bar while caches are built.

    Raises:
        RsgeeError: in :meth:`setup`, when a split the stage reads holds no tiles (and as the dataset does
            for an unknown source or normalisation).
    """

    def __init__(self, archive: str | os.PathLike, sources: str | Sequence[str] = ArchiveDataset.all_sources, *,
                 batch_size: int = 4, num_workers: int = 0, normalisation: str = "rsgee", seed: int = 0,
                 progress: bool = True):
        super().__init__()
        self.archive = Archive(archive)
        self.sources = sources
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.normalisation = normalisation
        self.seed = seed
        self.progress = progress
        self.datasets: dict[str, ArchiveDataset] = {}

    def prepare_data(self) -> None:
        """Build the packed caches that are missing or stale (first process of each machine only)."""
        self.archive.read_meta()
        update_caches(self.archive, SPLITS, progress=self.progress)

    def setup(self, stage: str) -> None:
        """Open the splits ``stage`` reads; a split without tiles is a one-line error."""
        for split in STAGE_SPLITS.get(stage, ()):
            if split not in self.datasets:
                self.datasets[split] = ArchiveDataset(self.archive, split, self.sources,
                                                      normalisation=self.normalisation, progress=self.progress)
            if not len(self.datasets[split]):
                raise RsgeeError(f"{self.archive.root}: the {split} split has no tiles; add AOIs, use a smaller "
                                 "--split-block when tiling, or change --split-ratios")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup("fit" if split == "train" else "validate" if split == "val" else "test")
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle, generator=generator,
                          num_workers=self.num_workers, collate_fn=collate, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
