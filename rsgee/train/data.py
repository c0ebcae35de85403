"""Archive tiles as model inputs: samples, augmentation and the Lightning data module.

Model inputs are normalised as DESIGN.md says by :mod:`rsgee.models.normalisation` (shared with
prediction, which must not need Lightning). Samples are read from the archive's packed cache (built or
rebuilt on first use), never from the GeoTIFFs one by one.

Augmentation (:data:`AUGMENTATIONS`) draws one flip/rotation per sample, applied identically to every
source: ``dihedral`` any of the eight, ``flip`` one of the four that mirror east–west and/or north–south,
``none`` keeps the tile as it lies. Aspect is a compass direction, so its sine and cosine turn and mirror
with the pixels (a north-facing slope rotated a quarter turn anticlockwise faces west). But the sun does
not turn: in a scene (real Sentinel-2 as the synthetic source) the slopes that face it are bright, and
after any flip or rotation other slopes face it, so the aspect → illumination relation, the strongest
signal terrain carries for Sentinel-2, no longer holds. Fusion therefore trains with ``none`` by default;
segmentation, which reads only Sentinel-2, keeps ``dihedral``. Hillshade keeps its 315° sun after a
transform (it then reads as lit from another azimuth), and SAR's look direction is not corrected either.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from rsgee.errors import RsgeeError
from rsgee.grid import TILE_PX
from rsgee.models.normalisation import S2_SCALE, lulc_to_model, s1_to_model, s2_to_model, terrain_to_model
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.cache import PackedSplit, open_split
from rsgee.train.distributed import EvenShards, ResumableLoader, ShuffledSampler


# -- augmentation ------------------------------------------------------------------------------

#: Augmentations a training run can draw from: none, the four flips (identity, mirror E–W, mirror N–S,
#: half turn) or all eight flips and rotations.
AUGMENTATIONS = ("none", "flip", "dihedral")


def check_augmentation(name: str) -> str:
    """Return ``name`` if it is one of :data:`AUGMENTATIONS`, else a one-line error."""
    if name not in AUGMENTATIONS:
        raise RsgeeError(f"--augment {name!r}: choose {', '.join(AUGMENTATIONS)}")
    return name


def draw_transform(name: str, digest: bytes) -> tuple[int, bool] | None:
    """The (quarter turns, mirror) a sample gets under augmentation ``name``, from its seeded digest."""
    if name == "none":
        return None
    turns = digest[0] % 4 if name == "dihedral" else 2 * (digest[0] % 2)  # flips: 0 or a half turn, ± mirror
    return turns, bool(digest[1] & 1)

def dihedral(array: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Rotate (C, H, W) by k quarter turns anticlockwise (as displayed, north up), then mirror east–west."""
    out = torch.rot90(array, k, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if flip else out


def rotate_aspect(sin: torch.Tensor, cos: torch.Tensor, k: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The aspect direction (east = sin, north = cos) after :func:`dihedral` with the same k and flip."""
    for _ in range(k % 4):  # a quarter turn anticlockwise maps east → north, north → west
        sin, cos = -cos, sin
    if flip:
        sin = -sin
    return sin, cos


def augment(sample: dict, k: int, flip: bool) -> dict:
    """Apply one dihedral transform to every raster of a sample, keeping aspect consistent."""
    cond = {name: dihedral(x, k, flip) for name, x in sample["cond"].items()}
    if "terrain" in cond:
        t = cond["terrain"]
        sin, cos = rotate_aspect(t[2], t[3], k, flip)
        cond["terrain"] = torch.cat([t[:2], sin[None], cos[None], t[4:]])
    out = dict(sample, cond=cond)
    for key in ("target", "valid", "labels"):
        if key in sample:
            out[key] = dihedral(sample[key], k, flip)
    return out


def crop(sample: dict, row: int, col: int, size: int) -> dict:
    """The same square window of every raster of a sample."""
    window = (..., slice(row, row + size), slice(col, col + size))
    out = dict(sample, cond={name: x[window] for name, x in sample["cond"].items()})
    for key in ("target", "valid", "labels"):
        if key in sample:
            out[key] = sample[key][window]
    return out


# -- datasets ----------------------------------------------------------------------------------

def train_subset(tile_ids: Sequence[str], count: int | None, seed: int) -> list[int]:
    """Positions of ``count`` tiles of a split chosen by ``seed`` (all of them, in order, for None).

    The choice hashes each tile id with the seed, so it depends on neither the order nor the other tiles:
    a generator and a segmenter given the same count and seed train on the same tiles (the low-label
    protocol: only these tiles' real Sentinel-2 is used).
    """
    if count is None:
        return list(range(len(tile_ids)))
    if not 1 <= count <= len(tile_ids):
        raise RsgeeError(f"--train-tiles {count}: the train split has {len(tile_ids)} tiles; use 1…{len(tile_ids)}")
    ranked = sorted(range(len(tile_ids)), key=lambda i: hashlib.sha256(f"subset:{seed}:{tile_ids[i]}".encode()).digest())
    return sorted(ranked[:count])


def archive_normalisation(archive: Archive) -> dict:
    """The statistics the inputs are normalised with (from the train split's stats.json)."""
    stats = archive.stats
    dem = stats["sources"]["terrain"]["dem"]
    if not dem.get("count"):
        raise RsgeeError(f"{archive.root}: the train split is empty; add AOIs or change --split-ratios")
    s2 = stats["sources"]["s2"]
    return {"dem_mean": float(dem["mean"]), "dem_std": float(dem["std"]),
            "s1_bands": list(archive.sources()["s1"].band_names),  # stats.json keys are sorted: not the band order
            "s2_mean": [float(s2[b]["mean"]) / S2_SCALE for b in archive.sources()["s2"].band_names]}


class FusionSamples(Dataset):
    """Tiles of one split as normalised model inputs: ``{"cond": {source: tensor}, "target", "valid"}``.

    Args:
        archive: the archive to read.
        split: "train", "val" or "test".
        sources: conditioning sources (subset of lulc, s1, terrain).
        normalisation: from :func:`archive_normalisation` (always the train split's statistics).
        augment: one of :data:`AUGMENTATIONS`, drawn per sample (training; ``"none"`` for evaluation).
        crop: random square crops of this many pixels (a multiple of 32), e.g. to make CPU runs
            affordable (training); None = whole 256×256 tiles.
        seed: makes crops and augmentation reproducible, combined with the epoch: items are indexed by
            ``i`` or by the ``(i, epoch)`` pairs an :class:`~rsgee.train.distributed.EpochSampler` yields.
        tiles: positions in the split of the only tiles to serve (:func:`train_subset`); None = all.
    """

    def __init__(self, archive: Archive, split: str, sources: Sequence[str], normalisation: dict, *,
                 augment: str = "none", crop: int | None = None, seed: int = 0, progress: bool = False,
                 tiles: Sequence[int] | None = None):
        if crop is not None and (crop % 32 or not 32 <= crop <= 256):
            raise RsgeeError(f"--crop {crop}: use a multiple of 32 between 32 and 256 pixels")
        self.packed: PackedSplit = open_split(archive, split, progress=progress)
        self.positions = list(range(len(self.packed))) if tiles is None else list(tiles)
        self.sources = tuple(sources)
        self.norm = normalisation
        self.augment = check_augmentation(augment)
        self.crop = crop
        self.seed = seed

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        item, epoch = key if isinstance(key, tuple) else (key, 0)
        i = self.positions[item]
        # crop first, then normalise only the pixels and sources used (random crops commute with the
        # dihedral transforms, so drawing the window before rotating changes nothing but the cost)
        digest = hashlib.sha256(f"{self.seed}:{epoch}:{i}".encode()).digest()
        window = None
        if self.crop and self.crop < TILE_PX:
            room = TILE_PX - self.crop
            row = int.from_bytes(digest[2:4], "big") % (room + 1)
            col = int.from_bytes(digest[4:6], "big") % (room + 1)
            window = (slice(row, row + self.crop), slice(col, col + self.crop))
        raw = self.packed.read(i, ("s2", *self.sources), window)
        target, valid = s2_to_model(raw["s2"])
        cond = {}
        if "lulc" in self.sources:
            cond["lulc"] = torch.from_numpy(lulc_to_model(raw["lulc"]))
        if "s1" in self.sources:
            cond["s1"] = torch.from_numpy(s1_to_model(raw["s1"], self.norm["s1_bands"]))
        if "terrain" in self.sources:
            cond["terrain"] = torch.from_numpy(
                terrain_to_model(raw["terrain"], self.norm["dem_mean"], self.norm["dem_std"]))
        sample = {"cond": cond, "target": torch.from_numpy(target), "valid": torch.from_numpy(valid),
                  "index": i, "tile_id": self.packed.tile_ids[i]}
        transform = draw_transform(self.augment, digest)
        if transform:
            sample = augment(sample, *transform)
        return sample


class FusionData(L.LightningDataModule):
    """Train/val/test loaders over an archive for the fusion models."""

    def __init__(self, archive: str | Path, sources: Sequence[str], *, batch_size: int = 4, num_workers: int = 0,
                 crop: int | None = None, augment: str = "none", seed: int = 0, train_tiles: int | None = None,
                 progress: bool = True):
        super().__init__()
        self.archive = Archive(archive)
        self.sources = tuple(sources)
        self.crop = crop
        self.augment = check_augmentation(augment)
        self.train_tiles = train_tiles
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.progress = progress
        self.norm: dict | None = None
        self.splits: dict[str, FusionSamples] = {}

    def prepare_data(self) -> None:  # rank 0 only: (re)build the packed caches
        for split in ("train", "val", "test"):
            open_split(self.archive, split, progress=self.progress)

    def setup(self, stage: str | None = None) -> None:
        self.archive.read_meta()
        self.norm = archive_normalisation(self.archive)
        for split in ("train", "val", "test"):
            if split not in self.splits:
                train = split == "train"
                tiles = None
                if train and self.train_tiles:
                    tiles = train_subset(open_split(self.archive, split, progress=False).tile_ids, self.train_tiles,
                                         self.seed)
                self.splits[split] = FusionSamples(self.archive, split, self.sources, self.norm,
                                                   augment=self.augment if train else "none",
                                                   crop=self.crop if train else None, seed=self.seed, tiles=tiles)
        for split in ("train", "val", "test"):  # test too: evaluate would fail only after training
            if not len(self.splits[split]):
                raise RsgeeError(f"{self.archive.root}: the {split} split has no tiles; add AOIs, use a smaller "
                                 "--split-block when tiling, or change --split-ratios")

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        """This rank's shard of a seeded per-epoch order of the train split."""
        rank, world = self._ranks()
        train = self.splits["train"]
        sampler = ShuffledSampler(len(train), seed=self.seed, rank=rank, world_size=world)
        return ResumableLoader(train, sampler, batch_size=self.batch_size, drop_last=len(sampler) > self.batch_size,
                               num_workers=self.num_workers, collate_fn=collate)

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(EvenShards(self.splits[split], *self._ranks()), batch_size=self.batch_size,
                          num_workers=self.num_workers, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


def collate(samples: list[dict]) -> dict:
    """Stack tensors (nested per source) and flags (``counted``), keep ids as lists."""
    out = {"cond": {k: torch.stack([s["cond"][k] for s in samples]) for k in samples[0]["cond"]}}
    for key, value in samples[0].items():
        if key == "cond":
            continue
        if torch.is_tensor(value):
            out[key] = torch.stack([s[key] for s in samples])
        elif isinstance(value, bool):
            out[key] = torch.tensor([s[key] for s in samples])
        else:
            out[key] = [s[key] for s in samples]
    return out


def condition_tensor(cond: dict[str, torch.Tensor], sources: Sequence[str]) -> torch.Tensor:
    """Concatenate the enabled sources in canonical order (the discriminator's and pix2pix's input)."""
    return torch.cat([cond[s] for s in sources], dim=1)

