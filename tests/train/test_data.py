"""Model inputs from the archive: normalisation values, aspect-aware augmentation, the data module."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import rasterio
import torch

from rsgee.errors import RsgeeError
from rsgee.preprocess.terrain import terrain
from rsgee.configs import SegmentationConfig, check_augmentation, parse_sources
from rsgee.models.normalisation import (lulc_to_model, model_to_reflectance, reflectance_to_s2, s1_to_model,
                                        s2_to_model, terrain_to_model)
from rsgee.train.data import FusionSamples, archive_normalisation, augment, dihedral, draw_transform
from rsgee.train.segmentation import SegmentationSamples


def test_s2_normalisation_round_trips_and_masks_nodata():
    s2 = np.array([[[0, 5000, 10000, 12000]], [[0, 100, 2000, 1]], [[0, 1, 1, 1]], [[0, 9999, 3, 4]]], dtype=np.uint16)
    x, valid = s2_to_model(s2)
    assert valid.tolist() == [[[False, True, True, True]]]
    assert x[0, 0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 1.0])  # 12000 is clipped to reflectance 1
    back = reflectance_to_s2(model_to_reflectance(torch.from_numpy(x)).numpy())
    assert back[0, 0, 1] == 5000 and back[0, 0, 2] == 10000 and back.min() >= 1  # never the nodata value 0


def test_s1_ranges_per_band():
    db = np.array([[[-30.0, -25.0, -12.5, 0.0, 3.0, np.nan]], [[-40.0, -32.5, -16.25, 0.0, 1.0, np.nan]]], np.float32)
    out = s1_to_model(db, ["VV", "VH"])
    assert out[0, 0].tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0, 0.0])
    assert out[1, 0].tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0, 0.0])


def test_lulc_one_hot_with_dont_care():
    labels = np.array([[[0, 8, 255, 3]]], dtype=np.uint8)
    onehot = lulc_to_model(labels)
    assert onehot.shape == (10, 1, 4) and (onehot.sum(axis=0) == 1).all()
    assert onehot[:, 0].argmax(axis=0).tolist() == [0, 8, 9, 3]


def test_terrain_channels():
    t = np.array([[[100.0, 300.0]], [[45.0, 0.0]], [[90.0, -1.0]], [[200.0, 181.0]]], np.float32)
    out = terrain_to_model(t, dem_mean=200.0, dem_std=100.0)
    assert out[:, 0, 0].tolist() == pytest.approx([-1.0, 0.5, 1.0, 0.0, 200 / 255], abs=1e-6)  # east-facing
    assert out[:, 0, 1].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0, 181 / 255], abs=1e-6)  # flat: no direction


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_augmentation_moves_aspect_with_the_pixels(k, flip):
    """Terrain of the transformed DEM equals the transformed terrain: aspect turns with the raster."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    dem = (300 + 3 * xx - 2 * yy + 5 * np.sin(xx / 5) * np.cos(yy / 7) + rng.normal(0, 0.1, (64, 64))).astype(np.float32)

    def channels(d):
        t = terrain(d, 10.0, 10.0)
        return torch.from_numpy(terrain_to_model(np.stack([d, t.slope, t.aspect, t.hillshade]), 300.0, 50.0))

    sample = {"cond": {"terrain": channels(dem)}, "target": torch.zeros(4, 64, 64), "valid": torch.ones(1, 64, 64)}
    moved = augment(sample, k, flip)["cond"]["terrain"]
    turned = torch.from_numpy(dem.copy())
    expected = channels(dihedral(turned[None], k, flip)[0].numpy().copy())
    inner = (slice(None), slice(2, -2), slice(2, -2))
    torch.testing.assert_close(moved[0:4][inner], expected[0:4][inner], atol=2e-4, rtol=0)


def test_dihedral_is_the_same_for_every_source():
    x = torch.arange(16.0).reshape(1, 4, 4)
    sample = {"cond": {"s1": x.clone(), "lulc": x.clone()}, "target": x.clone(), "valid": x > 3}
    out = augment(sample, 1, True)
    assert torch.equal(out["cond"]["s1"], out["cond"]["lulc"]) and torch.equal(out["cond"]["s1"], out["target"])
    assert torch.equal(out["valid"], out["target"] > 3)


def test_parse_sources():
    assert parse_sources("lulc,s1,dem") == ("lulc", "s1", "terrain")
    assert parse_sources("dem,lulc") == ("lulc", "terrain")
    with pytest.raises(RsgeeError, match="non-empty subset of lulc, s1, dem"):
        parse_sources("lulc,optical")


def test_training_inputs_from_the_cache_match_the_geotiffs(small_archive):
    """The compact cache changes inputs by at most its quantisation steps, in the models' units."""
    norm = archive_normalisation(small_archive)
    samples = FusionSamples(small_archive, "train", ("lulc", "s1", "terrain"), norm)
    tolerance = {  # per model channel: half a code step, carried through the normalisation
        "s1": 0.5 / 254,
        "terrain": [0.25 / norm["dem_std"], 0.5 / 254, np.deg2rad(180 / 254), np.deg2rad(180 / 254), 3.01 / 255],
    }
    worst = {"s1": 0.0, "terrain": np.zeros(5)}
    for i, tile_id in enumerate(samples.packed.tile_ids):
        raw = {}
        for source in ("s2", "lulc", "s1", "terrain"):
            with rasterio.open(small_archive.tile_path(source, tile_id)) as src:
                raw[source] = src.read()
        sample = samples[i]
        target, valid = s2_to_model(raw["s2"])
        assert torch.equal(sample["target"], torch.from_numpy(target)) and torch.equal(sample["valid"], torch.from_numpy(valid))
        assert torch.equal(sample["cond"]["lulc"], torch.from_numpy(lulc_to_model(raw["lulc"])))
        s1 = np.abs(sample["cond"]["s1"].numpy() - s1_to_model(raw["s1"], norm["s1_bands"]))
        worst["s1"] = max(worst["s1"], float(s1.max()))
        terrain_ = np.abs(sample["cond"]["terrain"].numpy() - terrain_to_model(raw["terrain"], norm["dem_mean"], norm["dem_std"]))
        worst["terrain"] = np.maximum(worst["terrain"], terrain_.reshape(5, -1).max(axis=1))
    assert 0 < worst["s1"] <= tolerance["s1"] + 1e-6
    assert (worst["terrain"] <= np.array(tolerance["terrain"]) + 1e-6).all(), worst["terrain"]
    assert worst["terrain"][1:].min() > 0  # codes, not a copy: the comparison is not vacuous


def test_segmentation_inputs_are_exact(small_archive):
    mean, std = np.full(4, 0.1), np.full(4, 0.05)
    samples = SegmentationSamples(small_archive, "train", mean, std)
    for i, tile_id in enumerate(samples.packed.tile_ids):
        with rasterio.open(small_archive.tile_path("s2", tile_id)) as src:
            s2 = src.read()
        expected = (np.clip(s2.astype(np.float32) / 10000, 0, 1) - mean[:, None, None]) / std[:, None, None]
        np.testing.assert_array_equal(samples[i]["image"].numpy(), expected.astype(np.float32))


def test_a_lossy_archives_flat_and_near_north_aspects_keep_their_meaning():
    """--max-float-error tiles hold −1 ± E for flat and may hold −E for an aspect of ~0 (north)."""
    t = np.array([[[0.0, 0.0]], [[10.0, 0.0]], [[-0.006, -1.004]], [[200.0, 181.0]]], np.float32)
    out = terrain_to_model(t, dem_mean=0.0, dem_std=1.0)
    assert out[2:4, 0, 0].tolist() == pytest.approx([np.sin(np.deg2rad(-0.006)), 1.0], abs=1e-6)  # north-facing
    assert out[2:4, 0, 1].tolist() == [0.0, 0.0]  # flat


def test_augmentations_draw_from_their_groups_only():
    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(200)]
    assert all(draw_transform("none", d) is None for d in digests)
    assert {draw_transform("flip", d) for d in digests} == {(0, False), (0, True), (2, False), (2, True)}
    assert {draw_transform("dihedral", d) for d in digests} == {(k, m) for k in range(4) for m in (False, True)}
    with pytest.raises(RsgeeError, match="--augment 'rotate': choose none, flip, dihedral"):
        check_augmentation("rotate")


def test_fusion_trains_on_tiles_as_they_lie_unless_told_otherwise(small_archive):
    """The sun does not turn: fusion's default keeps every sample's orientation (crops still move)."""
    from rsgee.configs import FusionConfig

    assert FusionConfig().augment == "none" and SegmentationConfig().augment == "dihedral"
    norm = archive_normalisation(small_archive)
    sources = ("lulc", "s1", "terrain")
    plain = FusionSamples(small_archive, "train", sources, norm)
    kept = FusionSamples(small_archive, "train", sources, norm, augment="none", seed=3)
    turned = FusionSamples(small_archive, "train", sources, norm, augment="dihedral", seed=3)
    for epoch in range(4):
        for i in range(len(plain)):
            assert torch.equal(kept[(i, epoch)]["cond"]["terrain"], plain[i]["cond"]["terrain"])
    changed = [not torch.equal(turned[(i, e)]["target"], plain[i]["target"]) for i in range(len(plain)) for e in range(4)]
    assert any(changed)  # the dihedral draw does transform some samples


def test_segmentation_keeps_the_dihedral_draw(small_archive):
    mean, std = np.full(4, 0.1), np.full(4, 0.05)
    plain = SegmentationSamples(small_archive, "train", mean, std)
    turned = SegmentationSamples(small_archive, "train", mean, std, augment="dihedral")
    kept = SegmentationSamples(small_archive, "train", mean, std, augment="none")
    assert all(torch.equal(kept[(i, 1)]["image"], plain[i]["image"]) for i in range(len(plain)))
    assert any(not torch.equal(turned[(i, e)]["image"], plain[i]["image"]) for i in range(len(plain)) for e in range(4))
