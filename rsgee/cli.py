"""The ``rsgee`` command line: a parser that calls one :mod:`rsgee.api` function per command and prints.

Options are named as the API's keywords (and the :mod:`rsgee.configs` fields) they feed, and take
their defaults from there (:mod:`rsgee.options`); every command reads ``--config FILE.yaml`` and prints
its effective configuration with ``--print-config``. Errors a user can cause are printed as one line on
stderr with a non-zero exit; ``--debug`` (or ``RSGEE_DEBUG=1``) shows the traceback instead. SIGTERM
(SLURM, Kubernetes, ``timeout``, a closed terminal) stops a command as Ctrl-C does: cleanup runs,
workers stop, one line says how to carry on, and the exit status is 143 (130 for Ctrl-C).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

import click

from rsgee import __version__, api
from rsgee.acquire import ENDPOINT_NAMES
from rsgee.acquire.earthengine.recipes import ORBITS
from rsgee.acquire.sources import SOURCES
from rsgee.configs import (ACCELERATORS, AUGMENTATIONS, DISCRIMINATORS, GAN_LOSSES, LOGGERS, MODELS, PRECISIONS,
                           RECIPES, SCHEDULES, SIZES, WEIGHTS, FusionConfig, SegmentationConfig)
from rsgee.errors import WRITE_ONLY_ERRNOS, Interrupted, RsgeeError, redact_urls, unwritable
from rsgee.memory import keep_freed_memory
from rsgee.preprocess.split import SPLIT_UNITS, SPLITS
from rsgee.options import (BETAS, COUNT, DATE, MIX, NAME_SETS, NAMES, RATIOS, WHOLE_NUMBERS, CONTEXT, Command,
                           catalog_option, json_option, progress_option, with_options)

FOLDER = click.Path(file_okay=False, path_type=Path)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="rsgee")
@click.option("--debug", is_flag=True, help="Show the full traceback when something fails.")
@click.option("-v", "--verbose", count=True, help="More messages on stderr: -v adds rsgee's debug messages.")
@click.option("-q", "--quiet", count=True, help="Fewer messages on stderr: -q only warnings and errors, -qq only "
                                                "errors.")
def cli(debug: bool, verbose: int, quiet: int) -> None:
    """rsgee: multi-source remote-sensing training archives (Sentinel-1/2, Dynamic World, DEM).

    Typical flow: `rsgee export` AOIs to per-AOI GeoTIFFs on a 10 m UTM grid; later steps tile them
    into an archive and train models on it. Every command takes --config FILE.yaml (what --print-config
    prints), with options on the command line overriding the file. Shell completion: see README.
    """
    levels = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
    logging.getLogger("rsgee").setLevel(levels[max(0, min(3, 1 + quiet - verbose))])


def _say(text: str) -> None:
    """Print once, from the main process of a multi-device run."""
    from rsgee.train.distributed import is_main_process

    if is_main_process():
        click.echo(text)


# -- export --------------------------------------------------------------------------------------

#: Where pixels come from, shared by `rsgee export` and `rsgee predict --aoi`.
source_options = [
    click.option("--source", type=click.Choice(SOURCES),
                 help="Where pixels come from: Google Earth Engine; your own GeoTIFFs (--input); or the offline "
                      "procedural scene, labelled synthetic in every output."),
    catalog_option,
    click.option("--start", type=DATE, metavar="DATE", help="First day of the compositing window (YYYY-MM-DD, inclusive)."),
    click.option("--end", type=DATE, metavar="DATE", help="Day after the compositing window (YYYY-MM-DD, exclusive)."),
    click.option("--window", "windows", multiple=True, metavar="SOURCE=START/END",
                 help="Per-source date window overriding --start/--end, e.g. s1=2023-05-01/2023-10-01; repeatable."),
    click.option("--project", envvar="EE_PROJECT", metavar="PROJECT",
                 help="Google Cloud project registered for Earth Engine (or EE_PROJECT).  [earthengine]"),
    click.option("--service-account", type=click.Path(dir_okay=False, path_type=Path), metavar="KEY.json",
                 help="Credentials JSON file (or GOOGLE_APPLICATION_CREDENTIALS): a service-account key, the "
                      "authorized_user file of `gcloud auth application-default login`, or an external_account "
                      "(workload identity) file; default: the credentials of `earthengine authenticate`.  "
                      "[earthengine]"),
    click.option("--endpoint", type=click.Choice(ENDPOINT_NAMES),
                 help="Earth Engine endpoint: standard (https://earthengine.googleapis.com) or highvolume "
                      "(https://earthengine-highvolume.googleapis.com); both allow 40 concurrent requests. Composites "
                      "(medians, means, modes, cloud masks) are complex queries, which Earth Engine recommends "
                      "sending to the standard endpoint: the high-volume one caches less and bills them more "
                      "EECU-time.  [default: standard when any source is such a composite, and for --via batch; "
                      "highvolume for mosaics of stored images alone, e.g. --sources dem]  [earthengine]"),
    click.option("--ee-url", envvar="RSGEE_EE_URL", metavar="URL",
                 help="Earth Engine API base URL (or RSGEE_EE_URL); overrides --endpoint."),
    click.option("--auth/--no-auth", help="Send credentials (--no-auth: none, for private endpoints and local test "
                                          "servers)."),
    click.option("--workload-tag", metavar="TAG",
                 help="Label every computePixels request and batch task with TAG, to tell this run's Earth Engine "
                      "usage apart in the project's Cloud Monitoring: 1–63 lowercase letters, digits, '-' and '_', "
                      "starting and ending with a letter or digit.  [earthengine]"),
    click.option("--workers", type=click.IntRange(1, 40),
                 help="Concurrent Earth Engine requests, 1–40 (40 is the per-project limit).  [default: 16]  With "
                      "--source synthetic: processes computing tiles, at most the CPU count (files byte-identical).  "
                      "[default: none, in this process]"),
    click.option("--timeout", "timeout_s", type=click.FloatRange(min=1.0),
                 help="Per-request deadline in seconds; above Earth Engine's ~300 s limit, so that a slow answer is "
                      "received rather than paid for twice.  [earthengine]"),
    click.option("--attempts", type=click.IntRange(min=1),
                 help="Tries per block for retryable errors (5xx, timeouts, dropped connections), seconds apart with "
                      "capped exponential backoff and jitter; \"Computation timed out.\" is tried twice at most (each "
                      "try is billed). Quota and rate answers (429, 503) are not counted: they are waited out for up "
                      "to 5 min a try and 30 min a block, with fewer requests in flight.  [earthengine]"),
    click.option("--s1-orbit", type=click.Choice(["both", *ORBITS]),
                 help="Sentinel-1 orbit pass to composite. both keeps every scene: many areas are imaged on one pass "
                      "only, where a fixed pass would leave them without data; pin one where terrain matters (the "
                      "passes see slopes from opposite sides, and a mix of them can leave seams).  [earthengine]"),
    click.option("--input", "inputs", multiple=True, metavar="SOURCE=PATH",
                 help="Your GeoTIFF(s) for a source, any CRS and resolution, e.g. s2=scene.tif (globs allowed); "
                      "repeatable.  [local]"),
    click.option("--seed", type=int, help="Synthetic scene seed.  [synthetic]"),
    click.option("--cloud-cover", type=click.FloatRange(0.0, 1.0),
                 help="Fraction of Sentinel-2 pixels left cloud-masked (nodata), 0–1.  [synthetic]"),
    click.option("--max-area", "max_area_km2", type=click.FloatRange(min=0.0, min_open=True),
                 help="Largest accepted AOI area in km²; larger AOIs are refused."),
]


@cli.command("export", cls=Command, homes=(api.export,))
@click.option("--aoi", "aois", multiple=True, required=True, metavar="AOI",
              help="Area of interest; repeatable. A GeoJSON file (Polygon/MultiPolygon features, named by their "
                   "'name' property), a bbox 'minlon,minlat,maxlon,maxlat' in degrees, or WKT; prefix a bbox or "
                   "WKT with 'NAME=' to name it.")
@click.option("--out", type=FOLDER, help="Output folder; each AOI is written to OUT/<aoi name>/.")
@click.option("--sources", type=NAMES, metavar="NAMES",
              help="Comma-separated catalog sources to export.  [default: every source in the catalog]")
@with_options(source_options)
@click.option("--retry-failed", is_flag=True,
              help="Retry only the blocks that failed for good in an earlier run (recorded in manifest.json); with "
                   "--via batch, restart only the failed or cancelled tasks.")
@click.option("--via", type=click.Choice(api.VIAS),
              help="How Earth Engine pixels arrive: concurrent downloads to this machine, or Earth Engine batch "
                   "export tasks (one per AOI and source, billed per task) writing GeoTIFFs to --bucket or "
                   "--drive-folder.  [earthengine]")
@click.option("--bucket", metavar="BUCKET",
              help="Cloud Storage bucket for --via batch (the name, without gs://): files go to "
                   "gs://BUCKET/PREFIX/<aoi>/<source>.tif and `rsgee tile` reads them in place through GDAL's /vsigs/, "
                   "which needs Google Cloud credentials: GOOGLE_APPLICATION_CREDENTIALS naming a service-account key "
                   "(or the file `gcloud auth application-default login` writes), ~/.boto, or a Compute Engine "
                   "machine's account.  [batch]")
@click.option("--prefix", metavar="PREFIX",
              help="Folder inside --bucket for the exported files.  [default: the bucket's top level]  [batch]")
@click.option("--drive-folder", metavar="FOLDER",
              help="Google Drive folder for --via batch instead of --bucket: files are named <aoi>_<source>.tif and "
                   "you download each into OUT/<aoi>/<source>.tif before `rsgee tile` (rsgee cannot fetch from "
                   "Drive).  [batch]")
@click.option("--poll", "poll_s", type=click.FloatRange(min=0.0), metavar="SECONDS",
              help="Seconds between status checks of the batch tasks; Ctrl-C stops checking, not the tasks, and "
                   "re-running the same command resumes without starting any task twice.  [batch]")
@click.option("--max-pending", type=click.IntRange(1, 3000), metavar="N",
              help="Submit batch tasks while fewer than N of the project's tasks are pending or running (Earth "
                   "Engine queues at most 3,000); the others follow as tasks end.  [batch]")
@click.option("--overwrite", is_flag=True, help="Replace exports made with different parameters.")
@click.option("--dry-run", is_flag=True,
              help="Print each AOI's grid and tile count and, for Earth Engine, the computePixels requests (or batch "
                   "tasks) and bytes per AOI and in total, the endpoint and the workload tag; write nothing.")
@progress_option
@json_option
def export_cmd(as_json: bool, **options) -> None:
    """Export sources for AOIs to OUT/<aoi>/{s1,s2,lulc,dem}.tif and manifest.json.

    Every AOI gets a UTM grid (zone of its centroid, 10 m pixels, edges on the 2560 m tile lattice).
    Earth Engine blocks are downloaded concurrently and saved as they arrive: re-running a killed
    export with the same arguments fetches only what is missing, and complete AOIs are skipped.

    With --via batch, Earth Engine exports each AOI and source itself (to Cloud Storage or Drive)
    and rsgee polls the tasks; OUT/<aoi>/manifest.json then points at the files where they are.
    """
    results = api.export(**options)
    if options["dry_run"]:
        click.echo(json.dumps(results.as_dict(), indent=2) if as_json else "\n".join(results.lines()))
        return
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            click.echo(r.line())
    bad = [r for r in results if not r.ok]
    if bad:
        raise RsgeeError(f"{len(bad)} of {len(results)} AOI(s) failed or have failed blocks: "
                         f"{', '.join(r.aoi for r in bad)}")


# -- tile, check, cache, stac ------------------------------------------------------------------

@cli.command("tile", cls=Command, homes=(api.tile,))
@click.argument("exports", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=FOLDER, required=True,
              help="Archive folder; created if missing, grown if it exists (existing tiles are never rewritten).")
@catalog_option
@click.option("--max-nodata", type=click.FloatRange(0.0, 1.0),
              help="Largest nodata fraction (0–1) a tile may have in s1, lulc and terrain.")
@click.option("--max-s2-nodata", type=click.FloatRange(0.0, 1.0),
              help="Largest fraction (0–1) of Sentinel-2 pixels that are cloud-masked or missing.")
@click.option("--split-ratios", type=RATIOS, metavar="TRAIN:VAL:TEST",
              help="Relative sizes of the train, val and test splits.")
@click.option("--split-by", type=click.Choice(SPLIT_UNITS),
              help="Spatial unit that goes whole into one split: blocks of k×k tiles, or whole AOIs.")
@click.option("--split-block", type=click.IntRange(min=1), help="k, the block size in tiles (k×2560 m) for --split-by block.")
@click.option("--split-seed", type=int, help="Seed of the block → split assignment.")
@click.option("--split-aoi", "split_aoi", multiple=True, metavar="NAME=SPLIT",
              help="Pin an AOI to a split (train, val or test), e.g. a held-out region: all its tiles go there, "
                   "whatever the blocks say. Repeatable.")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes (tile rows of AOIs run in parallel).")
@click.option("--max-float-error", type=click.FloatRange(0.0, 0.01), metavar="E",
              help="New archive: store S1 and terrain tiles bounded-lossy, every value within E of the exact one "
                   "in its unit (dB, m, degrees, hillshade 0–255); 0.005 saves ~40 % of the tiles' bytes. "
                   "Default: lossless (or the existing archive's setting).")
@progress_option
def tile_cmd(**options) -> None:
    """Cut exports into the 256×256 training archive OUT.

    EXPORTS are AOI folders written by `rsgee export` (or folders holding them). Terrain (slope,
    aspect, hillshade; gdaldem's Horn method) is derived from each AOI's whole DEM; tiles are
    filtered, spatially split, written as GeoTIFFs per source and listed in OUT/index.geojson, and
    OUT/stats.json is recomputed on the train split. Re-running adds only what is missing.
    """
    summary = api.tile(**options)
    for line in summary.lines():
        click.echo(line)
    if summary.failed:
        raise RsgeeError(f"{len(summary.failed)} AOI(s) failed (see above); fix or re-export them and re-run")


@cli.command("check", cls=Command, homes=(api.check,))
@click.argument("archive", type=FOLDER)
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes.")
@progress_option
@json_option
def check_cmd(as_json: bool, **options) -> None:
    """Verify ARCHIVE: every indexed tile's files, the splits and stats.json; exit 1 on any problem."""
    report = api.check(**options)
    if as_json:
        click.echo(json.dumps({"archive": str(options["archive"]), "ok": report.ok, "tiles": report.tiles,
                               "problems": list(report.problems), "notes": list(report.notes)}, indent=2))
    for note in report.notes if not as_json else ():
        click.echo(f"note: {note}")
    for problem in report.problems if not as_json else ():
        click.echo(f"problem: {problem}")
    if not report.ok:
        raise RsgeeError(f"{options['archive']}: {len(report.problems)} problem(s) in {report.tiles} tiles")
    if not as_json:
        click.echo(f"{options['archive']}: OK, {report.tiles} tiles")


@cli.command("cache", cls=Command, homes=(api.cache,))
@click.argument("archive", type=FOLDER)
@click.option("--splits", type=NAMES, metavar="NAMES", help="Comma-separated splits to pack.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Processes reading and encoding tiles (the result is the same for any number).")
@click.option("--force", is_flag=True, help="Rebuild even a cache that is up to date (one rsgee check found changed).")
@progress_option
def cache_cmd(**options) -> None:
    """Build the packed training cache of ARCHIVE (ARCHIVE/cache/<split>/*.npy).

    Training reads memory-mapped arrays instead of four GeoTIFFs per sample. The cache is derived
    from the GeoTIFFs, fingerprinted, and rebuilt only when the archive changed or it is incomplete;
    a second rsgee cache on the archive waits for the first. It takes 0.98 MB per tile: Sentinel-2
    and land cover exact, Sentinel-1 and terrain as codes within stated tolerances (far below the
    sensors'), checked by rsgee check.
    """
    for result in api.cache(**options):
        click.echo(result.line())


@cli.command("stac", cls=Command, homes=(api.stac,))
@click.argument("archive", type=FOLDER)
@click.option("--start", type=DATE, metavar="DATE",
              help="Window start for AOIs whose window archive.json lacks (older archives, local exports).")
@click.option("--end", type=DATE, metavar="DATE", help="Window end (excluded), with --start.")
def stac_cmd(**options) -> None:
    """Write ARCHIVE/stac/: a STAC Collection with one Item per tile (relative hrefs, splits, bands, classes)."""
    path = api.stac(**options)
    click.echo(f"stac: {len(api.Archive(options['archive']).tiles())} items → {path}")


# -- train ---------------------------------------------------------------------------------------

@cli.group("train", context_settings=CONTEXT)
def train_group() -> None:
    """Train the paper's models on an archive (CPU, or CUDA/AMP/multi-GPU when present)."""


#: Where a command runs its model: shared by train, evaluate and generate.
device_options = [
    click.option("--accelerator", type=click.Choice(ACCELERATORS), help="Where to run; auto uses CUDA when present."),
    click.option("--devices", type=COUNT,
                 help="Devices (processes) per node; more than one runs data-parallel (DDP: NCCL on CUDA, gloo on "
                      "CPU), each taking a share of the tiles.  [auto: every visible GPU, 1 CPU process, or what "
                      "torchrun/srun started]"),
    click.option("--num-nodes", type=COUNT,
                 help="Machines taking part (each runs the same command; see README).  [auto: 1, or what "
                      "torchrun/srun started]"),
]

training_options = [
    click.option("--out", type=FOLDER, required=True,
                 help="Run folder: run.json, checkpoints/, logs/metrics.csv, val/ figures."),
    click.option("--size", type=click.Choice(SIZES),
                 help="Model width preset: paper = the published widths (GPU), small for CPU/small GPUs, tiny for "
                      "smoke tests and the demo."),
    click.option("--epochs", type=click.IntRange(min=1),
                 help="Passes over the train split.  [default: 50, unless --steps is given]"),
    click.option("--steps", type=click.IntRange(min=1), metavar="N",
                 help="Train exactly N optimiser steps instead of whole epochs (one step per batch; for a GAN, one "
                      "generator and one discriminator update)."),
    click.option("--steps-per-epoch", type=click.IntRange(min=1),
                 help="Batches per epoch on each device.  [default: the device's share of the train split]"),
    click.option("--warmup", type=click.IntRange(min=0), metavar="N",
                 help="Optimiser steps of linear learning-rate warm-up before the --schedule starts."),
    click.option("--train-tiles", type=click.IntRange(min=1), metavar="N",
                 help="Train on only N train tiles, chosen by --seed (the same N and seed choose the same tiles in "
                      "train fusion and train seg: the low-label protocol).  [default: all]"),
    click.option("--batch-size", type=click.IntRange(min=1),
                 help="Samples per batch on each device: an optimiser step sees batch size × devices × nodes."),
    click.option("--seed", type=int, help="Seed of weights, shuffling and augmentation."),
    click.option("--workers", "num_workers", type=click.IntRange(min=0),
                 help="DataLoader worker processes (0 reads the packed cache in-process, the fastest on CPU)."),
    click.option("--resume", is_flag=True,
                 help="Continue the run in --out from checkpoints/last.ckpt (the last completed epoch or step)."),
    *device_options,
    click.option("--precision", type=click.Choice(PRECISIONS),
                 help="Numeric precision.  [default on CUDA: bf16-mixed where supported, else 32-true for the GAN and "
                      "16-mixed for RS-UNet; 32-true on CPU]"),
    click.option("--logger", "loggers", type=click.Choice(LOGGERS), multiple=True,
                 help="Also log to TensorBoard, Weights & Biases (offline with WANDB_MODE=offline; project "
                      "$WANDB_PROJECT) or MLflow ($MLFLOW_TRACKING_URI, default a file store in OUT/mlruns); "
                      "repeatable. Each needs its extra (pip install 'rsgee[wandb]' …) and gets the run's settings, "
                      "parameter counts and, at the end, the best checkpoint's test scores beside the baselines'. "
                      "OUT/logs/metrics.csv is always written."),
    click.option("--checkpoint-every", type=click.IntRange(min=1), metavar="N",
                 help="Also write checkpoints/last.ckpt every N batches (besides every epoch), for long epochs."),
    click.option("--skip-nonfinite", is_flag=True,
                 help="Skip a batch whose loss is NaN or infinite (counted in the logs) instead of stopping the run."),
    click.option("--clip-grad-norm", type=click.FloatRange(min=0.0, min_open=True), metavar="NORM",
                 help="Clip the gradient norm of each optimiser to NORM.  [default: no clipping]"),
    click.option("--schedule", type=click.Choice(SCHEDULES),
                 help="Learning rate over the run's steps: constant; linear (pix2pix's: constant for the first half, "
                      "then down to 0); cosine (down to 0 along half a cosine)."),
    click.option("--augment", type=click.Choice(AUGMENTATIONS),
                 help="Random flips/rotations of each training sample: none, flip (mirror E–W/N–S) or dihedral (all "
                      "8). The sun does not turn with the tile: after a flip or rotation other slopes face it, which "
                      "breaks the aspect → illumination relation, the strongest signal terrain gives Sentinel-2."),
    click.option("--crop", type=click.IntRange(32, 256),
                 help="Train on random square crops of this many pixels (multiple of 32).  [default: whole 256×256 "
                      "tiles]"),
    progress_option,
]


@train_group.command("fusion", cls=Command, homes=(api.train_fusion, FusionConfig), run_kind="fusion")
@click.argument("archive", type=FOLDER)
@click.option("--model", type=click.Choice(MODELS),
              help="RS-SPADE (the paper's: pix2pix's U-Net, every normalisation followed by the multi-source "
                   "modulation), the pix2pix baseline, or SPADE's decoder-only generator with the same modulation.")
@click.option("--sources", type=NAMES, metavar="NAMES",
              help="Conditioning inputs, any non-empty subset of lulc, s1, dem (dem = DEM + slope, aspect, hillshade; "
                   "also called terrain): the paper's ablation.")
@click.option("--recipe", type=click.Choice(list(RECIPES)),
              help="Training recipe, apart from the architecture: pix2pix (vanilla GAN + L1 ×100, Adam 2e-4 (0.5, "
                   "0.999), 70×70 PatchGAN), spade (hinge + feature matching ×10, no L1, Adam 1e-4/4e-4 (0, 0.999), "
                   "2-scale D) or hybrid (spade + L1 ×10). The options below override single parts.  "
                   "[default: pix2pix]")
@click.option("--gan-loss", type=click.Choice(GAN_LOSSES), help="Adversarial loss.  [default: the recipe's]")
@click.option("--discriminator", type=click.Choice(DISCRIMINATORS),
              help="Conditional discriminator.  [default: the recipe's]")
@click.option("--betas", type=BETAS, metavar="B1,B2", help="Adam betas of both optimisers.  [default: the recipe's]")
@click.option("--lr-g", type=float, help="Generator learning rate.  [default: the recipe's]")
@click.option("--lr-d", type=float, help="Discriminator learning rate.  [default: the recipe's]")
@click.option("--l1-weight", type=float, help="λ of the L1 reconstruction loss.  [default: the recipe's]")
@click.option("--fm-weight", type=float,
              help="λ of discriminator feature matching (multiscale D only).  [default: the recipe's]")
@click.option("--vgg-weights", type=click.Path(dir_okay=False, exists=True),
              help="Local torchvision vgg19 state-dict file enabling the VGG perceptual loss (never downloaded).")
@click.option("--vgg-weight", type=click.FloatRange(min=0.0), help="λ of the VGG perceptual loss (with --vgg-weights).")
@click.option("--ema-decay", type=click.FloatRange(0.0, 1.0, max_open=True),
              help="Keep an exponential moving average of the generator weights (scored beside the raw ones by "
                   "validation and evaluate; generate --weights ema uses it); 0 = none.")
@click.option("--val-every", type=click.IntRange(min=1), metavar="N",
              help="Validate (and choose the best checkpoint) every N epochs.")
@click.option("--val-every-steps", type=click.IntRange(min=1), metavar="N",
              help="Validate every N optimiser steps instead (with --steps).")
@click.option("--val-figures", type=click.IntRange(min=0), metavar="N",
              help="Val tiles drawn in the PNG grid written at each validation (0 = no figures).")
@with_options(training_options)
def train_fusion_cmd(**options) -> None:
    """Train RS-SPADE, pix2pix or the SPADE decoder to generate Sentinel-2 B2/B3/B4/B8 from land cover, SAR and terrain.

    Reads ARCHIVE's train and val splits (through its packed cache, built when missing or stale),
    logs losses and val PSNR/SSIM/SAM to OUT/logs/metrics.csv, writes a PNG grid per validation to
    OUT/val/ and keeps OUT/checkpoints/last.ckpt for --resume and the best by val PSNR. Validation with
    crops also scores crop-size windows stitched back when the crop divides 256. `--config RUN/run.json
    --out NEW` trains a run again with RUN's settings.
    """
    run = api.train_fusion(**options)
    _say(f"trained {options['model']} ({','.join(options['sources'])}) → {run}")


@train_group.command("seg", cls=Command, homes=(api.train_seg, SegmentationConfig), run_kind="segmentation")
@click.argument("archive", type=FOLDER)
@click.option("--mix", type=MIX, metavar="REAL:GEN",
              help="Ratio of real to generated (ARCHIVE/gen) train tiles in every epoch, honoured exactly: 1:0 = real "
                   "only (the paper's True Data), 1:1 = the paper's Mix Data.")
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), help="Adam learning rate.")
@click.option("--weight-decay", type=click.FloatRange(min=0.0), help="Adam weight decay.")
@click.option("--val-every-steps", type=click.IntRange(min=1), metavar="N",
              help="Validate every N optimiser steps (with --steps) instead of after every epoch: learning curves "
                   "comparable between runs whose epochs differ in length.")
@with_options(training_options)
def train_seg_cmd(**options) -> None:
    """Train RS-UNet (9 Dynamic World classes) on real tiles or a real:generated mix.

    Validation and test use real tiles only; val mIoU and accuracy are logged every epoch to
    OUT/logs/metrics.csv and the best checkpoint by val mIoU is kept. A mix with generated tiles
    needs `rsgee generate` to have filled ARCHIVE/gen first. `--config RUN/run.json --out NEW` trains a
    run again with RUN's settings.
    """
    run = api.train_seg(**options)
    _say(f"trained RS-UNet ({SegmentationConfig(mix=options['mix']).mix_label}) → {run}")


# -- evaluate, generate --------------------------------------------------------------------------

@cli.group("evaluate", context_settings=CONTEXT)
def evaluate_group() -> None:
    """The paper's comparison tables, on real test tiles."""


evaluate_options = [
    click.argument("runs", nargs=-1, required=True, type=FOLDER),
    json_option,
    click.option("--archive", type=FOLDER, help="Archive to evaluate on.  [default: each run's own archive]"),
    click.option("--split", type=click.Choice(SPLITS), help="Split to score."),
    click.option("--batch-size", type=click.IntRange(min=1), help="Tiles per batch."),
    *device_options,
    progress_option,
]


@evaluate_group.command("fusion", cls=Command, homes=(api.evaluate_fusion,))
@with_options(evaluate_options)
@click.option("--out", type=FOLDER, help="Folder for fusion_table.csv and fusion_table.md.")
def evaluate_fusion_cmd(as_json: bool, **options) -> None:
    """Table 1/2: model, sources, PSNR (dB), SSIM and SAM (rad) of each fusion RUN's best checkpoint.

    The rows of two trivial predictors on the same tiles come first: constant-mean (the train split's
    per-band mean everywhere) and class-mean (each land-cover class's train mean spectrum); a run that
    does not beat constant-mean is marked.
    """
    from rsgee.train.evaluate import FUSION_COLUMNS, FUSION_HEADERS, markdown_table

    rows = api.evaluate_fusion(**options)
    if as_json:
        _say(json.dumps(rows, indent=2, default=str))
        return
    _say(markdown_table(rows, FUSION_COLUMNS, FUSION_HEADERS).rstrip("\n"))
    _say(f"written: {options['out']}/fusion_table.csv, {options['out']}/fusion_table.md")


@evaluate_group.command("seg", cls=Command, homes=(api.evaluate_seg,))
@with_options(evaluate_options)
@click.option("--out", type=FOLDER, help="Folder for seg_table.csv/.md and the PNG figures.")
def evaluate_seg_cmd(as_json: bool, **options) -> None:
    """Table 3: training set, mIoU and accuracy of each segmentation RUN on real test tiles, plus figures.

    Writes the mIoU-versus-epoch curves of all runs (the paper's Figure 8), a confusion matrix per run
    and the runs' predictions side by side on test tiles (Figure 9). The rows of two trivial predictors
    come first — majority-class and class-mean-spectrum (nearest train mean spectrum) — and a run that
    does not beat them is marked.
    """
    from rsgee.train.evaluate import SEG_COLUMNS, SEG_HEADERS, markdown_table

    rows, figures = api.evaluate_seg(**options)
    if as_json:
        _say(json.dumps({"rows": rows, "figures": [str(f) for f in figures]}, indent=2, default=str))
        return
    _say(markdown_table(rows, SEG_COLUMNS, SEG_HEADERS).rstrip("\n"))
    _say(f"written: {options['out']}/seg_table.csv, {options['out']}/seg_table.md")
    for figure in figures:
        _say(f"figure: {figure}")


@cli.command("generate", cls=Command, homes=(api.generate,))
@click.argument("run", type=FOLDER)
@click.argument("archive", type=FOLDER)
@click.option("--batch-size", type=click.IntRange(min=1), help="Tiles per batch.")
@click.option("--overwrite", is_flag=True, help="Replace tiles another run (or the other weights) generated.")
@click.option("--weights", type=click.Choice(WEIGHTS),
              help="The generator's trained weights or their moving average (runs trained with --ema-decay > 0).")
@with_options(device_options)
@progress_option
def generate_cmd(**options) -> None:
    """Write a pseudo-Sentinel-2 for every tile of ARCHIVE as ARCHIVE/gen/<tile_id>.tif with RUN's generator.

    Same grid as the tile's s2 file, uint16 reflectance × 10000; ARCHIVE/gen/generated.json records the
    run and checkpoint. Re-running skips tiles that are done.
    """
    summary = api.generate(**options)
    _say(f"generated {summary.written} tile(s), {summary.skipped} already done → {summary.folder}")


@cli.command("export-model", cls=Command, homes=(api.export_model,))
@click.argument("run", type=FOLDER)
@click.option("--out", type=FOLDER, required=True,
              help="The model folder to write: config.json, model.safetensors and a README.md model card (an earlier "
                   "export of the same checkpoint and options is kept, another one replaced).")
@click.option("--weights", type=click.Choice(WEIGHTS),
              help="A fusion run's trained generator weights or their moving average (runs with --ema-decay > 0).")
@click.option("--onnx", is_flag=True,
              help="Also write model.onnx (the onnx extra): one input per source, a free batch size, 256×256 tiles.")
@click.option("--evaluation", type=click.Path(exists=True, path_type=Path),
              help="A table `rsgee evaluate` wrote (its --out folder or CSV): the run's and the baselines' test scores "
                   "go into the model card.")
def export_model_cmd(**options) -> None:
    """Write RUN's network as a portable model folder: it loads with torch alone (no Lightning), and rsgee predict
    takes it wherever it takes a run."""
    click.echo(f"model: {api.export_model(**options)}")


# -- predict -------------------------------------------------------------------------------------

@cli.group("predict", context_settings=CONTEXT)
def predict_group() -> None:
    """Apply a trained run to a whole AOI: a land-cover map or a pseudo-Sentinel-2, as a Cloud-Optimised GeoTIFF."""


predict_options = [
    click.argument("run", type=click.Path(file_okay=False, exists=True, path_type=Path)),
    click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
                 help="The COG to write (re-running with the same run and inputs skips a complete one)."),
    click.option("--exports", type=click.Path(file_okay=False, exists=True, path_type=Path),
                 help="An AOI folder written by `rsgee export` (any source, Earth Engine included)."),
    click.option("--aoi", metavar="AOI",
                 help="Instead of --exports: one AOI (as for rsgee export) exported first into <OUT stem>_inputs/ "
                      "(reused when complete) with the options of rsgee export below, only the sources RUN reads."),
    click.option("--overlap", type=click.IntRange(0, 127),
                 help="Pixels by which neighbouring 256-px windows overlap; outputs are blended across them."),
    click.option("--batch-size", type=click.IntRange(min=1),
                 help="Windows per forward pass (memory is bounded by it and one strip of the AOI)."),
    click.option("--device", help="torch device, e.g. cpu, cuda, cuda:1."),
    *source_options,
    progress_option,
]


@predict_group.command("seg", cls=Command, homes=(api.predict_seg, api.export))
@click.option("--probabilities", is_flag=True,
              help="Also write OUT's per-class probabilities (float32) to <OUT stem>_probabilities.tif.")
@with_options(predict_options)
def predict_seg_cmd(**options) -> None:
    """Land-cover map of an AOI from its Sentinel-2 with RUN's RS-UNet (uint8 classes 0–8, 255 = no data)."""
    click.echo(api.predict_seg(**options).line())


@predict_group.command("fusion", cls=Command, homes=(api.predict_fusion, api.export))
@click.option("--fill-clouds", is_flag=True,
              help="Keep every valid real Sentinel-2 pixel and fill only cloud-masked or missing ones; a fifth band, "
                   "filled, is 1 where the generator's value was used.")
@click.option("--weights", type=click.Choice(WEIGHTS),
              help="The generator's trained weights or their moving average.  [default: a run's raw weights, or the "
                   "ones RUN's model folder holds]")
@with_options(predict_options)
def predict_fusion_cmd(**options) -> None:
    """Pseudo-Sentinel-2 (uint16 reflectance × 10000) of an AOI from RUN's generator and the AOI's sources."""
    click.echo(api.predict_fusion(**options).line())


# -- experiment ----------------------------------------------------------------------------------

@cli.group("experiment", context_settings=CONTEXT)
def experiment_group() -> None:
    """The paper's comparisons as controlled experiments over seeds, with baselines and paired differences."""


experiment_options = [
    click.argument("archive", type=FOLDER),
    click.option("--out", type=FOLDER, required=True,
                 help="Folder for the runs (reused when the experiment is run again) and the tables."),
    click.option("--seeds", type=click.IntRange(min=2),
                 help="Repeats of every arm, seeds 0…N-1 (a winner needs |mean difference| > 2 sd)."),
    click.option("--size", type=click.Choice(SIZES), help="Model width preset of every run."),
    click.option("--batch-size", type=click.IntRange(min=1), help="Samples per batch."),
    click.option("--crop", type=click.IntRange(32, 256), help="Random square training crops (multiple of 32; 256 = whole tiles)."),
    progress_option,
]


@experiment_group.command("archive", cls=Command, homes=(api.experiment_archive,))
@click.argument("out", type=FOLDER)
@click.option("--seed", type=int, help="Synthetic scene seed.")
@click.option("--cloud-cover", type=click.FloatRange(0.0, 1.0),
              help="Fraction of Sentinel-2 pixels left cloud-masked (nodata), 0–1.")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes.")
@progress_option
def experiment_archive_cmd(**options) -> None:
    """Build the archive the experiments are meant for in OUT (OUT/exports, OUT/archive), offline.

    16 synthetic AOIs of ~16 tiles in four kinds of terrain (mountains, hills, lowland, lakes), ~1° apart;
    of each kind two AOIs go to train, one to val, one to test (pinned by name), so every split holds every
    terrain and no val or test tile has a train tile beside it: ~133 train, 66 val and 64 test tiles.
    """
    summary = api.experiment_archive(**options)
    for line in summary.lines():
        click.echo(line)
    click.echo(f"next: rsgee experiment fusion {options['out'] / 'archive'} --out {options['out'] / 'fusion'}")


@experiment_group.command("fusion", cls=Command, homes=(api.experiment_fusion,))
@click.option("--models", type=NAMES, metavar="NAMES", help="Generators of Table 1.")
@click.option("--recipes", type=NAMES, metavar="NAMES",
              help="Recipes every generator of Table 1 is trained with (one keeps the comparison about architecture).")
@click.option("--ablation-model", type=click.Choice(["best", *MODELS, "none"]),
              help="Generator of the sources ablation (Table 2, the default recipe): best = the one with the highest "
                   "mean val PSNR in Table 1; none = skip it.")
@click.option("--ablation-sources", type=NAME_SETS, metavar="SETS", help="Source subsets of the ablation, separated by ';'.")
@click.option("--steps", type=click.IntRange(min=1),
              help="Optimiser steps of every run (BENCHMARKS.md: what 4,000 reach on the experiment archive).")
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), help="Learning rate of G and D, every recipe.")
@click.option("--schedule", type=click.Choice(SCHEDULES), help="Learning-rate schedule over the steps.")
@click.option("--val-every-steps", type=click.IntRange(min=1), metavar="N",
              help="Validate every N steps and score each run's checkpoint with the best val PSNR (chosen on val; "
                   "N ≥ --steps: the last step only).")
@with_options(experiment_options)
def experiment_fusion_cmd(**options) -> None:
    """Tables 1 and 2 over seeds: generators (× recipes), then the sources ablation, at one budget of steps.

    Every run has the same steps, learning rate, batches and crops (no augmentation: the sun does not turn)
    and is scored once on ARCHIVE's test split and on val, with raw and EMA weights, beside constant-mean,
    class-mean and the per-class least-squares references of each source set. Writes OUT/fusion_tables.md
    and OUT/fusion_runs.csv and prints the tables.
    """
    result = api.experiment_fusion(**options, say=click.echo)
    click.echo("\n" + result.text())
    click.echo(f"written: {', '.join(str(f) for f in result.files)}")


@experiment_group.command("seg", cls=Command, homes=(api.experiment_seg,))
@click.option("--labelled", type=WHOLE_NUMBERS, metavar="K,…",
              help="Real labelled tiles of the low-label protocol (empty: the paper's protocol only).")
@click.option("--steps", type=click.IntRange(min=1),
              help="Optimiser steps of every RS-UNet run (the paper protocol's third arm gets twice as many).")
@click.option("--val-every-steps", type=click.IntRange(min=1),
              help="Validate every N steps: the steps each run needs to reach a fixed val mIoU.")
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), help="Adam learning rate of RS-UNet.")
@click.option("--generator", type=click.Choice(MODELS), help="The generator of the generated tiles.")
@click.option("--generator-steps", type=click.IntRange(min=1),
              help="Its optimiser steps (at the fusion experiment's other defaults: lr, schedule, batch, crops).")
@with_options(experiment_options)
def experiment_seg_cmd(**options) -> None:
    """Table 3 over seeds, in the paper's protocol and the low-label one.

    Paper: RS-UNet on every real train tile (1:0) against the 1:1 mix with generated twins, steps matched
    and with twice the steps. Low-label: on K real labelled tiles against those K plus generated images of
    the other train tiles (their real Sentinel-2 withheld), steps matched, the generator trained on the K
    tiles only. Generators are trained here, one per seed and protocol. Writes OUT/seg_tables.md and
    OUT/seg_runs.csv and prints the tables.
    """
    result = api.experiment_seg(**options, say=click.echo)
    click.echo("\n" + result.text())
    click.echo(f"written: {', '.join(str(f) for f in result.files)}")


# -- demo, catalog -------------------------------------------------------------------------------

@cli.command("demo", cls=Command, homes=(api.demo,))
@click.option("--out", type=FOLDER, help="Folder for the exports, archive, runs and evaluation of the demo.")
@progress_option
def demo_cmd(**options) -> None:
    """The whole pipeline offline, on the synthetic source, with tiny models (minutes on a laptop CPU).

    export → tile → train fusion (RS-SPADE, pix2pix) → evaluate fusion → generate → train seg (1:0,
    1:1) → evaluate seg; prints both tables and the figures' paths. Re-running resumes. The synthetic
    scene checks that the pipeline works, not the paper's numbers.
    """
    from rsgee.train.evaluate import FUSION_COLUMNS, FUSION_HEADERS, SEG_COLUMNS, SEG_HEADERS, markdown_table

    result = api.demo(**options, say=click.echo)
    click.echo("\nFusion on the synthetic test split (paper Table 1 reports PSNR 23.14 / SSIM 0.84 / SAM 0.19 for "
               "RS-SPADE on real data):")
    click.echo(markdown_table(result.fusion_table, FUSION_COLUMNS, FUSION_HEADERS), nl=False)
    click.echo("\nSegmentation on real (here: synthetic) test tiles (paper Table 3: mIoU 0.467 → 0.481):")
    click.echo(markdown_table(result.seg_table, SEG_COLUMNS, SEG_HEADERS), nl=False)
    click.echo("\nTables: " + ", ".join(str(p) for p in result.tables))
    click.echo("Figures: " + ", ".join(str(p) for p in result.figures))
    click.echo("These numbers come from a synthetic scene and tiny models: they show the pipeline runs end to end, "
               "not the paper's results.")


@cli.command("catalog", cls=Command, homes=(api.source_catalog,))
@catalog_option
def catalog_cmd(**options) -> None:
    """Validate a catalog and list its sources and bands."""
    catalog = api.source_catalog(**options)
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
