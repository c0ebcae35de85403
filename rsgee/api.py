"""rsgee from Python: the command line's steps as functions, and the home of the commands' defaults.

Every function here is what the matching ``rsgee`` command runs (the CLI parses options, calls one of
these and prints), so a script or notebook gets the same behaviour, errors and files. A keyword's default
here (or in the :mod:`rsgee.configs` dataclass a function takes) is the command's option's default: the CLI
reads it from the signature (:mod:`rsgee.options`). Nothing here starts processes unless asked
(``workers``, ``devices``), so a plain script needs no ``if __name__ == "__main__"`` guard. The functions
are reachable from the top of the package, imported on first use::

    >>> import rsgee
    >>> results = rsgee.export(["valley=10.60,46.60,10.63,46.62"], out, source="synthetic", progress=False)
    >>> [(r.aoi, r.status, r.tiles) for r in results]
    [('valley', 'written', 4)]
    >>> summary = rsgee.tile([out], archive, split_block=1, progress=False)
    >>> rsgee.check(archive, progress=False).ok
    True
    >>> {split: len(ids) for split, ids in sorted(rsgee.Archive(archive).splits.items())}
    {'train': 3, 'val': 1}
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from rsgee.acquire.aoi import MAX_AREA_KM2
from rsgee.acquire import WINDOW
from rsgee.configs import ABLATION_SOURCES, DEFAULT_RECIPE, MODELS, FusionConfig, SegmentationConfig, parse_mix
from rsgee.errors import RsgeeError, check_number
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.split import SplitConfig
from rsgee.preprocess.tiling import TileFilters

__all__ = ["Archive", "cache", "check", "demo", "evaluate_fusion", "evaluate_seg", "experiment_archive",
           "experiment_fusion", "experiment_seg", "export", "export_model", "generate", "load_model", "predict_fusion",
           "predict_seg", "source_catalog", "stac", "tile", "train_fusion", "train_seg"]

#: How Earth Engine pixels arrive: downloaded here, or written by batch export tasks.
VIAS = ("download", "batch")
#: The experiment's AOIs: four synthetic landscapes (mountains, hills, lowland, lakes), four AOIs each,
#: two of every kind pinned to train, one to val, one to test (their ``split`` property).
EXPERIMENT_AOIS = Path(__file__).resolve().parent / "experiment_aois.geojson"


def _date(value: str | dt.date) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise RsgeeError(f"{value!r} is not a date; use YYYY-MM-DD") from None


def export(aois: Any, out: str | Path = "exports", *, source: str = "earthengine", catalog: str | Path | None = None,
           sources: Sequence[str] | None = None, start: str | dt.date = WINDOW[0],
           end: str | dt.date = WINDOW[1], windows: Sequence[str] = (), via: str = "download",
           bucket: str | None = None, prefix: str | None = None, drive_folder: str | None = None, poll_s: float = 30.0,
           max_pending: int = 500, retry_failed: bool = False, max_area_km2: float = MAX_AREA_KM2,
           overwrite: bool = False, dry_run: bool = False, progress: bool = True, project: str | None = None,
           service_account: str | Path | None = None, endpoint: str | None = None, ee_url: str | None = None,
           auth: bool = True, workload_tag: str | None = None, workers: int | None = None, timeout_s: float = 330.0,
           attempts: int = 6, s1_orbit: str = "both", inputs: Sequence[str] = (), seed: int = 0,
           cloud_cover: float = 0.05) -> list:
    """Export AOIs to ``out/<aoi>/`` as ``rsgee export`` does; returns one result per AOI.

    Args:
        aois: one or a list of: the CLI's AOI strings (bbox, WKT, ``NAME=``…), GeoJSON file paths, GeoJSON
            dicts, shapely Polygons in lon/lat, or :class:`~rsgee.acquire.aoi.AOI` objects.
        source: ``earthengine``, ``local`` or ``synthetic``.
        via: ``download`` or ``batch`` (Earth Engine tasks to ``bucket``/``prefix`` or ``drive_folder``).
        dry_run: write nothing; return the plan (grid, tiles, requests and bytes) instead.
        project, service_account, endpoint, ee_url, auth, workload_tag, timeout_s, attempts, s1_orbit: the Earth
            Engine session's (see ``rsgee export --help``); without ``workload_tag``, the tag set with
            ``ee.data.setWorkloadTag`` labels the requests; without ``endpoint``, the one Earth Engine
            recommends for the sources.
        workers: concurrent Earth Engine requests (default 16); for the synthetic source, worker processes
            (default none: computed in this process, so a script needs no ``__main__`` guard).
        inputs: ``SOURCE=PATH`` GeoTIFFs of the local source; seed, cloud_cover: the synthetic scene's.

    Returns:
        :class:`~rsgee.acquire.export.ExportResult` per AOI (``.ok``, ``.status``, ``.line()``), or with
        ``dry_run`` the :class:`~rsgee.acquire.plan.Plan` (``.aois``, ``.total``, ``.lines()``, ``.as_dict()``).
    """
    from rsgee.acquire.aoi import parse_aois
    from rsgee.acquire.export import export_aois
    from rsgee.acquire.sources import make_block_source
    from rsgee.catalog import load_catalog

    start, end = _date(start), _date(end)
    if start >= end:
        raise RsgeeError(f"--start {start} must be before --end {end}")
    check_number("--max-area", max_area_km2, 0.0, above=True)
    destination = None
    if via == "batch":
        from rsgee.acquire.earthengine.batch import Destination

        if source != "earthengine":
            raise RsgeeError(f"--via batch exports from Earth Engine; it does not apply to --source {source}")
        check_number("--poll", poll_s, 0.0)
        check_number("--max-pending", max_pending, 1, 3000, whole=True)
        destination = Destination.parse(bucket, prefix, drive_folder)
    elif via not in VIAS:
        raise RsgeeError(f"unknown via '{via}'; choose {' or '.join(VIAS)}")
    elif bucket or prefix or drive_folder:
        raise RsgeeError("--bucket, --prefix and --drive-folder apply to --via batch only")
    loaded = load_catalog(catalog)
    names = list(sources or loaded.sources)
    for name in names:
        loaded[name]
    specs = [aois] if isinstance(aois, (str, Path, dict)) or not isinstance(aois, Iterable) else list(aois)
    parsed = parse_aois(specs, max_area_km2=max_area_km2)
    out = Path(out)
    if dry_run:
        from rsgee.acquire.plan import dry_run as plan

        return plan(parsed, [loaded[n] for n in names], out, source, via, ee_url=ee_url, workload_tag=workload_tag,
                    endpoint=endpoint)
    block_source = make_block_source(source, names, start=start, end=end, windows=windows, retry_failed=retry_failed,
                                     destination=destination, progress=progress, catalog=loaded, project=project,
                                     service_account=service_account, ee_url=ee_url, auth=auth, workers=workers,
                                     timeout_s=timeout_s, attempts=attempts, s1_orbit=s1_orbit,
                                     workload_tag=workload_tag, endpoint=endpoint, inputs=inputs, seed=seed,
                                     cloud_cover=cloud_cover)
    if destination is not None:
        from rsgee.acquire.earthengine.batch import export_batch

        return export_batch(parsed, out, block_source, loaded, source_names=names, overwrite=overwrite,
                            retry_failed=retry_failed, poll_s=poll_s, max_pending=max_pending, progress=progress)
    return export_aois(parsed, out, block_source, loaded, source_names=names, overwrite=overwrite,
                       retry_failed=retry_failed, progress=progress)


def tile(exports: str | Path | Sequence[str | Path], out: str | Path, *, catalog: str | Path | None = None,
         max_nodata: float = TileFilters.max_nodata, max_s2_nodata: float = TileFilters.max_s2_nodata,
         split_ratios: str | Sequence[float] = SplitConfig.ratios, split_by: str = SplitConfig.by,
         split_block: int = SplitConfig.block, split_seed: int = SplitConfig.seed,
         split_aoi: dict[str, str] | Sequence[str] | None = None, workers: int = 1, progress: bool = True,
         max_float_error: float | None = None):
    """Cut exports into the training archive ``out`` as ``rsgee tile`` does; returns its summary
    (``.lines()``, ``.failed``, ``.written``). The filters and split settings are those of
    :class:`~rsgee.preprocess.tiling.TileFilters` and :class:`~rsgee.preprocess.split.SplitConfig` (with their
    defaults); ``split_ratios``: "7:2:1" or (7, 2, 1); ``split_aoi`` pins AOIs to splits ({name: "test", …} or
    ["name=test", …]); ``max_float_error``: see ``rsgee tile --max-float-error``."""
    from rsgee.catalog import load_catalog
    from rsgee.preprocess.tiling import build_archive

    paths = [exports] if isinstance(exports, (str, Path)) else list(exports)
    pins = split_aoi.items() if isinstance(split_aoi, dict) else SplitConfig.parse_pins(split_aoi or ())
    split = SplitConfig(SplitConfig.parse_ratios(split_ratios), split_by, split_block, split_seed, tuple(pins))
    return build_archive(paths, out, load_catalog(catalog), split=split,
                         filters=TileFilters(max_nodata, max_s2_nodata), workers=workers, progress=progress,
                         max_float_error=max_float_error)


def experiment_archive(out: str | Path, *, seed: int = 0, cloud_cover: float = 0.05, workers: int = 1,
                       progress: bool = True):
    """The archive ``rsgee experiment`` is meant for, built from the synthetic source into ``out``.

    Exports :data:`EXPERIMENT_AOIS` (16 AOIs of ~16 tiles, ~1° apart, in four kinds of terrain) to
    ``out/exports`` and tiles them into ``out/archive`` split by AOI with each AOI pinned to the split its
    file names: every split holds every kind of terrain, and no val or test tile has a train tile beside it
    (~133 train, 66 val, 64 test tiles). Re-running reuses what is there. ``workers`` > 1 export and tile in
    that many processes (a script doing so needs an ``if __name__ == "__main__":`` guard). Returns the tiling
    summary.
    """
    import json

    out = Path(out)
    for result in export(str(EXPERIMENT_AOIS), out / "exports", source="synthetic", seed=seed,
                         cloud_cover=cloud_cover, workers=workers, progress=progress):
        if not result.ok:
            raise RsgeeError(result.line())
    features = json.loads(EXPERIMENT_AOIS.read_text(encoding="utf-8"))["features"]
    pins = {f["properties"]["name"]: f["properties"]["split"] for f in features}
    return tile([out / "exports"], out / "archive", split_by="aoi", split_aoi=pins, workers=workers,
                progress=progress)


def check(archive: str | Path, *, workers: int = 1, progress: bool = True):
    """Verify an archive as ``rsgee check`` does; the report has ``.ok``, ``.problems`` and ``.notes``."""
    from rsgee.preprocess.check import check_archive

    check_number("--workers", workers, 1, whole=True)
    return check_archive(archive, workers=workers, progress=progress)


@dataclass(frozen=True)
class CacheResult:
    """One split's packed cache: where it is, and whether this call built it (else it was up to date)."""

    split: str
    folder: Path
    built: bool
    tiles: int

    def line(self) -> str:
        return f"cache/{self.split}: built {self.tiles} tiles → {self.folder}" if self.built else \
            f"cache/{self.split}: up to date"


def cache(archive: str | Path, splits: Sequence[str] = ("train", "val", "test"), *, workers: int = 1,
          force: bool = False, progress: bool = True) -> list[CacheResult]:
    """Build (or keep, when whole and current, unless ``force``) the packed training cache of each split with
    ``workers`` processes, waiting for another process that holds the archive's lock; one result per split."""
    from rsgee.preprocess.cache import cache_dir, update_caches
    from rsgee.preprocess.split import SPLITS

    check_number("--workers", workers, 1, whole=True)
    arch = Archive(archive)
    arch.read_meta()
    for split in splits:
        if split not in SPLITS:
            raise RsgeeError(f"--splits: '{split}' is not a split; choose from {', '.join(SPLITS)}")
    built = update_caches(arch, splits, workers=workers, force=force, progress=progress)
    return [CacheResult(split, cache_dir(arch, split), split in built, len(arch.tiles(split))) for split in splits]


def stac(archive: str | Path, *, start: str | dt.date | None = None, end: str | dt.date | None = None) -> Path:
    """Write ``archive/stac/`` as ``rsgee stac`` does (``start``/``end``: the window of AOIs whose window the
    archive lacks); returns the collection's path."""
    return Archive(archive).to_stac(start=start and _date(start), end=end and _date(end))


def source_catalog(catalog: str | Path | None = None):
    """The source catalog in the YAML file ``catalog`` (default: the one shipped with rsgee), validated."""
    from rsgee.catalog import load_catalog

    return load_catalog(catalog)


def train_fusion(archive: str | Path, out: str | Path, *, resume: bool = False, accelerator: str = "auto",
                 devices: int | str = "auto", num_nodes: int | str = "auto", precision: str | None = None,
                 loggers: Sequence[str] = ("csv",), progress: bool = True, **options) -> Path:
    """Train RS-SPADE, pix2pix or the SPADE decoder as ``rsgee train fusion`` does; ``options`` are
    :class:`~rsgee.configs.FusionConfig` fields (``model``, ``sources``, ``recipe``, ``steps``, ``schedule`` …),
    whose defaults are the command's; ``loggers``: any of :data:`~rsgee.configs.LOGGERS` (metrics.csv is always
    written). Returns the run folder."""
    from rsgee.train.fusion import train_fusion as run

    return run(archive, out, FusionConfig(**options), resume=resume, accelerator=accelerator, devices=devices,
               num_nodes=num_nodes, precision=precision, progress=progress, loggers=loggers,
               score=_logged_scores("fusion", loggers))


def train_seg(archive: str | Path, out: str | Path, *, resume: bool = False, accelerator: str = "auto",
              devices: int | str = "auto", num_nodes: int | str = "auto", precision: str | None = None,
              loggers: Sequence[str] = ("csv",), progress: bool = True, **options) -> Path:
    """Train RS-UNet as ``rsgee train seg`` does; ``options`` are :class:`~rsgee.configs.SegmentationConfig`
    fields (``mix`` as (1, 1) or "1:1" real:generated, ``steps`` …). Returns the run folder."""
    from rsgee.train.segmentation import train_segmentation as run

    if isinstance(options.get("mix"), str):
        options["mix"] = parse_mix(options["mix"])
    return run(archive, out, SegmentationConfig(**options), resume=resume, accelerator=accelerator, devices=devices,
               num_nodes=num_nodes, precision=precision, progress=progress, loggers=loggers,
               score=_logged_scores("segmentation", loggers))


def _logged_scores(kind: str, loggers: Sequence[str]):
    """What scores a finished run for its loggers other than CSV (none: nothing to score for)."""
    if not set(loggers) - {"csv"}:
        return None
    from functools import partial

    from rsgee.train.evaluate import logged_test_scores

    return partial(logged_test_scores, kind=kind)


def evaluate_fusion(runs: str | Path | Sequence[str | Path], *, archive: str | Path | None = None,
                    split: str = "test", out: str | Path | None = "evaluation", batch_size: int = 8,
                    accelerator: str = "auto", devices: int | str = "auto", num_nodes: int | str = "auto",
                    progress: bool = True) -> list[dict]:
    """Table 1 rows (baselines first) as ``rsgee evaluate fusion``, written to ``out`` as CSV and Markdown
    (by the main process of a multi-device run; ``out=None``: not written)."""
    from rsgee.train.distributed import is_main_process
    from rsgee.train.evaluate import FUSION_COLUMNS, FUSION_HEADERS, write_table
    from rsgee.train.evaluate import evaluate_fusion as run

    rows = run([runs] if isinstance(runs, (str, Path)) else list(runs), archive=archive, split=split,
               batch_size=batch_size, accelerator=accelerator, devices=devices, num_nodes=num_nodes, progress=progress)
    if out is not None and is_main_process():
        write_table(rows, out, "fusion_table", FUSION_COLUMNS, FUSION_HEADERS)
    return rows


def evaluate_seg(runs: str | Path | Sequence[str | Path], *, archive: str | Path | None = None, split: str = "test",
                 out: str | Path = "evaluation", batch_size: int = 8, accelerator: str = "auto",
                 devices: int | str = "auto", num_nodes: int | str = "auto",
                 progress: bool = True) -> tuple[list[dict], list[Path]]:
    """Table 3 rows and the figures as ``rsgee evaluate seg``; tables and figures are written to ``out``."""
    from rsgee.train.distributed import is_main_process
    from rsgee.train.evaluate import SEG_COLUMNS, SEG_HEADERS, evaluate_segmentation, write_table

    rows, figures = evaluate_segmentation([runs] if isinstance(runs, (str, Path)) else list(runs), out,
                                          archive=archive, split=split, batch_size=batch_size, accelerator=accelerator,
                                          devices=devices, num_nodes=num_nodes, progress=progress)
    if is_main_process():
        write_table(rows, out, "seg_table", SEG_COLUMNS, SEG_HEADERS)
    return rows, figures


def generate(run: str | Path, archive: str | Path, *, batch_size: int = 8, overwrite: bool = False,
             weights: str = "raw", accelerator: str = "auto", devices: int | str = "auto",
             num_nodes: int | str = "auto", progress: bool = True):
    """Pseudo-Sentinel-2 for every tile of ``archive`` as ``rsgee generate`` does; returns its summary."""
    from rsgee.train.generate import generate as run_generate

    return run_generate(run, archive, batch_size=batch_size, overwrite=overwrite, weights=weights,
                        accelerator=accelerator, devices=devices, num_nodes=num_nodes, progress=progress)


def predict_seg(run: str | Path, out: str | Path, *, exports: str | Path | None = None, aoi: Any = None,
                probabilities: bool = False, overlap: int = 64, batch_size: int = 8, device: str = "cpu",
                progress: bool = True, **export_options):
    """Land-cover COG of an AOI as ``rsgee predict seg``: from an export folder, or ``aoi`` exported first
    into ``<out stem>_inputs/`` with ``export_options`` (those of :func:`export`: ``source``, ``start`` …)."""
    from rsgee.predict import predict_seg as run_model

    folder = _predict_inputs("segmentation", run, out, exports, aoi, progress, export_options)
    return run_model(run, folder, out, probabilities=probabilities, overlap=overlap, batch_size=batch_size,
                     device=device, progress=progress)


def predict_fusion(run: str | Path, out: str | Path, *, exports: str | Path | None = None, aoi: Any = None,
                   fill_clouds: bool = False, weights: str | None = None, overlap: int = 64, batch_size: int = 8,
                   device: str = "cpu", progress: bool = True, **export_options):
    """Pseudo-Sentinel-2 COG of an AOI as ``rsgee predict fusion`` (``fill_clouds=True`` keeps real pixels);
    the inputs as for :func:`predict_seg`."""
    from rsgee.predict import predict_fusion as run_model

    folder = _predict_inputs("fusion", run, out, exports, aoi, progress, export_options)
    return run_model(run, folder, out, fill_clouds=fill_clouds, weights=weights, overlap=overlap,
                     batch_size=batch_size, device=device, progress=progress)


def export_model(run: str | Path, out: str | Path, *, weights: str = "raw", onnx: bool = False,
                 evaluation: str | Path | None = None) -> Path:
    """``run``'s network as a model folder as ``rsgee export-model`` writes it (config.json, model.safetensors, a
    README.md model card; ``onnx``: model.onnx too), for :func:`load_model` and ``rsgee predict``; returns ``out``."""
    from rsgee.portable import export_model as run_export

    return run_export(run, out, weights=weights, onnx=onnx, evaluation=evaluation)


def load_model(folder: str | Path, *, device: str = "cpu"):
    """The model a folder of :func:`export_model` holds, built with torch alone (no Lightning): a
    :class:`~rsgee.portable.PortableModel` (``module`` in eval mode, ``config``), called as its module."""
    from rsgee.portable import load_model as load

    return load(folder, device=device)


def _predict_inputs(kind: str, run, out, exports, aoi, progress: bool, export_options: dict) -> Path:
    """The AOI folder a prediction reads: ``exports``, or ``aoi`` exported into ``<out stem>_inputs/`` with only
    the sources ``run`` reads (reused when complete)."""
    from rsgee.acquire.aoi import parse_aois
    from rsgee.predict import open_model

    if (exports is None) == (aoi is None):
        raise RsgeeError("give either exports (--exports DIR: an rsgee export AOI folder) or aoi (--aoi), not both")
    if exports is not None:
        return Path(exports)
    names = sorted(open_model(run, kind).export_sources())  # only what the model reads (and s2)
    areas = len(parse_aois([aoi], max_area_km2=float("inf")))
    if areas != 1:
        raise RsgeeError(f"--aoi {aoi!r} holds {areas} areas; predict one AOI at a time")
    out = Path(out)
    folder = out.with_name(f"{out.stem}_inputs")
    (result,) = export([aoi], folder, sources=names, progress=progress, **export_options)
    if not result.ok:
        for empty in (result.path, folder):  # a refused AOI leaves no empty folders behind
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()
        raise RsgeeError(result.line())
    return result.path


def _fusion_budget(*, steps: int, lr: float, schedule: str, batch_size: int, crop: int,
                   val_every_steps: int | None, size: str) -> FusionConfig:
    """The settings every experiment fusion run shares (``crop`` 256: whole tiles; no figures)."""
    return FusionConfig(size=size, batch_size=batch_size, steps=steps, lr_g=lr, lr_d=lr, schedule=schedule,
                        crop=None if crop == 256 else crop, val_every=10**6, val_every_steps=val_every_steps,
                        val_figures=0)


def experiment_fusion(archive: str | Path, out: str | Path, *, models: Sequence[str] = MODELS,
                      recipes: Sequence[str] = (DEFAULT_RECIPE,), ablation_model: str | None = "best",
                      ablation_sources: Sequence[Sequence[str] | str] = ABLATION_SOURCES, seeds: int = 3,
                      steps: int = 4000, lr: float = 2e-3, schedule: str = "cosine", batch_size: int = 4,
                      crop: int = 64, val_every_steps: int = 1000, size: str = "tiny", progress: bool = True,
                      say=print):
    """Tables 1 and 2 over ``seeds`` as ``rsgee experiment fusion``: every generator of ``models`` × ``recipes``,
    then ``ablation_model`` ("best": Table 1's best on val; None or "none": no ablation) on each source set of
    ``ablation_sources``, every run at one budget (``steps`` at ``lr`` on ``crop``-px crops (256: whole tiles),
    the checkpoint chosen on val every ``val_every_steps``). Returns the result (``.text()``, ``.files``)."""
    from rsgee.train.experiment import FusionExperiment, run_fusion_experiment

    base = _fusion_budget(steps=steps, lr=lr, schedule=schedule, batch_size=batch_size, crop=crop,
                          val_every_steps=val_every_steps, size=size)
    experiment = FusionExperiment(base=base, models=tuple(models), recipes=tuple(recipes),
                                  ablation_model=None if ablation_model == "none" else ablation_model,
                                  ablation_sources=tuple(ablation_sources), seeds=seeds)
    return run_fusion_experiment(archive, out, experiment, progress=progress, say=say)


def experiment_seg(archive: str | Path, out: str | Path, *, labelled: Sequence[int] = (4, 8), seeds: int = 3,
                   steps: int = 600, val_every_steps: int = 100, batch_size: int = 8, crop: int = 128,
                   lr: float = 2e-3, generator: str = "rs-spade", generator_steps: int = 2000, size: str = "tiny",
                   progress: bool = True, say=print):
    """Table 3 over ``seeds`` as ``rsgee experiment seg``, in the paper's protocol and the low-label one with
    each of ``labelled`` real tiles (empty: the paper's only): RS-UNet runs of ``steps`` (constant ``lr``),
    ``generator``s of ``generator_steps`` at the fusion experiment's other settings (last step)."""
    import inspect

    from rsgee.train.experiment import SegExperiment, run_seg_experiment

    base = SegmentationConfig(size=size, batch_size=batch_size, steps=steps, crop=None if crop == 256 else crop,
                              lr=lr, schedule="constant", val_every_steps=val_every_steps)
    fusion = {k: p.default for k, p in inspect.signature(experiment_fusion).parameters.items()
              if k in ("lr", "schedule", "batch_size", "crop")}
    budget = _fusion_budget(steps=generator_steps, val_every_steps=None, size=size, **fusion)
    experiment = SegExperiment(base=base, generator=replace(budget, model=generator), labelled=tuple(labelled),
                               seeds=seeds)
    return run_seg_experiment(archive, out, experiment, progress=progress, say=say)


def demo(out: str | Path = "demo-output", *, progress: bool = True, say=print):
    """The whole pipeline offline as ``rsgee demo`` (export → … → evaluate seg, tiny models) into ``out``."""
    from rsgee.demo import run_demo

    return run_demo(out, progress=progress, say=say)
