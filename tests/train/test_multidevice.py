"""Data-parallel training as users launch it: `rsgee train … --devices 2` and torchrun, 2 gloo processes on CPU.

Each run is a real multi-process job through the command line. The val metric logged during
training must be the metric of the whole split — the same number ``rsgee evaluate --split val``
gives for that checkpoint on one process — and everything a run writes is written once.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rsgee.train.evaluate import evaluate_fusion
from rsgee.train.trainer import read_metrics, read_run

pytestmark = pytest.mark.slow

TINY = ["--size", "tiny", "--epochs", "2", "--batch-size", "2", "--crop", "64", "--accelerator", "cpu", "--no-progress"]


def run_cli(*args, launcher=(sys.executable, "-m", "rsgee"), timeout=300) -> subprocess.CompletedProcess:
    """The command line in a fresh process, one thread per rank (two ranks on two cores)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("MASTER_PORT", None)
    result = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def table(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def best_val(run: Path, metric: str) -> float:
    """The logged val metric of the epoch whose checkpoint is the run's best."""
    info = read_run(run)
    epoch = int(info["best_checkpoint"].removeprefix("epoch").removesuffix(".ckpt"))
    (row,) = [r for r in read_metrics(run) if r.get(metric) and int(r["epoch"]) == epoch]
    return float(row[metric])


@pytest.mark.parametrize("model", ["rs-spade", "pix2pix"])
def test_two_process_fusion_scores_the_whole_val_split_and_writes_once(ddp_archive, tmp_path, model):
    run = tmp_path / model
    result = run_cli("train", "fusion", ddp_archive.root, "--model", model, "--out", run, "--devices", "2", *TINY)
    assert result.stdout.count("trained ") == 1  # printed by rank 0 only
    info = read_run(run)
    assert info["launch"]["world_size"] == 2 and info["launch"]["accelerator"] == "cpu"
    # 5 train tiles → 3 per rank (one repeat), batch 2 → 1 batch per rank and epoch, 2 optimiser steps each
    assert info["global_step"] == 4 and info["epochs_done"] == 2
    assert sorted(p.name for p in (run / "val").iterdir()) == ["epoch_0000.png", "epoch_0001.png"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(["last.ckpt", info["best_checkpoint"]])
    row, ema = evaluate_fusion([run], split="val", progress=False, baselines=False)
    assert row["tiles"] == ema["tiles"] == 3 and (row["weights"], ema["weights"]) == ("raw", "ema")
    assert best_val(run, "val/psnr") == pytest.approx(row["psnr"], abs=2e-3)
    assert best_val(run, "val/ssim") == pytest.approx(row["ssim"], abs=2e-4)
    assert best_val(run, "val/psnr_ema") == pytest.approx(ema["psnr"], abs=2e-3)  # the average agrees over ranks


def test_two_process_segmentation_and_resume_on_one_device(ddp_archive, tmp_path):
    from rsgee.train.evaluate import evaluate_segmentation

    run = tmp_path / "seg"
    result = run_cli("train", "seg", ddp_archive.root, "--out", run, "--devices", "2", *TINY)
    assert result.stdout.count("trained RS-UNet") == 1
    info = read_run(run)
    assert info["launch"]["world_size"] == 2 and info["global_step"] == 2 * 2  # ceil(5/2) = 3 → 2 batches of ≤ 2
    rows, _ = evaluate_segmentation([run], tmp_path / "eval", split="val", progress=False, baselines=False)
    assert rows[0]["tiles"] == 3 and best_val(run, "val/miou") == pytest.approx(rows[0]["miou"], abs=1e-4)
    assert best_val(run, "val/accuracy") == pytest.approx(rows[0]["accuracy"], abs=1e-4)
    result = run_cli("evaluate", "seg", run, "--split", "val", "--out", tmp_path / "eval2", "--devices", "2",
                     "--accelerator", "cpu", "--no-progress")
    assert result.stdout.count("figure: ") == 3 and result.stdout.count("| real only (True Data) |") == 1
    (row,) = [r for r in table(tmp_path / "eval2" / "seg_table.csv") if r["run"] != "baseline"]
    assert (float(row["miou"]), float(row["accuracy"])) == (rows[0]["miou"], rows[0]["accuracy"])
    # an end-of-epoch checkpoint resumes on another number of devices
    run_cli("train", "seg", ddp_archive.root, "--out", run, "--devices", "1", "--resume", *TINY, "--epochs", "3")
    info = read_run(run)
    assert info["epochs_done"] == 3 and info["launch"]["world_size"] == 1
    assert info["global_step"] == 4 + 3  # then one device: 5 tiles in batches of 2
    epochs = sorted({int(r["epoch"]) for r in read_metrics(run) if r.get("val/miou")})
    assert epochs == [0, 1, 2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_torchrun_launch(ddp_archive, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    run = tmp_path / "seg"
    result = run_cli("train", "seg", ddp_archive.root, "--out", run, *TINY,
                     launcher=(torchrun, "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
                               str(free_port()), "-m", "rsgee"), timeout=180)
    assert result.stdout.count("trained RS-UNet") == 1
    info = read_run(run)
    assert info["launch"] == {"accelerator": "cpu", "devices": 2, "num_nodes": 1, "world_size": 2,
                              "precision": "32-true"}
    assert json.loads((run / "run.json").read_text())["global_step"] == 4


def test_evaluate_and_generate_on_two_processes_score_and_write_each_tile_once(ddp_archive, tmp_path):
    import numpy as np
    import rasterio

    from rsgee.configs import FusionConfig
    from rsgee.train.fusion import train_fusion
    from rsgee.train.generate import generate

    run = train_fusion(ddp_archive.root, tmp_path / "gan", FusionConfig(size="tiny", batch_size=2, epochs=1,
                       steps_per_epoch=1, crop=64), progress=False)
    alone = evaluate_fusion([run], split="val", progress=False, baselines=False)
    result = run_cli("evaluate", "fusion", run, "--split", "val", "--out", tmp_path / "eval", "--devices", "2",
                     "--accelerator", "cpu", "--no-progress")
    assert result.stdout.count("| rs-spade | raw |") == result.stdout.count("| rs-spade | ema |") == 1
    rows = [r for r in table(tmp_path / "eval" / "fusion_table.csv") if r["run"] != "baseline"]
    for row, expected in zip(rows, alone, strict=True):
        assert row["weights"] == expected["weights"] and row["tiles"] == "3"
        assert [float(row[k]) for k in ("psnr", "ssim", "sam")] == [expected[k] for k in ("psnr", "ssim", "sam")]

    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(ddp_archive.root, one)
    shutil.copytree(ddp_archive.root, two)
    assert generate(run, one, progress=False).written == 9
    result = run_cli("generate", run, two, "--devices", "2", "--accelerator", "cpu", "--no-progress")
    assert result.stdout.count("generated 9 tile(s), 0 already done") == 1
    assert sorted(p.name for p in (two / "gen").glob("*.tif")) == sorted(p.name for p in (one / "gen").glob("*.tif"))
    for path in (one / "gen").glob("*.tif"):
        with rasterio.open(path) as a, rasterio.open(two / "gen" / path.name) as b:
            assert np.abs(a.read().astype(int) - b.read().astype(int)).max() <= 1  # batch composition only
    again = run_cli("generate", run, two, "--devices", "2", "--accelerator", "cpu", "--no-progress")
    assert "generated 0 tile(s), 9 already done" in again.stdout


def test_a_slurm_launch_of_two_tasks(ddp_archive, tmp_path):
    """Two processes started as `srun --ntasks-per-node 2` starts them: SLURM's variables, no launcher of our own."""
    run, port = tmp_path / "seg", str(free_port())
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", SLURM_NTASKS="2",
                   SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="1", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                   SLURM_NODEID="0", SLURM_NODELIST="127.0.0.1", SLURM_JOB_ID="4242", SLURM_JOB_NAME="rsgee",
                   MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-m", "rsgee", "train", "seg", str(ddp_archive.root), "--out",
                                       str(run), *TINY], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, stdin=subprocess.DEVNULL))
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert sum(out.count("trained RS-UNet") for out, _ in outputs) == 1  # task 0 only
    assert read_run(run)["launch"]["world_size"] == 2 and read_run(run)["global_step"] == 4
