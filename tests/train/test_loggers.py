"""--logger: W&B (offline) and MLflow (a file store) get the run's settings, sizes and test scores, by flag."""

from __future__ import annotations

import json
import sys
import time

import pytest

from rsgee.cli import main


@pytest.fixture
def trackers(monkeypatch):
    """The wandb and mlflow modules, W&B offline and quiet, MLflow at the run's own default store."""
    wandb = pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return wandb, mlflow


@pytest.mark.slow
def test_a_run_logs_to_wandb_offline_and_mlflow_by_flag(trackers, small_archive, tmp_path, capsys):
    wandb, mlflow = trackers
    run = tmp_path / "run"
    code = main(["train", "fusion", str(small_archive.root), "--out", str(run), "--size", "tiny", "--steps", "2",
                 "--batch-size", "2", "--crop", "64", "--val-figures", "0", "--no-progress",
                 "--logger", "wandb", "--logger", "mlflow"])
    assert code == 0, capsys.readouterr().err
    logged_run = wandb.run  # the run W&B keeps open until the process ends (or finish)
    summary, config = dict(logged_run.summary), dict(logged_run.config)
    wandb.finish()
    assert summary["test/psnr"] > 0 and "test/class-mean/psnr" in summary and "test/ema/psnr" in summary
    assert "val/psnr" in summary  # the last of the metrics logged while training
    assert config["config"]["model"] == "rs-spade" and config["parameters/generator"] > 1000
    (offline,) = run.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 60  # W&B's service process writes the record file after finish() returns
    while offline.stat().st_size <= 1000 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert offline.stat().st_size > 1000  # on disk for `wandb sync`

    client = mlflow.tracking.MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "rsgee"]
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == "run" and logged.data.params["config/model"] == "rs-spade"
    assert int(logged.data.params["parameters/generator"]) > 1000
    assert logged.data.metrics["test/psnr"] == pytest.approx(summary["test/psnr"])
    assert "val/psnr" in logged.data.metrics  # the metrics logged while training, not only the summary
    assert (run / "logs" / "metrics.csv").exists()  # always kept: rsgee's own tables read it


def test_a_logger_whose_extra_is_missing_is_one_line(small_archive, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    code = main(["train", "seg", str(small_archive.root), "--out", str(tmp_path / "run"), "--size", "tiny",
                 "--steps", "1", "--no-progress", "--logger", "wandb"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "pip install 'rsgee[wandb]'" in err


@pytest.mark.slow
def test_a_resumed_run_continues_its_wandb_and_mlflow_runs(trackers, small_archive, tmp_path, capsys):
    wandb, mlflow = trackers
    run = tmp_path / "seg"
    args = ["train", "seg", str(small_archive.root), "--out", str(run), "--size", "tiny", "--batch-size", "2",
            "--crop", "64", "--no-progress", "--logger", "mlflow", "--logger", "wandb"]
    assert main([*args, "--steps", "2"]) == 0, capsys.readouterr().err
    wandb.finish()
    first = json.loads((run / "run.json").read_text())["loggers"]
    assert main([*args, "--steps", "4", "--resume"]) == 0, capsys.readouterr().err
    wandb.finish()
    assert json.loads((run / "run.json").read_text())["loggers"] == first
    client = mlflow.tracking.MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "rsgee"]
    (logged,) = client.search_runs([experiment.experiment_id])  # one run, continued
    assert logged.info.run_id == first["mlflow"]
    assert logged.data.params["config/steps"] == "2" and logged.data.tags["resumed/config/steps"] == "4"
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "test/miou")] == [2, 4]
    offline = sorted(p.name for p in run.glob("wandb/offline-run-*"))
    # offline-run-<time>-<id>, with "-1" added when both started in the same second: `wandb sync` joins them
    assert len(offline) == 2 and all(name.split("-")[3] == first["wandb"] for name in offline)
