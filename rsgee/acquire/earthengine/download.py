"""Concurrent, resumable Earth Engine downloads: one ``computePixels`` request per block and source.

Every AOI grid is fetched as 256×256 blocks on the 2560 m lattice (the DEM as 258×258, one pixel
of real neighbours around each block, so that terrain at the AOI border is exact). A thread pool
keeps up to ``workers`` requests in flight. Each block is validated and saved atomically as
``.npy`` in the AOI's work folder as soon as it arrives, so a killed export (even ``kill -9``)
resumes by downloading only what is missing, and the final GeoTIFFs — assembled from the saved
blocks in raster order — are byte-identical to those of an uninterrupted run.

Errors are classified: quota (429), "Too many concurrent aggregations", 5xx, dropped connections,
client timeouts and truncated bodies are retried with capped exponential backoff and jitter;
"User memory limit exceeded", request-size and invalid-argument errors are not — they are recorded
per block with the server's message, and ``--retry-failed`` tries them again. "Computation timed
out." is retried once only: the server bills each try for its ~5 minutes of compute, and a block
that timed out once usually times out again (the hint recorded with it names ``--via batch``).
A token refresh that Google refuses stops the run with one line naming ``earthengine authenticate``.
"""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import io
import json
import logging
import os
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import ee
import google.auth.exceptions
import numpy as np
from tqdm import tqdm

from rsgee.acquire.earthengine.recipes import Recipe, RecipeOptions, Window, build_recipe
from rsgee.acquire.earthengine.session import SessionConfig, initialize, refused
from rsgee.catalog import SourceSpec
from rsgee.errors import RsgeeError, redact_urls
from rsgee.grid import PIXEL_M, TILE_PX, Grid, Tile

log = logging.getLogger("rsgee")

#: Extra pixels around every DEM block (terrain needs one ring of true neighbours).
DEM_HALO = 1
#: How often a block whose computation timed out on the server is tried again (each try is billed).
TIMEOUT_RETRIES = 1
TIMEOUT_HINT = ("tried {tries}×, each billed for up to ~5 min of Earth Engine compute; export this AOI with --via batch "
                "(no interactive time limit) or shorten its date window, then --retry-failed")
_TIMED_OUT = "computation timed out"
_RETRYABLE_STATUS = {429, 500, 502, 503, 504}
_RETRYABLE_TEXT = (_TIMED_OUT, "too many concurrent aggregations", "too many tasks already in the queue",
                   "capacity exceeded", "too many requests",
                   "rate limit", "internal error", "internal server error", "service unavailable",
                   "currently unavailable", "quota exceeded", "backend error", "deadline exceeded",
                   "temporarily unavailable", "try again")
_FATAL_TEXT = ("user memory limit exceeded", "total request size", "pixel grid dimensions",
               "output of image computation is too large", "invalid argument", "parameter '", "not found",
               "permission denied", "does not have required permission")


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter: attempt k waits between d/2 and d, d = min(cap, base·2^k)."""

    attempts: int = 6
    base_s: float = 1.0
    cap_s: float = 60.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        d = min(self.cap_s, self.base_s * 2.0**attempt)
        return d / 2.0 + rng.uniform(0.0, d / 2.0)


class BlockError(Exception):
    """A block request failed; ``retryable`` says whether trying again can help."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.message = message
        self.retryable = retryable

    @property
    def timed_out(self) -> bool:
        """The server gave up on the computation after its interactive time limit (billed in full)."""
        return _TIMED_OUT in self.message.lower()


def classify(exc: BaseException) -> BlockError:
    """Turn whatever a request raised into a :class:`BlockError` with the server's message."""
    if isinstance(exc, BlockError):
        return exc
    status = getattr(getattr(exc, "resp", None), "status", None)
    message = _server_message(exc)
    text = message.lower()
    if any(marker in text for marker in _FATAL_TEXT):
        return BlockError(message, retryable=False)
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException)):
        return BlockError(message or type(exc).__name__, retryable=True)
    if (status is not None and int(status) in _RETRYABLE_STATUS) or any(m in text for m in _RETRYABLE_TEXT):
        return BlockError(message, retryable=True)
    return BlockError(message, retryable=False)


def _server_message(exc: BaseException) -> str:
    """The server's own message, else the exception's first line; redacted, since it is printed and stored."""
    content = getattr(exc, "content", None)
    if content:
        try:
            return redact_urls(json.loads(content)["error"]["message"])
        except (ValueError, KeyError, TypeError):
            pass
    text = str(exc).strip()
    return redact_urls(text.splitlines()[0]) if text else type(exc).__name__


_local = threading.local()
_fallback_warned = threading.Event()


def compute_pixels(image: ee.Image, grid: dict, encoded: dict | None = None, workload_tag: str | None = None) -> bytes:
    """One ``image:computePixels`` call returning the raw NPY bytes, with no client-side retries.

    ``encoded`` is ``ee.serializer.encode(image)``, computed once per recipe by the caller;
    ``workload_tag`` goes into the request body (the raw call skips the client's own tagging). The raw
    Cloud API resource keeps the HTTP status for :func:`classify` (its ``image()`` collection is
    built once per thread: googleapiclient rebuilds every method on each call). setup.cfg requires
    an earthengine-api that has it (≥ 1.6.12); should a future one lack it, the public
    ``ee.data.computePixels`` is used instead, with a warning, since it loses the HTTP status.
    """
    tag = {"workloadTag": workload_tag} if workload_tag else {}
    body = {"expression": encoded or ee.serializer.encode(image), "fileFormat": "NPY", "grid": grid, **tag}
    try:
        raw = ee.data._get_state().cloud_api_resource_raw  # private; guarded below
        project = ee.data._get_projects_path()
    except AttributeError:
        if not _fallback_warned.is_set():
            _fallback_warned.set()
            log.warning("earthengine-api %s lacks ee.data._get_state().cloud_api_resource_raw: 429/5xx answers lose "
                        "their status and may count as failures; install the earthengine-api version setup.cfg names",
                        ee.__version__)
        try:
            return ee.data.computePixels({"expression": image, "fileFormat": "NPY", "grid": grid, **tag})
        except ee.EEException as exc:
            raise classify(exc) from None
    cached = getattr(_local, "images", None)
    if cached is None or cached[0] is not raw:
        cached = _local.images = (raw, raw.projects().image())
    return cached[1].computePixels(project=project, body=body).execute(num_retries=0)


def decode_block(data: bytes, spec: SourceSpec, size: int, fill: float | int) -> np.ndarray:
    """NPY bytes → (bands, size, size) in the archive dtype; the wire fill value becomes nodata."""
    try:  # parse the header, then view the pixels in place (np.load would copy them twice)
        buffer = io.BytesIO(data)
        version = np.lib.format.read_magic(buffer)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(buffer)
        structured = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=buffer.tell())
        structured = structured.reshape(shape[::-1]).T if fortran else structured.reshape(shape)
    except (ValueError, EOFError, OSError) as exc:
        raise BlockError(f"corrupt or truncated NPY response ({exc})", retryable=True) from None
    names = structured.dtype.names or ()
    if structured.shape != (size, size) or list(names) != list(spec.band_names):
        raise BlockError(f"response has shape {structured.shape} and bands {list(names)}, expected "
                         f"{(size, size)} and {list(spec.band_names)}", retryable=True)
    block = np.stack([structured[name] for name in names]).astype(spec.numpy_dtype, copy=False)
    if spec.nodata_is_nan:
        block[block == np.array(fill, dtype=spec.numpy_dtype)] = np.nan
    return block


class BlockStore:
    """Finished blocks of one AOI export, one ``.npy`` per source and tile, written atomically."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, source: str, tile: Tile) -> Path:
        return self.folder / source / f"{tile.id}.npy"

    def load(self, source: str, tile: Tile, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """The saved block if it is complete and well-formed, else None (a bad file is removed)."""
        path = self.path(source, tile)
        if not path.exists():
            return None
        try:
            block = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError):
            path.unlink(missing_ok=True)
            return None
        if block.shape != shape or block.dtype != dtype:
            path.unlink(missing_ok=True)
            return None
        return block

    def save(self, source: str, tile: Tile, block: np.ndarray) -> None:
        path = self.path(source, tile)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as handle:  # no fsync: a block lost to a power cut fails validation and is refetched
            np.save(handle, block, allow_pickle=False)
        os.replace(tmp, path)

    def failures(self) -> dict[str, str]:
        """Blocks that failed for good in earlier runs: "source/tile_id" → server message."""
        path = self.folder / "failed.jsonl"
        if not path.exists():
            return {}
        out = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            out[entry["block"]] = entry["message"]
        return out

    def record_failure(self, key: str, message: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "failed.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"block": key, "message": message}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def forget_failures(self) -> None:
        (self.folder / "failed.jsonl").unlink(missing_ok=True)


@dataclass
class Counts:
    """Per-AOI block counters (thread-safe increments)."""

    ok: int = 0
    skipped: int = 0
    retried: int = 0
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "skipped": self.skipped, "retried": self.retried, "failed": self.failed}


class EarthEngineSource:
    """Earth Engine as a block source for :func:`rsgee.acquire.export.export_aois`."""

    name = "earthengine"

    def __init__(self, session: SessionConfig, windows: Mapping[str, Window], *,
                 options: RecipeOptions = RecipeOptions(), policy: RetryPolicy = RetryPolicy(),
                 retry_failed: bool = False, progress: bool = True,
                 fetch: Callable[..., bytes] = compute_pixels, sleep: Callable[[float], None] = time.sleep,
                 seed: int | None = None):
        self.session = session
        self.windows = dict(windows)
        self.options = options
        self.policy = policy
        self.retry_failed = retry_failed
        self.progress = progress
        self._fetch = fetch
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._initialized = False
        self.failures: dict[str, str] = {}
        self.counts = Counts()

    def connect(self) -> None:
        """Initialise the ee client (once); configuration and credential problems surface here."""
        if not self._initialized:
            initialize(self.session)
            self._initialized = True

    def request(self) -> dict:
        return {
            "source": self.name,
            "windows": {name: [w.start.isoformat(), w.end.isoformat()] for name, w in sorted(self.windows.items())},
            "s1_orbit": self.options.s1_orbit,
            "dem_halo_px": DEM_HALO,
        }

    def provenance(self) -> dict:
        return {"earthengine": self.session.describe(), "earthengine_api": ee.__version__, "blocks": self.counts.to_dict()}

    def blocks(self, grid: Grid, specs: Sequence[SourceSpec], workdir: Path) -> Iterator[tuple[Tile, dict[str, np.ndarray]]]:
        """Download what is missing into ``workdir``, then yield every tile from the saved blocks."""
        self.connect()
        self.failures, self.counts = {}, Counts()
        recipes = self._recipes(grid, specs)
        store = BlockStore(workdir)
        earlier = store.failures()
        if self.retry_failed:
            store.forget_failures()
        tiles = list(grid.tiles())
        todo = []
        for tile in tiles:
            for spec in specs:
                size = _block_size(spec)
                key = f"{spec.name}/{tile.id}"
                if store.load(spec.name, tile, (len(spec.bands), size, size), spec.numpy_dtype) is not None:
                    self.counts.add("skipped")
                elif key in earlier and not self.retry_failed:
                    self.failures[key] = earlier[key]
                    self.counts.add("failed")
                else:
                    todo.append((tile, spec))
        self._download(todo, recipes, store, grid, len(tiles) * len(specs))
        for tile in tiles:
            arrays = {}
            for spec in specs:
                size = _block_size(spec)
                block = store.load(spec.name, tile, (len(spec.bands), size, size), spec.numpy_dtype)
                if block is None:  # failed: nodata, recorded in the manifest
                    block = np.full((len(spec.bands), size, size), spec.nodata, dtype=spec.numpy_dtype)
                if size != TILE_PX:
                    arrays[f"{spec.name}_halo"] = block
                    block = block[:, DEM_HALO:-DEM_HALO, DEM_HALO:-DEM_HALO]
                arrays[spec.name] = np.ascontiguousarray(block)
            yield tile, arrays

    def _recipes(self, grid: Grid, specs: Sequence[SourceSpec]) -> dict[str, Recipe]:
        region = ee.Geometry.Rectangle(list(grid.bounds), grid.crs, False)
        recipes = {}
        for spec in specs:
            window = self.windows.get(spec.name)
            if window is None:
                raise RsgeeError(f"no date window for source '{spec.name}'")
            recipe = build_recipe(spec, region, window, self.options)
            try:
                size = recipe.collection.size().getInfo()
            except ee.EEException as exc:
                raise RsgeeError(f"Earth Engine could not list {spec.collection}: {_server_message(exc)}") from None
            if not size:
                dates = "" if spec.composite == "mosaic" else f" between {window.start} and {window.end}"
                raise RsgeeError(f"no {spec.name} images in {spec.collection}{dates}; widen the window "
                                 f"(--start/--end or --window {spec.name}=START/END)")
            recipes[spec.name] = recipe
        return recipes

    def _download(self, todo, recipes, store: BlockStore, grid: Grid, total: int) -> None:
        if not todo:
            return
        bar = tqdm(total=total, initial=total - len(todo), desc=f"download {grid.describe()}", unit="block",
                   disable=not self.progress, file=sys.stderr)
        lock = threading.Lock()

        encoded = {name: ee.serializer.encode(recipe.image) for name, recipe in recipes.items()}
        tag = self.session.tag()

        def one(tile: Tile, spec: SourceSpec) -> None:
            recipe = recipes[spec.name]
            size = _block_size(spec)
            request_grid = _request_grid(tile, size)
            timeouts = 0
            for attempt in range(self.policy.attempts):
                try:
                    data = self._fetch(recipe.image, request_grid, encoded[spec.name], tag)
                    block = decode_block(data, spec, size, recipe.fill)
                except google.auth.exceptions.RefreshError as exc:
                    raise refused(exc) from None
                except Exception as exc:  # noqa: BLE001 — every failure is classified, none is lost
                    error = classify(exc)
                    if error.timed_out:
                        timeouts += 1
                        if timeouts > TIMEOUT_RETRIES:
                            error = BlockError(f"{error.message} ({TIMEOUT_HINT.format(tries=timeouts)})", False)
                    if error.retryable and attempt + 1 < self.policy.attempts:
                        self.counts.add("retried")
                        with lock:
                            bar.set_postfix(retries=self.counts.retried, failed=self.counts.failed, refresh=False)
                        self._sleep(self.policy.delay(attempt, self._rng))
                        continue
                    key = f"{spec.name}/{tile.id}"
                    with lock:
                        self.failures[key] = error.message
                    store.record_failure(key, error.message)
                    self.counts.add("failed")
                    break
                store.save(spec.name, tile, block)
                self.counts.add("ok")
                break
            with lock:
                bar.set_postfix(retries=self.counts.retried, failed=self.counts.failed, refresh=False)
                bar.update(1)

        pool = cf.ThreadPoolExecutor(max_workers=self.session.workers, thread_name_prefix="rsgee-ee")
        futures = [pool.submit(one, tile, spec) for tile, spec in todo]
        try:
            for future in cf.as_completed(futures):
                future.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        bar.close()


def download_estimate(grid: Grid, specs: Sequence[SourceSpec]) -> tuple[int, int]:
    """(computePixels requests, bytes of NPY answers) to download ``grid`` afresh: one request per block and source."""
    tiles = sum(1 for _ in grid.tiles())
    nbytes = 0
    for spec in specs:
        size = _block_size(spec)
        dtype = np.dtype([(b, spec.numpy_dtype.str) for b in spec.band_names])
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                      "fortran_order": False, "shape": (size, size)})
        nbytes += tiles * (len(header.getvalue()) + size * size * dtype.itemsize)
    return tiles * len(specs), nbytes


def _block_size(spec: SourceSpec) -> int:
    return TILE_PX + 2 * DEM_HALO if spec.name == "dem" else TILE_PX


def _request_grid(tile: Tile, size: int) -> dict:
    margin = (size - TILE_PX) // 2 * PIXEL_M
    x_min, _, _, y_max = tile.bounds
    return {
        "dimensions": {"width": size, "height": size},
        "affineTransform": {"scaleX": PIXEL_M, "shearX": 0, "translateX": x_min - margin,
                            "shearY": 0, "scaleY": -PIXEL_M, "translateY": y_max + margin},
        "crsCode": tile.crs,
    }


def parse_windows(start, end, overrides: Sequence[str], names: Sequence[str]) -> dict[str, Window]:
    """Date windows per source: ``start``/``end`` for all, then ``SOURCE=START/END`` overrides."""
    import datetime as dt

    windows = {name: Window(start, end) for name in names}
    for text in overrides:
        name, _, span = text.partition("=")
        first, _, last = span.partition("/")
        try:
            dates = dt.date.fromisoformat(first.strip()), dt.date.fromisoformat(last.strip())
        except ValueError:
            raise RsgeeError(f"--window '{text}': expected SOURCE=YYYY-MM-DD/YYYY-MM-DD") from None
        if name.strip() not in windows:
            raise RsgeeError(f"--window '{text}': '{name}' is not an exported source ({', '.join(names)})")
        try:
            windows[name.strip()] = Window(*dates)
        except RsgeeError as exc:
            raise RsgeeError(f"--window '{text}': {exc}") from None
    return windows
