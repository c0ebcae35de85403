"""Spatially blocked train/val/test splits that never move a tile once assigned.

Neighbouring tiles share texture, terrain and often the same field, so a per-tile random split
leaks. Tiles are grouped into blocks — k×k tiles of the lattice, or whole AOIs — and each block's
split is a hash of (seed, block) mapped onto the ratios. AOIs can also be pinned to a split by name
(a held-out region, or splits stratified by terrain): all their tiles go there, whatever the blocks say.
The split of a tile therefore depends on nothing but the tile, its AOI and the split settings: adding
AOIs never moves an existing tile, and the same inputs give the same splits on any machine.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

from rsgee.errors import RsgeeError, check_number
from rsgee.grid import Tile

SPLITS = ("train", "val", "test")


#: The spatial units that go whole into one split: k×k blocks of lattice tiles, or whole AOIs.
SPLIT_UNITS = ("block", "aoi")


@dataclass(frozen=True)
class SplitConfig:
    """How tiles are assigned to splits.

    Attributes:
        ratios: train, val, test weights (normalised; 7:2:1 by default, as in the paper).
        by: "block" (k×k lattice tiles) or "aoi" (whole AOIs).
        block: k, the block size in tiles when ``by == "block"``.
        seed: changes the assignment of blocks to splits.
        pinned: ``(AOI name, split)`` pairs: every tile of a pinned AOI goes to that split.
    """

    ratios: tuple[float, float, float] = (7.0, 2.0, 1.0)
    by: str = "block"
    block: int = 4
    seed: int = 0
    pinned: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        ratios = tuple(self.ratios) if isinstance(self.ratios, (tuple, list)) else ()
        finite = all(isinstance(r, (int, float)) and math.isfinite(r) and r >= 0 for r in ratios)
        if len(ratios) != 3 or not finite or sum(ratios) <= 0:
            raise RsgeeError(f"split ratios {self.ratios!r} must be three finite, non-negative numbers train:val:test, "
                             "not all 0")
        object.__setattr__(self, "ratios", tuple(float(r) for r in ratios))
        if self.by not in SPLIT_UNITS:
            raise RsgeeError(f"split by '{self.by}' is unknown; use 'block' or 'aoi'")
        if not isinstance(self.block, int) or self.block < 1:
            raise RsgeeError(f"split block size {self.block!r} must be at least 1 tile")
        check_number("--split-seed", self.seed, whole=True)
        pinned = tuple(sorted((str(aoi), str(split)) for aoi, split in dict(self.pinned).items()))
        bad = [f"{aoi}={split}" for aoi, split in pinned if split not in SPLITS]
        if bad or len(pinned) != len(self.pinned):
            raise RsgeeError(f"pinned AOIs {', '.join(bad) or 'named twice'}: pin each AOI once, to train, val or test "
                             "(--split-aoi NAME=SPLIT)")
        object.__setattr__(self, "pinned", pinned)  # one canonical order, so equal settings compare equal

    @classmethod
    def parse_ratios(cls, text: str | Sequence[float]) -> tuple[float, ...]:
        """'7:2:1' → (7.0, 2.0, 1.0); a sequence of numbers (the Python API's) is kept, to be checked with
        the rest of the settings."""
        if isinstance(text, (tuple, list)):
            return tuple(text)
        try:
            parts = tuple(float(p) for p in str(text).split(":"))
        except ValueError:
            parts = ()
        if len(parts) != 3:
            raise RsgeeError(f"split ratios '{text}' must look like 7:2:1 (train:val:test)")
        return parts

    @classmethod
    def parse_pins(cls, texts: Sequence[str]) -> tuple[tuple[str, str], ...]:
        """['garda=test', …] → (('garda', 'test'), …)."""
        pins = []
        for text in texts:
            aoi, _, split = text.partition("=")
            if not aoi.strip() or not split.strip():
                raise RsgeeError(f"--split-aoi '{text}': use NAME=SPLIT, e.g. garda=test")
            pins.append((aoi.strip(), split.strip()))
        twice = sorted({aoi for aoi, _ in pins if sum(a == aoi for a, _ in pins) > 1})
        if twice:
            raise RsgeeError(f"--split-aoi pins {', '.join(twice)} more than once; pin each AOI to one split")
        return tuple(pins)

    def to_dict(self) -> dict:
        out = {"ratios": list(self.ratios), "by": self.by, "block": self.block, "seed": self.seed}
        if self.pinned:  # archives without pins keep the dictionary they always had
            out["pinned"] = dict(self.pinned)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "SplitConfig":
        return cls(tuple(float(r) for r in data["ratios"]), data["by"], int(data["block"]), int(data["seed"]),
                   tuple(data.get("pinned", {}).items()))

    def block_key(self, tile: Tile, aoi: str) -> str:
        """The spatial block a tile belongs to (tiles of one block always share a split)."""
        if self.by == "aoi":
            return f"aoi:{aoi}"
        return f"{tile.epsg}_{tile.col // self.block}_{tile.row // self.block}"

    def split_of(self, tile: Tile, aoi: str) -> str:
        """The split of ``tile`` (found in AOI ``aoi``): its AOI's pin, else its block's."""
        return dict(self.pinned).get(aoi) or self.split_of_block(self.block_key(tile, aoi))

    def split_of_block(self, key: str) -> str:
        digest = hashlib.sha256(f"rsgee-split:{self.seed}:{key}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        total = sum(self.ratios)
        edge = 0.0
        for name, ratio in zip(SPLITS, self.ratios):
            edge += ratio / total
            if u < edge:
                return name
        return SPLITS[-1]


#: Fewer evaluation tiles than this and a comparison between models is noise.
MIN_SPLIT_TILES = 10


def split_warning(tiles: list[dict], classes: list[str], *, block: int | None = None) -> str | None:
    """One line naming what makes the splits unusable for a comparison, with the fix; None when fine.

    Checks that no split is empty, that val and test hold at least :data:`MIN_SPLIT_TILES` tiles, and
    that every class present in train appears in val and test (``tiles`` are index properties).
    """
    counts = {s: sum(t["split"] == s for t in tiles) for s in SPLITS}
    problems = [f"the {s} split is empty" for s in SPLITS if not counts[s]]
    problems += [f"only {counts[s]} {s} tiles (< {MIN_SPLIT_TILES})" for s in ("val", "test")
                 if 0 < counts[s] < MIN_SPLIT_TILES]
    present = {s: {k for t in tiles if t["split"] == s for k, n in enumerate(t["class_hist"]) if n} for s in SPLITS}
    for s in ("val", "test"):
        missing = sorted(present["train"] - present[s]) if counts[s] else []
        if missing:
            problems.append(f"{s} lacks {', '.join(classes[k] for k in missing)} (present in train)")
    if not problems:
        return None
    fixes = ([f"--split-block 1 (now {block})"] if block and block > 1 else []) + ["more AOIs",
                                                                                   "--split-by aoi over several AOIs"]
    return f"splits cannot carry a model comparison: {'; '.join(problems)} — re-tile with {', or '.join(fixes)}"
