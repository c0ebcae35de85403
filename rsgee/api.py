"""rsgee from Python: the command line's steps as functions, with the command line's defaults.

Every function here is what the matching ``rsgee`` command runs (the CLI parses options and prints;
these do the work), so a notebook gets the same behaviour, errors and files. They are reachable from
the top of the package, imported on first use::

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
from pathlib import Path
from typing import Any, Iterable, Sequence

from rsgee.errors import RsgeeError, check_number
from rsgee.preprocess.archive import Archive

__all__ = ["Archive", "cache", "check", "evaluate_fusion", "evaluate_seg", "experiment_archive", "export", "generate",
           "predict_fusion", "predict_seg", "tile", "train_fusion", "train_seg"]

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
           sources: Sequence[str] | None = None, start: str | dt.date = "2023-06-01",
           end: str | dt.date = "2023-09-01", windows: Sequence[str] = (), via: str = "download",
           bucket: str | None = None, prefix: str | None = None, drive_folder: str | None = None, poll_s: float = 30.0,
           max_pending: int = 500, retry_failed: bool = False, max_area_km2: float = 50_000.0,
           overwrite: bool = False, dry_run: bool = False, progress: bool = True, **source_options) -> list:
    """Export AOIs to ``out/<aoi>/`` as ``rsgee export`` does; returns one result per AOI.

    Args:
        aois: one or a list of: the CLI's AOI strings (bbox, WKT, ``NAME=``…), GeoJSON file paths, GeoJSON
            dicts, shapely Polygons in lon/lat, or :class:`~rsgee.acquire.aoi.AOI` objects.
        source: ``earthengine``, ``local`` or ``synthetic``.
        via: ``download`` or ``batch`` (Earth Engine tasks to ``bucket``/``prefix`` or ``drive_folder``).
        dry_run: write nothing; return the plan's lines (grid, tiles, requests and bytes) instead.
        source_options: the source's own options — ``project``, ``service_account``, ``ee_url``, ``auth``,
            ``workers``, ``timeout_s``, ``attempts``, ``s1_orbit``, ``workload_tag`` (Earth Engine; without
            one, the tag set with ``ee.data.setWorkloadTag`` labels the requests), ``endpoint`` (``standard``
            or ``highvolume``; without it, the one Earth Engine recommends for the sources); ``inputs`` (local);
            ``seed``, ``cloud_cover`` (synthetic).

    Returns:
        :class:`~rsgee.acquire.export.ExportResult` per AOI (``.ok``, ``.status``, ``.line()``), or the dry
        run's lines.
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
    elif via != "download":
        raise RsgeeError(f"unknown via '{via}'; choose download or batch")
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

        return list(plan(parsed, [loaded[n] for n in names], out, source, via, ee_url=source_options.get("ee_url"),
                         workload_tag=source_options.get("workload_tag"), endpoint=source_options.get("endpoint")))
    block_source = make_block_source(source, names, start=start, end=end, windows=windows, retry_failed=retry_failed,
                                     destination=destination, progress=progress, catalog=loaded, **source_options)
    if destination is not None:
        from rsgee.acquire.earthengine.batch import export_batch

        return export_batch(parsed, out, block_source, loaded, source_names=names, overwrite=overwrite,
                            retry_failed=retry_failed, poll_s=poll_s, max_pending=max_pending, progress=progress)
    return export_aois(parsed, out, block_source, loaded, source_names=names, overwrite=overwrite,
                       retry_failed=retry_failed, progress=progress)


def tile(exports: str | Path | Sequence[str | Path], out: str | Path, *, catalog: str | Path | None = None,
         max_nodata: float = 0.05, max_s2_nodata: float = 0.2, split_ratios: str | Sequence[float] = "7:2:1",
         split_by: str = "block", split_block: int = 4, split_seed: int = 0, split_aoi: dict[str, str] | None = None,
         workers: int = 1, progress: bool = True, max_float_error: float | None = None):
    """Cut exports into the training archive ``out`` as ``rsgee tile`` does; returns its summary
    (``.lines()``, ``.failed``, ``.written``). ``split_ratios``: "7:2:1" or (7, 2, 1); ``split_aoi`` pins AOIs
    to splits ({name: "test", …}); ``max_float_error``: see ``rsgee tile --max-float-error``."""
    from rsgee.catalog import load_catalog
    from rsgee.preprocess.split import SplitConfig
    from rsgee.preprocess.tiling import TileFilters, build_archive

    paths = [exports] if isinstance(exports, (str, Path)) else list(exports)
    split = SplitConfig(SplitConfig.parse_ratios(split_ratios), split_by, split_block, split_seed,
                        tuple((split_aoi or {}).items()))
    return build_archive(paths, out, load_catalog(catalog), split=split,
                         filters=TileFilters(max_nodata, max_s2_nodata), workers=workers, progress=progress,
                         max_float_error=max_float_error)


def experiment_archive(out: str | Path, *, seed: int = 0, cloud_cover: float = 0.05, workers: int = 2,
                       progress: bool = True):
    """The archive ``rsgee experiment`` is meant for, built from the synthetic source into ``out``.

    Exports :data:`EXPERIMENT_AOIS` (16 AOIs of ~16 tiles, ~1° apart, in four kinds of terrain) to
    ``out/exports`` and tiles them into ``out/archive`` split by AOI with each AOI pinned to the split its
    file names: every split holds every kind of terrain, and no val or test tile has a train tile beside it
    (~133 train, 66 val, 64 test tiles). Re-running reuses what is there. Returns the tiling summary.
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


def cache(archive: str | Path, splits: Sequence[str] = ("train", "val", "test"), *, workers: int = 1,
          force: bool = False, progress: bool = True) -> dict:
    """Build (or keep, when whole and current, unless ``force``) the packed training cache of each split with
    ``workers`` processes, waiting for another process that holds the archive's lock; ``{split: folder}``."""
    from rsgee.preprocess.cache import cache_dir, update_caches
    from rsgee.preprocess.split import SPLITS

    check_number("--workers", workers, 1, whole=True)
    arch = Archive(archive)
    arch.read_meta()
    for split in splits:
        if split not in SPLITS:
            raise RsgeeError(f"'{split}' is not a split; choose from {', '.join(SPLITS)}")
    update_caches(arch, splits, workers=workers, force=force, progress=progress)
    return {split: cache_dir(arch, split) for split in splits}


def train_fusion(archive: str | Path, out: str | Path, *, resume: bool = False, accelerator: str = "auto",
                 devices: int | str = "auto", num_nodes: int | str = "auto", precision: str | None = None,
                 progress: bool = True, **options) -> Path:
    """Train RS-SPADE, pix2pix or the SPADE decoder as ``rsgee train fusion`` does; ``options`` are
    :class:`~rsgee.train.fusion.FusionConfig` fields (``model``, ``sources``, ``recipe``, ``steps``, ``schedule`` …)
    with the command's defaults. Returns the run folder."""
    from rsgee.train.fusion import FusionConfig
    from rsgee.train.fusion import train_fusion as run

    return run(archive, out, FusionConfig(**options), resume=resume, accelerator=accelerator, devices=devices,
               num_nodes=num_nodes, precision=precision, progress=progress)


def train_seg(archive: str | Path, out: str | Path, *, mix: str | tuple[int, int] = "1:0", resume: bool = False,
              accelerator: str = "auto", devices: int | str = "auto", num_nodes: int | str = "auto",
              precision: str | None = None, progress: bool = True, **options) -> Path:
    """Train RS-UNet as ``rsgee train seg`` does (``mix`` "a:b" real:generated); ``options`` are
    :class:`~rsgee.train.segmentation.SegmentationConfig` fields. Returns the run folder."""
    from rsgee.train.segmentation import SegmentationConfig, parse_mix
    from rsgee.train.segmentation import train_segmentation as run

    options.setdefault("batch_size", 4)  # the command's default
    config = SegmentationConfig(mix=parse_mix(mix) if isinstance(mix, str) else mix, **options)
    return run(archive, out, config, resume=resume, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
               precision=precision, progress=progress)


def evaluate_fusion(runs: str | Path | Sequence[str | Path], *, out: str | Path | None = None, **options) -> list[dict]:
    """Table 1 rows (baselines first) as ``rsgee evaluate fusion``; written to ``out`` as CSV/Markdown when given."""
    from rsgee.train.evaluate import FUSION_COLUMNS, FUSION_HEADERS, write_table
    from rsgee.train.evaluate import evaluate_fusion as run

    rows = run([runs] if isinstance(runs, (str, Path)) else list(runs), **options)
    if out is not None:
        write_table(rows, out, "fusion_table", FUSION_COLUMNS, FUSION_HEADERS)
    return rows


def evaluate_seg(runs: str | Path | Sequence[str | Path], *, out: str | Path = "evaluation",
                 **options) -> tuple[list[dict], list[Path]]:
    """Table 3 rows and the figures as ``rsgee evaluate seg``; tables and figures are written to ``out``."""
    from rsgee.train.evaluate import SEG_COLUMNS, SEG_HEADERS, evaluate_segmentation, write_table

    rows, figures = evaluate_segmentation([runs] if isinstance(runs, (str, Path)) else list(runs), out, **options)
    write_table(rows, out, "seg_table", SEG_COLUMNS, SEG_HEADERS)
    return rows, figures


def generate(run: str | Path, archive: str | Path, **options):
    """Pseudo-Sentinel-2 for every tile of ``archive`` as ``rsgee generate`` does; returns its summary."""
    from rsgee.train.generate import generate as run_generate

    return run_generate(run, archive, **options)


def predict_seg(run: str | Path, out: str | Path, *, exports: str | Path | None = None, aoi: Any = None,
                **options):
    """Land-cover COG of an AOI as ``rsgee predict seg``: from an export folder, or ``aoi`` exported first."""
    return _predict("segmentation", run, out, exports, aoi, options)


def predict_fusion(run: str | Path, out: str | Path, *, exports: str | Path | None = None, aoi: Any = None,
                   **options):
    """Pseudo-Sentinel-2 COG of an AOI as ``rsgee predict fusion`` (``fill_clouds=True`` keeps real pixels)."""
    return _predict("fusion", run, out, exports, aoi, options)


def _predict(kind: str, run, out, exports, aoi, options: dict):
    from rsgee.train import predict

    if (exports is None) == (aoi is None):
        raise RsgeeError("give either exports= (an rsgee export AOI folder) or aoi=")
    out = Path(out)
    model = {k: options.pop(k) for k in ("probabilities", "fill_clouds", "weights", "overlap", "batch_size", "device")
             if k in options}
    progress = options.get("progress", True)
    for key in ("start", "end"):
        if key in options:
            options[key] = _date(options[key])
    if exports is None:
        exports = predict.export_inputs(aoi, out.with_name(f"{out.stem}_inputs"), kind=kind, run=run, **options)
    run_model = predict.predict_seg if kind == "segmentation" else predict.predict_fusion
    return run_model(run, exports, out, progress=progress, **model)
