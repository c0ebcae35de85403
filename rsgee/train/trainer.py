"""What every training run shares: the run folder, the Lightning trainer, devices, checkpoints, guards.

A run folder holds ``run.json`` (what was trained, on which archive, with which settings),
``checkpoints/`` (``last.ckpt``: the last completed epoch, or the last ``--checkpoint-every`` step,
for ``--resume``; plus the best by the monitored metric), ``logs/metrics.csv`` (and, with ``--logger``,
TensorBoard events, a W&B or an MLflow run: :func:`make_loggers`, which also get the run's settings,
parameter counts and the best checkpoint's test scores at the end: :func:`log_summary`) and ``val/`` figures. Checkpoints are written to a temporary
file and renamed, so a kill never leaves a truncated one, and never hold non-finite weights.

Devices: one process per device through Lightning's DDP (NCCL on CUDA, gloo on CPU), launched by
Lightning itself (``--devices N``), by ``torchrun`` or by SLURM's ``srun``; CUDA runs several GPUs
with synchronised BatchNorm. Only the main process (global rank 0) writes ``run.json``, logs and
figures. Both models use manual optimisation, so every optimiser step passes the same guards: a
non-finite loss stops the run (or, with ``--skip-nonfinite``, skips the batch on every rank), and
``--clip-grad-norm`` clips each optimiser's gradients after mixed-precision unscaling.

Interrupts: on SIGTERM (SLURM, Kubernetes) Lightning stops at the next batch boundary, on every rank
together, and ``last.ckpt`` is saved there; Ctrl-C stops at once, ``last.ckpt`` keeping the last epoch
(or ``--checkpoint-every`` step). Either way run.json records how far ``last.ckpt`` got and the run
ends with :class:`~rsgee.errors.Interrupted`, saying how to resume. A full disk ends in one line too,
and a rerun removes the temporaries a killed run left in ``checkpoints/``.

Length and learning rate: a run trains ``--epochs`` over the train split or exactly ``--steps`` optimiser
steps (one per batch; for the GAN, one generator and one discriminator step), and every optimiser's
learning rate follows one schedule over those steps (:data:`SCHEDULES`, after an optional linear warm-up).
The rate is a function of the step count alone, which the checkpoint holds, so a resumed run continues the
schedule exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
import uuid
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint, TQDMProgressBar
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from rsgee import __version__
from rsgee.configs import LOGGERS, SCHEDULES
from rsgee.errors import WRITE_ONLY_ERRNOS, Interrupted, RsgeeError, StorageError, unwritable
from rsgee.optional import require
from rsgee.geotiff import make_folder, remove_temporaries, write_json_atomic
from rsgee.models.factory import NUM_CLASSES
from rsgee.train.distributed import is_main_process

RUN_FILE = "run.json"
#: What a run trains, and a parameter-name prefix only that kind's checkpoints hold (the generator, RS-UNet).
CHECKPOINT_PREFIXES = {"fusion": "generator.", "segmentation": "model."}
#: The config entries each kind's readers take from run.json (generate, predict), with their JSON types.
RUN_CONFIG_KEYS = {"fusion": {"model": str, "sources": list}, "segmentation": {"mix": list}}

def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """The factor on the base learning rate for optimiser step ``step`` (0-based) of ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return min(1.0, 2.0 * (1.0 - progress))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise RsgeeError(f"--schedule {schedule!r}: choose {', '.join(SCHEDULES)}")


def planned_steps(config, batches_per_epoch: int) -> int:
    """Optimiser steps a run takes: ``--steps``, or ``--epochs`` × the batches of an epoch on one device."""
    if config.steps:
        return int(config.steps)
    return int(config.epochs) * int(batches_per_epoch)


def write_run(run_dir: Path, info: dict) -> None:
    make_folder(run_dir)
    write_json_atomic(run_dir / RUN_FILE, dict(info, rsgee_version=__version__))


def read_run(run_dir: str | Path) -> dict:
    """A run's ``run.json``, checked where it is read: every reader may then take its keys as written."""
    path = Path(run_dir) / RUN_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RsgeeError(f"{run_dir} is not an rsgee run (no {RUN_FILE}); train one with rsgee train") from None
    except (OSError, ValueError) as exc:
        problem = str(exc).splitlines()[0]
    else:
        problem = _run_problem(info)
    if problem:
        raise RsgeeError(f"{path} is damaged ({problem}); restore it from a copy, or train the run again into a new "
                         "--out")
    return info


def _run_problem(info) -> str | None:
    """What makes a parsed run.json unusable, or None."""
    if not isinstance(info, dict):
        return f"a JSON {type(info).__name__}, not an object"
    if info.get("kind") not in CHECKPOINT_PREFIXES:
        return f"kind {info.get('kind')!r} is neither fusion nor segmentation"
    if not isinstance(info.get("archive"), str) or not isinstance(info.get("config"), dict):
        return "no archive path or no config"
    wrong = [key for key, kind in RUN_CONFIG_KEYS[info["kind"]].items() if not isinstance(info["config"].get(key), kind)]
    if wrong:
        return f"the {info['kind']} config has no valid {' or '.join(wrong)}"
    classes = info.get("classes", [])
    if "classes" in info and not (isinstance(classes, list) and len(classes) == NUM_CLASSES
                                  and all(isinstance(c, str) for c in classes)):
        return f"classes must be the {NUM_CLASSES} land-cover class names the models predict"
    for key in ("normalisation", "inputs"):
        if key in info and not isinstance(info[key], dict):
            return f"{key} is not an object"
    best = info.get("best_checkpoint")
    if best is not None and (not isinstance(best, str) or Path(best).name != best or best.startswith(".")):
        return f"best_checkpoint {best!r} is not a file name in checkpoints/"
    return None


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


class CheckpointError(RsgeeError):
    """A checkpoint that cannot be read, or holds another kind of model; the message says what to use instead."""

    def __init__(self, path: Path, problem: str):
        others = sorted(p.name for p in path.parent.glob("*.ckpt") if p.name != path.name)
        if path.name == "last.ckpt":
            fix = (f"resume from {others[-1]} instead (copy it over last.ckpt) or retrain into a new --out" if others
                   else "retrain into a new --out")
        else:
            fix = ("delete it to use last.ckpt instead, or retrain" if "last.ckpt" in others else "retrain the run")
        super().__init__(f"checkpoint {path} {problem}; {fix}")


def load_checkpoint(path: Path, kind: str, map_location: str | torch.device = "cpu") -> dict:
    """A run's checkpoint, read and checked for ``kind`` ("fusion" or "segmentation") before torch or Lightning use it.

    Without this an empty file ends ``torch.load`` with EOFError, which click reports as Ctrl-D ("aborted"),
    and a fusion checkpoint in a segmentation run with a page of missing parameter names. Memory-mapped:
    checking a checkpoint that Lightning then resumes from costs no second copy.
    """
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive, whose directory comes last
        raise CheckpointError(path, "is damaged (empty, cut short or not a checkpoint)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False, mmap=True)
    except Exception as exc:  # noqa: BLE001 — a damaged file fails torch.load in many ways (zip, unpickling)
        raise CheckpointError(path, f"is damaged ({type(exc).__name__}: {str(exc).split('. ')[0][:160]})") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not isinstance(checkpoint.get("hyper_parameters"), dict):
        raise CheckpointError(path, "is damaged (not a Lightning checkpoint with weights and settings)")
    if not any(name.startswith(CHECKPOINT_PREFIXES[kind]) for name in state):
        other = next((k for k, prefix in CHECKPOINT_PREFIXES.items() if any(n.startswith(prefix) for n in state)), None)
        raise CheckpointError(path, f"is a {other} checkpoint, not a {kind} one" if other and other != kind
                              else f"holds no {kind} weights")
    return checkpoint


def restore_task(task_class: type, checkpoint: dict, path: Path, hyper_parameters: dict | None = None):
    """The task a checkpoint (from :func:`load_checkpoint`) holds, with its weights and counters."""
    task = task_class(**(hyper_parameters or checkpoint["hyper_parameters"]))
    task.on_load_checkpoint(checkpoint)
    try:
        task.load_state_dict(checkpoint["state_dict"])
    except RuntimeError:
        raise CheckpointError(path, "is damaged (its weights do not fit the model its settings describe)") from None
    return task


@dataclass(frozen=True)
class Launch:
    """Where a run trains: accelerator, devices per node, nodes, and whether an outside launcher started it."""

    accelerator: str
    devices: int
    num_nodes: int
    external: str | None = None  # "torchrun" or "slurm" when they started the processes

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


def resolve_launch(accelerator: str = "auto", devices: int | str = "auto", num_nodes: int | str = "auto") -> Launch:
    """Turn ``--accelerator/--devices/--num-nodes`` (and a torchrun or srun environment) into a :class:`Launch`.

    Under torchrun, ``auto`` devices and nodes come from ``LOCAL_WORLD_SIZE`` and ``WORLD_SIZE``; under
    ``srun``, from ``SLURM_NTASKS_PER_NODE`` and ``SLURM_NNODES``. Numbers given that contradict the
    launcher are a one-line error rather than a hang.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    cuda = torch.cuda.is_available()
    if accelerator == "auto":
        accelerator = "gpu" if cuda else "cpu"
    if accelerator in ("gpu", "cuda") and not cuda:
        raise RsgeeError("--accelerator gpu: no CUDA device is visible (check CUDA_VISIBLE_DEVICES and the driver), "
                         "or train with --accelerator cpu")
    external, per_node, nodes = None, None, None
    if TorchElasticEnvironment.detect():
        external = "torchrun"
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        nodes = int(os.environ["WORLD_SIZE"]) // per_node
    elif "SLURM_NTASKS" in os.environ and int(os.environ["SLURM_NTASKS"]) > 1 and SLURMEnvironment.detect():
        external = "slurm"
        nodes = int(os.environ.get("SLURM_NNODES", "1"))
        per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", "0").split("(")[0] or 0) or \
            int(os.environ["SLURM_NTASKS"]) // nodes
    if devices == "auto":
        devices = per_node or (torch.cuda.device_count() if accelerator in ("gpu", "cuda") else 1)
    if num_nodes == "auto":
        num_nodes = nodes or 1
    devices, num_nodes = int(devices), int(num_nodes)
    if devices < 1 or num_nodes < 1:
        raise RsgeeError("--devices and --num-nodes must be at least 1")
    if accelerator in ("gpu", "cuda") and devices > torch.cuda.device_count():
        raise RsgeeError(f"--devices {devices}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if external and (devices, num_nodes) != (per_node, nodes):
        raise RsgeeError(f"{external} started {per_node} process(es) per node on {nodes} node(s), but --devices "
                         f"{devices} --num-nodes {num_nodes} were given; leave them at auto or make them match")
    return Launch("gpu" if accelerator == "cuda" else accelerator, devices, num_nodes, external)


def start_processes(accelerator: str = "auto", devices: int | str = 1, num_nodes: int | str = "auto"):
    """Lightning Fabric on the requested devices, one process each, for evaluation and generation.

    With several devices the processes are started here (the command re-runs in each) or were
    started by torchrun/srun; each then works on its :class:`~rsgee.train.distributed.EvenShards`
    share, and torchmetrics states are reduced over all of them when computed.
    """
    from lightning.fabric import Fabric

    launch = resolve_launch(accelerator, devices, num_nodes)
    quiet_lightning()
    fabric = Fabric(accelerator=launch.accelerator, devices=launch.devices, num_nodes=launch.num_nodes,
                    strategy="ddp" if launch.world_size > 1 else "auto", precision="32-true")
    fabric.launch()
    return fabric


def quiet_lightning() -> None:
    """Lightning's banners (devices, process groups) as warnings only: rsgee prints its own summary."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


#: Mixed precision used by default on CUDA. The GAN avoids fp16: spectral norm's power iteration and
#: two GradScaler-driven optimisers overflow easily, and bf16 has fp32's range. Without bf16 support
#: (pre-Ampere GPUs) the GAN trains in fp32 and RS-UNet in fp16.
def default_precision(kind: str, launch: Launch) -> str:
    if launch.accelerator != "gpu":
        return "32-true"
    if torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true" if kind == "fusion" else "16-mixed"


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's best-by-metric checkpoint, written to a temporary file and renamed into place."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        save_atomically(trainer, Path(filepath), self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore which checkpoint is best, and its score, from the checkpoint resumed from, or from the newest
        best checkpoint in the folder when that one is newer.

        A best checkpoint can postdate ``last.ckpt``: an interrupt between the two saves, or a validation right
        after a mid-epoch ``last.ckpt``. Its own copy of this state is then the current one; the stale one would
        forget the best (another epoch would become "best" with a lower score). Paths are taken as file names in
        this folder, so a moved run keeps its best and score (Lightning would keep neither).
        """
        newest = max(self._best_files(), default=None)
        if newest is not None and Path(newest[1]).name != Path(state_dict.get("best_model_path") or "").name:
            state_dict = newest[2]
        super().load_state_dict(self._here(state_dict))

    def _best_files(self) -> Iterator[tuple[int, str, dict]]:
        """(global step, path, this callback's state in it) for each readable best checkpoint in the folder."""
        for path in Path(self.dirpath).glob("*.ckpt"):
            if path.name == "last.ckpt":
                continue
            try:
                saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
                state = saved["callbacks"][self.state_key]
            except Exception:  # noqa: BLE001 — damaged, or saved with other settings: not this callback's record
                continue
            yield int(saved.get("global_step", -1)), str(path), state

    def _here(self, state: dict) -> dict:
        """``state`` with every checkpoint path in this callback's folder."""
        def here(path):
            return os.path.join(self.dirpath, os.path.basename(path)) if path else path

        return dict(state, dirpath=self.dirpath, best_model_path=here(state.get("best_model_path")),
                    kth_best_model_path=here(state.get("kth_best_model_path")),
                    last_model_path=here(state.get("last_model_path")),
                    best_k_models={here(k): v for k, v in state.get("best_k_models", {}).items()})


class LastCheckpoint(Checkpoint):
    """``last.ckpt`` after every training epoch and, optionally, every ``every_n_batches`` batches, and where
    Lightning stops on SIGTERM (between batches, every rank together; not within a validation, whose partial
    scores a resume could not finish).

    Lightning ≥ 2.6 writes its own ``last.ckpt`` only when the monitored metric improves, so
    ``--resume`` would go back to the best epoch; this one always holds where training stopped. It is a
    :class:`Checkpoint` so that, at an epoch's end, Lightning calls it after the best-model checkpoint:
    ``last.ckpt`` then records the best that epoch chose. ``saved`` is how far the last save got;
    ``stopped_by`` the exception that ended training, if one did.
    """

    def __init__(self, folder: Path, every_n_batches: int | None = None):
        self.path, self.every = Path(folder) / "last.ckpt", every_n_batches
        self.saved: dict | None = None
        self.stopped_by: BaseException | None = None

    @property
    def state_key(self) -> str:
        return "LastCheckpoint"

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        if self.every and done % self.every == 0 and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.save(trainer, module)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.save(trainer, module)

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self.stopped_by = exception
        if isinstance(exception, SIGTERMException) and not trainer.validating:
            self.save(trainer, module)

    def save(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        bad = [name for name, value in module.state_dict().items()
               if value.is_floating_point() and not torch.isfinite(value).all()]
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            raise NonFiniteError(f"weights became non-finite ({', '.join(bad[:3]) or 'on another rank'}) at batch "
                                 f"{trainer.fit_loop.epoch_loop.batch_progress.total.processed}; {self.path} keeps "
                                 "the last good state — lower the learning rate or use --clip-grad-norm")
        save_atomically(trainer, self.path)
        self.saved = {"global_step": int(trainer.global_step), "steps_done": int(getattr(module, "steps_done", 0)),
                      "epochs_done": int(trainer.fit_loop.epoch_progress.current.processed)}


#: How a training stopped by an interrupt or a full disk carries on.
RESUME = "resume with the same command and --resume"


def save_atomically(trainer: L.Trainer, path: Path, weights_only: bool = False) -> None:
    """``trainer.save_checkpoint`` (a collective: every rank calls it) into a temporary file, then rename.

    A save that fails (a full disk, an interrupt) leaves no temporary; the file it would replace stays.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        trainer.save_checkpoint(tmp, weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, path)
    except BaseException as exc:
        if trainer.is_global_zero:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in WRITE_ONLY_ERRNOS:
            raise unwritable(path, exc) from None
        raise
    trainer.strategy.barrier("rsgee.save_atomically")


class NonFiniteError(RsgeeError):
    """A loss or the weights became NaN or infinite."""


def nonfinite_terms(strategy, terms: dict[str, torch.Tensor]) -> list[str]:
    """Names of the loss terms that are not finite on any rank (the same answer on every rank)."""
    flags = torch.stack([(~torch.isfinite(v.detach().float())).any() for v in terms.values()]).float()
    flags = strategy.reduce(flags, reduce_op="sum")
    return [name for name, flag in zip(terms, flags.tolist()) if flag > 0]


def make_loggers(run_dir: Path, names: Sequence[str]) -> list:
    """Lightning loggers for a run: ``logs/metrics.csv`` always (rsgee's curves and tables read it), and each of
    ``names`` (:data:`~rsgee.configs.LOGGERS`) from its optional extra, a missing one being a one-line error.

    TensorBoard writes ``run_dir/tensorboard``; W&B the project ``$WANDB_PROJECT`` (default rsgee) under
    ``run_dir/wandb``, offline when ``WANDB_MODE=offline``; MLflow the experiment ``$MLFLOW_EXPERIMENT_NAME``
    (default rsgee) at ``$MLFLOW_TRACKING_URI`` (default a file store, ``run_dir/mlruns``, which MLflow 3 keeps in
    maintenance mode: set the variable to a database, ``sqlite:///mlflow.db``, for its newer features). Runs are
    named by their folder; a resumed run continues its W&B and MLflow runs (their ids are in run.json).
    """
    earlier = read_run(run_dir).get("loggers", {}) if (run_dir / RUN_FILE).exists() else {}
    loggers = [CSVLogger(save_dir=str(run_dir), name="", version="logs")]
    for name in dict.fromkeys(names):
        if name not in LOGGERS:
            raise RsgeeError(f"--logger {name!r}: choose from {', '.join(LOGGERS)}")
        if name != "csv":
            require(name)
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard"))
        elif name == "wandb":
            loggers.append(WandbLogger(name=run_dir.name, project=os.environ.get("WANDB_PROJECT", "rsgee"),
                                       save_dir=str(run_dir), offline=os.environ.get("WANDB_MODE") == "offline",
                                       id=earlier.get("wandb") or uuid.uuid4().hex[:12], resume="allow"))
        elif name == "mlflow":
            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:  # the file store MLflow 3 keeps working when asked to (no database to install for it)
                uri = (run_dir / "mlruns").resolve().as_uri()
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            loggers.append(ResumableMLFlowLogger(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "rsgee"),
                                                 run_name=run_dir.name, tracking_uri=uri,
                                                 run_id=earlier.get("mlflow")))
    return loggers


class ResumableMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger for a run that may be resumed with another length: MLflow refuses to change a
    logged parameter, so a changed value (``config/steps`` …) goes into a ``resumed/<name>`` tag instead."""

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        params = _flatten_dict(_convert_params(params))
        logged = self.experiment.get_run(self.run_id).data.params
        changed = {k: v for k, v in params.items() if k in logged and logged[k] != str(v)[:len(logged[k])]}
        for key, value in changed.items():
            self.experiment.set_tag(self.run_id, f"resumed/{key}", str(value)[:5000])
        super().log_hyperparams({k: v for k, v in params.items() if k not in changed})


def make_trainer(run_dir: Path, *, kind: str, max_epochs: int, launch: Launch, limit_train_batches: int | None = None,
                 monitor: str | None = None, mode: str = "max", precision: str | None = None, progress: bool = True,
                 val_every: int = 1, val_every_steps: int | None = None, limit_val_batches: int | float | None = None,
                 checkpoint_every: int | None = None, loggers: Sequence[str] = ("csv",)) -> L.Trainer:
    """A Lightning trainer writing checkpoints and logs into ``run_dir`` (and to ``loggers``: :func:`make_loggers`).

    ``kind`` is "fusion" (a GAN: two backward passes per batch, so DDP must find unused parameters)
    or "segmentation". The trainer never replaces the samplers: rsgee's loaders shard per rank.
    Validation runs every ``val_every`` epochs, or every ``val_every_steps`` batches across epochs.
    """
    from lightning.pytorch.strategies import DDPStrategy

    callbacks = [AtomicModelCheckpoint(dirpath=run_dir / "checkpoints", filename="epoch{epoch:04d}",
                                       auto_insert_metric_name=False, save_last=False, monitor=monitor, mode=mode,
                                       save_top_k=1),
                 LastCheckpoint(run_dir / "checkpoints", checkpoint_every)]
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    loggers = make_loggers(run_dir, loggers)
    quiet_lightning()
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # resuming a run
    distributed = launch.world_size > 1
    strategy = DDPStrategy(find_unused_parameters=kind == "fusion") if distributed else "auto"
    gpu = launch.accelerator == "gpu"
    return L.Trainer(
        default_root_dir=str(run_dir), max_epochs=max_epochs, limit_train_batches=limit_train_batches,
        accelerator=launch.accelerator, devices=launch.devices, num_nodes=launch.num_nodes, strategy=strategy,
        sync_batchnorm=distributed and gpu,  # SyncBatchNorm has no CPU kernel; DDP broadcasts rank 0's statistics
        use_distributed_sampler=False, precision=precision or default_precision(kind, launch), callbacks=callbacks,
        logger=loggers, enable_progress_bar=progress, enable_model_summary=False,
        deterministic="warn" if gpu else True, log_every_n_steps=1,
        check_val_every_n_epoch=None if val_every_steps else val_every, val_check_interval=val_every_steps,
        num_sanity_val_steps=0, limit_val_batches=limit_val_batches,
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


#: Settings a resumed run may change: train longer (with a constant schedule), read with more workers,
#: checkpoint, guard or draw figures differently.
RESUMABLE_CHANGES = ("epochs", "steps", "num_workers", "checkpoint_every", "skip_nonfinite", "clip_grad_norm",
                     "val_figures")


def start_run(run_dir: Path, kind: str, config: dict, *, resume: bool) -> Path | None:
    """Check that a ``kind`` run may start (or resume) in ``run_dir``; returns the checkpoint to resume from.

    Every process of a multi-device run calls this; only the main one checks and moves files, the
    others just learn which checkpoint to load.
    """
    if not is_main_process():
        return checkpoint_of(run_dir, "last") if resume else None
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "val"):
        remove_temporaries(folder)  # what a killed save left (run.json, checkpoints, figures), never a finished file
    if resume:
        info = read_run(run_dir)
        if info["kind"] != kind:
            command = "fusion" if info["kind"] == "fusion" else "seg"
            raise RsgeeError(f"{run_dir} holds a {info['kind']} run; resume it with `rsgee train {command}`, or use "
                             "another --out")
        stored = info["config"]
        fresh = json.loads(json.dumps(config))  # tuples → lists, as stored
        changed = [k for k, v in fresh.items() if stored.get(k) != v and k not in RESUMABLE_CHANGES]
        if changed:
            raise RsgeeError(f"{run_dir} was trained with other settings ({', '.join(changed)}); resume with the same "
                             "options (only --epochs/--steps, --workers, --checkpoint-every, --skip-nonfinite, "
                             "--clip-grad-norm and --val-figures may change) or use another --out")
        longer = [k for k in ("epochs", "steps") if stored.get(k) != fresh.get(k)]
        if longer and stored.get("schedule", "constant") != "constant":
            raise RsgeeError(f"{run_dir} follows a {stored['schedule']} learning-rate schedule planned over its "
                             f"length; resume with the same {' and '.join('--' + k for k in longer)}, or train on "
                             "in a new run (a schedule decayed to 0 cannot be extended)")
        ckpt = checkpoint_of(run_dir, "last")
        load_checkpoint(ckpt, kind)
        keep_logs_for_resume(run_dir)
        return ckpt
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        raise RsgeeError(f"{run_dir} already holds a trained run; pass --resume to continue it or choose another --out")
    return None


#: What run.json records of how far a run got (kept across a resume until it gets further).
PROGRESS_KEYS = ("best_checkpoint", "global_step", "epochs_done", "steps_done")


def fit(run_dir: Path, task: L.LightningModule, data: L.LightningDataModule, trainer: L.Trainer,
        ckpt: Path | None, info: dict, score: Callable[[Path], dict] | None = None) -> Path:
    """Write run.json, train (resuming from ``ckpt``), then record how far training got (main process only).

    Stopped by Ctrl-C or SIGTERM, it records how far ``last.ckpt`` got and raises :class:`Interrupted` saying
    how to resume: Lightning alone would end Ctrl-C with ``sys.exit(1)`` and SIGTERM with ``SystemExit`` (status
    0, which a scheduler takes for success). A full disk raises a :class:`StorageError` saying the same.
    """
    launch = {"accelerator": trainer.accelerator.__class__.__name__.removesuffix("Accelerator").lower(),
              "devices": trainer.num_devices, "num_nodes": trainer.num_nodes, "world_size": trainer.world_size,
              "precision": trainer.precision}
    if is_main_process():
        earlier = {k: v for k, v in read_run(run_dir).items() if k in PROGRESS_KEYS} if ckpt else {}
        write_run(run_dir, dict(info, **earlier, launch=launch, **_logger_ids(trainer)))
    last = next(c for c in trainer.callbacks if isinstance(c, LastCheckpoint))
    try:
        trainer.fit(task, datamodule=data, ckpt_path=str(ckpt) if ckpt else None)
    except (SystemExit, Interrupted) as exc:
        signum = (signal.SIGTERM if isinstance(exc, SIGTERMException) else exc.signum if isinstance(exc, Interrupted)
                  else signal.SIGINT if isinstance(last.stopped_by, KeyboardInterrupt) else None)
        if signum is None:
            raise
        _record_progress(run_dir, trainer, launch, last.saved or {})
        where = f"step {last.saved['steps_done']} of {task.planned_steps} ({last.path})" if last.saved else last.path
        advice = f"resume from {where} with the same command and --resume" if last.path.exists() else \
            "no checkpoint was saved yet: re-run the same command to start again"
        raise Interrupted(signum, advice) from None
    except (StorageError, OSError) as exc:  # OSError: a write of Lightning's own (metrics.csv, hparams.yaml)
        if isinstance(exc, OSError):
            if exc.errno not in WRITE_ONLY_ERRNOS:
                raise
            exc = unwritable(exc.filename2 or exc.filename or run_dir, exc)
        raise (exc.resumed(RESUME) if last.path.exists() else exc) from None  # else: re-run starts afresh
    _record_progress(run_dir, trainer, launch, {"global_step": int(trainer.global_step),
                                                "steps_done": int(task.steps_done),
                                                "epochs_done": int(trainer.current_epoch)})
    log_summary(run_dir, trainer, info, score)
    return run_dir


def _logger_ids(trainer: L.Trainer) -> dict:
    """``{"loggers": {"wandb": id, "mlflow": run id}}`` for run.json, so that a resume continues those runs."""
    ids = {}
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            ids["wandb"] = logger.version
        elif isinstance(logger, MLFlowLogger):
            ids["mlflow"] = logger.run_id
    return {"loggers": ids} if ids else {}


def log_summary(run_dir: Path, trainer: L.Trainer, info: dict,
                score: Callable[[Path], dict] | None = None) -> None:
    """Give the run's loggers other than CSV (W&B, MLflow, TensorBoard) what their users compare runs by: the
    parameter counts, archive and kind as hyperparameters (the settings are the task's, which Lightning logged
    at the start as ``config/…``), and the best checkpoint's scores on the test split, beside the trivial
    baselines', as ``test/…`` metrics at the last step.

    ``score`` (:func:`rsgee.train.evaluate.logged_test_scores`, given by :mod:`rsgee.api`) scores the run, once,
    in the main process of a one-process run (a multi-device run leaves it to ``rsgee evaluate``); nothing is
    scored when only CSV logs are kept.
    """
    external = [lg for lg in trainer.loggers if not isinstance(lg, CSVLogger)]
    if not external or not trainer.is_global_zero:
        return
    settings = _flat({"parameters": info.get("parameters", {}), "archive": info["archive"], "kind": info["kind"]})
    scores = score(run_dir) if score is not None and trainer.world_size == 1 else {}
    for logger in external:
        logger.log_hyperparams(settings)
        if scores:
            logger.log_metrics(scores, step=int(trainer.global_step))
        logger.finalize("success")


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _record_progress(run_dir: Path, trainer: L.Trainer, launch: dict, progress: dict) -> None:
    """Write how far the run got, and its best checkpoint, into run.json (on the main process)."""
    if not trainer.is_global_zero:
        return
    stored = read_run(run_dir)
    best = trainer.checkpoint_callback.best_model_path
    if best and Path(best).exists():  # not one whose save was interrupted
        stored["best_checkpoint"] = Path(best).name
    stored.setdefault("best_checkpoint", None)
    stored.update(progress, launch=launch)
    write_run(run_dir, stored)


def run_inputs(archive) -> dict:
    """The export sources a model reads, as ``rsgee predict`` checks them: bands, dtype, nodata per source,
    and the land-cover class names (from the archive's catalog)."""
    sources = archive.catalog().sources
    inputs = {name: {"bands": list(sources[name].band_names), "dtype": sources[name].dtype,
                     "nodata": "nan" if sources[name].nodata_is_nan else float(sources[name].nodata)}  # JSON has no NaN
              for name in ("lulc", "s1", "s2", "dem")}
    return {"inputs": inputs, "classes": list(sources["lulc"].classes or ())}


def train_or_reuse(train, archive: Path, run_dir: Path, config, progress: bool = True) -> Path:
    """Train a run, resume an interrupted one, or reuse a finished one (the demo's and experiments' steps).

    ``train`` is :func:`~rsgee.train.fusion.train_fusion` or :func:`~rsgee.train.segmentation.train_segmentation`;
    a run left with other settings (by another rsgee version, say) is a one-line error, never silently reused.
    """
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        info = read_run(run_dir)
        stored, wanted = info.get("config", {}), json.loads(json.dumps(asdict(config)))  # as run.json stores it
        changed = sorted(k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k))
        if changed:
            raise RsgeeError(f"{run_dir} holds a run with other settings ({', '.join(changed)}), trained by rsgee "
                             f"{info.get('rsgee_version', 'of another version')}; delete that folder to train it "
                             "again, or choose another output folder")
        if info.get("steps_done", 0) >= info.get("planned_steps", math.inf) and info.get("best_checkpoint"):
            return run_dir
        return train(archive, run_dir, config, resume=True, progress=progress)
    return train(archive, run_dir, config, progress=progress)


def batches_per_epoch(n_tiles: int, batch_size: int, limit: int | None, *, drop_last: bool) -> int:
    """Optimiser steps per epoch on one device, as the training loaders cut the train split (the fusion
    loader drops an incomplete last batch when there is more than one; segmentation keeps it)."""
    full = (n_tiles // batch_size if n_tiles > batch_size else 1) if drop_last else -(-n_tiles // batch_size)
    return min(full, limit) if limit else full


class GuardedTask(L.LightningModule):
    """Manual optimisation with the run's guards and schedule; both fusion and segmentation tasks build on it.

    Subclasses set ``self.config`` (with ``steps``, ``schedule``, ``warmup``, ``skip_nonfinite`` and
    ``clip_grad_norm``), create their optimisers with :func:`scheduled`, call :meth:`start_step` first in
    every ``training_step`` and :meth:`optimise` once per optimiser and batch.

    Args:
        planned_steps: the run's length in optimiser steps (:func:`planned_steps`), over which the
            learning-rate schedule runs; None: Lightning's estimate from the trainer's epochs and batches.
    """

    def __init__(self, planned_steps: int | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.skipped_batches = 0
        self.steps_done = 0
        self.planned_steps = planned_steps
        self._train_started = time.monotonic()

    def on_train_start(self) -> None:
        self._train_started = time.monotonic()

    def log_position(self) -> None:
        """With a validation's scores: the optimiser steps they are after (``val/steps``) and the seconds this
        process has trained (``val/seconds``), for learning curves against steps or time."""
        self.log("val/steps", float(self.steps_done), sync_dist=False)
        self.log("val/seconds", time.monotonic() - self._train_started, sync_dist=False)

    def start_step(self) -> None:
        """Count this batch's step, set every optimiser's learning rate for it, validate after the last one
        and stop there with ``--steps``."""
        step, self.steps_done = self.steps_done, self.steps_done + 1
        if self.planned_steps is None:  # a task built outside train_*: Lightning's estimate of the run's steps
            self.planned_steps = self.trainer.estimated_stepping_batches
        factor = lr_factor(self.config.schedule, step, self.planned_steps, self.config.warmup)
        optimizers = self.optimizers()
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group in optimizer.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        self.log("train/lr_factor", factor, on_step=True, on_epoch=False, batch_size=1)
        if self.planned_steps and self.steps_done >= self.planned_steps:
            # the last step: make its epoch a validation epoch, so that the final weights are always scored
            # (and can be the best) whatever --val-every is; with --steps, stop after it (Lightning validates
            # and writes last.ckpt first)
            if self.trainer.check_val_every_n_epoch is not None:  # None: every N steps, which stopping validates
                self.trainer.check_val_every_n_epoch = 1
            if self.config.steps:
                self.trainer.should_stop = True

    def optimise(self, optimizer, loss: torch.Tensor, terms: dict[str, torch.Tensor], which: str) -> bool:
        """One guarded step: False (nothing changed) when a term is non-finite and skipping is allowed."""
        bad = nonfinite_terms(self.trainer.strategy, terms)
        if bad:
            batch = self.trainer.fit_loop.epoch_loop.batch_progress.total.ready
            if not self.config.skip_nonfinite:
                raise NonFiniteError(
                    f"non-finite loss ({', '.join(bad)}) in the {which} step of batch {batch} (epoch "
                    f"{self.current_epoch}); checkpoints keep the last good state — resume with --skip-nonfinite "
                    "to skip such batches, or lower the learning rate or set --clip-grad-norm")
            self.skipped_batches += 1  # a batch skips at its first bad step, so this counts batches
            return False
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        return True

    def log_train(self, values: dict[str, torch.Tensor], batch_size: int) -> None:
        """``<name>_step`` (this rank's value, logged by rank 0) and ``<name>_epoch`` (mean over all ranks).

        Every rank logs the same names at every step (skips are decided together), so the epoch-end
        reduction lines up; step values are not reduced, which would cost a collective per value.
        """
        self.log_dict({f"{k}_step": v for k, v in values.items()}, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log_dict({f"{k}_epoch": v for k, v in values.items()}, on_step=False, on_epoch=True, sync_dist=True,
                      batch_size=batch_size)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.log("train/skipped_nonfinite", float(self.skipped_batches), on_step=True, on_epoch=False,
                 batch_size=1)

    def on_validation_epoch_start(self) -> None:
        self.broadcast_buffers()

    def on_test_epoch_start(self) -> None:
        self.broadcast_buffers()

    def broadcast_buffers(self) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics, spectral-norm vectors) before evaluating.

        DDP broadcasts buffers in forward, but not under manual optimisation (Lightning turns the
        forward sync off), and SyncBatchNorm has no CPU kernel: without this, each rank would score
        its shard with its own running statistics instead of those the checkpoint holds.
        """
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            for buffer in self.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip after mixed precision has unscaled the gradients (Lightning calls this hook right before the step)."""
        if self.config.clip_grad_norm:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.clip_grad_norm)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rsgee_skipped_batches"] = self.skipped_batches
        checkpoint["rsgee_steps_done"] = self.steps_done

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_batches = checkpoint.get("rsgee_skipped_batches", 0)
        self.steps_done = checkpoint.get("rsgee_steps_done", 0)


def scheduled(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Record each parameter group's base learning rate (``initial_lr``) for :meth:`GuardedTask.start_step`."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return optimizer
