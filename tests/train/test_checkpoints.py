"""Checkpoints that can be trusted, precision and numerical guards, on one CPU process.

``last.ckpt`` must hold where training stopped (not the best epoch), a run killed with SIGKILL
mid-epoch must resume to the same optimiser steps and weights as an uninterrupted one, bf16 must
run on CPU, and a non-finite loss must stop the run in one line without touching a good checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rsgee.models import losses
from rsgee.configs import FusionConfig, SegmentationConfig
from rsgee.train.fusion import FusionTask, train_fusion
from rsgee.train.segmentation import SegmentationTask, train_segmentation
from rsgee.train.trainer import NonFiniteError, lr_factor, read_metrics, read_run

pytestmark = pytest.mark.slow


def seg(**overrides) -> SegmentationConfig:
    return SegmentationConfig(**{**dict(size="tiny", batch_size=1, epochs=2, crop=64, seed=0), **overrides})


def fusion(**overrides) -> FusionConfig:
    return FusionConfig(**{**dict(size="tiny", batch_size=2, epochs=2, steps_per_epoch=2, crop=64, seed=0), **overrides})


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_last_ckpt_holds_the_last_epoch_when_the_best_is_earlier(ddp_archive, tmp_path, monkeypatch):
    # make the monitored metric fall every epoch, so that epoch 0 stays the best
    def falling(self):
        self.val_metrics.reset()
        self.log("val/miou", 1.0 / (self.current_epoch + 1))

    monkeypatch.setattr(SegmentationTask, "on_validation_epoch_end", falling)
    run = train_segmentation(ddp_archive.root, tmp_path / "run", seg(epochs=3), progress=False)
    assert read_run(run)["best_checkpoint"] == "epoch0000.ckpt"
    last = load(run / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 2 and last["global_step"] == 15  # 3 epochs × 5 batches
    train_segmentation(ddp_archive.root, run, seg(epochs=4), resume=True, progress=False)
    assert load(run / "checkpoints" / "last.ckpt")["global_step"] == 20  # continued from epoch 2, not from the best
    assert not list((run / "checkpoints").glob(".*.tmp"))


KILLER = textwrap.dedent("""
    import os, signal, sys
    from rsgee.train import trainer
    from rsgee.configs import SegmentationConfig
    from rsgee.train.segmentation import train_segmentation

    kill_at = int(sys.argv[3])
    original = trainer.LastCheckpoint.on_train_batch_end

    def then_die(self, t, *args):
        original(self, t, *args)
        if kill_at and t.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.LastCheckpoint.on_train_batch_end = then_die
    config = SegmentationConfig(size="tiny", batch_size=1, epochs=2, crop=64, seed=0, checkpoint_every=2)
    train_segmentation(sys.argv[1], sys.argv[2], config, resume=sys.argv[4] == "resume", progress=False)
""")


def killable(script: str, archive):
    """Run ``script`` (KILLER or GAN_KILLER) on ``archive`` in a fresh process: ``python(run, kill_at, mode)``."""
    def python(run, kill_at, mode):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        return subprocess.run([sys.executable, "-c", script, str(archive.root), str(run), str(kill_at), mode],
                              capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    return python


def test_a_run_killed_mid_epoch_resumes_to_the_same_steps_and_weights(ddp_archive, tmp_path):
    python = killable(KILLER, ddp_archive)

    whole = tmp_path / "whole"
    assert python(whole, 0, "fresh").returncode == 0
    killed = tmp_path / "killed"
    died = python(killed, 7, "fresh")  # epoch 1, batch 2 of 5; last.ckpt was written after batch 6
    assert died.returncode == -9, died.stderr[-2000:]
    interrupted = load(killed / "checkpoints" / "last.ckpt")
    assert interrupted["global_step"] == 6 and interrupted["epoch"] == 1
    resumed = python(killed, 0, "resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "not resumable" not in resumed.stderr
    a, b = load(whole / "checkpoints" / "last.ckpt"), load(killed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 10
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


GAN_KILLER = textwrap.dedent("""
    import os, signal, sys
    from rsgee.train import trainer
    from rsgee.configs import FusionConfig
    from rsgee.train.fusion import train_fusion

    kill_at = int(sys.argv[3])
    original = trainer.LastCheckpoint.on_train_batch_end

    def then_die(self, t, *args):
        original(self, t, *args)
        if kill_at and t.lightning_module.steps_done == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.LastCheckpoint.on_train_batch_end = then_die
    config = FusionConfig(model="pix2pix", size="tiny", batch_size=2, steps=7, crop=64, seed=0, schedule="cosine",
                          warmup=2, val_figures=0, checkpoint_every=1)
    train_fusion(sys.argv[1], sys.argv[2], config, resume=sys.argv[4] == "resume", progress=False)
""")


def test_a_gan_killed_mid_schedule_resumes_to_the_same_learning_rates_and_weights(ddp_archive, tmp_path):
    """--steps 7 with warm-up and cosine decay: killed after step 5 (mid-epoch), resumed, identical to a whole run."""
    python = killable(GAN_KILLER, ddp_archive)

    whole = tmp_path / "whole"
    assert python(whole, 0, "fresh").returncode == 0
    killed = tmp_path / "killed"
    died = python(killed, 5, "fresh")  # 2 batches an epoch: step 5 is the first batch of the third epoch
    assert died.returncode == -9, died.stderr[-2000:]
    assert load(killed / "checkpoints" / "last.ckpt")["rsgee_steps_done"] == 5
    resumed = python(killed, 0, "resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load(whole / "checkpoints" / "last.ckpt"), load(killed / "checkpoints" / "last.ckpt")
    assert a["rsgee_steps_done"] == b["rsgee_steps_done"] == 7 and a["global_step"] == b["global_step"] == 14
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert [o["param_groups"][0]["lr"] for o in a["optimizer_states"]] == \
           [o["param_groups"][0]["lr"] for o in b["optimizer_states"]]
    factors = [float(r["train/lr_factor"]) for r in read_metrics(killed) if r.get("train/lr_factor")]
    assert factors[-2:] == pytest.approx([lr_factor("cosine", step, 7, 2) for step in (5, 6)])
    assert read_run(killed)["steps_done"] == 7


def test_bf16_mixed_trains_on_cpu(ddp_archive, tmp_path):
    run = train_fusion(ddp_archive.root, tmp_path / "gan", fusion(epochs=1), precision="bf16-mixed", progress=False)
    assert read_run(run)["launch"]["precision"] == "bf16-mixed"
    values = [float(r["train/g_loss_step"]) for r in read_metrics(run) if r.get("train/g_loss_step")]
    assert values and all(torch.isfinite(torch.tensor(values)))
    run = train_segmentation(ddp_archive.root, tmp_path / "seg", seg(epochs=1), precision="bf16-mixed", progress=False)
    state = load(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert read_run(run)["launch"]["precision"] == "bf16-mixed"


@pytest.fixture
def l1_turns_nan_at_batch_3(monkeypatch):
    calls = {"n": 0}
    original = losses.masked_l1_loss

    def nan_later(fake, real, valid):
        calls["n"] += 1
        value = original(fake, real, valid)
        return value * float("nan") if calls["n"] >= 3 else value

    monkeypatch.setattr(losses, "masked_l1_loss", nan_later)


def test_a_nonfinite_loss_stops_the_run_and_keeps_the_good_checkpoint(ddp_archive, tmp_path, l1_turns_nan_at_batch_3):
    with pytest.raises(NonFiniteError, match=r"non-finite loss \(g_l1, g_loss\) in the generator step of batch 3"):
        train_fusion(ddp_archive.root, tmp_path / "run", fusion(), progress=False)
    kept = load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert kept["epoch"] == 0 and kept["global_step"] == 4  # epoch 0: 2 batches × (D + G)
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


def test_skip_nonfinite_skips_and_counts(ddp_archive, tmp_path, l1_turns_nan_at_batch_3):
    run = train_fusion(ddp_archive.root, tmp_path / "run", fusion(skip_nonfinite=True), progress=False)
    skipped = [float(r["train/skipped_nonfinite"]) for r in read_metrics(run) if r.get("train/skipped_nonfinite")]
    assert skipped[-1] == 2  # batches 3 and 4 lost their generator step
    assert read_run(run)["global_step"] == 4 + 2  # the discriminator still stepped on them
    state = load(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_clip_grad_norm_clips_each_optimiser(ddp_archive):
    task = FusionTask(vars(fusion(clip_grad_norm=0.5)), {"dem_mean": 0.0, "dem_std": 1.0, "s1_bands": ["VV", "VH"]})
    optimiser = torch.optim.Adam(task.generator.parameters())
    for p in task.generator.parameters():
        p.grad = torch.full_like(p, 3.0)
    task.on_before_optimizer_step(optimiser)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in task.generator.parameters()]))
    assert norm == pytest.approx(0.5, rel=1e-3)
    task.config.clip_grad_norm = None
    for p in task.generator.parameters():
        p.grad = torch.full_like(p, 3.0)
    task.on_before_optimizer_step(optimiser)
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in task.generator.parameters())  # off by default
