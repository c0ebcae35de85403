"""Fusion training end to end on CPU: smoke runs of the generators, an overfit, steps, schedules, resume, generate,
evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from rsgee.errors import RsgeeError
from rsgee.grid import Tile
from rsgee.models.normalisation import model_to_reflectance
from rsgee.train.data import FusionData, FusionSamples, collate
from rsgee.train.evaluate import evaluate_fusion
from rsgee.configs import DEFAULT_RECIPE, FusionConfig, RECIPES
from rsgee.train.fusion import FusionTask, load_fusion, train_fusion
from rsgee.train.generate import generate
from rsgee.train.trainer import lr_factor, read_metrics, read_run

pytestmark = pytest.mark.slow


def tiny(**overrides) -> FusionConfig:
    settings = dict(size="tiny", batch_size=2, epochs=1, steps_per_epoch=2, crop=64, seed=0)
    settings.update(overrides)
    return FusionConfig(**settings)


def metric_rows(run) -> list[dict]:
    return read_metrics(run)


@pytest.fixture(scope="module")
def spade_run(small_archive, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "spade"
    train_fusion(small_archive.root, run, tiny(), progress=False)
    return run


def test_rs_spade_smoke_run_writes_a_complete_run(spade_run):
    info = read_run(spade_run)
    assert info["kind"] == "fusion" and info["config"]["model"] == "rs-spade" and info["global_step"] == 4
    recipe = RECIPES[DEFAULT_RECIPE]
    assert info["config"]["betas"] == list(recipe["betas"]) and info["config"]["lr_g"] == recipe["lr_g"]
    assert info["config"]["augment"] == "none" and info["config"]["schedule"] == "cosine"
    assert info["planned_steps"] == info["steps_done"] == 2  # 1 epoch × 2 batches
    assert info["parameters"]["generator"] > info["parameters"]["discriminator"] > 0
    rows = metric_rows(spade_run)
    losses = [float(r["train/g_loss_step"]) for r in rows if r.get("train/g_loss_step")]
    assert len(losses) == 2 and all(np.isfinite(losses))
    val = [r for r in rows if r.get("val/psnr")]
    assert len(val) == 1 and all(np.isfinite(float(val[0][k])) for k in ("val/psnr", "val/ssim", "val/sam"))
    assert (spade_run / "checkpoints" / "last.ckpt").exists() and (spade_run / "val" / "epoch_0000.png").exists()
    assert info["normalisation"]["s1_bands"] == ["VV", "VH"]


@pytest.mark.parametrize("model, sources", [("pix2pix", ("lulc", "s1", "terrain")), ("rs-spade", ("lulc",)),
                                             ("rs-spade", ("s1", "terrain")), ("spade-decoder", ("lulc", "s1"))])
def test_baseline_and_ablations_train(small_archive, tmp_path, model, sources):
    run = train_fusion(small_archive.root, tmp_path / "run", tiny(model=model, sources=sources), progress=False)
    task = load_fusion(run)
    assert task.config.sources == sources
    if model == "pix2pix":
        assert task.config.gan_loss == "vanilla" and task.config.l1_weight == 100.0 and task.config.betas == (0.5, 0.999)
    assert all(np.isfinite(float(r["train/g_loss_step"])) for r in metric_rows(run) if r.get("train/g_loss_step"))


def test_generator_l1_falls_when_overfitting_one_batch(small_archive):
    torch.manual_seed(0)
    data = FusionData(small_archive.root, ("lulc", "s1", "terrain"), batch_size=2, crop=64, progress=False)
    data.prepare_data()
    data.setup()
    batch = collate([data.splits["train"][0], data.splits["train"][1]])
    task = FusionTask(FusionConfig(size="tiny", l1_weight=100.0).__dict__, data.norm)
    optimiser = torch.optim.Adam(task.generator.parameters(), lr=2e-3)
    from rsgee.models.losses import masked_l1_loss

    values = []
    for _ in range(40):
        loss = masked_l1_loss(task(batch["cond"]), batch["target"], batch["valid"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        values.append(loss.item())
    assert values[-1] < 0.5 * values[0], values[::8]


def test_resume_continues_from_the_checkpoint(small_archive, tmp_path):
    run = tmp_path / "run"
    train_fusion(small_archive.root, run, tiny(schedule="constant"), progress=False)
    first = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["global_step"] == 4 and first["epoch"] == 0
    with pytest.raises(RsgeeError, match="already holds a trained run; pass --resume"):
        train_fusion(small_archive.root, run, tiny(schedule="constant"), progress=False)
    with pytest.raises(RsgeeError, match=r"other settings \(l1_weight\)"):
        train_fusion(small_archive.root, run, tiny(epochs=2, l1_weight=1.0, schedule="constant"), resume=True,
                     progress=False)
    train_fusion(small_archive.root, run, tiny(epochs=2, schedule="constant"), resume=True, progress=False)
    second = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert second["global_step"] == 8 and second["epoch"] == 1
    epochs = {r["epoch"] for r in metric_rows(run) if r.get("train/g_loss_step")}
    assert epochs == {"0", "1"}


def test_a_decaying_schedule_cannot_be_extended_on_resume(small_archive, tmp_path):
    run = train_fusion(small_archive.root, tmp_path / "run", tiny(model="pix2pix"), progress=False)
    with pytest.raises(RsgeeError, match="cosine learning-rate schedule planned over its length; resume with the "
                                         "same --epochs") as error:
        train_fusion(small_archive.root, run, tiny(model="pix2pix", epochs=3), resume=True, progress=False)
    assert "\n" not in str(error.value)


def test_steps_train_exactly_that_many_and_the_last_is_always_validated(small_archive, tmp_path):
    # 4 train tiles at batch 2: 2 batches an epoch, so 5 steps end one batch into the third epoch
    config = tiny(model="pix2pix", epochs=None, steps=5, steps_per_epoch=None, val_every=100, val_figures=0)
    run = train_fusion(small_archive.root, tmp_path / "run", config, progress=False)
    info = read_run(run)
    assert info["planned_steps"] == info["steps_done"] == 5 and info["global_step"] == 10  # a D and a G update each
    assert info["config"]["epochs"] is None and info["config"]["steps"] == 5
    val = [r for r in metric_rows(run) if r.get("val/psnr")]
    assert len(val) == 1 and val[0]["epoch"] == "2"  # the final weights, although --val-every is 100
    assert info["best_checkpoint"] and not (run / "val").exists()  # --val-figures 0: no figures, no crash
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 10 and last["rsgee_steps_done"] == 5
    with pytest.raises(RsgeeError, match=r"give --epochs \(1\) or --steps \(5\), not both"):
        tiny(steps=5)


def test_the_learning_rate_follows_the_schedule_step_by_step(small_archive, tmp_path):
    config = tiny(model="pix2pix", epochs=None, steps=6, steps_per_epoch=None, schedule="cosine", warmup=2,
                  lr_g=1e-3, lr_d=2e-3, val_figures=0)
    run = train_fusion(small_archive.root, tmp_path / "run", config, progress=False)
    factors = [float(r["train/lr_factor"]) for r in metric_rows(run) if r.get("train/lr_factor")]
    assert factors == pytest.approx([lr_factor("cosine", step, 6, 2) for step in range(6)])
    assert factors[:3] == pytest.approx([0.5, 1.0, 1.0]) and factors[5] == pytest.approx(0.5 * (1 + np.cos(np.pi * 3 / 4)))
    optimisers = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["optimizer_states"]
    assert [o["param_groups"][0]["lr"] for o in optimisers] == pytest.approx([1e-3 * factors[-1], 2e-3 * factors[-1]])
    assert [o["param_groups"][0]["initial_lr"] for o in optimisers] == [1e-3, 2e-3]


def test_a_run_of_the_old_decoder_rs_spade_loads_as_spade_decoder(small_archive, tmp_path):
    """Runs trained before RS-SPADE became the paper's U-Net hold decoder weights under the name rs-spade."""
    run = train_fusion(small_archive.root, tmp_path / "old", tiny(model="spade-decoder", val_figures=0),
                       progress=False)
    expected = load_fusion(run)
    for path in (run / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        checkpoint["hyper_parameters"]["config"]["model"] = "rs-spade"
        del checkpoint["hyper_parameters"]["planned_steps"]  # older runs did not record it
        torch.save(checkpoint, path)
    task = load_fusion(run)
    assert task.config.model == "spade-decoder" and type(task.generator).__name__ == "SpadeDecoderGenerator"
    inputs = collate([FusionSamples(small_archive, "val", task.config.sources, task.norm)[0]])["cond"]
    with torch.no_grad():
        assert torch.equal(task(inputs), expected(inputs))


def test_generate_writes_georeferenced_pseudo_s2_and_skips_done(spade_run, small_archive, tmp_path):
    import shutil

    archive_copy = tmp_path / "archive"
    shutil.copytree(small_archive.root, archive_copy)
    summary = generate(spade_run, archive_copy, progress=False)
    assert summary.written == 6 and summary.skipped == 0
    for tile_id in [t["tile_id"] for t in small_archive.tiles()]:
        with rasterio.open(archive_copy / "gen" / f"{tile_id}.tif") as gen, \
             rasterio.open(archive_copy / "s2" / f"{tile_id}.tif") as real:
            assert gen.crs == real.crs and gen.transform == real.transform == Tile.from_id(tile_id).transform
            assert gen.dtypes == real.dtypes == ("uint16",) * 4 and gen.nodata == 0
            values = gen.read()
            assert values.min() >= 1 and values.max() <= 10000
            assert gen.tags()["RSGEE_GENERATED_BY"] == str(spade_run.resolve())
    record = json.loads((archive_copy / "gen" / "generated.json").read_text())
    assert record["model"] == "rs-spade" and record["sources"] == "lulc+s1+dem"
    again = generate(spade_run, archive_copy, progress=False)
    assert again.written == 0 and again.skipped == 6
    other = tmp_path / "other"
    train_fusion(small_archive.root, other, tiny(sources=("lulc",)), progress=False)
    with pytest.raises(RsgeeError, match="pass --overwrite"):
        generate(other, archive_copy, progress=False)
    assert generate(other, archive_copy, overwrite=True, progress=False).written == 6


def test_evaluate_on_the_test_split(spade_run):
    rows = evaluate_fusion([spade_run], progress=False)
    # baselines first, same tiles; then the run with its raw and its EMA weights
    assert [(r["model"], r["weights"]) for r in rows] == [("constant-mean", "—"), ("class-mean", "—"),
                                                         ("class-illumination", "—"), ("rs-spade", "raw"),
                                                         ("rs-spade", "ema")]
    assert [r["sources"] for r in rows[:3]] == ["—", "lulc", "lulc+dem"]
    constant, class_mean, _, row, ema = rows
    assert row["sources"] == "lulc+s1+dem" and row["tiles"] == constant["tiles"] == 1
    assert 0 < row["psnr"] < 60 and -1 <= row["ssim"] <= 1 and 0 <= row["sam"] <= np.pi / 2
    expected = ("below constant-mean" if row["psnr"] <= constant["psnr"] else
                "below class-mean" if row["psnr"] <= class_mean["psnr"] else "")
    assert row["note"] == expected and expected  # two steps: nothing learned beyond a land-cover lookup
    assert row["params"].endswith(" M") and float(row["params"][:-2]) > 0.1 and constant["params"] == "0"
    assert ema["psnr"] != row["psnr"]  # the average of 2 steps is not the last weights
    assert [r["model"] for r in evaluate_fusion([spade_run], progress=False, baselines=False)] == ["rs-spade"] * 2


def test_cli_train_and_evaluate(small_archive, tmp_path, capsys):
    from rsgee.cli import main

    run = tmp_path / "cli-run"
    code = main(["train", "fusion", str(small_archive.root), "--out", str(run), "--size", "tiny", "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "2", "--crop", "64", "--sources", "lulc,dem", "--no-progress"])
    assert code == 0 and "trained rs-spade (lulc,dem)" in capsys.readouterr().out
    code = main(["evaluate", "fusion", str(run), "--out", str(tmp_path / "eval"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "| rs-spade | raw | lulc+dem |" in out and "| rs-spade | ema | lulc+dem |" in out
    assert "| class-illumination | — | lulc+dem |" in out
    assert (tmp_path / "eval" / "fusion_table.csv").read_text().startswith("model,weights,sources,psnr,ssim,sam")
    code = main(["train", "fusion", str(small_archive.root), "--out", str(tmp_path / "x"), "--sources", "optical"])
    assert code == 1 and "non-empty subset of lulc, s1, dem" in capsys.readouterr().err
    code = main(["evaluate", "fusion", str(tmp_path / "nothing")])
    assert code == 1 and "is not an rsgee run" in capsys.readouterr().err
    stepped = tmp_path / "stepped"
    code = main(["train", "fusion", str(small_archive.root), "--out", str(stepped), "--size", "tiny", "--steps", "3",
                 "--batch-size", "2", "--crop", "64", "--schedule", "linear", "--warmup", "1", "--augment", "flip",
                 "--val-figures", "0", "--model", "spade-decoder", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    config = read_run(stepped)["config"]
    assert (config["steps"], config["epochs"], config["schedule"], config["warmup"], config["augment"],
            config["val_figures"], config["model"], config["recipe"]) == (3, None, "linear", 1, "flip", 0,
                                                                          "spade-decoder", "pix2pix")
    code = main(["train", "fusion", str(small_archive.root), "--out", str(tmp_path / "y"), "--steps", "3",
                 "--epochs", "2"])
    assert code == 1 and "not both" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["rs-spade", "pix2pix", "spade-decoder"])
def test_an_untrained_generator_starts_at_the_train_band_means(ddp_archive, model):
    data = FusionData(ddp_archive.root, ("lulc", "s1", "terrain"), batch_size=2, progress=False)
    data.prepare_data()
    data.setup()
    batch = collate([data.splits["val"][i] for i in range(2)])
    task = FusionTask(vars(tiny(model=model)), data.norm)  # training mode: BatchNorm on batch statistics
    with torch.no_grad():
        start = model_to_reflectance(task(batch["cond"])).mean(dim=(0, 2, 3))
    assert np.allclose(start.numpy(), data.norm["s2_mean"], atol=0.03), (start, data.norm["s2_mean"])
    off = FusionTask(vars(tiny(model=model, start_at_band_means=False)), data.norm)
    with torch.no_grad():
        assert model_to_reflectance(off(batch["cond"])).mean() == pytest.approx(0.5, abs=0.05)  # tanh(0)


def test_cloud_gaps_never_reach_the_discriminator(ddp_archive, tmp_path, monkeypatch):
    from rsgee.train.fusion import observed

    real, fake = -torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2, requires_grad=True)
    valid = torch.tensor([[[[True, False], [True, True]]]])
    seen = observed(real, fake, valid)
    assert seen[0, :, 0, 1].tolist() == [0.0] * 4 and seen[0, :, 0, 0].tolist() == [-1.0] * 4
    assert not seen.requires_grad  # the fill carries no gradient to the generator
    assert any(t["valid_s2"] < 1 for t in ddp_archive.tiles("train"))  # there are gaps to hide
    gaps = []
    original = FusionTask._discriminate

    def spy(self, condition, fake, real):
        gaps.append(int((real == -1).all(dim=1).sum()))
        return original(self, condition, fake, real)

    monkeypatch.setattr(FusionTask, "_discriminate", spy)
    train_fusion(ddp_archive.root, tmp_path / "run", tiny(crop=None, steps_per_epoch=None), progress=False)
    assert len(gaps) == 2 * 2 and sum(gaps) == 0  # two batches × (D step, G step), never a nodata pixel


@pytest.mark.parametrize("model", ["rs-spade", "pix2pix"])
@pytest.mark.parametrize("recipe", ["pix2pix", "spade", "hybrid"])
def test_any_generator_trains_with_any_recipe(small_archive, tmp_path, model, recipe):
    from rsgee.configs import RECIPES

    run = train_fusion(small_archive.root, tmp_path / "run", tiny(model=model, recipe=recipe, steps_per_epoch=1),
                       progress=False)
    config = read_run(run)["config"]
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in RECIPES[recipe].items()}
    assert {k: config[k] for k in expected} == expected and config["model"] == model
    task = load_fusion(run)
    assert type(task.discriminator).__name__ == {"multiscale": "MultiScaleDiscriminator",
                                                 "patchgan70": "Pix2PixPatchDiscriminator"}[expected["discriminator"]]
    assert all(np.isfinite(float(r["train/g_loss_step"])) for r in metric_rows(run) if r.get("train/g_loss_step"))


def test_recipe_parts_override_and_bad_combinations_are_one_line(small_archive, capsys, tmp_path):
    from rsgee.cli import main

    config = tiny(model="pix2pix", recipe="spade", l1_weight=5.0, betas=(0.9, 0.99), gan_loss="vanilla")
    assert (config.l1_weight, config.betas, config.gan_loss, config.fm_weight) == (5.0, (0.9, 0.99), "vanilla", 10.0)
    assert {tiny(model=m).recipe for m in ("rs-spade", "pix2pix", "spade-decoder")} == {DEFAULT_RECIPE} == {"pix2pix"}
    with pytest.raises(RsgeeError, match="needs the multiscale discriminator"):
        tiny(model="pix2pix", fm_weight=10.0)  # used to crash inside feature matching
    code = main(["train", "fusion", str(small_archive.root), "--out", str(tmp_path / "r"), "--model", "pix2pix",
                 "--fm-weight", "10"])
    assert code == 1 and "use --discriminator multiscale or --fm-weight 0" in capsys.readouterr().err
    code = main(["train", "fusion", str(small_archive.root), "--out", str(tmp_path / "r"), "--betas", "0.5"])
    assert code == 2 and "--betas" in capsys.readouterr().err


def test_the_same_seed_and_threads_give_the_same_run(small_archive, tmp_path):
    """RS-SPADE's demo numbers once moved by several dB between identical runs: they must not."""
    runs = [train_fusion(small_archive.root, tmp_path / name, tiny(epochs=2), progress=False) for name in "ab"]
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
            for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [[(r["val/psnr"], r["val/ssim"]) for r in metric_rows(run) if r.get("val/psnr")] for run in runs]
    assert metrics[0] == metrics[1] and len(metrics[0]) == 2


def test_the_ema_follows_the_generator_with_a_warmed_up_decay():
    from rsgee.train.fusion import generator_average

    generator = torch.nn.Conv2d(1, 1, 1)
    torch.nn.init.constant_(generator.weight, 1.0)
    average = generator_average(generator, 0.999)
    assert not any(p.requires_grad for p in average.parameters())
    average.update_parameters(generator)  # the first update copies
    for n, value in enumerate([3.0, 5.0], start=1):
        before = average.module.weight.item()
        torch.nn.init.constant_(generator.weight, value)
        average.update_parameters(generator)
        keep = min(0.999, (1 + n) / (10 + n))  # n updates done before this one
        assert average.module.weight.item() == pytest.approx(keep * before + (1 - keep) * value, rel=1e-6)


def test_windows_are_generated_alone_and_stitched_in_place():
    from rsgee.train.fusion import in_windows

    def window_mean(cond):  # each output pixel = the mean of its own input window: window borders show
        x = cond["s1"]
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)

    x = (torch.arange(2 * 2 * 256 * 256) % 97).double().reshape(2, 2, 256, 256)  # sums exact in any order
    out = in_windows(window_mean, {"s1": x}, 64)
    expected = x.reshape(2, 2, 4, 64, 4, 64).mean(dim=(3, 5))  # (batch, band, row, col) of the windows
    assert torch.equal(out, expected.repeat_interleave(64, 2).repeat_interleave(64, 3))
    assert torch.equal(in_windows(lambda c: c["s1"] * 2, {"s1": x}, 64), x * 2)  # pixelwise: no seams at all
    with pytest.raises(RsgeeError, match="do not split into 96-px windows"):
        in_windows(window_mean, {"s1": x}, 96)


def test_validation_scores_raw_ema_and_crop_windows_and_generate_takes_the_ema(spade_run, small_archive, tmp_path):
    import shutil

    val = [r for r in metric_rows(spade_run) if r.get("val/psnr")][-1]
    assert {"val/psnr", "val/psnr_ema", "val/psnr_crop", "val/ssim_crop", "val/sam_ema"} <= set(val)
    raw, ema = load_fusion(spade_run), load_fusion(spade_run, weights="ema")
    averaged = ema.generator.state_dict()
    assert averaged.keys() == raw.generator.state_dict().keys()
    assert any(not torch.equal(v, raw.generator.state_dict()[k]) for k, v in averaged.items())
    archive_copy = tmp_path / "archive"
    shutil.copytree(small_archive.root, archive_copy)
    generate(spade_run, archive_copy, progress=False)
    with pytest.raises(RsgeeError, match="raw weights"):
        generate(spade_run, archive_copy, progress=False, weights="ema")
    assert generate(spade_run, archive_copy, progress=False, weights="ema", overwrite=True).written == 6
    record = json.loads((archive_copy / "gen" / "generated.json").read_text())
    assert record["weights"] == "ema"
    with rasterio.open(next((archive_copy / "gen").glob("*.tif"))) as gen:
        assert gen.tags()["RSGEE_WEIGHTS"] == "ema"


def test_no_ema_means_no_ema_rows_and_a_one_line_refusal(small_archive, tmp_path):
    run = train_fusion(small_archive.root, tmp_path / "run", tiny(model="pix2pix", ema_decay=0.0, crop=96),
                       progress=False)
    assert [r["weights"] for r in evaluate_fusion([run], progress=False, baselines=False)] == ["raw"]
    val = [r for r in metric_rows(run) if r.get("val/psnr")][-1]
    assert "val/psnr_ema" not in val and "val/psnr_crop" not in val  # 96-px crops do not tile a 256-px tile
    with pytest.raises(RsgeeError, match="--ema-decay 0"):
        load_fusion(run, weights="ema")
    with pytest.raises(RsgeeError, match="--ema-decay 1"):
        tiny(ema_decay=1.0)


def test_train_or_reuse_reuses_a_finished_run_and_refuses_one_with_other_settings(small_archive, tmp_path):
    from rsgee.train.trainer import train_or_reuse

    config = tiny(model="pix2pix", val_figures=0)
    run = train_or_reuse(train_fusion, small_archive.root, tmp_path / "run", config, progress=False)
    stamp = (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    assert train_or_reuse(train_fusion, small_archive.root, run, config, progress=False) == run
    assert (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamp  # finished: not trained again
    with pytest.raises(RsgeeError, match=r"holds a run with other settings \(l1_weight\), trained by rsgee .*; "
                                         "delete that folder") as error:
        train_or_reuse(train_fusion, small_archive.root, run, tiny(model="pix2pix", val_figures=0, l1_weight=1.0),
                       progress=False)
    assert "\n" not in str(error.value)
