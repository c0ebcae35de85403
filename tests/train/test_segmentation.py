"""RS-UNet training: exact real:generated mixing, real-only evaluation, resume, evaluate seg figures."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest

from rsgee.errors import RsgeeError
from rsgee.train.data import train_subset
from rsgee.train.evaluate import evaluate_segmentation
from rsgee.configs import FusionConfig, SegmentationConfig, parse_mix
from rsgee.train.fusion import train_fusion
from rsgee.train.generate import generate
from rsgee.train.segmentation import MixSampler, SegmentationData, epoch_counts, train_segmentation
from rsgee.train.trainer import read_metrics, read_run


@pytest.mark.parametrize("mix, n_real, n_gen, expected", [
    ((1, 0), 44, 0, (44, 0)), ((1, 1), 44, 44, (44, 44)), ((2, 1), 44, 44, (44, 22)), ((1, 2), 44, 44, (22, 44)),
    ((3, 2), 10, 10, (15 // 5 * 3, 15 // 5 * 2)), ((0, 1), 44, 44, (0, 44)),
])
def test_epoch_counts_honour_the_ratio_exactly(mix, n_real, n_gen, expected):
    real, gen = epoch_counts(mix, n_real, n_gen)
    assert (real, gen) == (mix[0] * min(n_real // mix[0] if mix[0] else 10**9, n_gen // mix[1] if mix[1] else 10**9),
                           mix[1] * min(n_real // mix[0] if mix[0] else 10**9, n_gen // mix[1] if mix[1] else 10**9))
    assert real * mix[1] == gen * mix[0]


def test_mix_sampler_draws_a_b_per_epoch_and_changes_with_the_epoch():
    sampler = MixSampler(n_real=10, n_generated=10, mix=(2, 1), seed=3)
    first = [i for i, epoch in sampler]
    assert len(first) == len(sampler) == 15 and len(set(first)) == 15
    assert sum(i < 10 for i in first) == 10 and sum(i >= 10 for i in first) == 5
    sampler.set_epoch(1)
    second = list(sampler)
    assert {epoch for _, epoch in second} == {1} and [i for i, _ in second] != first
    sampler.set_epoch(0)
    assert [i for i, _ in sampler] == first  # seeded


@pytest.mark.parametrize("text", ["1", "a:b", "-1:1", "0:0"])
def test_bad_mixes(text):
    with pytest.raises(RsgeeError, match="--mix"):
        parse_mix(text)


@pytest.fixture(scope="module")
def generated_archive(small_archive, tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    shutil.copytree(small_archive.root, root / "archive")
    fusion = train_fusion(root / "archive", root / "fusion", FusionConfig(size="tiny", batch_size=2, epochs=1,
                                                                          steps_per_epoch=1, crop=64), progress=False)
    generate(fusion, root / "archive", progress=False)
    return root


def tiny(mix=(1, 1), **overrides) -> SegmentationConfig:
    return SegmentationConfig(**{**dict(mix=mix, size="tiny", batch_size=2, epochs=2, steps_per_epoch=None, crop=64),
                                 **overrides})


def test_training_mixes_generated_tiles_but_validation_and_test_are_real(generated_archive):
    data = SegmentationData(generated_archive / "archive", tiny(), progress=False)
    data.prepare_data()
    data.setup()
    train = data.splits["train"]
    assert train.n_real == 4 and len(train.generated) == 4
    seen = Counter()
    for batch in data.train_dataloader():
        seen.update(batch["generated"].tolist())
    assert seen == {False: 4, True: 4}
    for split in ("val", "test"):
        flags = [flag for batch in getattr(data, f"{split}_dataloader")() for flag in batch["generated"].tolist()]
        assert flags and not any(flags) and len(data.splits[split].generated) == 0
    real, twin = train[0], train[4]  # a train tile and its generated twin: same land cover, another image
    assert real["tile_id"] == twin["tile_id"]
    assert not np.allclose(real["image"].numpy(), twin["image"].numpy())


def test_train_seg_runs_logs_miou_and_resumes(generated_archive, tmp_path):
    run = train_segmentation(generated_archive / "archive", tmp_path / "mix", tiny(), progress=False)
    info = read_run(run)
    assert info["mix_label"] == "real:generated 1:1" and info["epoch_tiles"] == {"real": 4, "generated": 4}
    assert info["generated_by"]["model"] == "rs-spade"
    rows = [r for r in read_metrics(run) if r.get("val/miou")]
    assert len(rows) == 2 and all(0 <= float(r["val/miou"]) <= 1 for r in rows)
    share = [float(r["train/generated_share_epoch"]) for r in read_metrics(run) if r.get("train/generated_share_epoch")]
    assert share == [0.5, 0.5]
    train_segmentation(generated_archive / "archive", run, tiny(epochs=3), resume=True, progress=False)
    epochs = sorted({int(r["epoch"]) for r in read_metrics(run) if r.get("val/miou")})
    assert epochs == [0, 1, 2]


def test_a_mix_without_generated_tiles_says_to_run_generate(small_archive, tmp_path):
    with pytest.raises(RsgeeError, match="rsgee generate"):
        train_segmentation(small_archive.root, tmp_path / "run", tiny(), progress=False)


def test_evaluate_seg_table_and_figures(generated_archive, tmp_path):
    real = train_segmentation(generated_archive / "archive", tmp_path / "real", tiny(mix=(1, 0)), progress=False)
    mixed = train_segmentation(generated_archive / "archive", tmp_path / "mixed", tiny(), progress=False)
    rows, figures = evaluate_segmentation([real, mixed], tmp_path / "eval", progress=False)
    assert [r["training_set"] for r in rows] == ["majority-class (baseline)", "class-mean-spectrum (baseline)",
                                                 "per-pixel-gaussian (baseline)", "real only (True Data)",
                                                 "real:generated 1:1"]
    assert all(0 <= r["miou"] <= 1 and 0 <= r["accuracy"] <= 1 and r["tiles"] == 1 for r in rows)
    for row in rows[3:]:
        below = [b["training_set"].split()[0] for b in rows[:3] if not row["miou"] > b["miou"]]
        assert row["note"] == ("below " + ", ".join(below) if below else "")
    names = sorted(p.name for p in figures)
    assert names == ["confusion_mixed.png", "confusion_real.png", "miou_curves.png", "predictions.png"]
    assert all(p.stat().st_size > 5000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in figures)


def test_training_refuses_an_archive_without_test_tiles_before_training(tmp_path):
    import datetime as dt

    from rsgee.acquire.aoi import parse_aois
    from rsgee.acquire.export import export_aois
    from rsgee.acquire.synthetic import SyntheticSource
    from rsgee.catalog import load_catalog
    from rsgee.preprocess.split import SplitConfig
    from rsgee.preprocess.tiling import TileFilters, build_archive

    source = SyntheticSource(seed=0, cloud_cover=0.0, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    export_aois(parse_aois(["v=10.60,46.60,10.66,46.64"]), tmp_path / "e", source, load_catalog(), progress=False)
    build_archive([tmp_path / "e"], tmp_path / "a", load_catalog(), split=SplitConfig(ratios=(1, 1, 0), block=1),
                  filters=TileFilters(max_s2_nodata=1.0), progress=False)
    for train, config in ((train_segmentation, tiny(mix=(1, 0))), (train_fusion, FusionConfig(size="tiny"))):
        with pytest.raises(RsgeeError, match="the test split has no tiles"):
            train(tmp_path / "a", tmp_path / "run", config, progress=False)
        assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_low_label_protocol_reads_k_real_tiles_and_the_others_generated_twins(generated_archive, tmp_path):
    data = SegmentationData(generated_archive / "archive", tiny(train_tiles=2, seed=5), progress=False)
    data.prepare_data()
    data.setup()
    train = data.splits["train"]
    real = {train[i]["tile_id"] for i in range(train.n_real)}
    twins = {train[train.n_real + j]["tile_id"] for j in range(len(train.generated))}
    assert len(real) == 2 and len(twins) == 2 and not real & twins  # a withheld tile is seen only generated
    assert real == {train.packed.tile_ids[i] for i in train_subset(train.packed.tile_ids, 2, 5)}
    seen = Counter()
    for batch in data.train_dataloader():
        seen.update(zip(batch["generated"].tolist(), batch["tile_id"]))
    assert {t for g, t in seen if not g} == real and {t for g, t in seen if g} <= twins
    run = train_segmentation(generated_archive / "archive", tmp_path / "low", tiny(mix=(1, 0), epochs=None, steps=4,
                             train_tiles=2, val_every_steps=2), progress=False)
    steps = [float(r["val/steps"]) for r in read_metrics(run) if r.get("val/miou")]
    assert steps == [2.0, 4.0]  # validated every 2 steps, across epochs of one batch
    assert read_run(run)["epoch_tiles"] == {"real": 2, "generated": 0}
    with pytest.raises(RsgeeError, match="--val-every-steps 2: give a positive number, with --steps"):
        tiny(val_every_steps=2)
