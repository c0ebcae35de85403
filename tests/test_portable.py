"""Exported models: the checkpoint's outputs bit for bit, ONNX, predict from a folder without Lightning, one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch

from rsgee.errors import RsgeeError
from rsgee.models import factory
from rsgee.portable import CONFIG_FILE, FORMAT, FORMAT_VERSION, ONNX_FILE, WEIGHTS_FILE, export_model, load_model
from rsgee.predict import predict_fusion, predict_seg
from rsgee.train.data import FusionSamples, collate
from rsgee.train.fusion import load_fusion
from rsgee.train.segmentation import load_segmentation, real_test_samples
from rsgee.train.trainer import read_metrics, read_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tiny_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("portable-models")
    return {"seg": export_model(tiny_runs["seg"], out / "seg"), "raw": export_model(tiny_runs["gan"], out / "raw"),
            "ema": export_model(tiny_runs["gan"], out / "ema", weights="ema")}


@pytest.fixture(scope="module")
def tiles(small_archive, tiny_runs):
    """The four train tiles as each model reads them."""
    norm = read_run(tiny_runs["gan"])["normalisation"]
    fusion = FusionSamples(small_archive, "train", ("lulc", "s1", "terrain"), norm)
    seg = real_test_samples(small_archive, "train")
    return {"cond": collate([fusion[i] for i in range(len(fusion))])["cond"],
            "image": torch.stack([seg[i]["image"] for i in range(len(seg))])}


@pytest.fixture(scope="module")
def export(small_archive):
    return small_archive.root.parent / "exports" / "valley"  # the AOI the archive was tiled from


@pytest.fixture(scope="module")
def from_runs(tiny_runs, export, tmp_path_factory):
    """What predict writes from the run folders: a map with probabilities, cloud-filled EMA Sentinel-2."""
    out = tmp_path_factory.mktemp("predict-from-tiny_runs")
    predict_seg(tiny_runs["seg"], export, out / "map.tif", probabilities=True, progress=False)
    predict_fusion(tiny_runs["gan"], export, out / "s2.tif", fill_clouds=True, weights="ema", progress=False)
    return {name: read(out / f"{name}.tif") for name in ("map", "map_probabilities", "s2")}


def read(path):
    with rasterio.open(path) as src:
        return src.read()


def test_the_folder_reproduces_the_checkpoint_bit_for_bit(tiny_runs, models, tiles):
    with torch.no_grad():
        outputs = {}
        for weights in ("raw", "ema"):
            outputs[weights] = load_fusion(tiny_runs["gan"], weights=weights)(tiles["cond"])
            assert torch.equal(load_model(models[weights])(tiles["cond"]), outputs[weights])
        assert not torch.equal(outputs["raw"], outputs["ema"])  # the two exports hold different weights
        expected = load_segmentation(tiny_runs["seg"])(tiles["image"])
        assert torch.equal(load_model(models["seg"])(tiles["image"]), expected)
    assert outputs["raw"].shape == (4, 4, 256, 256) and expected.shape == (4, 9, 256, 256)

    info, config = read_run(tiny_runs["gan"]), json.loads((models["ema"] / CONFIG_FILE).read_text())
    assert (config["format"], config["format_version"], config["kind"], config["weights"]) == (
        FORMAT, FORMAT_VERSION, "fusion", "ema")
    assert config["checkpoint"] == info["best_checkpoint"] and config["normalisation"] == info["normalisation"]
    assert config["inputs"] == info["inputs"] and config["classes"] == info["classes"] and config["classes"][0] == "water"
    assert config["sources"] == ["lulc", "s1", "terrain"] and config["architecture"]["name"] == "rs-spade"
    assert config["architecture"]["settings"] == factory.generator_settings("rs-spade", config["sources"], "tiny")
    assert config["training"]["tiles"] == {"train": 4, "val": 1, "test": 1}
    assert config["training"]["aois"]["valley"]["source"] == "synthetic"
    seg = json.loads((models["seg"] / CONFIG_FILE).read_text())
    assert seg["architecture"]["settings"]["base_channels"] == 8 and seg["sources"] == ["s2"]
    assert seg["inputs"] == {"s2": info["inputs"]["s2"]}  # only what the model reads


def test_a_saved_model_keeps_its_architecture_when_presets_change(models, tiles, monkeypatch):
    one = {k: v[:1] for k, v in tiles["cond"].items()}
    with torch.no_grad():
        expected = load_model(models["raw"])(one)
        monkeypatch.setitem(factory.GENERATOR_PRESETS["rs-spade"], "tiny", {"ngf": 16, "num_downs": 5,
                                                                            "embed_channels": 8, "spade_hidden": 16})
        assert torch.equal(load_model(models["raw"])(one), expected)  # config.json's settings, not the preset


def test_onnx_runs_in_onnxruntime_as_torch_does(tiny_runs, tiles, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    for name, inputs in (("gan", tiles["cond"]), ("seg", {"image": tiles["image"]})):
        folder = export_model(tiny_runs[name], tmp_path / name, onnx=True)
        model = load_model(folder)
        session = ort.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == list(inputs) == list(model.config["onnx"]["inputs"])
        assert "model.onnx" in (folder / "README.md").read_text()
        for batch in (1, 3):  # the export traced 2: the batch axis is free
            feed = {k: v[:batch] for k, v in inputs.items()}
            (got,) = session.run(None, {k: v.numpy() for k, v in feed.items()})
            with torch.no_grad():
                want = (model(feed) if name == "gan" else model(feed["image"])).numpy()
            assert got.shape == want.shape and np.abs(got - want).max() < 1e-4
            assert np.abs(want).mean() > 1e-3  # not a trivially zero output


def test_predict_from_the_model_folder_writes_the_run_folders_pixels(models, from_runs, export, tmp_path):
    result = predict_seg(models["seg"], export, tmp_path / "map.tif", probabilities=True, progress=False)
    assert result.status == "written"
    assert np.array_equal(read(tmp_path / "map.tif"), from_runs["map"])
    assert np.array_equal(read(tmp_path / "map_probabilities.tif"), from_runs["map_probabilities"], equal_nan=True)
    predict_fusion(models["ema"], export, tmp_path / "s2.tif", fill_clouds=True, progress=False)
    assert np.array_equal(read(tmp_path / "s2.tif"), from_runs["s2"]) and (from_runs["s2"][4] == 1).any()
    with rasterio.open(tmp_path / "s2.tif") as src:
        assert src.tags()["RSGEE_MODEL"] == str(models["ema"].resolve()) and src.tags()["RSGEE_WEIGHTS"] == "ema"
    assert predict_fusion(models["ema"], export, tmp_path / "s2.tif", fill_clouds=True,
                          progress=False).status == "up to date"
    with pytest.raises(RsgeeError, match="holds the ema weights of its run, not the raw ones"):
        predict_fusion(models["ema"], export, tmp_path / "x.tif", weights="raw", progress=False)
    with pytest.raises(RsgeeError, match="holds a segmentation model, not a fusion one"):
        predict_fusion(models["seg"], export, tmp_path / "x.tif", progress=False)


WITHOUT_LIGHTNING = """
import sys
sys.modules["lightning"] = None  # as if rsgee had been installed with the predict extra only
sys.modules["pytorch_lightning"] = None
from rsgee.portable import load_model
from rsgee.predict import predict_fusion, predict_seg
model, export, out = sys.argv[1:4]
assert load_model(model).kind == "fusion"
predict_fusion(model, export, out + "/s2.tif", fill_clouds=True, progress=False)
predict_seg(model.replace("ema", "seg"), export, out + "/map.tif", progress=False)
heavy = sorted(m for m in ("lightning", "pytorch_lightning", "torchmetrics", "matplotlib") if sys.modules.get(m))
print("imported:", heavy)
"""


def test_a_model_folder_predicts_without_lightning(models, from_runs, export, tmp_path):
    done = subprocess.run([sys.executable, "-c", WITHOUT_LIGHTNING, str(models["ema"]), str(export), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "imported: []"
    assert np.array_equal(read(tmp_path / "s2.tif"), from_runs["s2"])
    assert np.array_equal(read(tmp_path / "map.tif"), from_runs["map"])


def test_an_export_is_atomic_skipped_when_done_and_replaced_when_changed(tiny_runs, tmp_path):
    out = tmp_path / "model"
    (tmp_path / ".model.x1y2.tmp").mkdir()  # left by a killed export
    export_model(tiny_runs["gan"], out)
    weights = out / WEIGHTS_FILE
    stamp, raw = weights.stat().st_mtime_ns, weights.read_bytes()
    assert export_model(tiny_runs["gan"], out) == out and weights.stat().st_mtime_ns == stamp  # up to date: skipped
    export_model(tiny_runs["gan"], out, weights="ema")
    assert json.loads((out / CONFIG_FILE).read_text())["weights"] == "ema" and weights.read_bytes() != raw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporaries left beside it
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_the_model_card_says_what_where_from_and_its_limits(tiny_runs, models, tmp_path):
    card = (models["raw"] / "README.md").read_text()
    last = [r for r in read_metrics(tiny_runs["gan"]) if r.get("val/psnr")][-1]
    assert f"{float(last['val/psnr']):.4g}" in card and "logs/metrics.csv" in card
    assert "synthetic" in card and "256×256" in card and "B2 B3 B4 B8" in card and "valley (synthetic)" in card
    assert "rsgee evaluate fusion RUN" in card
    table = tmp_path / "fusion_table.csv"
    table.write_text("model,weights,sources,psnr,ssim,sam,params,tiles,note,run\n"
                     "class-mean,—,lulc,21.5,0.61,0.12,0,1,,baseline\n"
                     f"rs-spade,raw,lulc+s1+dem,19.25,0.55,0.2,0.36 M,1,below class-mean,{tiny_runs['gan']}\n"
                     "rs-spade,raw,lulc+s1+dem,99.0,0.9,0.1,0.36 M,1,,elsewhere/other-run\n")
    card = (export_model(tiny_runs["gan"], tmp_path / "m", evaluation=tmp_path) / "README.md").read_text()
    assert "| class-mean | — | lulc | 21.5 |" in card and "19.25" in card and "99.0" not in card
    with pytest.raises(RsgeeError, match="has no rows for"):
        export_model(tiny_runs["seg"], tmp_path / "s", evaluation=table)


def test_bad_runs_and_folders_are_one_line(tiny_runs, models, export, tmp_path):
    def error(call, *args, **kwargs) -> str:
        with pytest.raises(RsgeeError) as caught:
            call(*args, **kwargs)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    assert "is not an rsgee run" in error(export_model, tmp_path, tmp_path / "out")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    info = read_run(tiny_runs["gan"])
    (fresh / "run.json").write_text(json.dumps({k: v for k, v in info.items() if k != "best_checkpoint"}))
    assert "no checkpoint yet" in error(export_model, fresh, tmp_path / "out")
    (fresh / "run.json").write_text(json.dumps(dict(info, config=dict(info["config"], ema_decay=0.0))))
    assert "--ema-decay 0" in error(export_model, fresh, tmp_path / "out", weights="ema")
    assert "--weights raw" in error(export_model, tiny_runs["seg"], tmp_path / "out", weights="ema")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert "is not a model folder" in error(export_model, tiny_runs["seg"], tmp_path / "taken")
    assert not (tmp_path / "out").exists()

    assert "no config.json" in error(load_model, tmp_path / "taken")
    broken = tmp_path / "broken"

    def copy(name: str, **config):
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(models[name], broken)
        (broken / CONFIG_FILE).write_text(json.dumps({**json.loads((broken / CONFIG_FILE).read_text()), **config}))

    copy("raw", format_version=FORMAT_VERSION + 1)
    assert "format version 2" in (text := error(load_model, broken)) and "upgrade rsgee" in text
    copy("raw", format="something-else")
    assert "is not an rsgee model config" in error(load_model, broken)
    copy("raw")
    (broken / WEIGHTS_FILE).unlink()
    assert "has no model.safetensors" in error(load_model, broken)
    assert "has no model.safetensors" in error(predict_fusion, broken, export, tmp_path / "b.tif", progress=False)
    assert not (tmp_path / "b.tif").exists()
    shutil.copy(models["seg"] / WEIGHTS_FILE, broken / WEIGHTS_FILE)  # another model's weights
    assert "tensor(s) missing" in (text := error(load_model, broken)) and "unexpected" in text
    config = json.loads((models["seg"] / CONFIG_FILE).read_text())
    settings = dict(config["architecture"]["settings"], base_channels=16)
    copy("seg", architecture=dict(config["architecture"], settings=settings))
    assert "of another shape" in error(load_model, broken)
    copy("seg", architecture=dict(config["architecture"], settings=dict(settings, wings=2)))
    assert "do not fit this rsgee's rs-unet (no setting wings)" in error(load_model, broken)
    copy("seg", architecture=dict(config["architecture"], name="rs-future"))
    assert "unknown architecture 'rs-future'" in error(load_model, broken)
    copy("seg")
    (broken / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    assert "is damaged" in error(load_model, broken)
    (broken / CONFIG_FILE).write_text("{")
    assert "is damaged" in error(load_model, broken)
