"""Spatially blocked splits: ratios, blocks, stability and determinism."""

from __future__ import annotations

from collections import Counter

import pytest

from rsgee.errors import RsgeeError
from rsgee.grid import Tile
from rsgee.preprocess.split import SplitConfig


def test_ratios_are_honoured_over_many_blocks():
    config = SplitConfig()
    counts = Counter(config.split_of_block(f"32632_{i}_{j}") for i in range(100) for j in range(100))
    assert counts["train"] / 10_000 == pytest.approx(0.7, abs=0.02)
    assert counts["val"] / 10_000 == pytest.approx(0.2, abs=0.02)
    assert counts["test"] / 10_000 == pytest.approx(0.1, abs=0.02)


def test_all_tiles_of_a_block_share_a_split_and_neighbours_in_a_block_never_straddle():
    config = SplitConfig(block=4)
    for col0 in range(0, 40, 4):
        splits = {config.split_of(Tile(32632, col0 + dc, 2000 + dr), "a") for dc in range(4) for dr in range(4)}
        assert len(splits) == 1
    # negative lattice indices floor into the right block
    assert config.block_key(Tile(32632, -1, -1), "a") == "32632_-1_-1"
    assert config.block_key(Tile(32632, -4, 3), "a") == "32632_-1_0"


def test_split_depends_only_on_the_block_and_seed():
    a, b = SplitConfig(seed=0), SplitConfig(seed=0)
    tiles = [Tile(32633, c, r) for c in range(50) for r in range(50)]
    assert [a.split_of(t, "x") for t in tiles] == [b.split_of(t, "y") for t in tiles]  # AOI irrelevant by block
    other = SplitConfig(seed=1)
    assert [a.split_of(t, "x") for t in tiles] != [other.split_of(t, "x") for t in tiles]


def test_split_by_aoi_keeps_each_aoi_whole():
    config = SplitConfig(by="aoi")
    tiles = [Tile(32632, c, r) for c in range(10) for r in range(10)]
    assert len({config.split_of(t, "valley") for t in tiles}) == 1
    assert Counter(config.split_of_block(f"aoi:{i}") for i in range(3000))["train"] / 3000 == pytest.approx(0.7, abs=0.03)


def test_zero_ratio_split_is_never_used():
    config = SplitConfig(ratios=(1.0, 0.0, 1.0))
    assert "val" not in {config.split_of_block(str(i)) for i in range(1000)}


@pytest.mark.parametrize("text", ["7:2", "a:b:c", "7,2,1"])
def test_bad_ratio_text(text):
    with pytest.raises(RsgeeError, match="must look like 7:2:1"):
        SplitConfig.parse_ratios(text)


@pytest.mark.parametrize("kwargs, message", [({"ratios": (-1, 1, 1)}, "non-negative"), ({"by": "tile"}, "unknown"),
                                             ({"block": 0}, "at least 1")])
def test_bad_configs(kwargs, message):
    with pytest.raises(RsgeeError, match=message):
        SplitConfig(**kwargs)


def test_round_trip():
    config = SplitConfig((6.0, 3.0, 1.0), "aoi", 2, 5)
    assert SplitConfig.from_dict(config.to_dict()) == config
    assert SplitConfig.parse_ratios("7:2:1") == (7.0, 2.0, 1.0)
    assert "pinned" not in config.to_dict()  # archives without pins keep their archive.json as it was
    pinned = SplitConfig(by="block", pinned=(("garda", "test"), ("bernina", "val")))
    assert SplitConfig.from_dict(pinned.to_dict()) == pinned == SplitConfig(pinned=(("bernina", "val"),
                                                                                     ("garda", "test")))


def test_a_pinned_aoi_goes_whole_to_its_split_and_others_follow_their_blocks():
    config = SplitConfig(block=1, pinned=(("lake", "test"),))
    tiles = [Tile(32632, c, r) for c in range(20) for r in range(20)]
    assert {config.split_of(t, "lake") for t in tiles} == {"test"}
    free = [config.split_of(t, "plain") for t in tiles]
    assert free == [SplitConfig(block=1).split_of(t, "plain") for t in tiles] and set(free) == {"train", "val", "test"}
    assert SplitConfig.parse_pins(["lake=test", " ridge = val "]) == (("lake", "test"), ("ridge", "val"))
    for bad, message in [(["lake"], "use NAME=SPLIT"), (["lake=test", "lake=val"], "lake more than once")]:
        with pytest.raises(RsgeeError, match=message):
            SplitConfig.parse_pins(bad)
    with pytest.raises(RsgeeError, match="lake=holdout: pin each AOI once, to train, val or test"):
        SplitConfig(pinned=(("lake", "holdout"),))


CLASSES = ["water", "trees", "grass", "flooded_vegetation", "crops", "shrub_and_scrub", "built", "bare", "snow_and_ice"]


def tiles(counts: dict[str, int], hist=(1, 1, 0, 0, 0, 0, 0, 0, 0)) -> list[dict]:
    return [{"split": s, "class_hist": list(hist)} for s, n in counts.items() for _ in range(n)]


def test_usable_splits_give_no_warning():
    from rsgee.preprocess.split import split_warning

    assert split_warning(tiles({"train": 70, "val": 20, "test": 10}), CLASSES, block=4) is None


def test_small_empty_or_class_poor_splits_warn_in_one_line_with_the_fix():
    from rsgee.preprocess.split import split_warning

    message = split_warning(tiles({"train": 5, "val": 16}), CLASSES, block=4)  # the one small AOI
    assert "\n" not in message and "the test split is empty" in message and "--split-block 1 (now 4)" in message
    message = split_warning(tiles({"train": 40, "val": 9, "test": 12}), CLASSES, block=1)
    assert "only 9 val tiles (< 10)" in message and "--split-block" not in message and "more AOIs" in message
    snowy = tiles({"train": 1}, hist=(0, 0, 0, 0, 0, 0, 0, 0, 5)) + tiles({"train": 40, "val": 10, "test": 10})
    message = split_warning(snowy, CLASSES, block=2)
    assert "val lacks snow_and_ice (present in train)" in message and "test lacks snow_and_ice" in message
