"""A run's run.json passed back to --config trains the same run again."""

from __future__ import annotations

import pytest

from rsgee.cli import main
from rsgee.train.trainer import read_run


@pytest.mark.slow
@pytest.mark.parametrize("kind, options", [
    ("fusion", ["--model", "pix2pix", "--sources", "lulc,dem", "--recipe", "hybrid", "--lr-g", "3e-4", "--crop", "64",
                "--ema-decay", "0.9", "--val-figures", "0", "--betas", "0.2,0.99"]),
    ("seg", ["--lr", "5e-4", "--weight-decay", "0", "--augment", "flip", "--crop", "64"]),
])
def test_a_run_json_repeats_the_run(small_archive, tmp_path, capsys, kind, options):
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--size", "tiny", "--steps", "2", "--batch-size", "2", "--seed", "3", "--no-progress"]
    assert main(["train", kind, str(small_archive.root), "--out", str(first), *common, *options]) == 0
    assert main(["train", kind, "--config", str(first / "run.json"), "--out", str(second), "--no-progress"]) == 0
    capsys.readouterr()
    one, two = read_run(first), read_run(second)
    assert two["config"] == one["config"] and two["archive"] == one["archive"]
    assert one["config"]["seed"] == 3 and one["config"]["steps"] == 2
    assert main(["train", kind, "--config", str(first / "run.json"), "--out", str(tmp_path / "third"), "--steps",
                 "1", "--print-config"]) == 0
    assert "steps: 1\n" in capsys.readouterr().out  # the command line overrides the run's settings
