"""benchmarks/gpu_smoke.py stays runnable: it exits 0 without CUDA and its CPU dry run trains all three models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_smoke.py"


def run(*args, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script really runs")
def test_without_cuda_it_says_so_and_exits_0():
    result = run()
    assert result.returncode == 0 and "no CUDA device visible" in result.stdout


@pytest.mark.slow
def test_cpu_dry_run_reports_every_model(tmp_path):
    result = run("--cpu", "--size", "tiny", "--work", tmp_path, "--batch-size", "2", "--steps", "2", "--warmup", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| rs-") or
            line.startswith("| pix2pix")]
    assert [r[0].strip("| ") for r in rows] == ["rs-spade", "pix2pix", "rs-unet"]
    assert all(r[-1].strip(" |") == "True" and float(r[4]) > 0 for r in rows)  # finite losses, a measured rate
    predicted = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith(("| seg", "| fusion"))]
    assert [r[0].strip("| ") for r in predicted] == ["seg", "fusion --fill-clouds"]
    assert all(int(r[2]) > 0 and float(r[4].strip(" |")) > 0 for r in predicted)  # windows run, a measured rate


CONVERGE = SCRIPT.with_name("gpu_converge.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script really runs")
def test_the_convergence_run_without_cuda_says_so_and_exits_0():
    result = subprocess.run([sys.executable, str(CONVERGE)], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and "no CUDA device visible" in result.stdout


@pytest.mark.slow
def test_the_convergence_run_on_cpu_reports_every_model_with_its_curve(small_archive, tmp_path):
    args = ["--cpu", "--size", "tiny", "--archive", small_archive.root, "--work", tmp_path, "--minutes", "0.02",
            "--probe", "2", "--validations", "2", "--batch-size", "2", "--crop", "64"]
    result = subprocess.run([sys.executable, str(CONVERGE), *map(str, args)], capture_output=True, text=True,
                            timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"), stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val baselines: constant-mean" in result.stdout and "per-pixel-gaussian mIoU" in result.stdout
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith(("| pix2pix", "| rs-"))]
    assert [r[0].strip("| ") for r in rows] == ["pix2pix", "rs-spade", "rs-unet"]
    for row in rows:
        steps, curve = int(row[3]), row[-1]
        assert steps >= 2 and float(row[4]) > 0  # a measured rate
        assert f": {steps} → " in curve  # the last validation is after the last step
