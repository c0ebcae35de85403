"""rsgee experiment: the grids, the paired-difference rule, and tiny end-to-end experiments that resume."""

from __future__ import annotations

import csv
import statistics

import pytest

from rsgee.errors import RsgeeError
from rsgee.train.experiment import FusionExperiment, SegExperiment, _paired, run_fusion_experiment, run_seg_experiment
from rsgee.configs import ABLATION_SOURCES, DEFAULT_RECIPE, MODELS, RECIPES, FusionConfig, SegmentationConfig


def base(**changes) -> FusionConfig:
    settings = dict(size="tiny", batch_size=2, steps=2, crop=64, lr_g=1e-3, lr_d=1e-3, val_figures=0)
    return FusionConfig(**dict(settings, **changes))


def fusion_experiment(**changes) -> FusionExperiment:
    settings = dict(base=base(), models=MODELS, recipes=(DEFAULT_RECIPE,), ablation_model="best",
                    ablation_sources=ABLATION_SOURCES, seeds=2)
    return FusionExperiment(**dict(settings, **changes))


def seg_experiment(**changes) -> SegExperiment:
    settings = dict(base=SegmentationConfig(size="tiny", batch_size=2, steps=2, crop=64, val_every_steps=1),
                    generator=base(), labelled=(2,), seeds=2)
    return SegExperiment(**dict(settings, **changes))


def test_the_grid_gives_every_run_the_same_budget_and_each_recipe_its_own_parts():
    experiment = fusion_experiment(base=base(steps=30), recipes=("pix2pix", "hybrid"),
                                  ablation_sources=("lulc", "lulc,dem", "lulc,s1,dem"), seeds=2)
    runs = experiment.table1()
    assert len(runs) == 2 * 3 * 2  # recipes × the three generators × seeds
    assert {(c.steps, c.crop, c.batch_size, c.lr_g, c.lr_d, c.augment) for c in runs.values()} == {
        (30, 64, 2, 1e-3, 1e-3, "none")}  # the budget's learning rate holds for every recipe
    for config in runs.values():
        parts = {k: v for k, v in RECIPES[config.recipe].items() if k not in ("lr_g", "lr_d")}
        assert {k: getattr(config, k) for k in parts} == {k: tuple(v) if k == "betas" else v for k, v in parts.items()}
    assert runs["pix2pix_hybrid_lulc+s1+dem_seed1"].discriminator == "multiscale"
    ablation = experiment.table2("pix2pix")
    assert len(ablation) == 3 * 2 and ablation[f"pix2pix_{DEFAULT_RECIPE}_lulc+dem_seed0"].sources == ("lulc", "terrain")
    assert f"pix2pix_{DEFAULT_RECIPE}_lulc+s1+dem_seed1" in runs  # the all-sources arm is Table 1's run
    with pytest.raises(RsgeeError, match="at least 2 seeds"):
        fusion_experiment(seeds=1)
    with pytest.raises(RsgeeError, match="unknown model or recipe cyclegan"):
        fusion_experiment(recipes=("cyclegan",))
    with pytest.raises(RsgeeError, match="give its base --steps"):
        seg_experiment(base=SegmentationConfig(epochs=2))


def test_a_winner_needs_a_mean_beyond_two_sd_and_both_arms_learned_on_val_and_test():
    def arm(values, val):
        return [{"seed": s, "psnr": v, "val_psnr": val, "weights": "raw", "recipe": "r"} for s, v in enumerate(values)]

    a, b = arm([25.0, 25.2, 24.9], 30.0), arm([24.0, 24.1, 24.0], 30.0)
    floors = {"val": 29.0, "test": 20.0}
    clear = _paired("x", a, b, "r", "raw", floors, ("a", "b"))
    assert clear["mean"] == pytest.approx(statistics.mean([1.0, 1.1, 0.9])) and clear["winner"] == "a"
    assert _paired("x", b, a, "r", "raw", floors, ("b", "a"))["winner"] == "a"
    assert _paired("x", a, b, "r", "raw", {"val": 29.0, "test": 24.5}, ("a", "b"))["winner"].startswith(
        "none (an arm did not learn")
    assert _paired("x", a, arm([24.0, 24.1, 24.0], 28.0), "r", "raw", floors, ("a", "b"))["winner"].startswith(
        "none (an arm did not learn")  # above the floor on test but not on val: the budget is too short
    noisy = arm([25.0, 23.0, 26.0], 30.0)
    assert _paired("x", noisy, b, "r", "raw", floors, ("n", "b"))["winner"] == "none (|mean| ≤ 2 sd)"


@pytest.mark.slow
def test_a_fusion_experiment_writes_its_tables_from_its_runs_and_resumes(small_archive, tmp_path):
    experiment = fusion_experiment(base=base(val_every_steps=1), models=("rs-spade", "pix2pix"),
                                  ablation_sources=("lulc", "lulc,s1,dem"), seeds=2)
    out = tmp_path / "experiment"
    messages = []
    result = run_fusion_experiment(small_archive.root, out, experiment, progress=False, say=messages.append)
    assert [f.name for f in result.files] == ["fusion_tables.md", "fusion_runs.csv"]
    best = next(m for m in messages if m.startswith("ablation with"))
    model = best.split()[2].rstrip(":")
    assert len(list((out / "runs").iterdir())) == 4 + 2  # 2 models × 2 seeds, then the best on lulc × 2 seeds
    with open(out / "fusion_runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val = {m: statistics.mean(float(r["val_psnr"]) for r in rows if r["model"] == m and r["weights"] == "raw"
                              and r["sources"] == "lulc+s1+dem") for m in ("rs-spade", "pix2pix")}
    assert model == max(val, key=val.get)  # chosen on val
    baselines = [r["model"] for r in rows if r.get("split") == "test" and not r.get("run")]
    assert baselines == ["constant-mean", "class-mean", "class-illumination", "class-sar", "class-illumination-sar"]
    raw = [float(r["psnr"]) for r in rows if r["model"] == "pix2pix" and r["weights"] == "raw" and r["sources"] ==
           "lulc+s1+dem"]
    val_raw = [float(r["val_psnr"]) for r in rows if r["model"] == "pix2pix" and r["weights"] == "raw" and
               r["sources"] == "lulc+s1+dem"]
    assert len(raw) == 2 and len(val_raw) == 2
    table1 = next(t for title, t in result.tables.items() if title.startswith("Table 1 — generators"))
    line = next(l for l in table1.splitlines() if l.startswith(f"| pix2pix | {DEFAULT_RECIPE} | raw |"))
    assert f"{statistics.mean(raw):.3f} ± {statistics.stdev(raw):.3f}" in line  # the table is the runs' mean ± sd
    assert f"{statistics.mean(val_raw):.3f} ± {statistics.stdev(val_raw):.3f}" in line
    from rsgee.train.trainer import read_metrics

    for row in (r for r in rows if r.get("run_name") and r["weights"] == "raw"):  # each run's val-chosen checkpoint
        logged = [float(m["val/psnr"]) for m in read_metrics(out / "runs" / row["run_name"]) if m.get("val/psnr")]
        assert len(logged) == 2 and float(row["val_psnr"]) == pytest.approx(max(logged), abs=1e-3)
    assert "checkpoint chosen on val every 1 steps" in next(iter(result.tables))
    assert "2 steps at lr 0.001/0.001 (cosine)" in next(iter(result.tables)) and "train 4 / val 1 / test 1" in next(
        iter(result.tables))
    assert "| class-illumination (baseline) |" in table1 and "beats class-mean val / test" in table1
    table2 = next(t for title, t in result.tables.items() if title.startswith("Table 2 — sources"))
    assert "class-illumination-sar" in table2 and "| lulc | raw |" in table2
    pairs = next(t for title, t in result.tables.items() if title.startswith("Table 2 — paired"))
    assert "| lulc − lulc+s1+dem, raw |" in pairs and "| lulc − lulc+s1+dem, ema |" in pairs
    seconds = {r["run_name"]: float(r["train_seconds"]) for r in rows if r.get("run_name")}
    assert len(seconds) == 6 and all(s > 0 for s in seconds.values())
    table1_minutes = sum(s for name, s in seconds.items() if "lulc+s1+dem" in name) / 60
    assert f"| Table 1 | 4 | {table1_minutes:.1f} |" in result.tables["Training time"]
    assert "| Table 2 (its runs not in Table 1) | 2 |" in result.tables["Training time"]
    written = (out / "fusion_tables.md").read_text()
    assert all(title in written for title in result.tables)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/checkpoints/last.ckpt")}
    again = run_fusion_experiment(small_archive.root, out, experiment, progress=False, say=lambda _: None)
    assert again.tables == result.tables  # finished runs are reused, not retrained
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/checkpoints/last.ckpt")}


@pytest.mark.slow
def test_the_seg_protocols_match_steps_and_the_low_label_arms_see_only_their_tiles(small_archive, tmp_path):
    config = SegmentationConfig(size="tiny", batch_size=2, steps=2, crop=64, val_every_steps=1)
    experiment = seg_experiment(base=config)
    with pytest.raises(RsgeeError, match="--labelled 4: the train split has 4 tiles"):
        run_seg_experiment(small_archive.root, tmp_path / "bad", seg_experiment(base=config, labelled=(4,)),
                           progress=False)
    out = tmp_path / "seg"
    result = run_seg_experiment(small_archive.root, out, experiment, progress=False, say=lambda _: None)
    with open(out / "seg_runs.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("arm")]
    steps = {(r["arm"], int(float(r["steps"]))) for r in rows}
    assert steps == {("real 1:0", 2), ("1:1 steps matched", 2), ("1:1 twice the steps", 4), ("2 real", 2),
                     ("2 real + generated 1:1", 2)}
    assert len(rows) == 5 * 2
    # each low-label generator saw 2 tiles; each protocol and seed has its own generated tiles
    from rsgee.train.trainer import read_run

    assert read_run(out / "runs" / "generator_k2_seed1")["config"]["train_tiles"] == 2
    assert sorted(p.name for p in (out / "archives").iterdir()) == ["all_seed0", "all_seed1", "k2_seed0", "k2_seed1"]
    assert (out / "archives" / "k2_seed0" / "gen" / "generated.json").exists()
    assert not (small_archive.root / "gen").exists()  # the source archive is never written to
    table = next(iter(result.tables.values()))
    assert "| k = 2 | per-pixel-gaussian (baseline, same tiles) |" in table and "steps to val mIoU" in table
    times = result.tables["Training time"]
    assert "| generators (rs-spade) | 4 |" in times and "| RS-UNet, paper protocol | 6 |" in times
    assert "| RS-UNet, k = 2 protocol | 4 |" in times
    pairs = next(t for title, t in result.tables.items() if "paired" in title)
    assert "| 1:1 steps matched − real 1:0 |" in pairs and "| 2 real + generated 1:1 − 2 real |" in pairs


def test_the_cli_refuses_a_bad_grid_in_one_line_before_training(small_archive, tmp_path, capsys):
    from rsgee.cli import main

    out = tmp_path / "experiment"
    code = main(["experiment", "fusion", str(small_archive.root), "--out", str(out), "--models", "rs-spade,unet",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "unknown model or recipe unet" in err and not out.exists()
    code = main(["experiment", "seg", str(small_archive.root), "--out", str(out), "--seeds", "1"])
    assert code == 2 and "--seeds" in capsys.readouterr().err
    code = main(["experiment", "seg", str(small_archive.root), "--out", str(out), "--labelled", "four"])
    assert code == 2 and "--labelled" in capsys.readouterr().err and not out.exists()
