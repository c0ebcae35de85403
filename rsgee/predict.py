"""``rsgee predict``: a trained model applied to a whole exported AOI, written as a Cloud-Optimised GeoTIFF.

The AOI's export (``rsgee export``: one GeoTIFF per source on the AOI's lattice grid) is read strip by
strip; each strip is cut into overlapping model windows of the training tile size, normalised exactly
as the archive's tiles are for training (terrain derived from the DEM with a one-pixel halo, as
``rsgee tile`` does), and the model's outputs are blended with weights that fall to almost nothing at
window borders, so that no seams show. Memory is bounded by one strip (window height × AOI width)
and one batch of windows, whatever the AOI's height.

``predict seg`` writes a land-cover map (uint8 Dynamic World classes, 255 where there is no optical
observation) with class names and a colour table, optionally per-class probabilities. ``predict fusion``
writes a pseudo-Sentinel-2 (uint16 reflectance × 10000); ``fill_clouds`` keeps every valid real pixel
and fills only the cloud-masked or missing ones, with a band that says which.

The inputs are an export folder (read through :mod:`rsgee.exports`); exporting an AOI first is
:func:`rsgee.api.predict_seg`'s and :func:`rsgee.api.predict_fusion`'s job.

The model is a run folder (``run.json`` and Lightning checkpoints, loaded with the ``train`` extra) or
an exported model folder (:mod:`rsgee.portable`: ``config.json`` and ``model.safetensors``, loaded with
torch alone, so that predicting from one never imports Lightning). Either carries what predict needs:
the weights' normalisation, the sources with their bands and types (``inputs``), and the class names;
exports that do not match are refused (:func:`open_model`).
"""

from __future__ import annotations

import glob
import json
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import torch
from rasterio.windows import Window
from tqdm import tqdm

from rsgee.configs import WEIGHTS
from rsgee.errors import RsgeeError, check_number
from rsgee.exports import grid_problem, read_export
from rsgee.geotiff import GDAL_READ_ENV, atomic_path
from rsgee.grid import TILE_PX, Grid
from rsgee.models.normalisation import (lulc_to_model, model_to_reflectance, reflectance_to_s2, s1_to_model,
                                        s2_to_segmenter, terrain_to_model)
from rsgee.portable import CONFIG_FILE, is_model_folder, load_model, read_config, weights_path
from rsgee.preprocess.archive import file_sha256
from rsgee.preprocess.tiling import replace_nodata, terrain_window

#: Map nodata: no optical observation (seg) — the archive's land-cover nodata.
NO_CLASS = 255
#: Dynamic World's class colours (water … snow_and_ice): the map's colour table.
DW_COLOURS = ("#419bdf", "#397d49", "#88b053", "#7a87c6", "#e49635", "#dfc35a", "#c4281b", "#a59b8f", "#b39fe1")
#: Files written by an earlier run with these tags and the same request are complete and skipped.
REQUEST_TAG = "RSGEE_PREDICT_REQUEST"


@dataclass(frozen=True)
class PredictResult:
    """What predict did: the COG written (or found complete), the windows run and the pixels filled."""

    path: Path
    status: str  # "written" or "up to date"
    windows: int = 0
    filled: int = 0  # fusion with fill_clouds: pixels taken from the generator

    def line(self) -> str:
        text = f"{self.status}: {self.path}"
        if self.status == "written":
            text += f" ({self.windows} windows" + (f", {self.filled} pixels filled" if self.filled else "") + ")"
        return text


def blend_weights(size: int, overlap: int) -> np.ndarray:
    """(size, size) window weights: 1 inside, a linear ramp over the ``overlap`` border, never 0.

    Neighbouring windows overlap by ``overlap`` pixels, so at every output pixel the weights of the
    windows covering it sum to a positive number and a pixel near one window's border is decided
    mainly by the window that sees it in its interior.
    """
    if overlap <= 0:
        return np.ones((size, size), np.float32)
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]) + 0.5
    ramp = np.clip(distance / overlap, 1.0 / overlap, 1.0).astype(np.float32)
    return np.outer(ramp, ramp)


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Window offsets covering ``length`` pixels: every ``stride``, the last one flush with the end."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    return starts + [length - size]


def predict_seg(run: str | Path, exports: str | Path, out: str | Path, *, probabilities: bool = False,
                overlap: int = 64, batch_size: int = 8, device: str = "cpu", progress: bool = True) -> PredictResult:
    """Land-cover map of the exported AOI in ``exports`` with the RS-UNet of ``run`` (a run or model folder).

    With ``probabilities``, the blended per-class probabilities go to ``<out>_probabilities.tif``
    (float32, one band per class, NaN without an optical observation).
    """
    _check_windows(overlap, batch_size)
    trained = open_model(run, "segmentation")
    export = _open_export(exports, trained.info, trained.export_sources(fill_clouds=False))
    out = Path(out)
    request = _request(trained, export, kind="seg", probabilities=probabilities, overlap=overlap)
    extra = out.with_name(f"{out.stem}_probabilities.tif") if probabilities else None
    for path in (out, extra) if extra else (out,):
        _remove_strips(path)
    if _complete(out, request) and (extra is None or _complete(extra, request)):
        return PredictResult(out, "up to date")
    network = trained.load().to(device)
    mean, std = trained.info["normalisation"]["s2_mean"], trained.info["normalisation"]["s2_std"]
    classes = trained.info["classes"]

    def inputs(strip: dict) -> tuple[dict, np.ndarray]:
        s2 = strip["s2"]
        return {"image": s2_to_segmenter(s2, mean, std)}, (s2 != 0).all(axis=0)

    def model(batch: dict) -> torch.Tensor:
        return torch.softmax(network(batch["image"]), dim=1)

    tags = {REQUEST_TAG: request, **trained.tags(), "RSGEE_CLASSES": json.dumps(classes)}
    with ExitStack() as stack:
        labels = stack.enter_context(_cog(out, export.grid, "uint8", 1, NO_CLASS, ["land cover class"], tags,
                                          resampling="MODE"))
        labels.write_colormap(1, _colour_table(len(classes)))
        probs = stack.enter_context(_cog(extra, export.grid, "float32", len(classes), float("nan"),
                                         [f"p({c})" for c in classes], tags, resampling="AVERAGE")) if extra else None
        windows = 0
        for y0, rows, observed, blended, count in _slide(export, ("s2",), inputs, model, len(classes), overlap,
                                                         batch_size, device, progress):
            window = Window(0, y0, export.grid.width, rows)
            labels.write(np.where(observed, blended.argmax(0), NO_CLASS).astype(np.uint8)[None], window=window)
            if probs is not None:
                probs.write(np.where(observed[None], blended, np.nan).astype(np.float32), window=window)
            windows = count
    return PredictResult(out, "written", windows)


def predict_fusion(run: str | Path, exports: str | Path, out: str | Path, *, fill_clouds: bool = False,
                   weights: str | None = None, overlap: int = 64, batch_size: int = 8, device: str = "cpu",
                   progress: bool = True) -> PredictResult:
    """Pseudo-Sentinel-2 of the exported AOI in ``exports`` from the generator of ``run`` (a run or model folder).

    ``weights``: ``raw`` or ``ema``; None = a run's raw weights, or the weights a model folder holds.
    Pixels where none of the model's sources has data are nodata (0). With ``fill_clouds`` every pixel
    with a valid real Sentinel-2 observation keeps it unchanged and a fifth band, ``filled``, is 1
    where the generator's value was used.
    """
    _check_windows(overlap, batch_size)
    trained = open_model(run, "fusion", weights)
    sources = trained.sources
    needed = trained.export_sources(fill_clouds)
    export = _open_export(exports, trained.info, needed)
    out = Path(out)
    request = _request(trained, export, kind="fusion", fill_clouds=fill_clouds, weights=trained.weights,
                       overlap=overlap)
    _remove_strips(out)
    if _complete(out, request):
        return PredictResult(out, "up to date")
    network = trained.load().to(device)
    norm = trained.info["normalisation"]

    def inputs(strip: dict) -> tuple[dict, np.ndarray]:
        cond, present = {}, []
        if "lulc" in sources:
            cond["lulc"] = lulc_to_model(strip["lulc"])
            present.append(strip["lulc"][0] != NO_CLASS)
        if "s1" in sources:
            present.append(np.isfinite(strip["s1"]).all(axis=0))
            cond["s1"] = s1_to_model(strip["s1"], norm["s1_bands"])
        if "terrain" in sources:
            present.append(np.isfinite(strip["terrain"][0]))
            cond["terrain"] = terrain_to_model(strip["terrain"], norm["dem_mean"], norm["dem_std"])
        return cond, np.logical_or.reduce(present)

    def model(batch: dict) -> torch.Tensor:
        return model_to_reflectance(network(batch))  # reflectance, blended linearly

    bands = list(trained.info["inputs"]["s2"]["bands"])
    tags = {REQUEST_TAG: request, **trained.tags(), "RSGEE_WEIGHTS": trained.weights,
            "RSGEE_SYNTHETIC_S2": "generated where filled == 1" if fill_clouds else "generated, not observed"}
    names = bands + (["filled"] if fill_clouds else [])
    windows = filled = 0
    with _cog(out, export.grid, "uint16", len(names), 0, names, tags, resampling="AVERAGE") as dst:
        for y0, rows, observed, blended, count in _slide(export, needed, inputs, model, len(bands), overlap,
                                                         batch_size, device, progress):
            generated = np.where(observed[None], reflectance_to_s2(blended), 0).astype(np.uint16)
            if fill_clouds:
                with rasterio.Env(**GDAL_READ_ENV), rasterio.open(export.paths["s2"]) as src:
                    real = replace_nodata(src.read(window=Window(0, y0, export.grid.width, rows)), src.nodata, 0)
                valid = (real != 0).all(axis=0)
                use = ~valid & observed
                generated = np.concatenate([np.where(valid[None], real, generated), use[None].astype(np.uint16)])
                filled += int(use.sum())
            dst.write(generated, window=Window(0, y0, export.grid.width, rows))
            windows = count
    return PredictResult(out, "written", windows, filled)


# -- reading the export --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Export:
    folder: Path
    name: str
    grid: Grid
    paths: dict[str, str]
    manifest_sha256: str
    nodata: dict[str, float | None]  # the files' declared nodata
    run_nodata: dict[str, float]  # what the run's inputs use


@dataclass(frozen=True)
class TrainedModel:
    """A run folder or an exported model folder, as predict reads it (see :func:`open_model`).

    ``info`` holds what predict needs, as run.json records it: ``kind``, ``inputs`` (bands, dtype and
    nodata per export source), ``normalisation`` and ``classes``. The network itself is read only by
    :meth:`load`, once predict knows there is work to do.
    """

    path: Path
    info: dict
    sources: tuple[str, ...]  # the model's inputs: lulc, s1, terrain (fusion); s2 (segmentation)
    weights: str  # raw or ema (segmentation: raw)
    checkpoint: str | None  # the checkpoint the weights come from (a run's best, or the one a model folder holds)
    portable: bool  # an exported model folder (config.json), not a run

    @property
    def kind(self) -> str:
        return self.info["kind"]

    def export_sources(self, fill_clouds: bool = True) -> tuple[str, ...]:
        """The export sources predict reads (``fill_clouds``: Sentinel-2 too, for a fusion model)."""
        if self.kind == "segmentation":
            return ("s2",)
        used = {"dem" if s == "terrain" else s for s in self.sources} | ({"s2"} if fill_clouds else set())
        return tuple(s for s in ("lulc", "s1", "dem", "s2") if s in used)

    def load(self) -> torch.nn.Module:
        """The network in eval mode: from model.safetensors (torch only), or the run's checkpoint (Lightning)."""
        if self.portable:
            return load_model(self.path).module
        if self.kind == "fusion":
            from rsgee.train.fusion import load_fusion

            return load_fusion(self.path, weights=self.weights)
        from rsgee.train.segmentation import load_segmentation

        return load_segmentation(self.path)

    def identity(self) -> dict:
        """What determines the network's outputs, for the outputs' request tag."""
        if self.portable:  # a folder's weights can be replaced under the same name: their bytes decide
            return {"model": str(self.path.resolve()), "checkpoint": self.checkpoint,
                    "weights_sha256": file_sha256(weights_path(self.path))}
        return {"run": str(self.path.resolve()), "checkpoint": self.checkpoint}

    def tags(self) -> dict[str, str]:
        return {"RSGEE_MODEL" if self.portable else "RSGEE_RUN": str(self.path.resolve())}


def open_model(path: str | Path, kind: str, weights: str | None = None) -> TrainedModel:
    """The ``kind`` run or exported model at ``path``, checked for what predict needs; else one line.

    ``weights``: ``raw`` or ``ema`` for a fusion model; None = a run's raw weights, or those a model folder holds
    (a model folder holds one set: asking for the other is an error naming the fix).
    """
    path = Path(path)
    wanted = "predict seg" if kind == "segmentation" else "predict fusion"
    other = "predict fusion" if wanted == "predict seg" else "predict seg"
    if weights is not None and weights not in WEIGHTS:
        raise RsgeeError(f"unknown weights '{weights}'; choose {' or '.join(WEIGHTS)}")
    if kind == "segmentation" and weights == "ema":
        raise RsgeeError("a segmentation model has one set of weights; leave out --weights ema")
    if is_model_folder(path):
        config = read_config(path)
        if config["kind"] != kind:
            raise RsgeeError(f"{path} holds a {config['kind']} model, not a {kind} one; `rsgee {wanted}` needs a "
                             f"{kind} model (use `rsgee {other}` for this one)")
        held = config["weights"]
        if weights is not None and weights != held:
            raise RsgeeError(f"{path} holds the {held} weights of its run, not the {weights} ones; leave out --weights, "
                             f"or export the run again with --weights {weights}")
        return TrainedModel(path, {k: config[k] for k in ("kind", "inputs", "normalisation", "classes")},
                            tuple(config["sources"]), held, config.get("checkpoint"), portable=True)
    if not (path / "run.json").exists():
        raise RsgeeError(f"{path} is neither an rsgee run (run.json) nor an exported model ({CONFIG_FILE}); give a "
                         "run folder of `rsgee train` or a folder of `rsgee export-model`")
    from rsgee.train.trainer import read_run  # a run's checkpoints need the train extra

    info = read_run(path)
    if info.get("kind") != kind:
        raise RsgeeError(f"{path} is a {info.get('kind')} run, not a {kind} run; `rsgee {wanted}` needs a {kind} "
                         f"run (use `rsgee {other}` for this one)")
    if "inputs" not in info or "normalisation" not in info:
        raise RsgeeError(f"{path} was trained before runs recorded their inputs and normalisation; train it again "
                         "with this version to use it with predict")
    sources = tuple(info["config"]["sources"]) if kind == "fusion" else ("s2",)
    checkpoint = info.get("best_checkpoint")
    if weights == "ema" and not info["config"].get("ema_decay"):
        raise RsgeeError(f"{path} kept no moving average of its generator (trained with --ema-decay 0); use the raw "
                         "weights")
    return TrainedModel(path, info, sources, weights or "raw", checkpoint, portable=False)


def _open_export(folder: str | Path, info: dict, sources: tuple[str, ...]) -> _Export:
    """The export folder's grid and files, checked against the sources and bands the run was trained on."""
    export = read_export(folder)
    folder, files = export.folder, export.files
    missing = [s for s in sources if s not in files]
    if missing:
        raise RsgeeError(f"{folder}: the export has no {', '.join(missing)} (the run needs {', '.join(sources)}); "
                         f"export them with `rsgee export --sources {','.join(sources)}`")
    for source in sources:
        trained, given = info["inputs"][source], files[source]
        if list(given.get("bands", [])) != trained["bands"] or given.get("dtype") != trained["dtype"]:
            raise RsgeeError(f"{folder}: {source} has bands {given.get('bands')} ({given.get('dtype')}), the run was "
                             f"trained on {trained['bands']} ({trained['dtype']}); export with the catalog the run "
                             "was trained with")
    nodata = {}
    for source in sources:
        with export.open_file(source) as src:
            problem = grid_problem(src, export.grid)
            nodata[source] = src.nodata
        if problem:
            raise RsgeeError(f"{export.paths[source]}: {problem}; re-export AOI '{export.name}'")
    run_nodata = {s: float(info["inputs"][s]["nodata"]) for s in sources}
    return _Export(folder, export.name, export.grid, export.paths, export.manifest_sha256, nodata, run_nodata)


def _read_strip(export: _Export, sources: tuple[str, ...], y0: int, rows: int) -> dict[str, np.ndarray]:
    """Every needed source for image rows [y0, y0 + rows), nodata as in the archive's tiles."""
    grid, strip = export.grid, {}
    with rasterio.Env(**GDAL_READ_ENV):
        for source in sources:
            if source == "dem":
                strip["terrain"] = terrain_window(export.paths, grid, 0, grid.width, y0, y0 + rows)
                continue
            with rasterio.open(export.paths[source]) as src:
                block = src.read(window=Window(0, y0, grid.width, rows))
            strip[source] = replace_nodata(block, export.nodata[source], export.run_nodata[source])
    return strip


def _check_windows(overlap: int, batch_size: int) -> None:
    """The window options, refused before the run or the export is read."""
    check_number("--overlap", overlap, 0, TILE_PX // 2 - 1, whole=True)
    check_number("--batch-size", batch_size, 1, whole=True)


def _slide(export: _Export, sources, inputs, model, bands: int, overlap: int, batch_size: int, device: str,
           progress: bool):
    """Slide the model over the AOI; yields ``(y0, rows, observed, blended, windows so far)`` per final strip.

    Windows of one row are blended into a buffer one window tall; after each window row, the rows no
    later window reaches (up to the next row's start) are final and leave the buffer.
    """
    grid, size = export.grid, TILE_PX
    weight = torch.from_numpy(blend_weights(size, overlap)).to(device)
    ys, xs = window_starts(grid.height, size, size - overlap), window_starts(grid.width, size, size - overlap)
    acc = torch.zeros((bands, size, grid.width), device=device)
    total = torch.zeros((size, grid.width), device=device)
    windows = 0
    with tqdm(total=len(ys) * len(xs), desc=f"predict {export.name}", unit="window", disable=not progress,
              file=sys.stderr) as bar:
        for k, y in enumerate(ys):  # acc's first row is image row y: earlier rows have left
            arrays, observed = inputs(_read_strip(export, sources, y, size))
            for start in range(0, len(xs), batch_size):
                chunk = xs[start:start + batch_size]
                batch = {name: torch.from_numpy(np.stack([a[:, :, x:x + size] for x in chunk])).to(device)
                         for name, a in arrays.items()}
                with torch.no_grad():
                    out = model(batch).float()
                for i, x in enumerate(chunk):
                    acc[:, :, x:x + size] += out[i] * weight
                    total[:, x:x + size] += weight
                windows += len(chunk)
                bar.update(len(chunk))
            done = ys[k + 1] - y if k + 1 < len(ys) else size
            yield y, done, observed[:done], (acc[:, :done] / total[:done]).cpu().numpy(), windows
            acc = torch.cat([acc[:, done:], torch.zeros_like(acc[:, :done])], 1)
            total = torch.cat([total[done:], torch.zeros_like(total[:done])], 0)


# -- writing the COG -----------------------------------------------------------------------------

def _request(trained: TrainedModel, export: _Export, **options) -> str:
    """What determines the output: a complete file with the same request is not written again."""
    return json.dumps({**trained.identity(), "export": export.manifest_sha256, **options}, sort_keys=True)


def _complete(out: Path, request: str) -> bool:
    if not out.exists():
        return False
    try:
        with rasterio.open(out) as src:
            return src.tags().get(REQUEST_TAG) == request
    except rasterio.errors.RasterioIOError:
        return False


def _colour_table(classes: int) -> dict[int, tuple[int, int, int, int]]:
    table = {i: tuple(int(DW_COLOURS[i][j:j + 2], 16) for j in (1, 3, 5)) + (255,) for i in range(classes)}
    return {**table, NO_CLASS: (0, 0, 0, 0)}


@contextmanager
def _cog(path: Path, grid: Grid, dtype: str, count: int, nodata: float, names: list[str], tags: dict, *,
         resampling: str):
    """A tiled GeoTIFF on the AOI grid to write strips into; on success it becomes a COG at ``path``.

    GDAL's COG driver writes a file in one go from a finished dataset, so the strips go to a hidden
    GeoTIFF first; the COG (tiled 512², DEFLATE, overviews by ``resampling``) is renamed into place
    only when complete. The strips are as large as the COG, so they are deleted whatever happens.
    """
    strips = path.with_name(f".{path.name}.strips.tif")
    profile = {"driver": "GTiff", "dtype": dtype, "count": count, "width": grid.width, "height": grid.height,
               "crs": grid.crs, "transform": grid.transform, "nodata": nodata, "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate", "bigtiff": "IF_SAFER"}
    try:
        with atomic_path(path) as final:
            with rasterio.open(strips, "w", **profile) as dst:
                for i, name in enumerate(names, start=1):
                    dst.set_band_description(i, name)
                dst.update_tags(**tags)
                yield dst
            rasterio.shutil.copy(strips, final, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE="512",
                                 OVERVIEW_RESAMPLING=resampling, BIGTIFF="IF_SAFER")
    finally:
        _remove_strips(path)


def _remove_strips(path: Path) -> None:
    """Delete the strips of ``path`` with GDAL's side files: a killed run leaves them, as large as the COG."""
    for stale in path.parent.glob(glob.escape(f".{path.name}.strips.tif") + "*"):
        stale.unlink(missing_ok=True)
