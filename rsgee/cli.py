"""The ``rsgee`` command line: thin wrappers that parse, validate and call one function each.

Errors a user can cause are printed as one line on stderr with a non-zero exit; ``--debug`` (or
``RSGEE_DEBUG=1``) shows the traceback instead. SIGTERM (SLURM, Kubernetes, ``timeout``, a closed
terminal) stops a command as Ctrl-C does: cleanup runs, workers stop, one line says how to carry on, and
the exit status is 143 (130 for Ctrl-C).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

import click

from rsgee import __version__
from rsgee.errors import WRITE_ONLY_ERRNOS, Interrupted, RsgeeError, redact_urls, unwritable
from rsgee.memory import keep_freed_memory

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _date(ctx: click.Context, param: click.Parameter, value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a date; use YYYY-MM-DD") from None


def _csv(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise click.BadParameter("give at least one name, comma-separated")
    return items


catalog_option = click.option(
    "--catalog", "catalog_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Source catalog YAML.  [default: the catalog.yaml shipped with rsgee]",
)
progress_option = click.option("--progress/--no-progress", default=True, show_default=True,
                               help="Show progress bars on stderr.")


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="rsgee")
@click.option("--debug", is_flag=True, help="Show the full traceback when something fails.")
def cli(debug: bool) -> None:
    """rsgee: multi-source remote-sensing training archives (Sentinel-1/2, Dynamic World, DEM).

    Typical flow: `rsgee export` AOIs to per-AOI GeoTIFFs on a 10 m UTM grid; later steps tile them
    into an archive and train models on it.
    """


@cli.command("export", context_settings=CONTEXT)
@click.option("--aoi", "aoi_specs", multiple=True, required=True, metavar="AOI",
              help="Area of interest; repeatable. A GeoJSON file (Polygon/MultiPolygon features, named by their "
                   "'name' property), a bbox 'minlon,minlat,maxlon,maxlat' in degrees, or WKT; prefix a bbox or "
                   "WKT with 'NAME=' to name it.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("exports"),
              show_default=True, help="Output folder; each AOI is written to OUT/<aoi name>/.")
@click.option("--source", type=click.Choice(["earthengine", "local", "synthetic"]), default="earthengine",
              show_default=True,
              help="Where pixels come from: Google Earth Engine; your own GeoTIFFs (--input); or the offline "
                   "procedural scene, labelled synthetic in every output.")
@catalog_option
@click.option("--sources", "source_names", callback=_csv, default=None, metavar="NAMES",
              help="Comma-separated catalog sources to export.  [default: every source in the catalog]")
@click.option("--start", callback=_date, metavar="DATE", default="2023-06-01", show_default=True,
              help="First day of the compositing window (YYYY-MM-DD, inclusive).")
@click.option("--end", callback=_date, metavar="DATE", default="2023-09-01", show_default=True,
              help="Day after the compositing window (YYYY-MM-DD, exclusive).")
@click.option("--window", "windows", multiple=True, metavar="SOURCE=START/END",
              help="Per-source date window overriding --start/--end, e.g. s1=2023-05-01/2023-10-01; repeatable.")
@click.option("--project", envvar="EE_PROJECT", default=None, metavar="PROJECT",
              help="Google Cloud project registered for Earth Engine (or EE_PROJECT).  [earthengine]")
@click.option("--service-account", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="KEY.json",
              help="Credentials JSON file (or GOOGLE_APPLICATION_CREDENTIALS): a service-account key, the "
                   "authorized_user file of `gcloud auth application-default login`, or an external_account "
                   "(workload identity) file; default: the credentials of `earthengine authenticate`.  [earthengine]")
@click.option("--endpoint", type=click.Choice(["standard", "highvolume"]), default=None,
              help="Earth Engine endpoint: standard (https://earthengine.googleapis.com) or highvolume "
                   "(https://earthengine-highvolume.googleapis.com); both allow 40 concurrent requests. Composites "
                   "(medians, means, modes, cloud masks) are complex queries, which Earth Engine recommends sending "
                   "to the standard endpoint: the high-volume one caches less and bills them more EECU-time.  "
                   "[default: standard when any source is such a composite, and for --via batch; highvolume for "
                   "mosaics of stored images alone, e.g. --sources dem]  [earthengine]")
@click.option("--ee-url", envvar="RSGEE_EE_URL", default=None, metavar="URL",
              help="Earth Engine API base URL (or RSGEE_EE_URL); overrides --endpoint.")
@click.option("--no-auth", is_flag=True, help="Send no credentials (private endpoints, local test servers).")
@click.option("--workload-tag", default=None, metavar="TAG",
              help="Label every computePixels request and batch task with TAG, to tell this run's Earth Engine usage "
                   "apart in the project's Cloud Monitoring: 1–63 lowercase letters, digits, '-' and '_', starting "
                   "and ending with a letter or digit.  [earthengine]")
@click.option("--workers", type=click.IntRange(1, 40), default=16, show_default=True,
              help="Concurrent Earth Engine requests, 1–40 (40 is the per-project limit).  [earthengine]  With "
                   "--source synthetic: processes computing tiles, at most the CPU count (files byte-identical).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1.0), default=330.0, show_default=True,
              help="Per-request deadline in seconds; above Earth Engine's ~300 s limit, so that a slow answer is "
                   "received rather than paid for twice.  [earthengine]")
@click.option("--attempts", type=click.IntRange(min=1), default=6, show_default=True,
              help="Tries per block for retryable errors (5xx, timeouts, dropped connections), seconds apart with "
                   "capped exponential backoff and jitter; \"Computation timed out.\" is tried twice at most (each try "
                   "is billed). Quota and rate answers (429, 503) are not counted: they are waited out for up to 5 min "
                   "a try and 30 min a block, with fewer requests in flight.  [earthengine]")
@click.option("--retry-failed", is_flag=True,
              help="Retry only the blocks that failed for good in an earlier run (recorded in manifest.json); with "
                   "--via batch, restart only the failed or cancelled tasks.")
@click.option("--via", type=click.Choice(["download", "batch"]), default="download", show_default=True,
              help="How Earth Engine pixels arrive: concurrent downloads to this machine, or Earth Engine batch "
                   "export tasks (one per AOI and source, billed per task) writing GeoTIFFs to --bucket or "
                   "--drive-folder.  [earthengine]")
@click.option("--bucket", default=None, metavar="BUCKET",
              help="Cloud Storage bucket for --via batch (the name, without gs://): files go to "
                   "gs://BUCKET/PREFIX/<aoi>/<source>.tif and `rsgee tile` reads them in place through GDAL's /vsigs/, "
                   "which needs Google Cloud credentials: GOOGLE_APPLICATION_CREDENTIALS naming a service-account key "
                   "(or the file `gcloud auth application-default login` writes), ~/.boto, or a Compute Engine "
                   "machine's account.  [batch]")
@click.option("--prefix", default=None, metavar="PREFIX",
              help="Folder inside --bucket for the exported files.  [default: the bucket's top level]  [batch]")
@click.option("--drive-folder", default=None, metavar="FOLDER",
              help="Google Drive folder for --via batch instead of --bucket: files are named <aoi>_<source>.tif and "
                   "you download each into OUT/<aoi>/<source>.tif before `rsgee tile` (rsgee cannot fetch from "
                   "Drive).  [batch]")
@click.option("--poll", "poll_s", type=click.FloatRange(min=0.0), default=30.0, show_default=True, metavar="SECONDS",
              help="Seconds between status checks of the batch tasks; Ctrl-C stops checking, not the tasks, and "
                   "re-running the same command resumes without starting any task twice.  [batch]")
@click.option("--max-pending", type=click.IntRange(1, 3000), default=500, show_default=True, metavar="N",
              help="Submit batch tasks while fewer than N of the project's tasks are pending or running (Earth "
                   "Engine queues at most 3,000); the others follow as tasks end.  [batch]")
@click.option("--s1-orbit", type=click.Choice(["both", "ASCENDING", "DESCENDING"]), default="both", show_default=True,
              help="Sentinel-1 orbit pass to composite. both keeps every scene: many areas are imaged on one pass "
                   "only, where a fixed pass would leave them without data; pin one where terrain matters (the passes "
                   "see slopes from opposite sides, and a mix of them can leave seams).  [earthengine]")
@click.option("--input", "inputs", multiple=True, metavar="SOURCE=PATH",
              help="Your GeoTIFF(s) for a source, any CRS and resolution, e.g. s2=scene.tif (globs allowed); "
                   "repeatable.  [local]")
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic scene seed.  [synthetic]")
@click.option("--cloud-cover", type=click.FloatRange(0.0, 1.0), default=0.05, show_default=True,
              help="Fraction of Sentinel-2 pixels left cloud-masked (nodata), 0–1.  [synthetic]")
@click.option("--max-area", "max_area_km2", type=click.FloatRange(min=0.0, min_open=True), default=50_000.0,
              show_default=True, help="Largest accepted AOI area in km²; larger AOIs are refused.")
@click.option("--overwrite", is_flag=True, help="Replace exports made with different parameters.")
@click.option("--dry-run", is_flag=True,
              help="Print each AOI's grid and tile count and, for Earth Engine, the computePixels requests (or batch "
                   "tasks) and bytes per AOI and in total, the endpoint and the workload tag; write nothing.")
@progress_option
def export_cmd(aoi_specs, out_dir, source, catalog_path, source_names, start, end, windows, project,
               service_account, endpoint, ee_url, no_auth, workload_tag, workers, timeout_s, attempts, retry_failed,
               via, bucket, prefix, drive_folder, poll_s, max_pending, s1_orbit, inputs, seed, cloud_cover,
               max_area_km2, overwrite, dry_run, progress) -> None:
    """Export sources for AOIs to OUT/<aoi>/{s1,s2,lulc,dem}.tif and manifest.json.

    Every AOI gets a UTM grid (zone of its centroid, 10 m pixels, edges on the 2560 m tile lattice).
    Earth Engine blocks are downloaded concurrently and saved as they arrive: re-running a killed
    export with the same arguments fetches only what is missing, and complete AOIs are skipped.

    With --via batch, Earth Engine exports each AOI and source itself (to Cloud Storage or Drive)
    and rsgee polls the tasks; OUT/<aoi>/manifest.json then points at the files where they are.
    """
    from rsgee import api

    if start >= end:
        raise click.BadParameter(f"--start {start} must be before --end {end}", param_hint="--start/--end")
    options = dict(project=project, service_account=service_account, ee_url=ee_url, auth=not no_auth, workers=workers,
                   timeout_s=timeout_s, attempts=attempts, s1_orbit=s1_orbit, workload_tag=workload_tag,
                   endpoint=endpoint, inputs=inputs, seed=seed, cloud_cover=cloud_cover)
    results = api.export(list(aoi_specs), out_dir, source=source, catalog=catalog_path, sources=source_names,
                         start=start, end=end, windows=windows, via=via, bucket=bucket, prefix=prefix,
                         drive_folder=drive_folder, poll_s=poll_s, max_pending=max_pending, retry_failed=retry_failed,
                         max_area_km2=max_area_km2, overwrite=overwrite, dry_run=dry_run, progress=progress,
                         **options)
    if dry_run:
        for line in results:
            click.echo(line)
        return
    for r in results:
        click.echo(r.line())
    bad = [r for r in results if not r.ok]
    if bad:
        raise RsgeeError(f"{len(bad)} of {len(results)} AOI(s) failed or have failed blocks: "
                         f"{', '.join(r.aoi for r in bad)}")


@cli.command("tile", context_settings=CONTEXT)
@click.argument("exports", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Archive folder; created if missing, grown if it exists (existing tiles are never rewritten).")
@catalog_option
@click.option("--max-nodata", type=click.FloatRange(0.0, 1.0), default=0.05, show_default=True,
              help="Largest nodata fraction (0–1) a tile may have in s1, lulc and terrain.")
@click.option("--max-s2-nodata", type=click.FloatRange(0.0, 1.0), default=0.2, show_default=True,
              help="Largest fraction (0–1) of Sentinel-2 pixels that are cloud-masked or missing.")
@click.option("--split-ratios", default="7:2:1", show_default=True, metavar="TRAIN:VAL:TEST",
              help="Relative sizes of the train, val and test splits.")
@click.option("--split-by", type=click.Choice(["block", "aoi"]), default="block", show_default=True,
              help="Spatial unit that goes whole into one split: blocks of k×k tiles, or whole AOIs.")
@click.option("--split-block", type=click.IntRange(min=1), default=4, show_default=True,
              help="k, the block size in tiles (k×2560 m) for --split-by block.")
@click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the block → split assignment.")
@click.option("--split-aoi", "split_aoi", multiple=True, metavar="NAME=SPLIT",
              help="Pin an AOI to a split (train, val or test), e.g. a held-out region: all its tiles go there, "
                   "whatever the blocks say. Repeatable.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (tile rows of AOIs run in parallel).")
@click.option("--max-float-error", type=click.FloatRange(0.0, 0.01), default=None, metavar="E",
              help="New archive: store S1 and terrain tiles bounded-lossy, every value within E of the exact one "
                   "in its unit (dB, m, degrees, hillshade 0–255); 0.005 saves ~40 % of the tiles' bytes. "
                   "Default: lossless (or the existing archive's setting).")
@progress_option
def tile_cmd(exports, out_dir, catalog_path, max_nodata, max_s2_nodata, split_ratios, split_by, split_block,
             split_seed, split_aoi, workers, max_float_error, progress) -> None:
    """Cut exports into the 256×256 training archive OUT.

    EXPORTS are AOI folders written by `rsgee export` (or folders holding them). Terrain (slope,
    aspect, hillshade; gdaldem's Horn method) is derived from each AOI's whole DEM; tiles are
    filtered, spatially split, written as GeoTIFFs per source and listed in OUT/index.geojson, and
    OUT/stats.json is recomputed on the train split. Re-running adds only what is missing.
    """
    from rsgee import api
    from rsgee.preprocess.split import SplitConfig

    summary = api.tile(list(exports), out_dir, catalog=catalog_path, max_nodata=max_nodata, max_s2_nodata=max_s2_nodata,
                       split_ratios=split_ratios, split_by=split_by, split_block=split_block, split_seed=split_seed,
                       split_aoi=dict(SplitConfig.parse_pins(split_aoi)), workers=workers, progress=progress,
                       max_float_error=max_float_error)
    for line in summary.lines():
        click.echo(line)
    if summary.failed:
        raise RsgeeError(f"{len(summary.failed)} AOI(s) failed (see above); fix or re-export them and re-run")


@cli.command("check", context_settings=CONTEXT)
@click.argument("archive", type=click.Path(file_okay=False, path_type=Path))
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes.")
@progress_option
def check_cmd(archive, workers, progress) -> None:
    """Verify ARCHIVE: every indexed tile's files, the splits and stats.json; exit 1 on any problem."""
    from rsgee import api

    report = api.check(archive, workers=workers, progress=progress)
    for note in report.notes:
        click.echo(f"note: {note}")
    for problem in report.problems:
        click.echo(f"problem: {problem}")
    if not report.ok:
        raise RsgeeError(f"{archive}: {len(report.problems)} problem(s) in {report.tiles} tiles")
    click.echo(f"{archive}: OK, {report.tiles} tiles")


@cli.command("cache", context_settings=CONTEXT)
@click.argument("archive", type=click.Path(file_okay=False, path_type=Path))
@click.option("--splits", callback=_csv, default="train,val,test", show_default=True, metavar="NAMES",
              help="Comma-separated splits to pack.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes reading and encoding tiles (the result is the same for any number).")
@click.option("--force", is_flag=True, help="Rebuild even a cache that is up to date (one rsgee check found changed).")
@progress_option
def cache_cmd(archive, splits, workers, force, progress) -> None:
    """Build the packed training cache of ARCHIVE (ARCHIVE/cache/<split>/*.npy).

    Training reads memory-mapped arrays instead of four GeoTIFFs per sample. The cache is derived
    from the GeoTIFFs, fingerprinted, and rebuilt only when the archive changed or it is incomplete;
    a second rsgee cache on the archive waits for the first. It takes 0.98 MB per tile: Sentinel-2
    and land cover exact, Sentinel-1 and terrain as codes within stated tolerances (far below the
    sensors'), checked by rsgee check.
    """
    from rsgee.preprocess.archive import Archive
    from rsgee.preprocess.cache import cache_dir, update_caches
    from rsgee.preprocess.split import SPLITS

    arch = Archive(archive)
    arch.read_meta()
    for split in splits:
        if split not in SPLITS:
            raise click.BadParameter(f"'{split}' is not one of {', '.join(SPLITS)}", param_hint="--splits")
    built = update_caches(arch, splits, workers=workers, force=force, progress=progress)
    for split in splits:
        if split in built:
            click.echo(f"cache/{split}: built {len(arch.tiles(split))} tiles → {cache_dir(arch, split)}")
        else:
            click.echo(f"cache/{split}: up to date")


@cli.command("stac", context_settings=CONTEXT)
@click.argument("archive", type=click.Path(file_okay=False, path_type=Path))
@click.option("--start", callback=_date, metavar="DATE", default=None,
              help="Window start for AOIs whose window archive.json lacks (older archives, local exports).")
@click.option("--end", callback=_date, metavar="DATE", default=None, help="Window end (excluded), with --start.")
def stac_cmd(archive, start, end) -> None:
    """Write ARCHIVE/stac/: a STAC Collection with one Item per tile (relative hrefs, splits, bands, classes)."""
    from rsgee.preprocess.archive import Archive

    arch = Archive(archive)
    path = arch.to_stac(start=start, end=end)
    click.echo(f"stac: {len(arch.tiles())} items → {path}")


@cli.group("train", context_settings=CONTEXT)
def train_group() -> None:
    """Train the paper's models on an archive (CPU, or CUDA/AMP/multi-GPU when present)."""


training_options = [
    click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
                 help="Run folder: run.json, checkpoints/, logs/metrics.csv, val/ figures."),
    click.option("--size", type=click.Choice(["tiny", "small", "paper"]), default="small", show_default=True,
                 help="Model width preset: paper = the published widths (GPU), small for CPU/small GPUs, tiny for "
                      "smoke tests and the demo."),
    click.option("--epochs", type=click.IntRange(min=1), default=None,
                 help="Passes over the train split.  [default: 50, unless --steps is given]"),
    click.option("--steps", type=click.IntRange(min=1), default=None, metavar="N",
                 help="Train exactly N optimiser steps instead of whole epochs (one step per batch; for a GAN, one "
                      "generator and one discriminator update)."),
    click.option("--steps-per-epoch", type=click.IntRange(min=1), default=None,
                 help="Batches per epoch on each device.  [default: the device's share of the train split]"),
    click.option("--warmup", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
                 help="Optimiser steps of linear learning-rate warm-up before the --schedule starts."),
    click.option("--train-tiles", type=click.IntRange(min=1), default=None, metavar="N",
                 help="Train on only N train tiles, chosen by --seed (the same N and seed choose the same tiles in "
                      "train fusion and train seg: the low-label protocol).  [default: all]"),
    click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
                 help="Samples per batch on each device: an optimiser step sees batch size × devices × nodes."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Seed of weights, shuffling and augmentation."),
    click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                 help="DataLoader worker processes (0 reads the packed cache in-process, the fastest on CPU)."),
    click.option("--resume", is_flag=True,
                 help="Continue the run in --out from checkpoints/last.ckpt (the last completed epoch or step)."),
    click.option("--accelerator", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
                 help="Where to train; auto uses CUDA when present."),
    click.option("--devices", default="auto", show_default=True,
                 help="Devices (processes) per node; more than one trains data-parallel (DDP: NCCL on CUDA, gloo on "
                      "CPU).  [auto: every visible GPU, 1 CPU process, or what torchrun/srun started]"),
    click.option("--num-nodes", default="auto", show_default=True,
                 help="Machines taking part (each runs the same command; see README).  [auto: 1, or what "
                      "torchrun/srun started]"),
    click.option("--precision", type=click.Choice(["32-true", "16-mixed", "bf16-mixed"]), default=None,
                 help="Numeric precision.  [default on CUDA: bf16-mixed where supported, else 32-true for the GAN and "
                      "16-mixed for RS-UNet; 32-true on CPU]"),
    click.option("--checkpoint-every", type=click.IntRange(min=1), default=None, metavar="N",
                 help="Also write checkpoints/last.ckpt every N batches (besides every epoch), for long epochs."),
    click.option("--skip-nonfinite", is_flag=True,
                 help="Skip a batch whose loss is NaN or infinite (counted in the logs) instead of stopping the run."),
    click.option("--clip-grad-norm", type=click.FloatRange(min=0.0, min_open=True), default=None, metavar="NORM",
                 help="Clip the gradient norm of each optimiser to NORM.  [default: no clipping]"),
    progress_option,
]


def _with(options):
    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function
    return decorate


def _count(value: str, option: str):
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a whole number or auto", param_hint=option) from None


def _betas(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        b1, b2 = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not two numbers like 0.5,0.999", param_hint="--betas") from None
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise click.BadParameter(f"'{text}': Adam betas lie in [0, 1)", param_hint="--betas")
    return b1, b2


def _say(text: str) -> None:
    """Print once, from the main process of a multi-device run."""
    from rsgee.train.distributed import is_main_process

    if is_main_process():
        click.echo(text)


@train_group.command("fusion", context_settings=CONTEXT)
@click.argument("archive", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", type=click.Choice(["rs-spade", "pix2pix", "spade-decoder"]), default="rs-spade",
              show_default=True,
              help="RS-SPADE (the paper's: pix2pix's U-Net, every normalisation followed by the multi-source "
                   "modulation), the pix2pix baseline, or SPADE's decoder-only generator with the same modulation.")
@click.option("--sources", default="lulc,s1,dem", show_default=True, metavar="NAMES",
              help="Conditioning inputs, any non-empty subset of lulc, s1, dem (dem = DEM + slope, aspect, hillshade): "
                   "the paper's ablation.")
@click.option("--crop", type=click.IntRange(32, 256), default=None,
              help="Train on random square crops of this many pixels (multiple of 32); validation scores whole "
                   "tiles, and also crop-size windows stitched back when the crop divides 256.  "
                   "[default: whole 256×256 tiles]")
@click.option("--recipe", type=click.Choice(["pix2pix", "spade", "hybrid"]), default=None,
              help="Training recipe, apart from the architecture: pix2pix (vanilla GAN + L1 ×100, Adam 2e-4 (0.5, "
                   "0.999), 70×70 PatchGAN), spade (hinge + feature matching ×10, no L1, Adam 1e-4/4e-4 (0, 0.999), "
                   "2-scale D) or hybrid (spade + L1 ×10). The options below override single parts.  "
                   "[default: pix2pix]")
@click.option("--gan-loss", type=click.Choice(["hinge", "vanilla"]), default=None, help="Adversarial loss.  [default: the recipe's]")
@click.option("--discriminator", type=click.Choice(["multiscale", "patchgan70"]), default=None,
              help="Conditional discriminator.  [default: the recipe's]")
@click.option("--betas", default=None, metavar="B1,B2", help="Adam betas of both optimisers.  [default: the recipe's]")
@click.option("--lr-g", type=float, default=None, help="Generator learning rate.  [default: the recipe's]")
@click.option("--lr-d", type=float, default=None, help="Discriminator learning rate.  [default: the recipe's]")
@click.option("--l1-weight", type=float, default=None, help="λ of the L1 reconstruction loss.  [default: the recipe's]")
@click.option("--fm-weight", type=float, default=None,
              help="λ of discriminator feature matching (multiscale D only).  [default: the recipe's]")
@click.option("--vgg-weights", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Local torchvision vgg19 state-dict file enabling the VGG perceptual loss (never downloaded).")
@click.option("--ema-decay", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.999, show_default=True,
              help="Keep an exponential moving average of the generator weights (scored beside the raw ones by "
                   "validation and evaluate; generate --weights ema uses it); 0 = none.")
@click.option("--val-every", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Validate (and choose the best checkpoint) every N epochs.")
@click.option("--val-every-steps", type=click.IntRange(min=1), default=None, metavar="N",
              help="Validate every N optimiser steps instead (with --steps).")
@click.option("--val-figures", type=click.IntRange(min=0), default=4, show_default=True, metavar="N",
              help="Val tiles drawn in the PNG grid written at each validation (0 = no figures).")
@click.option("--schedule", type=click.Choice(["constant", "linear", "cosine"]), default="cosine", show_default=True,
              help="Learning rate over the run's steps (both optimisers): constant; linear (pix2pix's: constant for "
                   "the first half, then down to 0); cosine (down to 0 along half a cosine).")
@click.option("--augment", type=click.Choice(["none", "flip", "dihedral"]), default="none", show_default=True,
              help="Random flips/rotations of each training sample: none, flip (mirror E–W/N–S) or dihedral (all 8). "
                   "The sun does not turn with the tile: after a flip or rotation other slopes face it, which breaks "
                   "the aspect → illumination relation, the strongest signal terrain gives Sentinel-2.")
@_with(training_options)
def train_fusion_cmd(archive, model, sources, crop, recipe, gan_loss, discriminator, betas, lr_g, lr_d, l1_weight,
                     fm_weight, vgg_weights, ema_decay, val_every, val_every_steps, val_figures, schedule, augment,
                     run_dir, size,
                     epochs, steps, steps_per_epoch, warmup, train_tiles, batch_size, seed, workers, resume,
                     accelerator, devices, num_nodes, precision, checkpoint_every, skip_nonfinite, clip_grad_norm,
                     progress) -> None:
    """Train RS-SPADE, pix2pix or the SPADE decoder to generate Sentinel-2 B2/B3/B4/B8 from land cover, SAR and terrain.

    Reads ARCHIVE's train and val splits (through its packed cache, built when missing or stale),
    logs losses and val PSNR/SSIM/SAM to OUT/logs/metrics.csv, writes a PNG grid per validation to
    OUT/val/ and keeps OUT/checkpoints/last.ckpt for --resume and the best by val PSNR.
    """
    from rsgee.train.data import parse_sources
    from rsgee.train.fusion import FusionConfig, train_fusion

    config = FusionConfig(model=model, sources=parse_sources(sources), size=size, batch_size=batch_size, epochs=epochs,
                          steps=steps, steps_per_epoch=steps_per_epoch, schedule=schedule, warmup=warmup,
                          augment=augment, crop=crop, train_tiles=train_tiles, recipe=recipe, gan_loss=gan_loss,
                          discriminator=discriminator, betas=_betas(betas), lr_g=lr_g, lr_d=lr_d, l1_weight=l1_weight,
                          fm_weight=fm_weight, vgg_weights=vgg_weights, ema_decay=ema_decay, val_every=val_every,
                          val_every_steps=val_every_steps, val_figures=val_figures, seed=seed, num_workers=workers,
                          checkpoint_every=checkpoint_every,
                          skip_nonfinite=skip_nonfinite, clip_grad_norm=clip_grad_norm)
    run = train_fusion(archive, run_dir, config, resume=resume, accelerator=accelerator,
                       devices=_count(devices, "--devices"), num_nodes=_count(num_nodes, "--num-nodes"),
                       precision=precision, progress=progress)
    _say(f"trained {model} ({sources}) → {run}")


@train_group.command("seg", context_settings=CONTEXT)
@click.argument("archive", type=click.Path(file_okay=False, path_type=Path))
@click.option("--mix", default="1:0", show_default=True, metavar="REAL:GEN",
              help="Ratio of real to generated (ARCHIVE/gen) train tiles in every epoch, honoured exactly: 1:0 = real "
                   "only (the paper's True Data), 1:1 = the paper's Mix Data.")
@click.option("--crop", type=click.IntRange(32, 256), default=None,
              help="Train on random square crops of this many pixels (multiple of 32).  [default: whole tiles]")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--schedule", type=click.Choice(["constant", "linear", "cosine"]), default="constant", show_default=True,
              help="Learning rate over the run's steps: constant; linear (constant for the first half, then down to "
                   "0); cosine (down to 0 along half a cosine).")
@click.option("--augment", type=click.Choice(["none", "flip", "dihedral"]), default="dihedral", show_default=True,
              help="Random flips/rotations of each training sample: none, flip (mirror E–W/N–S) or dihedral (all 8).")
@click.option("--val-every-steps", type=click.IntRange(min=1), default=None, metavar="N",
              help="Validate every N optimiser steps (with --steps) instead of after every epoch: learning curves "
                   "comparable between runs whose epochs differ in length.")
@_with(training_options)
def train_seg_cmd(archive, mix, crop, lr, schedule, augment, val_every_steps, run_dir, size, epochs, steps,
                  steps_per_epoch, warmup, train_tiles, batch_size, seed, workers, resume, accelerator, devices,
                  num_nodes, precision, checkpoint_every, skip_nonfinite, clip_grad_norm, progress) -> None:
    """Train RS-UNet (9 Dynamic World classes) on real tiles or a real:generated mix.

    Validation and test use real tiles only; val mIoU and accuracy are logged every epoch to
    OUT/logs/metrics.csv and the best checkpoint by val mIoU is kept. A mix with generated tiles
    needs `rsgee generate` to have filled ARCHIVE/gen first.
    """
    from rsgee.train.segmentation import SegmentationConfig, parse_mix, train_segmentation

    config = SegmentationConfig(mix=parse_mix(mix), size=size, batch_size=batch_size, epochs=epochs, steps=steps,
                                steps_per_epoch=steps_per_epoch, schedule=schedule, warmup=warmup, augment=augment,
                                crop=crop, lr=lr, seed=seed, num_workers=workers, train_tiles=train_tiles,
                                val_every_steps=val_every_steps,
                                checkpoint_every=checkpoint_every, skip_nonfinite=skip_nonfinite,
                                clip_grad_norm=clip_grad_norm)
    run = train_segmentation(archive, run_dir, config, resume=resume, accelerator=accelerator,
                             devices=_count(devices, "--devices"), num_nodes=_count(num_nodes, "--num-nodes"),
                             precision=precision, progress=progress)
    _say(f"trained RS-UNet ({config.mix_label}) → {run}")


@cli.group("evaluate", context_settings=CONTEXT)
def evaluate_group() -> None:
    """The paper's comparison tables, on real test tiles."""


device_options = [
    click.option("--accelerator", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
                 help="Where to run; auto uses CUDA when present."),
    click.option("--devices", default="auto", show_default=True,
                 help="Devices (processes) per node; each takes a share of the tiles.  [auto: every visible GPU, 1 "
                      "CPU process, or what torchrun/srun started]"),
    click.option("--num-nodes", default="auto", show_default=True, help="Machines taking part.  [auto: 1, or what "
                 "torchrun/srun started]"),
]


def _on_devices(accelerator, devices, num_nodes) -> dict:
    return {"accelerator": accelerator, "devices": _count(devices, "--devices"),
            "num_nodes": _count(num_nodes, "--num-nodes")}


@evaluate_group.command("fusion", context_settings=CONTEXT)
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--archive", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Archive to evaluate on.  [default: each run's own archive]")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True, help="Split to score.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("evaluation"),
              show_default=True, help="Folder for fusion_table.csv and fusion_table.md.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Tiles per batch.")
@_with(device_options)
@progress_option
def evaluate_fusion_cmd(runs, archive, split, out_dir, batch_size, accelerator, devices, num_nodes, progress) -> None:
    """Table 1/2: model, sources, PSNR (dB), SSIM and SAM (rad) of each fusion RUN's best checkpoint.

    The rows of two trivial predictors on the same tiles come first: constant-mean (the train split's
    per-band mean everywhere) and class-mean (each land-cover class's train mean spectrum); a run that
    does not beat constant-mean is marked.
    """
    from rsgee.train.distributed import is_main_process
    from rsgee.train.evaluate import FUSION_COLUMNS, FUSION_HEADERS, evaluate_fusion, markdown_table, write_table

    rows = evaluate_fusion(runs, archive=archive, split=split, batch_size=batch_size, progress=progress,
                           **_on_devices(accelerator, devices, num_nodes))
    if is_main_process():
        click.echo(markdown_table(rows, FUSION_COLUMNS, FUSION_HEADERS), nl=False)
        csv_path, md_path = write_table(rows, out_dir, "fusion_table", FUSION_COLUMNS, FUSION_HEADERS)
        click.echo(f"written: {csv_path}, {md_path}")


@evaluate_group.command("seg", context_settings=CONTEXT)
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--archive", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Archive to evaluate on.  [default: each run's own archive]")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True, help="Split to score.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("evaluation"),
              show_default=True, help="Folder for seg_table.csv/.md and the PNG figures.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Tiles per batch.")
@_with(device_options)
@progress_option
def evaluate_seg_cmd(runs, archive, split, out_dir, batch_size, accelerator, devices, num_nodes, progress) -> None:
    """Table 3: training set, mIoU and accuracy of each segmentation RUN on real test tiles, plus figures.

    Writes the mIoU-versus-epoch curves of all runs (the paper's Figure 8), a confusion matrix per run
    and the runs' predictions side by side on test tiles (Figure 9). The rows of two trivial predictors
    come first — majority-class and class-mean-spectrum (nearest train mean spectrum) — and a run that
    does not beat them is marked.
    """
    from rsgee.train.distributed import is_main_process
    from rsgee.train.evaluate import SEG_COLUMNS, SEG_HEADERS, evaluate_segmentation, markdown_table, write_table

    rows, figures = evaluate_segmentation(runs, out_dir, archive=archive, split=split, batch_size=batch_size,
                                          progress=progress, **_on_devices(accelerator, devices, num_nodes))
    if is_main_process():
        click.echo(markdown_table(rows, SEG_COLUMNS, SEG_HEADERS), nl=False)
        csv_path, md_path = write_table(rows, out_dir, "seg_table", SEG_COLUMNS, SEG_HEADERS)
        click.echo(f"written: {csv_path}, {md_path}")
        for figure in figures:
            click.echo(f"figure: {figure}")


@cli.command("generate", context_settings=CONTEXT)
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.argument("archive", type=click.Path(file_okay=False, path_type=Path))
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Tiles per batch.")
@click.option("--overwrite", is_flag=True, help="Replace tiles another run (or the other weights) generated.")
@click.option("--weights", type=click.Choice(["raw", "ema"]), default="raw", show_default=True,
              help="The generator's trained weights or their moving average (runs trained with --ema-decay > 0).")
@_with(device_options)
@progress_option
def generate_cmd(run, archive, batch_size, overwrite, weights, accelerator, devices, num_nodes, progress) -> None:
    """Write a pseudo-Sentinel-2 for every tile of ARCHIVE as ARCHIVE/gen/<tile_id>.tif with RUN's generator.

    Same grid as the tile's s2 file, uint16 reflectance × 10000; ARCHIVE/gen/generated.json records the
    run and checkpoint. Re-running skips tiles that are done.
    """
    from rsgee.train.generate import generate

    summary = generate(run, archive, batch_size=batch_size, overwrite=overwrite, progress=progress, weights=weights,
                       **_on_devices(accelerator, devices, num_nodes))
    _say(f"generated {summary.written} tile(s), {summary.skipped} already done → {summary.folder}")


@cli.group("predict", context_settings=CONTEXT)
def predict_group() -> None:
    """Apply a trained run to a whole AOI: a land-cover map or a pseudo-Sentinel-2, as a Cloud-Optimised GeoTIFF."""


predict_options = [
    click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
                 help="The COG to write (re-running with the same run and inputs skips a complete one)."),
    click.option("--exports", "export_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
                 default=None, help="An AOI folder written by `rsgee export` (any source, Earth Engine included)."),
    click.option("--aoi", default=None, metavar="AOI",
                 help="Instead of --exports: one AOI (as for rsgee export) exported here first from --source."),
    click.option("--source", type=click.Choice(["earthengine", "local", "synthetic"]), default="earthengine",
                 show_default=True, help="Where --aoi's pixels come from, as for rsgee export.  [--aoi]"),
    click.option("--project", envvar="EE_PROJECT", default=None, metavar="PROJECT",
                 help="Google Cloud project registered for Earth Engine (or EE_PROJECT).  [--aoi, earthengine]"),
    click.option("--service-account", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 metavar="KEY.json", help="Credentials JSON file, as for rsgee export.  [--aoi, earthengine]"),
    click.option("--ee-url", envvar="RSGEE_EE_URL", default=None, metavar="URL",
                 help="Earth Engine API base URL (or RSGEE_EE_URL).  [--aoi, earthengine]"),
    click.option("--no-auth", is_flag=True, help="Send no credentials (test servers).  [--aoi, earthengine]"),
    catalog_option,
    click.option("--start", callback=_date, metavar="DATE", default="2023-06-01", show_default=True,
                 help="First day of the compositing window.  [--aoi]"),
    click.option("--end", callback=_date, metavar="DATE", default="2023-09-01", show_default=True,
                 help="Day after the compositing window.  [--aoi]"),
    click.option("--input", "inputs", multiple=True, metavar="SOURCE=PATH",
                 help="Your GeoTIFF(s) for a source; repeatable.  [--aoi, --source local]"),
    click.option("--seed", type=int, default=0, show_default=True, help="Synthetic scene seed.  [--aoi, synthetic]"),
    click.option("--cloud-cover", type=click.FloatRange(0.0, 1.0), default=0.05, show_default=True,
                 help="Fraction of Sentinel-2 pixels cloud-masked.  [--aoi, synthetic]"),
    click.option("--overlap", type=click.IntRange(0, 127), default=64, show_default=True,
                 help="Pixels by which neighbouring 256-px windows overlap; outputs are blended across them."),
    click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                 help="Windows per forward pass (memory is bounded by it and one strip of the AOI)."),
    click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu, cuda, cuda:1."),
    progress_option,
]


def _predict_inputs(run, kind, out_path, export_dir, aoi, source, project, service_account, ee_url, no_auth,
                    catalog_path, start, end, inputs, seed, cloud_cover, progress) -> Path:
    from rsgee.train.predict import export_inputs

    if (export_dir is None) == (aoi is None):
        raise click.UsageError("give either --exports DIR (an rsgee export AOI folder) or --aoi")
    if export_dir is not None:
        return export_dir
    return export_inputs(aoi, out_path.with_name(f"{out_path.stem}_inputs"), kind=kind, run=run, source=source,
                         catalog_path=catalog_path, start=start, end=end, seed=seed, cloud_cover=cloud_cover,
                         inputs=inputs, project=project, service_account=service_account, ee_url=ee_url,
                         auth=not no_auth, progress=progress)


@predict_group.command("seg", context_settings=CONTEXT)
@click.argument("run", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--probabilities", is_flag=True,
              help="Also write OUT's per-class probabilities (float32) to <OUT stem>_probabilities.tif.")
@_with(predict_options)
def predict_seg_cmd(run, probabilities, out_path, export_dir, aoi, source, project, service_account, ee_url, no_auth,
                    catalog_path, start, end, inputs, seed, cloud_cover, overlap, batch_size, device, progress) -> None:
    """Land-cover map of an AOI from its Sentinel-2 with RUN's RS-UNet (uint8 classes 0–8, 255 = no data).

    With --aoi, the inputs are exported to <OUT stem>_inputs/ first (reused when complete).
    """
    from rsgee.train.predict import predict_seg

    folder = _predict_inputs(run, "segmentation", out_path, export_dir, aoi, source, project, service_account, ee_url,
                             no_auth, catalog_path, start, end, inputs, seed, cloud_cover, progress)
    result = predict_seg(run, folder, out_path, probabilities=probabilities, overlap=overlap, batch_size=batch_size,
                         device=device, progress=progress)
    click.echo(result.line())


@predict_group.command("fusion", context_settings=CONTEXT)
@click.argument("run", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--fill-clouds", is_flag=True,
              help="Keep every valid real Sentinel-2 pixel and fill only cloud-masked or missing ones; a fifth band, "
                   "filled, is 1 where the generator's value was used.")
@click.option("--weights", type=click.Choice(["raw", "ema"]), default="raw", show_default=True,
              help="The generator's trained weights or their moving average.")
@_with(predict_options)
def predict_fusion_cmd(run, fill_clouds, weights, out_path, export_dir, aoi, source, project, service_account, ee_url,
                       no_auth, catalog_path, start, end, inputs, seed, cloud_cover, overlap, batch_size, device,
                       progress) -> None:
    """Pseudo-Sentinel-2 (uint16 reflectance × 10000) of an AOI from RUN's generator and the AOI's sources.

    With --aoi, the inputs are exported to <OUT stem>_inputs/ first (reused when complete).
    """
    from rsgee.train.predict import predict_fusion

    folder = _predict_inputs(run, "fusion", out_path, export_dir, aoi, source, project, service_account, ee_url,
                             no_auth, catalog_path, start, end, inputs, seed, cloud_cover, progress)
    result = predict_fusion(run, folder, out_path, fill_clouds=fill_clouds, weights=weights, overlap=overlap,
                            batch_size=batch_size, device=device, progress=progress)
    click.echo(result.line())


@cli.group("experiment", context_settings=CONTEXT)
def experiment_group() -> None:
    """The paper's comparisons as controlled experiments over seeds, with baselines and paired differences."""


experiment_options = [
    click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
                 help="Folder for the runs (reused when the experiment is run again) and the tables."),
    click.option("--seeds", type=click.IntRange(min=2), default=3, show_default=True,
                 help="Repeats of every arm, seeds 0…N-1 (a winner needs |mean difference| > 2 sd)."),
    click.option("--size", type=click.Choice(["tiny", "small", "paper"]), default="tiny", show_default=True,
                 help="Model width preset of every run."),
    progress_option,
]


@experiment_group.command("archive", context_settings=CONTEXT)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic scene seed.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Worker processes.")
@progress_option
def experiment_archive_cmd(out, seed, workers, progress) -> None:
    """Build the archive the experiments are meant for in OUT (OUT/exports, OUT/archive), offline.

    16 synthetic AOIs of ~16 tiles in four kinds of terrain (mountains, hills, lowland, lakes), ~1° apart;
    of each kind two AOIs go to train, one to val, one to test (pinned by name), so every split holds every
    terrain and no val or test tile has a train tile beside it: ~133 train, 66 val and 64 test tiles.
    """
    from rsgee import api

    summary = api.experiment_archive(out, seed=seed, workers=workers, progress=progress)
    for line in summary.lines():
        click.echo(line)
    click.echo(f"next: rsgee experiment fusion {out / 'archive'} --out {out / 'fusion'}")


@experiment_group.command("fusion", context_settings=CONTEXT)
@click.argument("archive", type=click.Path(file_okay=False, path_type=Path))
@click.option("--models", default="rs-spade,pix2pix,spade-decoder", show_default=True, metavar="NAMES",
              help="Generators of Table 1.")
@click.option("--recipes", default="pix2pix", show_default=True, metavar="NAMES",
              help="Recipes every generator of Table 1 is trained with (one keeps the comparison about architecture).")
@click.option("--ablation-model", type=click.Choice(["best", "rs-spade", "pix2pix", "spade-decoder", "none"]),
              default="best", show_default=True,
              help="Generator of the sources ablation (Table 2, the default recipe): best = the one with the highest "
                   "mean val PSNR in Table 1; none = skip it.")
@click.option("--ablation-sources", default="lulc;lulc,s1;lulc,dem;lulc,s1,dem", show_default=True, metavar="SETS",
              help="Source subsets of the ablation, separated by ';'.")
@click.option("--steps", type=click.IntRange(min=1), default=4000, show_default=True,
              help="Optimiser steps of every run (BENCHMARKS.md: what 4,000 reach on the experiment archive).")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Learning rate of G and D, every recipe.")
@click.option("--schedule", type=click.Choice(["constant", "linear", "cosine"]), default="cosine", show_default=True,
              help="Learning-rate schedule over the steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Samples per batch.")
@click.option("--crop", type=click.IntRange(32, 256), default=64, show_default=True,
              help="Random square training crops (multiple of 32; 256 = whole tiles).")
@click.option("--val-every-steps", type=click.IntRange(min=1), default=1000, show_default=True, metavar="N",
              help="Validate every N steps and score each run's checkpoint with the best val PSNR (chosen on val; "
                   "N ≥ --steps: the last step only).")
@_with(experiment_options)
def experiment_fusion_cmd(archive, models, recipes, ablation_model, ablation_sources, steps, lr, schedule, batch_size,
                          crop, val_every_steps, out_dir, seeds, size, progress) -> None:
    """Tables 1 and 2 over seeds: generators (× recipes), then the sources ablation, at one budget of steps.

    Every run has the same steps, learning rate, batches and crops (no augmentation: the sun does not turn)
    and is scored once on ARCHIVE's test split and on val, with raw and EMA weights, beside constant-mean,
    class-mean and the per-class least-squares references of each source set. Writes OUT/fusion_tables.md
    and OUT/fusion_runs.csv and prints the tables.
    """
    from rsgee.train.experiment import FusionExperiment, run_fusion_experiment
    from rsgee.train.fusion import FusionConfig

    base = FusionConfig(size=size, batch_size=batch_size, steps=steps, lr_g=lr, lr_d=lr, schedule=schedule,
                        crop=None if crop == 256 else crop, val_every=10**6, val_every_steps=val_every_steps,
                        val_figures=0)
    experiment = FusionExperiment(base=base, models=_names(models), recipes=_names(recipes),
                                  ablation_model=None if ablation_model == "none" else ablation_model,
                                  ablation_sources=tuple(s for s in ablation_sources.split(";") if s.strip()),
                                  seeds=seeds)
    result = run_fusion_experiment(archive, out_dir, experiment, progress=progress, say=click.echo)
    click.echo("\n" + result.text())
    click.echo(f"written: {', '.join(str(f) for f in result.files)}")


@experiment_group.command("seg", context_settings=CONTEXT)
@click.argument("archive", type=click.Path(file_okay=False, path_type=Path))
@click.option("--labelled", default="4,8", show_default=True, metavar="K,…",
              help="Real labelled tiles of the low-label protocol (empty: the paper's protocol only).")
@click.option("--steps", type=click.IntRange(min=1), default=600, show_default=True,
              help="Optimiser steps of every RS-UNet run (the paper protocol's third arm gets twice as many).")
@click.option("--val-every-steps", type=click.IntRange(min=1), default=100, show_default=True,
              help="Validate every N steps: the steps each run needs to reach a fixed val mIoU.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Samples per batch.")
@click.option("--crop", type=click.IntRange(32, 256), default=128, show_default=True,
              help="Random square training crops (multiple of 32; 256 = whole tiles).")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Adam learning rate of RS-UNet.")
@click.option("--generator", type=click.Choice(["rs-spade", "pix2pix", "spade-decoder"]), default="rs-spade",
              show_default=True, help="The generator of the generated tiles.")
@click.option("--generator-steps", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Its optimiser steps (lr 2e-3, cosine, 64-px crops, as the fusion experiment).")
@_with(experiment_options)
def experiment_seg_cmd(archive, labelled, steps, val_every_steps, batch_size, crop, lr, generator, generator_steps,
                       out_dir, seeds, size, progress) -> None:
    """Table 3 over seeds, in the paper's protocol and the low-label one.

    Paper: RS-UNet on every real train tile (1:0) against the 1:1 mix with generated twins, steps matched
    and with twice the steps. Low-label: on K real labelled tiles against those K plus generated images of
    the other train tiles (their real Sentinel-2 withheld), steps matched, the generator trained on the K
    tiles only. Generators are trained here, one per seed and protocol. Writes OUT/seg_tables.md and
    OUT/seg_runs.csv and prints the tables.
    """
    from dataclasses import replace

    from rsgee.train.experiment import SegExperiment, fusion_budget, run_seg_experiment
    from rsgee.train.segmentation import SegmentationConfig

    try:
        counts = tuple(int(k) for k in _names(labelled))
    except ValueError:
        raise click.BadParameter(f"'{labelled}' is not whole numbers like 4,8", param_hint="--labelled") from None
    base = SegmentationConfig(size=size, batch_size=batch_size, steps=steps, crop=None if crop == 256 else crop, lr=lr,
                              schedule="constant", val_every_steps=val_every_steps)
    experiment = SegExperiment(base=base, generator=replace(fusion_budget(), model=generator, steps=generator_steps,
                                                            size=size),
                               labelled=counts, seeds=seeds)
    result = run_seg_experiment(archive, out_dir, experiment, progress=progress, say=click.echo)
    click.echo("\n" + result.text())
    click.echo(f"written: {', '.join(str(f) for f in result.files)}")


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


@cli.command("demo", context_settings=CONTEXT)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"),
              show_default=True, help="Folder for the exports, archive, runs and evaluation of the demo.")
@progress_option
def demo_cmd(out_dir, progress) -> None:
    """The whole pipeline offline, on the synthetic source, with tiny models (minutes on a laptop CPU).

    export → tile → train fusion (RS-SPADE, pix2pix) → evaluate fusion → generate → train seg (1:0,
    1:1) → evaluate seg; prints both tables and the figures' paths. Re-running resumes. The synthetic
    scene checks that the pipeline works, not the paper's numbers.
    """
    from rsgee.demo import run_demo
    from rsgee.train.evaluate import FUSION_COLUMNS, FUSION_HEADERS, SEG_COLUMNS, SEG_HEADERS, markdown_table

    result = run_demo(out_dir, progress=progress, say=click.echo)
    click.echo("\nFusion on the synthetic test split (paper Table 1 reports PSNR 23.14 / SSIM 0.84 / SAM 0.19 for "
               "RS-SPADE on real data):")
    click.echo(markdown_table(result.fusion_table, FUSION_COLUMNS, FUSION_HEADERS), nl=False)
    click.echo("\nSegmentation on real (here: synthetic) test tiles (paper Table 3: mIoU 0.467 → 0.481):")
    click.echo(markdown_table(result.seg_table, SEG_COLUMNS, SEG_HEADERS), nl=False)
    click.echo("\nTables: " + ", ".join(str(p) for p in result.tables))
    click.echo("Figures: " + ", ".join(str(p) for p in result.figures))
    click.echo("These numbers come from a synthetic scene and tiny models: they show the pipeline runs end to end, "
               "not the paper's results.")


@cli.command("catalog", context_settings=CONTEXT)
@catalog_option
def catalog_cmd(catalog_path) -> None:
    """Validate a catalog and list its sources and bands."""
    from rsgee.catalog import load_catalog

    catalog = load_catalog(catalog_path)
    click.echo(f"catalog: {catalog.path}")
    for spec in catalog.sources.values():
        nodata = "nan" if spec.nodata_is_nan else spec.nodata
        bands = ", ".join(f"{b.name}" + (f"←{b.ee}" if b.ee != b.name else "") for b in spec.bands)
        click.echo(f"  {spec.name:6s} {spec.collection}  [{bands}]  {spec.dtype}, {spec.units}, nodata {nodata}, "
                   f"{spec.composite}, {spec.resampling}")


class _StderrHandler(logging.Handler):
    """rsgee's log records as single lines on the current stderr ("rsgee: warning: …")."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"rsgee: {record.levelname.lower()}: {redact_urls(record.getMessage())}", err=True)


def _log_to_stderr() -> None:
    logger = logging.getLogger("rsgee")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
        logger.setLevel(logging.INFO)


#: The process whose main() installed :func:`_on_sigterm` (forked children inherit the handler, not the role).
_command_pid: int | None = None


def _on_sigterm(signum: int, frame) -> None:
    """SIGTERM as Ctrl-C: raise :class:`Interrupted` where the command is, so that its cleanup runs.

    A forked child (a DataLoader or pool worker, before its own set-up) ends as SIGTERM ends any
    process. While Lightning trains, its own handler calls this one after setting its flag: it stops
    at the next batch boundary and rsgee saves a checkpoint there (rsgee.train.trainer.fit), so this
    one raises nothing then.
    """
    if os.getpid() != _command_pid:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    elif signal.getsignal(signum) is _on_sigterm:
        raise Interrupted(signum)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """:func:`_on_sigterm` handles SIGTERM inside the block (on the main thread: Python allows handlers nowhere
    else, so main() called from another thread leaves signals alone)."""
    global _command_pid
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _command_pid = os.getpid()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _interrupted(exc: Interrupted) -> int:
    """Report an interrupt in one line; its exit status is the shell's for that signal, as if unhandled."""
    click.echo(f"rsgee: {exc}", err=True)
    return exc.status


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn errors into one line and an exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("RSGEE_DEBUG", "") not in ("", "0")
    _log_to_stderr()
    keep_freed_memory()  # the command is rsgee's own process: see rsgee.memory
    with _sigterm_as_interrupt():
        return _run(args, debug)


def _run(args: list[str], debug: bool) -> int:
    """The command ``args`` names, its errors and interrupts turned into one line and an exit status."""
    try:
        code = cli.main(args=args, prog_name="rsgee", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort as exc:  # click's form of Ctrl-C, after a blank line that ends the ^C echo
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return _interrupted(Interrupted(signal.SIGINT))
        click.echo("rsgee: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        return _interrupted(Interrupted(signal.SIGINT))
    except Interrupted as exc:
        return _interrupted(exc)
    except RsgeeError as exc:
        if debug:
            raise
        click.echo(f"rsgee: error: {redact_urls(exc)}", err=True)
        return 1
    except Exception as exc:  # a bug: say so in one line unless debugging
        if debug:
            raise
        if isinstance(exc, OSError) and exc.errno in WRITE_ONLY_ERRNOS:  # a write rsgee does not wrap itself (a
            # library's log file, say): still the disk's fault, not a bug
            click.echo(f"rsgee: error: {unwritable(exc.filename2 or exc.filename, exc)}", err=True)
        else:
            click.echo(f"rsgee: internal error: {type(exc).__name__}: {redact_urls(exc)} (re-run with --debug for "
                       "the traceback and please report it)", err=True)
        return 1
    finally:
        if "rsgee.train.distributed" in sys.modules:  # a train, evaluate or generate ran (maybe on several devices)
            from rsgee.train.distributed import close_process_group

            close_process_group()
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
