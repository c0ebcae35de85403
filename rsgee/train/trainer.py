"""What every training run shares: the run folder, the Lightning trainer, seeding and resuming.

A run folder holds ``run.json`` (what was trained, on which archive, with which settings),
``checkpoints/`` (``last.ckpt`` for ``--resume``, plus the best by the monitored metric),
``logs/metrics.csv`` (and TensorBoard events when tensorboard is installed) and ``val/`` figures.
CUDA, mixed precision and several GPUs (DDP, synchronised BatchNorm) are used when present; the
same code runs on the CPU.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from rsgee import __version__
from rsgee.errors import RsgeeError
from rsgee.geotiff import write_json_atomic

RUN_FILE = "run.json"


def write_run(run_dir: Path, info: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / RUN_FILE, dict(info, rsgee_version=__version__))


def read_run(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RsgeeError(f"{run_dir} is not an rsgee run (no {RUN_FILE}); train one with rsgee train") from None


def checkpoint_of(run_dir: str | Path, which: str = "best") -> Path:
    """The run's best checkpoint (falling back to last.ckpt), or last.ckpt for ``which="last"``."""
    folder = Path(run_dir) / "checkpoints"
    if which == "best":
        best = read_run(run_dir).get("best_checkpoint")
        if best and (folder / best).exists():
            return folder / best
    last = folder / "last.ckpt"
    if not last.exists():
        raise RsgeeError(f"{run_dir}: no checkpoint yet; train (or --resume) the run first")
    return last


def make_trainer(run_dir: Path, *, max_epochs: int, limit_train_batches: int | None = None, monitor: str | None = None,
                 mode: str = "max", accelerator: str = "auto", devices: int | str = "auto",
                 precision: str | None = None, progress: bool = True, val_every: int = 1,
                 limit_val_batches: int | float | None = None) -> L.Trainer:
    """A Lightning trainer writing checkpoints and logs into ``run_dir``."""
    cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if precision is None:
        precision = "16-mixed" if cuda else "32-true"
    n_devices = torch.cuda.device_count() if cuda and devices == "auto" else (devices if devices != "auto" else 1)
    strategy = "ddp" if cuda and isinstance(n_devices, int) and n_devices > 1 else "auto"
    callbacks = [ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="epoch{epoch:04d}", auto_insert_metric_name=False,
                                 save_last=True, monitor=monitor, mode=mode, save_top_k=1)]
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    loggers = [CSVLogger(save_dir=str(run_dir), name="", version="logs")]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        import tensorboard  # noqa: F401 — only when installed

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard"))
    except ImportError:
        pass
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # resuming a run
    return L.Trainer(
        default_root_dir=str(run_dir), max_epochs=max_epochs, limit_train_batches=limit_train_batches, accelerator=accelerator,
        devices=n_devices if cuda else (devices if devices != "auto" else 1), strategy=strategy,
        sync_batchnorm=strategy == "ddp", precision=precision, callbacks=callbacks, logger=loggers,
        enable_progress_bar=progress, enable_model_summary=False, deterministic="warn" if cuda else True,
        check_val_every_n_epoch=val_every, log_every_n_steps=1, num_sanity_val_steps=0,
        limit_val_batches=limit_val_batches,
    )


def seed_everything(seed: int) -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    L.seed_everything(seed, workers=True, verbose=False)


def keep_logs_for_resume(run_dir: Path) -> None:
    """Lightning's CSV logger starts metrics.csv afresh: move the earlier part aside first."""
    current = run_dir / "logs" / "metrics.csv"
    if current.exists():
        part = 1 + sum(1 for _ in current.parent.glob("metrics.part*.csv"))
        current.rename(current.with_name(f"metrics.part{part}.csv"))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every logged row of a run, across resumes, in the order they were written."""
    import csv

    folder = Path(run_dir) / "logs"
    parts = sorted(folder.glob("metrics.part*.csv"), key=lambda p: int(p.stem.removeprefix("metrics.part")))
    rows = []
    for path in parts + [folder / "metrics.csv"]:
        if path.exists():
            with open(path, encoding="utf-8") as handle:
                rows.extend(csv.DictReader(handle))
    return rows


#: Settings a resumed run may change: train longer, read with more workers.
RESUMABLE_CHANGES = ("epochs", "num_workers")


def start_run(run_dir: Path, config: dict, *, resume: bool) -> Path | None:
    """Check that a run may start (or resume) in ``run_dir``; returns the checkpoint to resume from."""
    if resume:
        stored = read_run(run_dir)["config"]
        fresh = json.loads(json.dumps(config))  # tuples → lists, as stored
        changed = [k for k, v in fresh.items() if stored.get(k) != v and k not in RESUMABLE_CHANGES]
        if changed:
            raise RsgeeError(f"{run_dir} was trained with other settings ({', '.join(changed)}); resume with the same "
                             "options (only --epochs and --workers may change) or use another --out")
        ckpt = checkpoint_of(run_dir, "last")
        keep_logs_for_resume(run_dir)
        return ckpt
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        raise RsgeeError(f"{run_dir} already holds a trained run; pass --resume to continue it or choose another --out")
    return None


def finish_run(run_dir: Path, trainer: L.Trainer) -> Path:
    """Record the best checkpoint and how far training got in run.json."""
    info = read_run(run_dir)
    best = trainer.checkpoint_callback.best_model_path
    info.update(best_checkpoint=Path(best).name if best else None, global_step=int(trainer.global_step),
                epochs_done=int(trainer.current_epoch))
    write_run(run_dir, info)
    return run_dir
