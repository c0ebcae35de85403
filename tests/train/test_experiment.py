"""rsgee experiment: the grid, the paired-difference rule, and tiny end-to-end experiments that resume."""

from __future__ import annotations

import csv
import shutil
import statistics

import pytest

from rsgee.errors import RsgeeError
from rsgee.train.experiment import FusionExperiment, _paired, run_fusion_experiment, run_seg_experiment
from rsgee.train.fusion import DEFAULT_RECIPE, RECIPES, FusionConfig, train_fusion
from rsgee.train.generate import generate
from rsgee.train.segmentation import SegmentationConfig


def base(**changes) -> FusionConfig:
    return FusionConfig(**dict(dict(size="tiny", batch_size=2, epochs=1, steps_per_epoch=1, crop=64), **changes))


def test_the_grid_gives_every_run_the_same_budget_and_each_recipe_its_own_parts():
    experiment = FusionExperiment(base=base(epochs=3), models=("rs-spade", "pix2pix"), recipes=("pix2pix", "hybrid"),
                                  ablation_sources=("lulc", "lulc,dem", "lulc,s1,dem"), seeds=2)
    runs = experiment.runs()
    # table 1: 2 recipes × 2 models × 2 seeds; the ablation adds rs-spade with its default recipe on 2 new subsets
    # × 2 seeds (its all-sources arm is table 1's, trained once)
    assert DEFAULT_RECIPE in ("pix2pix", "hybrid")
    assert len(runs) == 8 + 4
    assert {(c.epochs, c.steps_per_epoch, c.crop, c.batch_size) for c in runs.values()} == {(3, 1, 64, 2)}
    for config in runs.values():
        assert {k: getattr(config, k) for k in RECIPES[config.recipe]} == {
            k: tuple(v) if k == "betas" else v for k, v in RECIPES[config.recipe].items()}
    assert runs["pix2pix_hybrid_lulc+s1+dem_seed1"].discriminator == "multiscale"
    assert runs[f"rs-spade_{DEFAULT_RECIPE}_lulc+dem_seed0"].sources == ("lulc", "terrain")
    with pytest.raises(RsgeeError, match="at least 2 seeds"):
        FusionExperiment(seeds=1)
    with pytest.raises(RsgeeError, match="unknown model or recipe cyclegan"):
        FusionExperiment(recipes=("cyclegan",))


def test_a_winner_needs_a_mean_beyond_two_sd_and_both_arms_above_the_floor():
    a = [{"seed": s, "psnr": v} for s, v in enumerate([25.0, 25.2, 24.9])]
    b = [{"seed": s, "psnr": v} for s, v in enumerate([24.0, 24.1, 24.0])]
    clear = _paired("x", a, b, "psnr", 20.0, ("a", "b"))
    assert clear["mean"] == pytest.approx(statistics.mean([1.0, 1.1, 0.9])) and clear["winner"] == "a"
    assert _paired("x", b, a, "psnr", 20.0, ("b", "a"))["winner"] == "a"
    assert _paired("x", a, b, "psnr", 24.5, ("a", "b"))["winner"].startswith("none (an arm did not learn")
    noisy = [{"seed": s, "psnr": v} for s, v in enumerate([25.0, 23.0, 26.0])]
    assert _paired("x", noisy, b, "psnr", 20.0, ("n", "b"))["winner"] == "none (|mean| ≤ 2 sd)"


@pytest.mark.slow
def test_a_fusion_experiment_writes_its_tables_from_its_runs_and_resumes(small_archive, tmp_path):
    experiment = FusionExperiment(base=base(), models=("rs-spade", "pix2pix"), recipes=("pix2pix",),
                                  ablation_sources=("lulc", "lulc,s1,dem"), seeds=2)
    out = tmp_path / "experiment"
    result = run_fusion_experiment(small_archive.root, out, experiment, progress=False, say=lambda _: None)
    assert [f.name for f in result.files] == ["fusion_tables.md", "fusion_runs.csv"]
    # pix2pix recipe × 2 models × 2 seeds, then the ablation with rs-spade's default recipe (its all-sources arm is
    # table 1's when that recipe is pix2pix)
    shared = DEFAULT_RECIPE == "pix2pix"
    assert len(list((out / "runs").iterdir())) == 4 + (2 if shared else 4)
    with open(out / "fusion_runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows[:3]] == ["constant-mean", "class-mean", "class-illumination"]
    raw = [float(r["psnr"]) for r in rows if r["model"] == "pix2pix" and r["weights"] == "raw"]
    assert len(raw) == 2
    table1 = next(t for title, t in result.tables.items() if title.startswith("Table 1 — generator"))
    line = next(l for l in table1.splitlines() if l.startswith("| pix2pix | pix2pix | raw |"))
    assert f"{statistics.mean(raw):.3f} ± {statistics.stdev(raw):.3f}" in line  # the table is the runs' mean ± sd
    assert "1 epochs × 1 GAN iterations" in next(iter(result.tables))
    titles = list(result.tables)
    assert any(t.startswith(f"Table 2 — sources ablation, rs-spade ({DEFAULT_RECIPE} recipe)")
               for t in titles)
    assert "| class-illumination (baseline) |" in table1 and "beats class-mean" in table1
    pairs = next(t for title, t in result.tables.items() if title.startswith("Table 2 — paired"))
    assert "| lulc, raw |" in pairs and "| lulc, ema |" in pairs
    written = (out / "fusion_tables.md").read_text()
    assert all(title in written for title in titles)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/checkpoints/last.ckpt")}
    again = run_fusion_experiment(small_archive.root, out, experiment, progress=False, say=lambda _: None)
    assert again.tables == result.tables  # finished runs are reused, not retrained
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/checkpoints/last.ckpt")}


@pytest.mark.slow
def test_the_seg_arms_are_matched_on_steps_or_on_real_exposure(small_archive, tmp_path):
    archive = tmp_path / "archive"
    shutil.copytree(small_archive.root, archive)
    config = SegmentationConfig(size="tiny", batch_size=2, epochs=1, crop=64)
    with pytest.raises(RsgeeError, match="run `rsgee generate RUN"):
        run_seg_experiment(archive, tmp_path / "seg", config, seeds=2, progress=False)
    generator = train_fusion(archive, tmp_path / "gen-run", base(), progress=False)
    generate(generator, archive, progress=False)
    result = run_seg_experiment(archive, tmp_path / "seg", config, seeds=2, progress=False, say=lambda _: None)
    with open(tmp_path / "seg" / "seg_runs.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["run"] != "baseline"]
    steps = {(r["arm"], int(r["steps"])) for r in rows}
    # 4 real train tiles at batch 2: 1:0 takes 2 steps; the mix holds 8 tiles, 4 steps, or 2 when matched
    assert steps == {("real 1:0", 2), ("1:1 steps matched", 2), ("1:1 paper protocol", 4)}
    assert len(rows) == 6
    pairs = next(t for title, t in result.tables.items() if "paired" in title)
    assert "| 1:1 steps matched |" in pairs and "| 1:1 paper protocol |" in pairs


def test_the_cli_refuses_a_bad_grid_in_one_line_before_training(small_archive, tmp_path, capsys):
    from rsgee.cli import main

    out = tmp_path / "experiment"
    code = main(["experiment", "fusion", str(small_archive.root), "--out", str(out), "--models", "rs-spade,unet",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "unknown model or recipe unet" in err and not out.exists()
    code = main(["experiment", "seg", str(small_archive.root), "--out", str(out), "--seeds", "1"])
    assert code == 2 and "--seeds" in capsys.readouterr().err
