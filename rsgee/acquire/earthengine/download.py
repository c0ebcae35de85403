"""Concurrent, resumable Earth Engine downloads: one ``computePixels`` request per block and source.

Every AOI grid is fetched as 256×256 blocks on the 2560 m lattice (the DEM as 258×258, one pixel
of real neighbours around each block, so that terrain at the AOI border is exact). A thread pool
keeps up to ``workers`` requests in flight. Each block is validated and saved atomically as
``.npy`` in the AOI's work folder as soon as it arrives, so a killed export (even ``kill -9``)
resumes by downloading only what is missing, and the final GeoTIFFs — assembled from the saved
blocks in raster order — are byte-identical to those of an uninterrupted run.

Errors are classified. Quota and rate answers (429 RESOURCE_EXHAUSTED such as "Too many concurrent
aggregations." or "Quota exceeded for quota metric …", 503 "Service unavailable") are waited out for
minutes — a per-minute quota refills only after its minute — and lower the number of requests in
flight (:class:`Throttle`); a block still refused after half an hour of waiting stops the AOI's
download, resumable, rather than failing every block in turn. Other 5xx, dropped connections,
client timeouts and truncated bodies are retried on a short schedule (``--attempts``); "User
memory limit exceeded", request-size and invalid-argument errors are not — they are recorded per
block with the server's message, and ``--retry-failed`` tries them again. "Computation timed out."
is retried once only: the server bills each try for its ~5 minutes of compute, and a block that
timed out once usually times out again (the hint recorded with it names ``--via batch``). A token
refresh that Google refuses stops the run with one line naming ``earthengine authenticate``.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import email.utils
import http.client
import io
import json
import logging
import os
import random
import socket
import sys
import threading
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
#: Quota and rate answers: the project or the service is over a limit that frees up with time.
_QUOTA_STATUS = {429, 503}
_QUOTA_CODES = ("RESOURCE_EXHAUSTED", "UNAVAILABLE")  # the error body's "status" for 429 and 503
_QUOTA_TEXT = ("too many concurrent aggregations", "quota exceeded", "too many requests", "rate limit",
               "capacity exceeded", "service unavailable", "currently unavailable", "temporarily unavailable")
_RETRYABLE_STATUS = {500, 502, 504}
_RETRYABLE_TEXT = (_TIMED_OUT, "too many tasks already in the queue", "internal error", "internal server error",
                   "backend error", "deadline exceeded", "try again")
#: The response header in which Earth Engine reports restricted mode (``ee.data._QUOTA_STATUS_HEADER``).
QUOTA_STATUS_HEADER = "x-earth-engine-quota-status"
RESTRICTED = "parallelism_restricted=true"
_FATAL_TEXT = ("user memory limit exceeded", "total request size", "pixel grid dimensions",
               "output of image computation is too large", "invalid argument", "parameter '", "not found",
               "permission denied", "does not have required permission")


@dataclass(frozen=True)
class RetryPolicy:
    """Two schedules of capped exponential backoff with jitter: try k waits between d/2 and d, d = min(cap, base·2^k).

    Quota and rate answers wait minutes (``quota_*``) until a block has waited ``quota_patience_s``
    in all, since a per-minute quota or an overloaded service frees up with time, not with tries;
    every other retryable error gets ``attempts`` tries a few seconds apart, as a fault that does
    not clear in a minute is not worth more.
    """

    attempts: int = 6
    base_s: float = 1.0
    cap_s: float = 60.0
    quota_base_s: float = 5.0
    quota_cap_s: float = 300.0
    quota_patience_s: float = 1800.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        d = min(self.cap_s, self.base_s * 2.0**attempt)
        return d / 2.0 + rng.uniform(0.0, d / 2.0)

    def quota_delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """The wait after the ``attempt``-th quota answer of a block: never shorter than the server's Retry-After."""
        d = min(self.quota_cap_s, self.quota_base_s * 2.0**attempt)
        wait = d / 2.0 + rng.uniform(0.0, d / 2.0)
        if retry_after is None:
            return wait
        return max(wait, retry_after + rng.uniform(0.0, self.quota_base_s))  # jittered: not all back at once


class BlockError(Exception):
    """A block request failed; ``retryable`` says whether trying again can help.

    ``quota`` marks a quota or rate answer (wait minutes, send fewer requests); ``retry_after`` is
    the server's own wait in seconds, when it gave one.
    """

    def __init__(self, message: str, retryable: bool, quota: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.quota = quota
        self.retry_after = retry_after

    @property
    def timed_out(self) -> bool:
        """The server gave up on the computation after its interactive time limit (billed in full)."""
        return _TIMED_OUT in self.message.lower()


def classify(exc: BaseException) -> BlockError:
    """Turn whatever a request raised into a :class:`BlockError` with the server's message."""
    if isinstance(exc, BlockError):
        return exc
    status = getattr(getattr(exc, "resp", None), "status", None)
    status = None if status is None else int(status)
    body = _error_body(exc)
    message = _server_message(exc)
    text = message.lower()
    if any(marker in text for marker in _FATAL_TEXT):
        return BlockError(message, retryable=False)
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException)):
        return BlockError(message or type(exc).__name__, retryable=True)
    if _TIMED_OUT not in text and (status in _QUOTA_STATUS or body.get("status") in _QUOTA_CODES
                                   or any(m in text for m in _QUOTA_TEXT)):
        return BlockError(message, retryable=True, quota=True, retry_after=_retry_after(exc, body))
    if status in _RETRYABLE_STATUS or any(m in text for m in _RETRYABLE_TEXT):
        return BlockError(message, retryable=True)
    return BlockError(message, retryable=False)


def _error_body(exc: BaseException) -> dict:
    """The ``error`` object of a Google API error answer ({"code", "message", "status", "details"}), or {}."""
    content = getattr(exc, "content", None)
    if content:
        try:
            error = json.loads(content)["error"]
        except (ValueError, KeyError, TypeError):
            return {}
        return error if isinstance(error, dict) else {}
    return {}


def _server_message(exc: BaseException) -> str:
    """The server's own message, else the exception's first line; redacted, since it is printed and stored."""
    message = _error_body(exc).get("message")
    if isinstance(message, str):
        return redact_urls(message)
    text = str(exc).strip()
    return redact_urls(text.splitlines()[0]) if text else type(exc).__name__


def _retry_after(exc: BaseException, body: dict) -> float | None:
    """The server's own wait before a retry, in seconds: a Retry-After header (seconds or an HTTP date) or
    the ``google.rpc.RetryInfo`` detail of the error body; None when it gave neither."""
    resp = getattr(exc, "resp", None)
    value = resp.get("retry-after") if isinstance(resp, Mapping) else None
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())
            except (TypeError, ValueError):
                pass
    for detail in body.get("details") or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            try:
                return max(0.0, float(str(detail.get("retryDelay", "")).removesuffix("s")))
            except ValueError:
                pass
    return None


_local = threading.local()
_fallback_warned = threading.Event()


def compute_pixels(image: ee.Image, grid: dict, encoded: dict | None = None, workload_tag: str | None = None,
                   on_response: Callable[[Mapping[str, str]], None] | None = None) -> bytes:
    """One ``image:computePixels`` call returning the raw NPY bytes, with no client-side retries.

    ``encoded`` is ``ee.serializer.encode(image)``, computed once per recipe by the caller;
    ``workload_tag`` goes into the request body (the raw call skips the client's own tagging);
    ``on_response`` gets the headers of every answer, errors included, since Earth Engine reports
    restricted mode in a header of successful answers too. The raw
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
    request = cached[1].computePixels(project=project, body=body)
    if on_response is not None:
        request.add_response_callback(on_response)
    return request.execute(num_retries=0)


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


class Throttle:
    """How many blocks are at work at once: additive increase, multiplicative decrease between 1 and ``workers``.

    A quota answer halves the limit, once per round: answers to requests sent before the last
    decrease report the same overload and do not halve it again. A run of successes as long as
    the limit adds one. Restricted mode, reported in a header of Earth Engine's answers, halves it
    when it begins and holds it while it lasts. A block keeps its slot through its backoff waits,
    so that a quota outage is probed by a few blocks rather than by every block in turn; before a
    retry it queues again, ahead of new blocks, if the limit has dropped below the blocks at work.
    """

    def __init__(self, workers: int):
        self.workers = self.limit = workers
        self.restricted = False
        self.round = 0
        self._active = self._requeued = self._run = 0
        self._closed = False
        self._cond = threading.Condition()

    def acquire(self) -> bool:
        """Wait for a slot for a new block; False once the download is stopping."""
        with self._cond:
            while not self._closed and (self._active >= self.limit or self._requeued):
                self._cond.wait()
            if self._closed:
                return False
            self._active += 1
            return True

    def requeue(self) -> bool:
        """Before a retry: keep the slot while the limit allows it, else wait for one; False once stopping."""
        with self._cond:
            if self._active > self.limit:
                self._active -= 1
                self._requeued += 1
                self._cond.notify_all()
                while not self._closed and self._active >= self.limit:
                    self._cond.wait()
                self._requeued -= 1
                self._active += 1  # held until release(), stopping or not
                self._cond.notify_all()
            return not self._closed

    def release(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def close(self) -> None:
        """Stop handing out slots: waiting blocks give up."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def quota(self, sent_round: int) -> None:
        """A quota or rate answer to a request sent in ``sent_round``."""
        with self._cond:
            self._run = 0
            if sent_round == self.round:
                self._decrease()

    def answered(self, headers: Mapping[str, str], sent_round: int | None = None) -> bool:
        """Any answer's headers, to a request sent in ``sent_round`` (None: this round); True when they report
        that restricted mode has begun.

        Only answers to requests sent since the last change (restricted mode beginning or ending starts a
        round) change the state: answers overtaken by later ones, arriving out of order, would otherwise flap
        it and halve the limit again.
        """
        restricted = RESTRICTED in str(headers.get(QUOTA_STATUS_HEADER, ""))
        with self._cond:
            if restricted == self.restricted or sent_round not in (None, self.round):
                return False
            if restricted:
                self._decrease()
            else:
                self.round += 1
            self.restricted = restricted
            return restricted

    def succeeded(self) -> None:
        with self._cond:
            if self.restricted or self.limit >= self.workers:
                return
            self._run += 1
            if self._run >= self.limit:
                self._run = 0
                self.limit += 1
                self._cond.notify_all()

    def _decrease(self) -> None:
        self.round += 1
        self.limit = max(1, self.limit // 2)


class EarthEngineSource:
    """Earth Engine as a block source for :func:`rsgee.acquire.export.export_aois`.

    ``fetch``, ``sleep`` (by default a wait that stopping the download cuts short) and ``seed`` (of
    the backoff jitter) are there so that tests can run minutes of backoff in no time.
    """

    name = "earthengine"

    def __init__(self, session: SessionConfig, windows: Mapping[str, Window], *,
                 options: RecipeOptions = RecipeOptions(), policy: RetryPolicy = RetryPolicy(),
                 retry_failed: bool = False, progress: bool = True,
                 fetch: Callable[..., bytes] = compute_pixels, sleep: Callable[[float], object] | None = None,
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
        self._warned: set[str] = set()
        self._quota_spent: str | None = None  # why an earlier AOI of this run stopped on quota answers
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
        recipes = {}
        for spec in specs:
            window = self.windows.get(spec.name)
            if window is None:
                raise RsgeeError(f"no date window for source '{spec.name}'")
            region = search_region(grid, spec)
            recipe = build_recipe(spec, region, window, self.options)
            try:
                size = recipe.collection.size().getInfo()
            except ee.EEException as exc:
                raise RsgeeError(f"Earth Engine could not list {spec.collection}: {_server_message(exc)}") from None
            if not size and spec.fallback is not None:  # e.g. an AOI wholly on land without GLO30 tiles
                recipe = build_recipe(spec, region, window, self.options, empty=True)
            elif not size:
                dates = "" if spec.composite == "mosaic" else f" between {window.start} and {window.end}"
                raise RsgeeError(f"no {spec.name} images in {spec.collection}{dates}; widen the window "
                                 f"(--start/--end or --window {spec.name}=START/END)")
            recipes[spec.name] = recipe
        return recipes

    def _download(self, todo, recipes, store: BlockStore, grid: Grid, total: int) -> None:
        if not todo:
            return
        if self._quota_spent:  # later AOIs would only wait out the same refusal again
            raise RsgeeError(self._quota_spent)
        bar = tqdm(total=total, initial=total - len(todo), desc=f"download {grid.describe()}", unit="block",
                   disable=not self.progress, file=sys.stderr)
        lock = threading.Lock()
        throttle = Throttle(self.session.workers)
        stop = threading.Event()
        wait = self._sleep or stop.wait
        backoff: dict[str, float] = {}  # block → the quota wait it is in

        encoded = {name: ee.serializer.encode(recipe.image) for name, recipe in recipes.items()}
        tag = self.session.tag()

        def show(refresh: bool = False) -> None:  # under lock
            restricted = " restricted" if throttle.restricted else ""
            postfix = {"concurrency": f"{throttle.limit}/{throttle.workers}{restricted}"}
            if backoff:
                postfix["backoff"] = f"{len(backoff)} block(s), ≤{_duration(max(backoff.values()))}"
            postfix.update(retries=self.counts.retried, failed=self.counts.failed)
            bar.set_postfix(postfix, refresh=refresh)

        def warn_once(kind: str, message: str, *args) -> None:
            with lock:
                if kind in self._warned:
                    return
                self._warned.add(kind)
            log.warning(message, *args)

        def answered(headers: Mapping[str, str], sent: int) -> None:
            if throttle.answered(headers, sent):
                warn_once("restricted", "Earth Engine reports this project in restricted mode (its noncommercial "
                          "compute quota is spent): %d request(s) in flight now, not raised while it lasts; see "
                          "https://developers.google.com/earth-engine/guides/noncommercial_tiers#restricted_mode",
                          throttle.limit)

        def one(tile: Tile, spec: SourceSpec) -> None:
            if not throttle.acquire():
                return
            try:
                if fetch_block(tile, spec):
                    with lock:
                        show()
                        bar.update(1)
            finally:
                throttle.release()

        def fetch_block(tile: Tile, spec: SourceSpec) -> bool:
            """Fetch one block until it is saved or failed for good; False if the download is stopping."""
            recipe = recipes[spec.name]
            size = _block_size(spec)
            request_grid = _request_grid(tile, size)
            key = f"{spec.name}/{tile.id}"
            tries = timeouts = quota_answers = 0
            waited = 0.0
            while not stop.is_set():
                sent = throttle.round
                try:
                    data = self._fetch(recipe.image, request_grid, encoded[spec.name], tag,
                                       on_response=lambda headers: answered(headers, sent))
                    block = decode_block(data, spec, size, recipe.fill)
                except google.auth.exceptions.RefreshError as exc:
                    raise refused(exc) from None
                except Exception as exc:  # noqa: BLE001 — every failure is classified, none is lost
                    error = classify(exc)
                    if error.quota:
                        delay = self.policy.quota_delay(quota_answers, self._rng, error.retry_after)
                        if waited + delay > self.policy.quota_patience_s:
                            self._quota_spent = (
                                f"Earth Engine still answered \"{error.message}\" after {waited / 60:.0f} min of "
                                f"waiting for block {key}: the project is over a quota"
                                f"{' (restricted mode)' if throttle.restricted else ''}; the blocks downloaded so "
                                "far are kept, re-run later to resume")
                            raise RsgeeError(self._quota_spent) from None
                        quota_answers += 1
                        waited += delay
                        throttle.quota(sent)
                        warn_once("quota", "Earth Engine answered \"%s\" (a quota or rate limit): blocks wait up "
                                  "to %d min between tries, %d min in all, and fewer requests are sent at once",
                                  error.message, self.policy.quota_cap_s // 60, self.policy.quota_patience_s // 60)
                    else:
                        if error.timed_out:
                            timeouts += 1
                            if timeouts > TIMEOUT_RETRIES:
                                error = BlockError(f"{error.message} ({TIMEOUT_HINT.format(tries=timeouts)})", False)
                        tries += 1
                        if not (error.retryable and tries < self.policy.attempts):
                            with lock:
                                self.failures[key] = error.message
                            store.record_failure(key, error.message)
                            self.counts.add("failed")
                            return True
                        delay = self.policy.delay(tries - 1, self._rng)
                    self.counts.add("retried")
                    with lock:
                        if error.quota:
                            backoff[key] = delay
                        show(refresh=error.quota)  # a wait of minutes must show now, not after it
                    wait(delay)
                    with lock:
                        backoff.pop(key, None)
                    if not throttle.requeue():
                        return False
                    continue
                store.save(spec.name, tile, block)
                self.counts.add("ok")
                throttle.succeeded()
                return True
            return False

        pool = cf.ThreadPoolExecutor(max_workers=self.session.workers, thread_name_prefix="rsgee-ee")
        futures = [pool.submit(one, tile, spec) for tile, spec in todo]
        try:
            for future in cf.as_completed(futures):
                future.result()
        except BaseException:
            stop.set()  # cuts waits short, so that no thread outlives the download by minutes
            throttle.close()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
        pool.shutdown()


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


def _duration(seconds: float) -> str:
    """``45s``, ``4m10s``: a wait as the progress bar shows it."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def search_region(grid: Grid, spec: SourceSpec) -> ee.Geometry:
    """Where a source's images are searched: the grid's bounds, for mosaics grown by all that their pixels read.

    A mosaic's tile (a DEM's 1° tile) that only the halo or the resampling kernel reaches would otherwise be
    left out, and its pixels taken for missing land or sea. The margin is the halo plus two source pixels
    (``scale_m``), the reach of the kernels recipes use (bilinear reads one pixel on, bicubic two).
    Composites keep the bounds: their scenes are far larger than that reach, and one left out would only
    thin the composite in the AOI's outermost pixels.
    """
    x0, y0, x1, y1 = grid.bounds
    if spec.composite == "mosaic":
        margin = (_block_size(spec) - TILE_PX) // 2 * PIXEL_M + 2 * spec.scale_m
        x0, y0, x1, y1 = x0 - margin, y0 - margin, x1 + margin, y1 + margin
    return ee.Geometry.Rectangle([x0, y0, x1, y1], grid.crs, False)


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
