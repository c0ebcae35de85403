"""Earth Engine batch exports: one ``Export.image`` task per AOI and source, polled to completion.

For AOI sets too big for one machine to download, Earth Engine writes the GeoTIFFs itself, to
Cloud Storage (``gs://BUCKET/PREFIX/<aoi>/<source>.tif``) or to Google Drive
(``FOLDER/<aoi>_<source>.tif``). Each task exports exactly the AOI's lattice grid (``crs``,
``crsTransform``, ``dimensions``) with the same recipe as the download path, in one file (so its
name is predictable); the DEM is exported once, on the grid grown by one pixel on every side
(``dem_halo``), which ``rsgee tile`` uses for exact terrain at AOI borders, and ``dem.tif`` is cut
from it locally, block by block as the download path writes it (the same file, byte for byte): a
second task for the inner grid would bill the same DEM twice. Masked pixels carry the recipe's fill
value (``FLOAT_FILL`` for float sources, the catalog nodata for integers), and the GeoTIFFs declare
that value as nodata; ``rsgee tile`` maps it to the catalog's nodata.

Earth Engine bills every task, so nothing is started twice:

- Each task's request id is written to ``OUT/<aoi>/.partial/tasks.json`` (atomically) *before* it
  is sent, and its operation name as soon as Earth Engine answers. Re-running the same command
  polls the recorded tasks instead of starting new ones; a task whose answer was lost is re-sent
  with the same request id, the API's way to make a retried start safe (the ee client relies on it
  for its own retries).
- A failed or cancelled task stays failed (its message is in ``tasks.json`` and in the result's
  ``failed_blocks`` as ``"<source>/*"``, the whole source) until ``--retry-failed`` restarts only
  those tasks. No manifest is written then: a manifest promises readable files.
- Ctrl-C stops polling, not the tasks: they run on (and are billed); re-run to resume polling.

Earth Engine queues at most 3,000 pending tasks (per project; reports say per user across
projects) and runs only a few of them at a time, so tasks are submitted while fewer than
``max_pending`` (``--max-pending``, :data:`MAX_PENDING` by default) of the project's operations
are pending or running, the rest as earlier ones end. All of them are polled with one paged
``ee.data.listOperations()`` per cycle (500 operations a page), not one request per task: 3,000
tasks polled one by one every 30 s would take ~100 requests/s, a project's whole request quota. A
poll that fails ("Quota exceeded for quota metric …", "An internal server error has occurred",
"The service is currently unavailable.") changes no task: only an operation's own answer can end
a task, so a failed poll never leads ``--retry-failed`` to pay for a second task.

Each file must stay under Earth Engine's per-file limits — 16 GiB before compression, and
``fileDimensions`` ≤ 131,072 pixels a side — or the task fails after it was started ("File
dimensions are too large …"). Both are checked before anything starts: a run with a file over
them is refused in one line (split the AOI, or use ``--via download``), since splitting a file
would give Earth Engine's tiled file names, which ``rsgee tile`` does not read.

When all of an AOI's tasks succeeded, ``OUT/<aoi>/manifest.json`` is written in the export folder's
contract (:mod:`rsgee.exports`), with ``request.via = "batch"``, the destination,
and the task ids in ``provenance.tasks``. Its file paths are GDAL ``/vsigs/<bucket>/<object>``
paths for Cloud Storage: ``rsgee tile`` reads them in place, and GDAL needs Google Cloud
credentials for that (see GDAL's /vsigs/ documentation): ``GOOGLE_APPLICATION_CREDENTIALS`` naming
a service-account key — or the file ``gcloud auth application-default login`` writes
(``~/.config/gcloud/application_default_credentials.json``; GDAL 3.10 does not look there by
itself) —, a ``~/.boto`` file, or a Compute Engine machine's own account. For Drive the paths are
the relative ``<source>.tif``: rsgee cannot fetch from Drive, so the user downloads the files into
the AOI folder, and re-runs the command, which then cuts ``dem.tif`` from ``dem_halo.tif``. Cutting
reads the Cloud Storage file through GDAL too, so GDAL's credentials are needed from the export on.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import ee
import google.auth.exceptions
import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window as RasterWindow
from tqdm import tqdm

from rsgee.acquire.aoi import AOI
from rsgee.acquire.earthengine.download import DEM_HALO, EarthEngineSource, classify
from rsgee.acquire.earthengine.recipes import Recipe, RecipeOptions, Window
from rsgee.acquire.earthengine.session import SessionConfig, refused
from rsgee.acquire.export import ExportResult
from rsgee.catalog import Catalog, SourceSpec
from rsgee.errors import Interrupted, RsgeeError, redact_urls
from rsgee.exports import (WORKDIR, add_halo, existing_manifest, file_tags, mark_incomplete, new_manifest,
                           same_request, write_manifest)
from rsgee.geotiff import GDAL_READ_ENV, RasterGrid, open_for_writing, write_json_atomic
from rsgee.grid import Grid

log = logging.getLogger("rsgee")

TASKS = "tasks.json"
HALO = "dem_halo"
#: Operation states (Earth Engine's Cloud API names) that are still going on and that ended badly.
ACTIVE = ("STARTING", "PENDING", "RUNNING", "CANCELLING")
FAILED = ("FAILED", "CANCELLED")
SUCCEEDED = "SUCCEEDED"
_SHARD = 256  # Earth Engine's default shardSize; fileDimensions must be a multiple of it
#: Default of ``--max-pending``: a sixth of Earth Engine's 3,000 pending tasks, so that a run leaves
#: room for the project's other work, and still far more than the few tasks a project runs at once.
MAX_PENDING = 500
#: Earth Engine's limits for one exported GeoTIFF: size before compression (strictly below) and side.
MAX_FILE_BYTES = 2**34
MAX_FILE_DIM = 131072
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


@dataclass(frozen=True)
class Destination:
    """Where Earth Engine writes the GeoTIFFs: a Cloud Storage bucket (and prefix) or a Drive folder."""

    bucket: str | None = None
    prefix: str = ""
    drive_folder: str | None = None

    @classmethod
    def parse(cls, bucket: str | None, prefix: str | None, drive_folder: str | None) -> "Destination":
        """Validate the command-line choice: exactly one of a bucket or a Drive folder."""
        if bool(bucket) == bool(drive_folder):
            raise RsgeeError("--via batch needs exactly one destination: --bucket BUCKET [--prefix PREFIX] "
                             "(Cloud Storage) or --drive-folder FOLDER (Google Drive)")
        if drive_folder:
            if prefix:
                raise RsgeeError("--prefix applies to --bucket only; Drive files are named <aoi>_<source>.tif")
            return cls(drive_folder=drive_folder.strip("/"))
        name = bucket.removeprefix("gs://").rstrip("/")
        if not _BUCKET.match(name):
            raise RsgeeError(f"--bucket '{bucket}' is not a Cloud Storage bucket name (lower-case letters, digits, "
                             "'-', '_', '.'); put folders in --prefix")
        return cls(bucket=name, prefix=(prefix or "").strip("/"))

    @property
    def gcs(self) -> bool:
        return self.bucket is not None

    def describe(self) -> dict:
        """What the manifest's request records (part of what makes two requests equal)."""
        if self.gcs:
            return {"gcs": {"bucket": self.bucket, "prefix": self.prefix}}
        return {"drive": {"folder": self.drive_folder}}

    def file_prefix(self, aoi: str, key: str) -> str:
        """The export's file name prefix: ``PREFIX/<aoi>/<key>`` in the bucket, ``<aoi>_<key>`` on Drive."""
        if self.gcs:
            return "/".join(p for p in (self.prefix, aoi, key) if p)
        return f"{aoi}_{key}"

    def manifest_path(self, aoi: str, key: str) -> str:
        """The file's path in the manifest: a GDAL ``/vsigs/`` path, or relative to the AOI folder (Drive)."""
        return f"/vsigs/{self.bucket}/{self.file_prefix(aoi, key)}.tif" if self.gcs else f"{key}.tif"

    def where(self, aoi: str) -> str:
        if self.gcs:
            return f"gs://{self.bucket}/" + "".join(f"{p}/" for p in (self.prefix, aoi) if p)
        return f"Google Drive folder '{self.drive_folder}'"

    def export_args(self, aoi: str, key: str) -> tuple[Callable, dict]:
        """The ``ee.batch.Export.image`` function and its destination arguments."""
        if self.gcs:
            return ee.batch.Export.image.toCloudStorage, {"bucket": self.bucket,
                                                          "fileNamePrefix": self.file_prefix(aoi, key)}
        return ee.batch.Export.image.toDrive, {"folder": self.drive_folder, "fileNamePrefix": self.file_prefix(aoi, key)}


class BatchSource(EarthEngineSource):
    """Earth Engine reached through batch tasks instead of pixel downloads.

    It shares the download path's session, date windows, recipes and empty-collection check; its
    request also names the route and the destination, so that an export made one way is never
    mistaken for the other. (Its inherited ``blocks`` — the download path — is not used.)
    """

    def __init__(self, session: SessionConfig, windows: Mapping[str, Window], destination: Destination, *,
                 options: RecipeOptions = RecipeOptions()):
        super().__init__(session, windows, options=options, progress=False)
        self.destination = destination

    def request(self) -> dict:
        return dict(super().request(), via="batch", destination=self.destination.describe())

    def recipes(self, grid: Grid, specs: Sequence[SourceSpec]) -> dict[str, Recipe]:
        """Recipes of every source; an empty collection is a one-line error naming source and dates."""
        return self._recipes(grid, specs)


@dataclass(frozen=True)
class BatchResult(ExportResult):
    """An :class:`ExportResult` with the batch facts: task counts, and what the user must do next."""

    tasks: int = 0
    where: str = ""
    todo: tuple[str, ...] = ()

    def line(self) -> str:
        if self.status == "written":
            text = f"{self.aoi}: written ({self.tiles} tiles, {self.tasks} Earth Engine tasks) → {self.where}"
        else:
            text = super().line()
        return "\n".join([text, *self.todo])


@dataclass
class _Job:
    """One AOI in flight: its grid, the manifest to write, and its tasks by key (source or dem_halo)."""

    aoi: AOI
    folder: Path
    grid: Grid
    manifest: dict
    tasks: dict[str, dict | None]
    bar: tqdm | None = None
    progress: dict[str, float] = field(default_factory=dict)
    recipes: dict[str, Recipe] = field(default_factory=dict)

    @property
    def tasks_path(self) -> Path:
        return self.folder / WORKDIR / TASKS

    def save(self) -> None:
        """Record the tasks atomically: what was started must never be forgotten."""
        self.tasks_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.tasks_path, {"manifest": self.manifest, "tasks": self.tasks})

    def active(self) -> list[str]:
        """Tasks still going on at Earth Engine (started, not ended)."""
        return [k for k, t in self.tasks.items() if t is not None and t["state"] in ACTIVE and t["operation"]]

    def todo(self, retry_failed: bool) -> list[str]:
        """Tasks to send: never sent, sent without an answer, or failed (with ``retry_failed``)."""
        return [k for k, t in self.tasks.items()
                if t is None or t["state"] == "STARTING" or (t["state"] in FAILED and retry_failed)]

    def ended(self) -> int:
        return sum(t is not None and t["state"] not in ACTIVE for t in self.tasks.values())


def export_batch(
    aois: Sequence[AOI], out_dir: str | Path, source: BatchSource, catalog: Catalog, *,
    source_names: Sequence[str] | None = None, overwrite: bool = False, retry_failed: bool = False,
    poll_s: float = 30.0, max_pending: int = MAX_PENDING, progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> list[BatchResult]:
    """Start (or resume) every AOI's batch tasks, poll them all until they end, write the manifests.

    An AOI that cannot start (no images, a different earlier request…) is reported and the run goes
    on with the others. A file over Earth Engine's per-file limits refuses the whole run before
    anything starts. Tasks are submitted in AOI order while fewer than ``max_pending`` of the
    project's operations are pending.

    Args:
        aois: the AOIs; each gets ``OUT/<name>/``.
        out_dir: the export folder (``OUT``).
        source: the session, windows, recipe options and destination.
        catalog: the catalog; ``source_names`` picks its sources (all by default).
        overwrite: replace exports and forget tasks of a *different* request (those tasks keep
            running on Earth Engine unless cancelled). An equal request is never started twice.
        retry_failed: restart the tasks that failed or were cancelled in an earlier run.
        poll_s: seconds between status polls.
        max_pending: most of the project's tasks pending or running at once (Earth Engine queues
            at most 3,000); further tasks are submitted as earlier ones end.
        progress: one progress bar per AOI on stderr (tasks done/total and the running ones' progress).
        sleep: how to wait between polls (tests pass a fake).
    """
    if max_pending < 1:
        raise RsgeeError(f"--max-pending {max_pending} must be at least 1")
    specs = [catalog[n] for n in (source_names or catalog.sources)]
    out = Path(out_dir)
    results: dict[str, BatchResult] = {}
    jobs: list[_Job] = []
    for aoi in aois:
        try:
            prepared = _prepare(aoi, out, source, catalog, specs, overwrite)
        except RsgeeError as exc:
            results[aoi.name] = BatchResult(aoi.name, out / aoi.name, "failed", 0, error=str(exc))
            continue
        if isinstance(prepared, BatchResult):
            results[aoi.name] = prepared
        else:
            jobs.append(prepared)
    too_large = [f.problem() for job in jobs for f in batch_files(job.aoi.name, job.grid, specs)
                 if f.key in job.todo(retry_failed) and f.problem()]
    if too_large:
        raise RsgeeError(f"{len(too_large)} batch file(s) over Earth Engine's per-file limits, e.g. {too_large[0]}; "
                         "split the AOI into smaller AOIs or export it with --via download")
    source.connect()
    for job in list(jobs):
        if job.todo(retry_failed):
            try:  # an empty collection fails the AOI before anything of it is spent
                job.recipes = source.recipes(job.grid, specs)
            except RsgeeError as exc:
                jobs.remove(job)  # its recorded tasks, if any, are polled by the next run
                results[job.aoi.name] = BatchResult(job.aoi.name, job.folder, "failed", 0, error=str(exc))
    queue = [(job, key) for job in jobs for key in job.todo(retry_failed)]
    try:
        for i, job in enumerate(jobs):
            job.bar = tqdm(total=len(job.tasks), desc=f"batch {job.aoi.name}", unit="task", position=i,
                           disable=not progress, file=sys.stderr)
        _run(jobs, queue, source, specs, max_pending, poll_s, sleep)
    except (KeyboardInterrupt, Interrupted):  # Ctrl-C or SIGTERM
        for job in jobs:
            if job.bar is not None:
                job.bar.close()  # before the message, so that it is not drawn over
        running = [t for j in jobs for t in j.tasks.values() if t is not None and t["state"] in ACTIVE]
        log.warning("stopped polling; %d Earth Engine task(s) keep running (and are billed), %d not started yet: "
                    "re-run the same command to resume (nothing is started twice), or cancel them with `earthengine "
                    "task cancel ID` or in the Code Editor's Tasks tab (ids in %s)", len(running), len(queue),
                    out / "<aoi>" / WORKDIR / TASKS)
        raise
    finally:
        for job in jobs:
            if job.bar is not None:
                job.bar.close()
    for job in jobs:
        results[job.aoi.name] = _finish(job, source, specs)
    return [results[a.name] for a in aois]


def _prepare(aoi: AOI, out: Path, source: BatchSource, catalog: Catalog, specs: Sequence[SourceSpec],
             overwrite: bool) -> _Job | BatchResult:
    """The AOI's job with its recorded tasks, or its result if a complete export of this request exists."""
    grid = aoi.grid()
    folder = out / aoi.name
    dest = source.destination
    manifest = new_manifest(aoi, grid, source.name, source.request(), catalog, specs)
    for name, entry in manifest["files"].items():
        entry["path"] = "dem.tif" if name == "dem" else dest.manifest_path(aoi.name, name)  # cut from dem_halo
    keys = [HALO if s.name == "dem" else s.name for s in specs]
    try:
        existing = existing_manifest(folder)
    except RsgeeError:
        if not overwrite:
            raise
        existing = None  # damaged: --overwrite replaces it, as export_aoi does
    if existing is not None:
        if same_request(existing, manifest):
            if HALO in keys and not (folder / "dem.tif").exists():  # a Drive file downloaded since
                _cut_dem(aoi, folder, grid, catalog["dem"], source)
            return BatchResult(aoi.name, folder, "up to date", len(list(grid.tiles())), tasks=len(keys),
                               where=dest.where(aoi.name), todo=_drive_todo(dest, aoi.name, folder, keys))
        if not overwrite:
            raise RsgeeError(f"{folder} already holds an export made with different parameters; pass --overwrite "
                             "to replace it or choose another --out")
    job = _Job(aoi, folder, grid, _comparable(manifest), {})
    if job.tasks_path.exists():
        try:
            recorded = json.loads(job.tasks_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RsgeeError(f"{job.tasks_path}: unreadable ({exc}); it lists Earth Engine tasks already started — "
                             "check them in the Code Editor's Tasks tab before deleting it") from None
        if same_request(recorded["manifest"], manifest):
            job.tasks = recorded["tasks"]
        elif not overwrite:
            raise RsgeeError(f"{folder} has Earth Engine tasks started with different parameters "
                             f"({job.tasks_path}); pass --overwrite to start new ones (the old ones keep running "
                             "unless you cancel them) or choose another --out")
    mark_incomplete(folder)
    job.tasks = {k: job.tasks.get(k) for k in keys}
    return job


def _comparable(manifest: dict) -> dict:
    """The parts of a manifest that make two requests equal (what ``tasks.json`` keeps)."""
    return {k: manifest[k] for k in ("rsgee_version", "aoi", "source", "synthetic", "request", "grid", "catalog",
                                     "files")}


def _start(job: _Job, key: str, source: BatchSource, specs: Sequence[SourceSpec]) -> bool:
    """Send one task; False when Earth Engine asked to wait (queue full, quota, 5xx), to resend later.

    A task is recorded with its request id before it is sent. One whose answer never came, or
    that Earth Engine refused for now, is sent again with that same id: had Earth Engine created
    it after all, it answers with that operation instead of starting a second one. Any other
    refusal fails the task ("could not start: …").
    """
    old = job.tasks[key]
    reuse = old is not None and not old["operation"]
    task = {"request_id": old["request_id"] if reuse else str(uuid.uuid4()), "operation": None,
            "state": "STARTING", "error": None, "file": source.destination.manifest_path(job.aoi.name, key)}
    job.tasks[key] = task
    job.save()  # before sending: a crash from here on leaves an id that the next run re-sends
    if not source.destination.gcs:
        (job.folder / f"{key}.tif").unlink(missing_ok=True)  # a download of an earlier task is stale now
    if key == HALO:
        (job.folder / "dem.tif").unlink(missing_ok=True)  # and so is what was cut from it
    spec = next(s for s in specs if s.name == _source(key))
    request = export_request(job.aoi.name, key, job.grid, job.recipes[spec.name], len(spec.bands), source.destination,
                             source.session.tag())
    try:
        operation = ee.data.exportImage(task["request_id"], request)
    except google.auth.exceptions.RefreshError as exc:
        raise refused(exc) from None
    except ee.EEException as exc:
        error = classify(exc)
        if error.retryable:
            log.warning("start of %s/%s deferred, tried again next cycle: %s", job.aoi.name, key, error.message)
            return False
        task.update(state="FAILED", error=f"could not start: {error.message}")
    except (OSError, ConnectionError) as exc:  # unknown whether it started: keep STARTING and its id
        raise RsgeeError(f"could not reach Earth Engine to start task {key} ({redact_urls(exc)}); re-run the same "
                         "command to try again (with the same request id, so nothing is started twice)") from None
    else:
        task.update(operation=operation["name"], state=operation.get("metadata", {}).get("state", "PENDING"))
    job.save()
    return True


@dataclass(frozen=True)
class BatchFile:
    """The GeoTIFF one task writes: its key (source or dem_halo), pixels, bands and bytes per value."""

    aoi: str
    key: str
    width: int
    height: int
    bands: int
    itemsize: int

    @property
    def file_dimensions(self) -> tuple[int, int]:
        """The ``fileDimensions`` requested: the whole image in one file, in 256-pixel shards."""
        return _ceil(self.width, _SHARD), _ceil(self.height, _SHARD)

    @property
    def nbytes(self) -> int:
        """Size before compression, as Earth Engine counts it (over the requested file dimensions)."""
        width, height = self.file_dimensions
        return width * height * self.bands * self.itemsize

    def problem(self) -> str | None:
        """Which of Earth Engine's per-file limits the file breaks, in words; None if it fits."""
        width, height = self.file_dimensions
        if max(width, height) > MAX_FILE_DIM:
            return (f"{self.aoi}/{self.key} is {width}×{height} px in one file (Earth Engine allows at most "
                    f"{MAX_FILE_DIM:,} px a side)")
        if self.nbytes >= MAX_FILE_BYTES:
            return (f"{self.aoi}/{self.key} would be one {self.nbytes / 2**30:.1f} GiB GeoTIFF before compression "
                    "(Earth Engine writes files under 16 GiB)")
        return None


def batch_files(aoi: str, grid: Grid, specs: Sequence[SourceSpec]) -> list[BatchFile]:
    """The files an AOI's batch export writes: one per source, the DEM's grown by its halo."""
    files = []
    for spec in specs:
        key, halo = (HALO, DEM_HALO) if spec.name == "dem" else (spec.name, 0)
        files.append(BatchFile(aoi, key, grid.width + 2 * halo, grid.height + 2 * halo, len(spec.bands),
                               spec.numpy_dtype.itemsize))
    return files


def _source(key: str) -> str:
    """The catalog source a task's key stands for (the DEM's task is ``dem_halo``)."""
    return "dem" if key == HALO else key


def _cut_dem(aoi: AOI, folder: Path, grid: Grid, spec: SourceSpec, source: BatchSource) -> None:
    """Write ``folder/dem.tif``, the inner part of the DEM task's file (the AOI grid grown by :data:`DEM_HALO`).

    Tile by tile in the order, values and nodata the download path writes them, so that both routes give the
    same file. Nothing yet when the grown file is not at hand (a Drive file not downloaded).

    Raises:
        RsgeeError: the grown file cannot be read (for Cloud Storage: GDAL's credentials).
    """
    dest = source.destination
    path = dest.manifest_path(aoi.name, HALO)
    if not dest.gcs:
        path = str(folder / path)
        if not os.path.exists(path):
            return
    raster = RasterGrid(grid.crs, grid.transform, grid.width, grid.height)
    try:
        with rasterio.Env(**GDAL_READ_ENV), rasterio.open(path) as src, \
                open_for_writing(folder / "dem.tif", spec, raster, tags=file_tags(source.name, aoi.name, spec)) as dst:
            for tile in grid.tiles():
                window = grid.window(tile)
                block = src.read(window=RasterWindow(window.col_off + DEM_HALO, window.row_off + DEM_HALO,
                                                     window.width, window.height))
                if src.nodata is not None and not np.isnan(src.nodata):
                    block[block == src.nodata] = spec.nodata
                dst.write(block, window=window)
    except rasterio.errors.RasterioIOError as exc:
        fix = ("GDAL needs Google Cloud credentials for gs:// (GOOGLE_APPLICATION_CREDENTIALS): re-run the same command "
               "with them" if dest.gcs else "download it again, then re-run the same command")
        raise RsgeeError(f"cannot read {path} to cut dem.tif from it ({str(exc).splitlines()[0]}); {fix} (no task is "
                         "started again)") from None


def export_request(aoi: str, key: str, grid: Grid, recipe: Recipe, bands: int, destination: Destination,
                   workload_tag: str | None = None) -> dict:
    """The ``ExportImageRequest`` of one task, built by ``ee.batch.Export.image`` itself, with ``workload_tag``.

    The pixel grid is exact: ``crs``, ``crsTransform`` and ``dimensions`` of the AOI grid (grown by
    :data:`DEM_HALO` pixels on every side for ``dem_halo``). ``fileDimensions`` cover the whole
    image, rounded up to the 256-pixel shard, so that Earth Engine writes one file named
    ``<prefix>.tif``. ``maxPixels`` is the image's pixels times its bands: enough however Earth
    Engine counts, and still a guard against a grid gone wrong.
    """
    halo = DEM_HALO if key == HALO else 0
    transform = grid.transform @ Affine.translation(-halo, -halo)
    width, height = grid.width + 2 * halo, grid.height + 2 * halo
    export, target = destination.export_args(aoi, key)
    task = export(
        recipe.image, description=_description(f"rsgee {aoi} {key}"), **target, crs=grid.crs,
        crsTransform=list(transform)[:6], dimensions=f"{width}x{height}",
        fileDimensions=[_ceil(width, _SHARD), _ceil(height, _SHARD)], maxPixels=width * height * bands,
        fileFormat="GeoTIFF", formatOptions={"cloudOptimized": True, "noData": float(recipe.fill)})
    return {**task.config, "workloadTag": workload_tag} if workload_tag else task.config


def _description(text: str) -> str:
    """A task description Earth Engine accepts: letters, digits and ``.,:;_-``, at most 100 characters."""
    return re.sub(r"[^A-Za-z0-9.,:;_-]", "_", text)[:100]


def _ceil(n: int, step: int) -> int:
    return -(-n // step) * step


def _run(jobs: list[_Job], queue: list[tuple[_Job, str]], source: BatchSource, specs: Sequence[SourceSpec],
         max_pending: int, poll_s: float, sleep: Callable[[float], None]) -> None:
    """Poll, then submit while fewer than ``max_pending`` are pending, until every task has ended.

    ``queue`` (the tasks still to send, in order) is consumed in place, so that an interruption
    can say how many were never sent.
    """
    while True:
        pending = _poll(jobs)
        while queue and len(pending) < max_pending:
            job, key = queue[0]
            if not _start(job, key, source, specs):
                break  # Earth Engine asked to wait: try again after the next poll
            queue.pop(0)
            if job.tasks[key]["operation"]:
                pending.add(job.tasks[key]["operation"])
        for job in jobs:
            _show(job)
        if not queue and not any(job.active() for job in jobs):
            return
        sleep(poll_s)


def _poll(jobs: list[_Job]) -> set[str]:
    """Update every active task from one listing; the names of the project's pending operations.

    The listing covers all of the project's operations (other runs' and other tools' too), so its
    pending ones count against ``max_pending``. An operation missing from it (older than what the
    server lists) is asked for alone. An error changes nothing: the next cycle asks again.
    """
    ours = {job.tasks[key]["operation"]: (job, key) for job in jobs for key in job.active()}
    try:
        listed = {op["name"]: op for op in ee.data.listOperations() if "name" in op}
    except google.auth.exceptions.RefreshError as exc:
        raise refused(exc) from None
    except (ee.EEException, OSError, ConnectionError) as exc:
        log.warning("could not list Earth Engine tasks (%s); no task changed, asking again in the next cycle",
                    classify(exc).message)
        return set(ours)
    changed = {}
    for name, (job, key) in ours.items():
        operation = listed.get(name) or _operation(name)
        if operation is not None and _update(job, key, operation):
            changed[id(job)] = job
    for job in changed.values():
        job.save()
    pending = {name for name, op in listed.items() if not op.get("done")
               and op.get("metadata", {}).get("state", "PENDING") in ACTIVE}
    return pending | {job.tasks[key]["operation"] for job in jobs for key in job.active()}


def _operation(name: str) -> dict | None:
    """One operation's status, or None when asking failed (the task is left as it was)."""
    try:
        return ee.data.getOperation(name)
    except google.auth.exceptions.RefreshError as exc:
        raise refused(exc) from None
    except (ee.EEException, OSError, ConnectionError) as exc:
        log.warning("could not get the status of %s (%s); asking again in the next cycle", name, classify(exc).message)
        return None


def _update(job: _Job, key: str, operation: dict) -> bool:
    """Apply one operation status to a task; True when its state changed."""
    task, metadata = job.tasks[key], operation.get("metadata", {})
    state = metadata.get("state", "PENDING")
    if operation.get("done") and state not in FAILED + (SUCCEEDED,):
        state = "FAILED" if "error" in operation else SUCCEEDED
    job.progress[key] = float(metadata.get("progress", 1.0 if state == SUCCEEDED else 0.0))
    if state == task["state"]:
        return False
    task["state"] = state
    if state in FAILED:
        task["error"] = operation.get("error", {}).get("message") or f"task {state.lower()}"
    if state == SUCCEEDED and "batchEecuUsageSeconds" in metadata:
        task["eecu_seconds"] = metadata["batchEecuUsageSeconds"]
    return True


def _show(job: _Job) -> None:
    if job.bar is None or job.bar.disable:
        return
    running = [job.progress.get(k, 0.0) for k in job.active()]
    job.bar.n = job.ended()
    postfix = {"failed": sum(t is not None and t["state"] in FAILED for t in job.tasks.values())}
    if running:
        postfix["running"] = f"{len(running)} at {100 * sum(running) / len(running):.0f}%"
    job.bar.set_postfix(postfix, refresh=False)
    job.bar.refresh()


def _finish(job: _Job, source: BatchSource, specs: Sequence[SourceSpec]) -> BatchResult:
    """Write the manifest when every task succeeded; otherwise report the failed tasks."""
    dest, name = source.destination, job.aoi.name
    tiles = len(list(job.grid.tiles()))
    failed = {f"{k}/*": t["error"] or f"task {t['state'].lower()}" for k, t in job.tasks.items()
              if t["state"] != SUCCEEDED}
    if failed:
        first = next(iter(failed.items()))
        error = (f"{len(failed)} of {len(job.tasks)} Earth Engine task(s) failed, e.g. {first[0][:-2]}: {first[1]} "
                 f"(see {job.tasks_path}; re-run with --retry-failed to restart only those)")
        return BatchResult(name, job.folder, "failed", tiles, failed_blocks=failed, error=error, tasks=len(job.tasks),
                           where=dest.where(name))
    manifest = json.loads(json.dumps(job.manifest))
    if HALO in job.tasks:
        try:
            _cut_dem(job.aoi, job.folder, job.grid, next(s for s in specs if s.name == "dem"), source)
        except RsgeeError as exc:  # the tasks are done and recorded: a re-run only cuts again
            return BatchResult(name, job.folder, "failed", tiles, error=str(exc), tasks=len(job.tasks),
                               where=dest.where(name))
        add_halo(manifest, "dem", DEM_HALO, dest.manifest_path(name, HALO))
    manifest["provenance"] = {
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "python": sys.version.split()[0],
        **source.provenance(),
        "tasks": {k: {key: t[key] for key in ("operation", "request_id", "eecu_seconds") if key in t}
                  for k, t in job.tasks.items()},
    }
    manifest["provenance"].pop("blocks", None)  # the download path's counters mean nothing here
    write_manifest(job.folder, manifest)
    shutil.rmtree(job.folder / WORKDIR, ignore_errors=True)  # the manifest now holds the task ids
    return BatchResult(name, job.folder, "written", tiles, tasks=len(job.tasks), where=dest.where(name),
                       todo=_drive_todo(dest, name, job.folder, list(job.tasks)))


def _drive_todo(dest: Destination, aoi: str, folder: Path, keys: Sequence[str]) -> tuple[str, ...]:
    """What the user still has to fetch from Drive by hand, and whether to re-run then (nothing for Cloud Storage)."""
    if dest.gcs:
        return ()
    todo = [f"  rsgee cannot fetch from Google Drive: download '{dest.drive_folder}/{dest.file_prefix(aoi, k)}.tif' "
            f"into {folder / f'{k}.tif'}" for k in keys if not (folder / f"{k}.tif").exists()]
    if HALO in keys and not (folder / "dem.tif").exists():
        todo.append(f"  then re-run this command: it cuts {folder / 'dem.tif'} from {HALO}.tif")
    return tuple(todo)
