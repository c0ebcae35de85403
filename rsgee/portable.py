"""Exported models: the network of a trained run as a folder that loads anywhere, without Lightning.

A run folder (run.json and Lightning checkpoints) opens only with rsgee's training stack, and its
checkpoints are pickles. :func:`export_model` writes the one network a user applies — a fusion run's
generator (its raw or moving-average weights) or a segmentation run's RS-UNet — as a Hugging Face-style
folder, and :func:`load_model` rebuilds it from that folder with torch alone:

* ``config.json`` — :data:`FORMAT` and :data:`FORMAT_VERSION`, the kind, the architecture (name, size
  preset and every constructor keyword, so that later presets never change it), the input sources with
  their bands, types and nodata, the normalisation and class names run.json recorded, the weights, the
  checkpoint they come from, the training data and the rsgee version;
* ``model.safetensors`` — the network's tensors (nothing is unpickled on loading);
* ``model.onnx`` (``onnx=True``) — the same network for onnxruntime: one input per source, a dynamic
  batch axis, 256×256-pixel tiles;
* ``README.md`` — a model card: what it does, the data it learned from, its scores and where they come
  from, its limits.

``rsgee predict`` takes such a folder wherever it takes a run folder (:mod:`rsgee.predict`). This module
owns the folder's layout and format; the run folder stays :mod:`rsgee.train.trainer`'s.
"""

from __future__ import annotations

import csv
import glob
import inspect
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from rsgee.optional import require

require("predict")

import torch  # noqa: E402
from safetensors import SafetensorError  # noqa: E402
from safetensors.torch import load_file, save  # noqa: E402
from torch import nn  # noqa: E402

from rsgee import __version__  # noqa: E402
from rsgee.configs import WEIGHTS  # noqa: E402
from rsgee.errors import RsgeeError, unwritable  # noqa: E402
from rsgee.geotiff import _UMASK, disk_error, make_folder, write_json_atomic  # noqa: E402
from rsgee.grid import PIXEL_M, TILE_PX  # noqa: E402
from rsgee.models.factory import (NUM_CLASSES, SOURCE_CHANNELS, generator_settings, rebuild,  # noqa: E402
                                  segmenter_settings)
from rsgee.preprocess.archive import Archive, file_sha256  # noqa: E402

#: What config.json's ``format`` says, and the layout version this rsgee writes and reads.
FORMAT = "rsgee-model"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, ONNX_FILE, CARD_FILE = "config.json", "model.safetensors", "model.onnx", "README.md"
#: ONNX opset of ``model.onnx`` (onnxruntime ≥ 1.14 runs it).
ONNX_OPSET = 17
#: Settings of the "export" record: a folder written with the same ones is up to date.
EXPORT_KEYS = ("run", "checkpoint", "checkpoint_sha256", "weights", "onnx", "evaluation_sha256", "rsgee_version")


@dataclass
class PortableModel:
    """An exported model, loaded: the torch module (eval mode) and its ``config.json``.

    Call it as the module: a fusion generator takes ``{source: (N, C, H, W) tensor}`` normalised as
    :mod:`rsgee.models.normalisation` says and returns (N, 4, H, W) in [-1, 1] (2 × reflectance − 1); RS-UNet
    takes the standardised (N, 4, H, W) Sentinel-2 and returns (N, 9, H, W) class logits.
    """

    folder: Path
    config: dict
    module: nn.Module

    @property
    def kind(self) -> str:
        return self.config["kind"]

    @property
    def weights(self) -> str:
        return self.config["weights"]

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.config["sources"])

    def to(self, device: str | torch.device) -> "PortableModel":
        self.module.to(device)
        return self

    def __call__(self, x):
        return self.module(x)


def is_model_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is an exported model (it has a config.json) rather than a run (run.json)."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() and not (folder / "run.json").exists()


def read_config(folder: str | Path) -> dict:
    """An exported model's config.json, checked: a missing, damaged or foreign one is a one-line error."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RsgeeError(f"{folder} is not an exported rsgee model (no {CONFIG_FILE}); write one with "
                         "`rsgee export-model RUN --out DIR`") from None
    except (OSError, ValueError) as exc:
        raise RsgeeError(f"{path} is damaged ({str(exc).splitlines()[0]}); copy the model folder again or "
                         "re-export it") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise RsgeeError(f"{path} is not an rsgee model config (format {found!r}, not {FORMAT!r}); point at a folder "
                         "written by `rsgee export-model`")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        fix = "upgrade rsgee (pip install -U rsgee)" if isinstance(version, int) and version > FORMAT_VERSION else \
            "export the run again with this rsgee"
        raise RsgeeError(f"{path} is rsgee model format version {version!r}; this rsgee {__version__} reads version "
                         f"{FORMAT_VERSION}: {fix}")
    problem = _config_problem(config)
    if problem:
        raise RsgeeError(f"{path} is damaged ({problem}); copy the model folder again or re-export it")
    return config


def _config_problem(config: dict) -> str | None:
    if config.get("kind") not in ("fusion", "segmentation"):
        return f"kind {config.get('kind')!r} is neither fusion nor segmentation"
    architecture = config.get("architecture")
    if not isinstance(architecture, dict) or not isinstance(architecture.get("name"), str) \
            or not isinstance(architecture.get("settings"), dict):
        return "no architecture name and settings"
    for key, kind in (("sources", list), ("inputs", dict), ("normalisation", dict), ("classes", list),
                      ("weights", str)):
        if not isinstance(config.get(key), kind):
            return f"no valid {key}"
    return None


def weights_path(folder: str | Path) -> Path:
    """The folder's model.safetensors, or a one-line error when it is missing."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise RsgeeError(f"{folder} has no {WEIGHTS_FILE}; copy the whole model folder, or export the run again")
    return path


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> PortableModel:
    """The model an exported folder holds, built from its config.json and model.safetensors alone (no Lightning).

    Raises:
        RsgeeError: in one line, for a folder without config.json or model.safetensors, a config of another
            format or version, or weights whose names or shapes do not fit the architecture the config describes.
    """
    folder = Path(folder)
    config = read_config(folder)
    architecture = config["architecture"]
    module = rebuild(architecture["name"], architecture["settings"])
    path = weights_path(folder)
    try:
        state = load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RsgeeError(f"{path} is damaged ({str(exc).splitlines()[0][:160]}); copy it again or re-export "
                         "the run") from None
    problem = state_problem(module.state_dict(), state)
    if problem:
        raise RsgeeError(f"{path} does not fit the {architecture['name']} its {CONFIG_FILE} describes ({problem}); "
                         "these files come from different exports: export the run again")
    module.load_state_dict(state)
    return PortableModel(folder, config, module.to(device).eval())


def state_problem(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``given`` tensors from loading into a module whose state dict is ``expected``, or None."""

    def names(keys) -> str:
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    missing, unexpected = expected.keys() - given.keys(), given.keys() - expected.keys()
    shapes = [k for k in expected.keys() & given.keys() if tuple(expected[k].shape) != tuple(given[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing: {names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {names(unexpected)}")
    if shapes:
        k = sorted(shapes)[0]
        problems.append(f"{len(shapes)} of another shape, e.g. {k} {tuple(given[k].shape)} where the model has "
                        f"{tuple(expected[k].shape)}")
    return "; ".join(problems) or None


# -- export ------------------------------------------------------------------------------------

def export_model(run: str | Path, out: str | Path, *, weights: str = "raw", onnx: bool = False,
                 evaluation: str | Path | None = None) -> Path:
    """Write the network of ``run`` as a model folder ``out``; returns ``out``.

    Args:
        run: a run folder (run.json and checkpoints/); its best checkpoint (else last.ckpt) is exported.
        out: the folder to write. It appears complete or not at all (written beside it, then renamed); an
            earlier export of the same checkpoint with the same options is left as it is, another one replaced.
        weights: ``raw`` or ``ema`` (a fusion run's moving average of its generator; segmentation: ``raw``).
        onnx: also write ``model.onnx`` (the ``onnx`` extra).
        evaluation: a table ``rsgee evaluate`` wrote (``fusion_table.csv``/``seg_table.csv``, or its folder),
            whose rows for this run and its baselines go into the model card.

    Raises:
        RsgeeError: in one line, naming the fix: not a run folder, no checkpoint, EMA weights the run did not
            keep, a run too old to record its inputs, ``out`` holding something else.
    """
    if onnx:
        require("onnx")
    from rsgee.train.trainer import checkpoint_of, read_metrics, read_run  # the train extra: Lightning

    run, out = Path(run), Path(out)
    info = read_run(run)
    kind = info["kind"]
    if weights not in WEIGHTS:
        raise RsgeeError(f"--weights {weights!r}: choose {' or '.join(WEIGHTS)}")
    if weights == "ema" and (kind != "fusion" or not info["config"].get("ema_decay")):
        why = "a segmentation run has one set of weights" if kind != "fusion" else \
            "it kept no moving average of its generator (trained with --ema-decay 0)"
        raise RsgeeError(f"{run}: no EMA weights to export ({why}); export the raw weights (--weights raw)")
    if "inputs" not in info or "normalisation" not in info:
        raise RsgeeError(f"{run} was trained before runs recorded their inputs and normalisation; train it again "
                         "with this version to export it")
    checkpoint = checkpoint_of(run)
    table = _evaluation_rows(evaluation, run, kind) if evaluation is not None else None
    export = {"run": str(run.resolve()), "checkpoint": checkpoint.name, "checkpoint_sha256": file_sha256(checkpoint),
              "weights": weights, "onnx": bool(onnx), "rsgee_version": __version__,
              "evaluation_sha256": file_sha256(table["path"]) if table else None}
    if _up_to_date(out, export):
        return out
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / CONFIG_FILE).is_file())):
        raise RsgeeError(f"{out} exists and is not a model folder; choose another --out or delete it")

    network, architecture = _network(run, kind, weights)
    state = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in network.state_dict().items()}
    rebuilt = rebuild(architecture["name"], json.loads(json.dumps(architecture["settings"])))
    problem = state_problem(rebuilt.state_dict(), state)
    if problem:  # never write a folder load_model would refuse
        raise RsgeeError(f"{run}: the {architecture['name']} of {checkpoint.name} cannot be rebuilt from its settings "
                         f"({problem}); this rsgee cannot export it")
    architecture["parameters"] = sum(p.numel() for p in network.parameters())
    sources = list(info["config"]["sources"]) if kind == "fusion" else ["s2"]
    read = {"dem" if s == "terrain" else s for s in sources} | {"s2"}  # s2: fusion's output bands, cloud filling
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "architecture": architecture,
              "sources": sources, "inputs": {s: v for s, v in info["inputs"].items() if s in read},
              "normalisation": info["normalisation"],
              "classes": info.get("classes") or [], "outputs": _outputs(kind, info),
              "tile_px": TILE_PX, "pixel_m": PIXEL_M, "weights": weights, "checkpoint": checkpoint.name,
              "rsgee_version": __version__, "training": _training(run, info), "export": export}
    make_folder(out.parent)
    for stale in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):  # left by a killed export
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise unwritable(out.parent, exc) or exc
    try:
        metadata = {"format": "pt", "rsgee_format": FORMAT, "rsgee_format_version": str(FORMAT_VERSION)}
        (tmp / WEIGHTS_FILE).write_bytes(save(state, metadata=metadata))  # Python's write: a full disk is an OSError
        if onnx:
            config["onnx"] = _write_onnx(network, config, tmp / ONNX_FILE)
        write_json_atomic(tmp / CONFIG_FILE, config)
        metrics = _last_validation(read_metrics(run), kind)
        (tmp / CARD_FILE).write_text(model_card(config, metrics, table), encoding="utf-8")
        for path in tmp.iterdir():  # mkdtemp makes 0700: the folder should look like any new one
            os.chmod(path, 0o666 & ~_UMASK)
        os.chmod(tmp, 0o777 & ~_UMASK)
        _replace_folder(tmp, out)
    except OSError as exc:  # a full disk or a read-only folder: one line, nothing half-written left
        raise disk_error(out.parent, exc) or exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _network(run: Path, kind: str, weights: str) -> tuple[nn.Module, dict]:
    """The run's network (best checkpoint) and the architecture record that rebuilds it."""
    if kind == "fusion":
        from rsgee.train.fusion import load_fusion

        task = load_fusion(run, weights=weights)
        c = task.config  # a run trained as rs-spade before it became the paper's U-Net loads as spade-decoder
        settings = generator_settings(c.model, c.sources, c.size, **c.overrides)
        return task.generator, {"name": c.model, "size": c.size, "settings": settings}
    from rsgee.train.segmentation import load_segmentation

    task = load_segmentation(run)
    size = task.config.size
    settings = segmenter_settings("rs-unet", int(task.hparams.get("in_channels", 4)), NUM_CLASSES, size)
    return task.model, {"name": "rs-unet", "size": size, "settings": settings}


def _outputs(kind: str, info: dict) -> dict:
    bands = info["inputs"]["s2"]["bands"]
    if kind == "fusion":
        return {"name": "image", "bands": bands, "range": [-1.0, 1.0],
                "meaning": "2 × surface reflectance − 1; reflectance × 10000 is the Sentinel-2 product's scale"}
    return {"name": "logits", "classes": info.get("classes") or [], "meaning": "class logits; softmax over axis 1"}


def _training(run: Path, info: dict) -> dict:
    """What the model learned from: the archive, its AOIs and sources, tiles per split, the run's settings."""
    record = {"run": run.resolve().name, "archive": info["archive"], "config": info["config"],
              "steps_done": info.get("steps_done"), "epochs_done": info.get("epochs_done")}
    for key in ("mix_label", "generated_by"):
        if info.get(key) is not None:
            record[key] = info[key]
    archive = Archive(info["archive"])
    if archive.exists():
        try:
            meta = archive.read_meta()
            record["aois"] = {name: {"source": aoi.get("source"), "windows": aoi.get("windows")}
                              for name, aoi in sorted(meta.get("aois", {}).items())}
            record["tiles"] = {split: len(archive.tiles(split)) for split in ("train", "val", "test")}
        except (RsgeeError, OSError, ValueError, KeyError):
            pass  # a damaged archive: the card says it does not know
    return record


def _write_onnx(network: nn.Module, config: dict, path: Path) -> dict:
    """``network`` as ONNX (TorchScript exporter: no onnxscript), batch dynamic, 256×256 tiles; returns its record."""
    import onnx

    if config["kind"] == "fusion":
        wrapped = _Positional(network, config["sources"])
        channels = {s: SOURCE_CHANNELS[s] for s in config["sources"]}
    else:
        wrapped, channels = network, {"image": int(config["architecture"]["settings"]["in_channels"])}
    wrapped = wrapped.eval()
    output = config["outputs"]["name"]
    example = torch.Generator().manual_seed(0)
    inputs = tuple(torch.rand(2, c, TILE_PX, TILE_PX, generator=example) for c in channels.values())
    axes = {name: {0: "batch"} for name in [*channels, output]}
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}  # torch ≥ 2.5
    with warnings.catch_warnings():  # the tracer's notes on shapes read as constants: the tile size is fixed
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, inputs, str(path), input_names=list(channels), output_names=[output],
                          dynamic_axes=axes, opset_version=ONNX_OPSET, **legacy)
    onnx.checker.check_model(str(path))
    return {"file": ONNX_FILE, "opset": ONNX_OPSET,
            "inputs": {name: ["batch", c, TILE_PX, TILE_PX] for name, c in channels.items()},
            "output": [output, "batch", len(config["outputs"].get("bands") or config["classes"]), TILE_PX, TILE_PX]}


class _Positional(nn.Module):
    """A generator called with one tensor per source (ONNX has no dict inputs)."""

    def __init__(self, generator: nn.Module, sources: list[str]):
        super().__init__()
        self.generator, self.sources = generator, list(sources)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.generator(dict(zip(self.sources, tensors)))


def _up_to_date(out: Path, export: dict) -> bool:
    """An earlier export of the same checkpoint with the same options, complete, sits at ``out``."""
    try:
        config = read_config(out)
    except RsgeeError:
        return False
    files = [WEIGHTS_FILE, CARD_FILE] + ([ONNX_FILE] if export["onnx"] else [])
    recorded = config.get("export", {})
    return all(recorded.get(k) == export.get(k) for k in EXPORT_KEYS) and all((out / f).is_file() for f in files)


def _replace_folder(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` onto ``out``; an earlier model folder there goes only once ``tmp`` is in place."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", suffix=".tmp", dir=out.parent))
    os.rename(out, old / out.name)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old / out.name, out)
        raise
    finally:
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)


# -- the model card ------------------------------------------------------------------------------

#: The validation columns each kind logs (logs/metrics.csv), as the card shows them.
VAL_METRICS = {"fusion": ("psnr", "ssim", "sam"), "segmentation": ("miou", "accuracy", "loss")}


def _last_validation(rows: list[dict], kind: str) -> dict | None:
    """The last logged validation of a run: ``{"epoch", "step", metric: value}`` (every val/ column), or None."""
    key = "val/psnr" if kind == "fusion" else "val/miou"
    scored = [r for r in rows if r.get(key) not in (None, "")]
    if not scored:
        return None
    last = scored[-1]
    values = {k.removeprefix("val/"): float(v) for k, v in last.items() if k.startswith("val/") and v not in (None, "")}
    return {"epoch": last.get("epoch"), "step": last.get("step"), **values}


def _evaluation_rows(evaluation: str | Path, run: Path, kind: str) -> dict:
    """This run's rows and the baselines' of a table ``rsgee evaluate`` wrote."""
    path = Path(evaluation)
    if path.is_dir():
        path = path / ("fusion_table.csv" if kind == "fusion" else "seg_table.csv")
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise RsgeeError(f"cannot read the evaluation table {path} ({exc.strerror or exc}); give the CSV "
                         f"`rsgee evaluate {'fusion' if kind == 'fusion' else 'seg'} RUN --out DIR` wrote") from None
    ours = [r for r in rows if r.get("run") not in (None, "baseline") and _same_run(r["run"], run)]
    if not ours:
        raise RsgeeError(f"{path} has no rows for {run}; evaluate it first: `rsgee evaluate "
                         f"{'fusion' if kind == 'fusion' else 'seg'} {run} --out DIR`")
    return {"path": path, "rows": [r for r in rows if r.get("run") == "baseline"] + ours}


def _same_run(recorded: str, run: Path) -> bool:
    """Whether a table's ``run`` is ``run``: the same folder, or for a relative path (as `rsgee evaluate` was
    given it, from wherever it ran) the same folder name."""
    recorded = Path(recorded)
    return recorded.resolve() == run.resolve() if recorded.is_absolute() else \
        (recorded.resolve() == run.resolve() or recorded.name == run.resolve().name)


def model_card(config: dict, validation: dict | None, evaluation: dict | None) -> str:
    """README.md of a model folder: what the model does, its data, scores (and where they come from), limits."""
    kind, arch, training = config["kind"], config["architecture"], config["training"]
    sources = ", ".join("dem" if s == "terrain" else s for s in config["sources"])
    bands = config["inputs"]["s2"]["bands"]
    aois = training.get("aois") or {}
    synthetic = bool(aois) and all(a.get("source") == "synthetic" for a in aois.values())
    what = (f"generates Sentinel-2 {' '.join(bands)} from {sources}" if kind == "fusion" else
            f"maps {len(config['classes'])} Dynamic World land-cover classes from Sentinel-2 {' '.join(bands)}")
    weights = {"raw": "the trained weights", "ema": "the exponential moving average of the weights"}[config["weights"]]
    lines = ["---", "library_name: rsgee", "tags:", "- remote-sensing", "- sentinel-2",
             f"- {'image-to-image' if kind == 'fusion' else 'image-segmentation'}"]
    lines += ["- synthetic-data"] if synthetic else []
    lines += ["---", "", f"# {arch['name']} ({arch['size']}) — {kind}", "",
              f"This {arch['name']} {what}. Exported by rsgee {config['rsgee_version']} from the run "
              f"`{training['run']}` (checkpoint `{config['checkpoint']}`, {weights}; {arch['parameters']:,} "
              "parameters).", "", "## Use", "", "```bash",
              f"rsgee predict {'fusion' if kind == 'fusion' else 'seg'} THIS_FOLDER --exports exports/AOI --out "
              f"{'s2' if kind == 'fusion' else 'landcover'}.tif", "```", "",
              "In Python, `rsgee.load_model(\"THIS_FOLDER\")` returns the torch module (no Lightning needed). "
              f"Inputs are normalised as `config.json` records (`normalisation`; {TILE_PX}×{TILE_PX}-pixel tiles at "
              f"{config['pixel_m']} m); the output is `{config['outputs']['name']}`: {config['outputs']['meaning']}."]
    if "onnx" in config:
        shapes = ", ".join(f"`{n}` ({' × '.join(map(str, s))})" for n, s in config["onnx"]["inputs"].items())
        lines += ["", f"`{ONNX_FILE}` (opset {config['onnx']['opset']}) takes {shapes} and returns "
                  f"`{config['onnx']['output'][0]}`; the batch size is free, the tile size is not."]
    lines += ["", "## Training data", ""]
    if aois and "tiles" in training:
        named = ", ".join(f"{name} ({aoi.get('source')})" for name, aoi in aois.items())
        counts = "/".join(str(training["tiles"][split]) for split in ("train", "val", "test"))
        lines.append(f"The archive `{training['archive']}`: {len(aois)} AOI(s), {named}; tiles train/val/test "
                     f"{counts}.")
    else:
        lines.append(f"The archive `{training['archive']}` (not readable at export time: AOIs and tile counts "
                     "unknown).")
    if training["config"].get("train_tiles"):
        lines.append(f"Only {training['config']['train_tiles']} train tiles were used (the low-label protocol).")
    if training.get("mix_label"):
        lines.append(f"Training set: {training['mix_label']}.")
    lines.append(f"Trained for {training.get('steps_done')} optimiser steps ({training.get('epochs_done')} "
                 "epoch(s)).")
    lines += ["", "## Scores", ""]
    if validation:
        names = VAL_METRICS[kind]
        shown = [k for k in sorted(validation) if k not in ("epoch", "step") and k.split("_")[0] in names]
        variants = "; `_ema` columns score the moving average, `_crop` the generator on crop-size windows" \
            if kind == "fusion" else ""
        lines.append(f"Last validation of the run (`logs/metrics.csv`, epoch {validation['epoch']}, step "
                     f"{validation['step']}; val split, whole tiles{variants}):")
        lines += ["", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown),
                  "| " + " | ".join(f"{validation[k]:.4g}" for k in shown) + " |"]
    else:
        lines.append("The run logged no validation.")
    if evaluation:
        columns = ["model", "weights", "sources", "psnr", "ssim", "sam", "tiles", "note"] if kind == "fusion" else \
            ["training_set", "miou", "accuracy", "tiles", "note"]
        columns = [c for c in columns if c in evaluation["rows"][0]]
        lines += ["", f"Test scores with the baselines on the same tiles, from `{evaluation['path']}` "
                  "(`rsgee evaluate`):", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in evaluation["rows"]]
    else:
        lines += ["", f"No test scores here: `rsgee evaluate {'fusion' if kind == 'fusion' else 'seg'} RUN` scores "
                  "the run on its test split beside its baselines."]
    lines += ["", "## Limits", ""]
    if synthetic:
        lines.append("- Trained on rsgee's procedural **synthetic** scene, not on real imagery: a demonstration "
                     "and test model, not for use on real areas.")
    inputs = ", ".join(f"{s} ({' '.join(config['inputs'][s]['bands'])})" for s in _export_sources(config))
    lines += [f"- Inputs: {inputs}, {config['pixel_m']} m pixels, normalised with the statistics of its archive's "
              "train split.",
              f"- It sees {TILE_PX}×{TILE_PX}-pixel windows; `rsgee predict` blends overlapping windows over larger "
              "areas."]
    if kind == "fusion":
        lines.append("- Its Sentinel-2 is generated, not observed: label it so wherever it is used.")
    return "\n".join(lines) + "\n"


def _export_sources(config: dict) -> list[str]:
    return ["dem" if s == "terrain" else s for s in config["sources"]]
