"""The offline Earth Engine: a loopback REST server that the real ``ee`` client talks to, for rsgee's tests and
for yours.

Start it as a context manager and point rsgee at its ``url``; it needs no credentials and no network::

    import ee
    import rsgee
    from rsgee.testing.earthengine import FakeEarthEngine

    def test_my_export(tmp_path):
        try:
            with FakeEarthEngine() as server:
                (result,) = rsgee.export(["valley=10.60,46.60,10.63,46.62"], tmp_path, source="earthengine",
                                         ee_url=server.url, auth=False, project="fake", progress=False)
                assert result.ok and len(server.pixel_requests()) == 16  # 2×2 blocks of 4 sources
        finally:
            ee.Reset()  # the ee client's session is global: forget the fake's

On the command line the same is ``rsgee export ... --source earthengine --ee-url URL --no-auth --project fake``.
The server records every request (``requests``, :meth:`FakeEarthEngine.pixel_requests`,
:meth:`FakeEarthEngine.export_requests`), so a test can assert on expression graphs and request bodies.

What it models. It answers what rsgee uses — discovery, algorithms (for ``ee.Initialize``), ``value:compute``,
``image:computePixels`` (NPY), ``image:export`` and operations — from the discovery document and
``algorithms.json`` shipped in the earthengine-api wheel. Pixels are a deterministic function of
the requested grid (:func:`fake_pixels`), so a test can check that every block lands where it
belongs. A collection's size (``value:compute``) can be the number of scripted scenes that pass the
expression's property filters (equals, lessThan, greaterThan, listContains; footprint and date filters
pass, the scenes have neither); Sentinel-1 pixels can carry an incidence angle, whose border-noise edges
come back dark unless the expression masks them by its ``angle`` band, and masked if it does.
DEM requests can be answered from a model of GLO30 and its fallback DEM (:class:`Glo30`): tiles
missing at sea and over land, tile seams, and a footprint search that finds only the tiles it reaches.
Faults (HTTP errors with Earth Engine's own messages, truncated bodies, hangs), per-request latency
and Earth Engine's concurrency cap are scripted, and so are quota bursts that last a span of the
fake's clock (a :class:`FakeClock` runs minutes of backoff in no time) and answers that report
restricted mode in Earth Engine's quota-status header.

Batch exports (``image:export``) become operations that go PENDING → RUNNING → SUCCEEDED over a
set number of status polls — ``getOperation``, or each ``listOperations`` page that lists them —
or end FAILED/CANCELLED when scripted with :class:`TaskFault`, or FAILED as Earth Engine fails a
file over its limits (16 GiB before compression, 131,072 px a side). Beyond ``max_pending``
pending tasks a start is refused with Earth Engine's 429 "Too many tasks already in the queue";
status requests can be made to fail with :class:`PollFault`. On success the GeoTIFF is written,
pixels from the same model, into a local folder standing in for the
Cloud Storage bucket (or Drive). That folder is served like Cloud Storage's XML API (HEAD, ranged
GET, prefix listing) from a separate process, so that GDAL reads ``/vsigs/<bucket>/<object>`` from
it with :meth:`FakeEarthEngine.gdal_env` — a separate process because rasterio holds the GIL
during some GDAL calls that read over HTTP, so an in-process server would deadlock.

It is also Google's OAuth token endpoint (``POST /token``, see :data:`TOKEN_PATH`) for credentials
files whose ``token_uri``/``token_url`` point at it: refresh tokens (``authorized_user``), signed
JWTs (service-account keys) and STS token exchange (``external_account``) get access tokens, and a
refresh token listed in ``revoked`` gets Google's ``invalid_grant`` answer. A refresh token carries
the scopes its login granted (:data:`LOGIN_SCOPES` unless :meth:`FakeEarthEngine.grant` says
otherwise); a refresh that asks for any other gets Google's ``invalid_scope``, one that asks for
none gets them all. Every request records its ``Authorization`` header and workload tag, every
token request the scopes it asked for.

Used by the test suite and ``benchmarks/bench_export.py``. It imports the Earth Engine recipes
(:mod:`rsgee.acquire.earthengine.recipes`) for their fill values; rsgee's own code never imports it.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence
from xml.sax.saxutils import escape

import ee
import numpy as np

from rsgee.acquire.earthengine.recipes import fill_value
from rsgee.catalog import Catalog, SourceSpec, load_catalog

EE_TESTS = os.path.join(os.path.dirname(ee.__file__), "tests")
#: The fake's OAuth 2.0 token endpoint (Google's is https://oauth2.googleapis.com/token).
TOKEN_PATH = "/token"
_GRANTS = {"refresh_token": "refresh", "urn:ietf:params:oauth:grant-type:jwt-bearer": "jwt",
           "urn:ietf:params:oauth:grant-type:token-exchange": "sts"}
#: What a plain ``gcloud auth application-default login`` grants its refresh token.
LOGIN_SCOPES = ("openid", "https://www.googleapis.com/auth/userinfo.email",
                "https://www.googleapis.com/auth/cloud-platform", "https://www.googleapis.com/auth/sqlservice.login")
#: Google's answer to a refresh that asks for scopes the login did not grant (as users report it).
INVALID_SCOPE = {"error": "invalid_scope", "error_description": "Bad Request"}
#: Incidence angles (degrees) of a Sentinel-1 scene free of residual border noise in the fake: the
#: range gee_s1_ard keeps. Pixels outside it are :data:`BORDER_NOISE_DB` darker unless masked.
S1_SWATH = (30.63993, 45.23993)
BORDER_NOISE_DB = 10.0


def fake_pixels(spec: SourceSpec, band: int, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """The fake's value of ``band`` at pixel column ``ix``/row ``iy`` (x // 10, y // 10 in metres).

    ``ix`` and ``iy`` broadcast against each other (a row and a column are enough).
    """
    dtype = spec.numpy_dtype
    if spec.categorical:
        n = len(spec.classes or ()) or 200
        return ((ix // 7 + iy // 5 + band) % n).astype(dtype)
    if dtype.kind == "f":
        return (((ix + 3 * iy + 37 * band) % 1000) / 100.0 - 25.0).astype(dtype)
    return ((ix + 3 * iy + 101 * band) % 9000 + 1).astype(dtype)


@dataclass
class Fault:
    """A scripted failure for computePixels requests.

    Attributes:
        kind: "http" (status + Earth Engine message), "truncate" (the connection drops mid-body),
            "short" (a complete HTTP response whose NPY body is cut short) or "hang" (no answer
            for ``seconds``).
        times: how many matching requests fail this way before the fault is used up.
        match: which requests it applies to, given (source name, x_min, y_max) of the grid; all if None.
        until: if set, every matching request fails this way while the fake's clock reads less than
            this (``times`` is then not used): a burst that lasts a span of time.
        retry_after: seconds sent in a Retry-After header with an "http" fault.
    """

    kind: str = "http"
    status: int = 500
    message: str = "An internal error has occurred."
    times: int = 1
    seconds: float = 0.0
    match: Callable[[str, float, float], bool] | None = None
    until: float | None = None
    retry_after: float | None = None


#: How Earth Engine refuses a request over the per-minute quota of read requests (the text users report).
QUOTA_EXCEEDED = ("Quota exceeded for quota metric 'Number of read requests' and limit 'Number of read requests per "
                  "minute per user' of service 'earthengine.googleapis.com' for consumer 'project_number:123456'.")
#: The header, and its value, in which Earth Engine reports a project in restricted mode (read by ``ee.data``).
RESTRICTED_HEADER = ("x-earth-engine-quota-status", "parallelism_restricted=true")


class FakeClock:
    """Virtual seconds for backoff tests: ``sleep`` moves the clock on instead of waiting.

    Give :meth:`sleep` to the downloader and the clock to :class:`FakeEarthEngine`, and a burst of
    minutes passes in milliseconds. Waits of blocks that back off at the same time add up, so the
    clock runs ahead of wall time until the downloader is down to one block at work.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []  # every sleep, in order
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
            self.waits.append(seconds)


@dataclass
class TaskFault:
    """A scripted outcome for batch export tasks: the operation ends in ``state`` with ``message``.

    Attributes:
        message: the error message the operation reports.
        state: "FAILED" or "CANCELLED".
        times: how many matching export requests get this outcome before the fault is used up.
        match: which requests it applies to, given (source name, output file name prefix); all if None.
    """

    message: str = "Earth Engine capacity exceeded."
    state: str = "FAILED"
    times: int = 1
    match: Callable[[str, str], bool] | None = None


#: How much higher the fake's fallback DEM stands than GLO30 on land, so that a test sees whose height a pixel has.
FALLBACK_OFFSET_M = 7.0


@dataclass(frozen=True)
class Glo30:
    """The Copernicus GLO-30 DEM as Earth Engine holds it, and the catalog's fallback DEM, for DEM pixel requests.

    1°×1° tiles with 1″ rows and a longitude spacing that grows with latitude (1″ below 50°, then
    1.5″, 2″, 3″, 5″ from 50°, 60°, 70°, 80°; Copernicus DEM product handbook), no tile over open
    ocean nor over ``missing`` land (GLO30 over Armenia and Azerbaijan), and sea inside coastal tiles
    at 0 m. Heights on land are a plane in lon/lat, so that bilinear interpolation on a tile's own grid
    is exact and any detour through another grid shows. With ``seams``, a tile interpolated on its own
    grid is masked wherever the bilinear kernel reads past the tile (the half-pixel band along its
    edges), as Earth Engine may leave it; without, the kernel is clipped to the tile. Only tiles that
    intersect the request's footprint filter (``filterBounds``) take part, and a collection's size is
    their number. The fallback (the catalog's ``fallback`` image, NASADEM) is one image on a 1″ grid,
    the same plane raised by :data:`FALLBACK_OFFSET_M` with the same sea, and masked over open ocean.

    The fake evaluates the mosaic graphs rsgee has built: tiles resampled on their own grids then
    mosaicked (optionally unmasked); the mosaic given the first tile's projection and resampled from
    there (the first tile is the south-westernmost one under the requested pixels); and each tile
    where its mask is full, else that one-grid mosaic, else the fallback, else the fill.

    Attributes:
        ocean: (lon, lat) of a cell's south-west corner → open ocean: no tile, nor fallback data.
        sea: (lon, lat) arrays → sea pixels (0 m) inside the tiles and in the fallback.
        missing: (lon, lat) of a cell's south-west corner → land without a GLO30 tile.
        seams: tiles resampled on their own grids are masked along their edges.
    """

    ocean: Callable[[int, int], bool] = lambda lon, lat: False
    sea: Callable[[np.ndarray, np.ndarray], np.ndarray] = lambda lon, lat: np.zeros(np.shape(lon), bool)
    missing: Callable[[int, int], bool] = lambda lon, lat: False
    seams: bool = False

    @staticmethod
    def spacing(lat_cell: int) -> float:
        """Longitude spacing of a tile in degrees."""
        band = abs(lat_cell + 0.5)
        arcsec = 1.0 if band < 50 else 1.5 if band < 60 else 2.0 if band < 70 else 3.0 if band < 80 else 5.0
        return arcsec / 3600.0

    @staticmethod
    def plane(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        return 500.0 + 3000.0 * (lon - 10.0) + 2000.0 * (lat - 49.0)

    def height(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        return np.where(self.sea(lon, lat), 0.0, self.plane(lon, lat))

    def has_tile(self, cx: int, cy: int, found: frozenset | None = None) -> bool:
        """Whether GLO30 has the tile of cell (cx, cy) and the search found it (``found`` None: no search)."""
        return not self.ocean(cx, cy) and not self.missing(cx, cy) and (found is None or (cx, cy) in found)

    def found(self, region) -> frozenset:
        """Cells (cx, cy) of the tiles that a footprint filter on ``region`` (a lon/lat polygon) keeps."""
        import shapely

        x0, y0, x1, y1 = region.bounds
        return frozenset((cx, cy) for cx in range(int(np.floor(x0)), int(np.floor(x1)) + 1)
                         for cy in range(int(np.floor(y0)), int(np.floor(y1)) + 1)
                         if self.has_tile(cx, cy) and region.intersects(shapely.box(cx, cy, cx + 1, cy + 1)))

    def _node(self, cx, cy, i, j):
        """(lon, lat) of pixel centre (i, j) of the tiles at cells (cx, cy), indices clipped to the tile."""
        dx, dy = np.vectorize(self.spacing)(cy), 1.0 / 3600.0
        i = np.clip(i, 0, np.round(1.0 / dx).astype(int) - 1)
        j = np.clip(j, 0, 3599)
        return cx + (i + 0.5) * dx, cy + (j + 0.5) * dy

    def sample(self, lon: np.ndarray, lat: np.ndarray, bilinear: bool,
               found: frozenset | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each point from the tile under it, on that tile's grid: (values, valid)."""
        cx, cy = np.floor(lon), np.floor(lat)
        valid = np.vectorize(lambda x, y: self.has_tile(int(x), int(y), found), otypes=[bool])(cx, cy)
        dx = np.vectorize(self.spacing)(cy)
        u, v = (lon - cx) / dx - 0.5, (lat - cy) * 3600.0 - 0.5
        if not bilinear:
            return self.height(*self._node(cx, cy, np.round(u).astype(int), np.round(v).astype(int))), valid
        i0, j0 = np.floor(u).astype(int), np.floor(v).astype(int)
        if self.seams:  # the kernel's far nodes lie in the next tile: masked, not clipped
            valid &= (i0 >= 0) & (i0 + 1 < np.round(1.0 / dx)) & (j0 >= 0) & (j0 + 1 < 3600)
        fu, fv = np.clip(u - i0, 0, 1), np.clip(v - j0, 0, 1)
        out = 0.0
        for di, dj, w in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
            out = out + w * self.height(*self._node(cx, cy, i0 + di, j0 + dj))
        return out, valid

    def first_projection(self, lon: np.ndarray, lat: np.ndarray, fill: float | None, found: frozenset | None = None):
        """The mosaic nearest-sampled on the first tile's grid, then bilinear from that grid: (values, valid)."""
        cells = sorted({(int(y), int(x)) for x, y in zip(np.floor(lon).ravel(), np.floor(lat).ravel())
                        if self.has_tile(int(x), int(y), found)})
        cy, cx = cells[0] if cells else (int(np.floor(lat.min())), int(np.floor(lon.min())))
        dx, dy = self.spacing(cy), 1.0 / 3600.0
        u, v = (lon - cx) / dx - 0.5, (lat - cy) / dy - 0.5
        i0, j0 = np.floor(u), np.floor(v)
        fu, fv = u - i0, v - j0
        out, valid = 0.0, np.ones(lon.shape, bool)
        for di, dj, w in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
            values, ok = self.sample(cx + (i0 + di + 0.5) * dx, cy + (j0 + dj + 0.5) * dy, bilinear=False, found=found)
            if fill is not None:
                values, ok = np.where(ok, values, fill), np.ones(ok.shape, bool)
            out, valid = out + w * values, valid & ok
        return out, valid

    def fallback(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fallback DEM, bilinear on its own 1″ grid: (values, valid), masked where a node is over open ocean."""
        d = 1.0 / 3600.0
        u, v = lon / d - 0.5, lat / d - 0.5
        i0, j0 = np.floor(u), np.floor(v)
        fu, fv = u - i0, v - j0
        ocean = np.vectorize(lambda a, b: bool(self.ocean(int(a), int(b))), otypes=[bool])
        out, valid = 0.0, np.ones(lon.shape, bool)
        for di, dj, w in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv), (1, 1, fu * fv)):
            x, y = (i0 + di + 0.5) * d, (j0 + dj + 0.5) * d
            out = out + w * np.where(self.sea(x, y), 0.0, self.plane(x, y) + FALLBACK_OFFSET_M)
            valid &= ~ocean(np.floor(x), np.floor(y))
        return out, valid


@dataclass
class PollFault:
    """Scripted failures of status requests (``listOperations`` pages and ``getOperation``).

    The defaults are what Earth Engine answers under load; the ee client retries 429 and 5xx
    itself, so a test sets ``ee.data.setMaxRetries(0)`` to see what is left after those retries.
    """

    status: int = 500
    message: str = "An internal server error has occurred (fake-1234)."
    times: int = 1


#: How Earth Engine fails a task whose file is over its limits (error code 3): the 16 GiB text as
#: users report it; the wording of the 131,072 px one is modelled on it (not seen verbatim).
FILE_TOO_LARGE = ("File dimensions are too large for the number of bands and data type: the total file size requested "
                  "is {nbytes} bytes before compression ({per_pixel} bytes per pixel), but must be less than "
                  "17179869184 bytes.")
FILE_TOO_WIDE = "File dimensions are too large: {width}x{height} exceeds the maximum of 131072 pixels per dimension."
QUEUE_FULL = "Too many tasks already in the queue ({limit}). Please wait for some of them to complete."


@dataclass
class Recorded:
    method: str
    path: str
    body: dict | None
    source: str | None = None
    status: int = 200
    authorization: str | None = None
    nbytes: int = 0  # body bytes of a computePixels answer
    workload_tag: str | None = None  # the request body's workloadTag
    at: float = 0.0  # the fake's clock when a computePixels request arrived
    in_flight: int = 0  # computePixels requests in flight when it arrived, itself included


@dataclass
class _State:
    catalog: Catalog
    latency: float
    max_concurrent: int | None
    empty: Callable[[str, str], bool] | None
    masked: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    faults: list[Fault] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    task_polls: int = 2
    storage: Path | None = None  # <storage>/gcs/<bucket>/<object>, <storage>/drive/<folder>/<file>
    task_faults: list[TaskFault] = field(default_factory=list)
    operations: dict[str, dict] = field(default_factory=dict)  # operation name → {"op", "polls", ...}
    by_request_id: dict[str, str] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=itertools.count)
    revoked: set[str] = field(default_factory=set)
    granted: dict[str, tuple[str, ...]] = field(default_factory=dict)  # refresh token → scopes its login granted
    max_pending: int = 3000
    peak_pending: int = 0
    list_page: int = 500
    poll_faults: list[PollFault] = field(default_factory=list)
    glo30: Glo30 | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # access token → grant kind that issued it
    clock: Callable[[], float] = time.monotonic
    restricted: int = 0  # computePixels answers still to report restricted mode
    scenes: Mapping[str, Sequence[Mapping[str, Any]]] | None = None  # source → properties of each image
    s1_angle: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # (ix, iy) → incidence angle, degrees


class FakeEarthEngine:
    """The loopback server. Use as a context manager; ``url`` is what ``ee.Initialize`` gets."""

    def __init__(self, catalog: Catalog | None = None, *, latency: float = 0.0, max_concurrent: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 empty: Callable[[str, str], bool] | None = None,
                 masked: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                 task_polls: int = 2, storage: str | os.PathLike | None = None, max_pending: int = 3000,
                 list_page: int = 500, glo30: Glo30 | None = None,
                 scenes: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                 s1_angle: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None):
        """Args:
            catalog: the sources whose collections the fake recognises in expressions.
            latency: seconds every computePixels answer is delayed.
            max_concurrent: computePixels requests beyond this many in flight get Earth Engine's 429.
            clock: seconds, for faults scripted ``until`` a time (a :class:`FakeClock` in tests).
            empty: (source, serialized expression) → whether its collection is empty (size 0).
            masked: (ix, iy) pixel indices → which pixels come back masked (the wire fill value).
            task_polls: status polls after which a batch task is done (1 → done at the first poll);
                before that it is RUNNING with progress polls/task_polls.
            storage: folder for batch outputs (``gcs/<bucket>/…``, ``drive/<folder>/…``); a
                temporary folder, removed on stop, if None.
            max_pending: pending or running tasks beyond which a start gets Earth Engine's 429
                "Too many tasks already in the queue (3000)".
            list_page: most operations per ``listOperations`` page (the server may return fewer than
                the client's pageSize of 500).
            glo30: answer DEM computePixels requests, batch exports and collection sizes from this
                model of GLO30 and its fallback by evaluating the request's mosaic graph (default: the
                plain :func:`fake_pixels` pattern, 12 images).
            scenes: source name → the properties of each image of its collection (e.g.
                ``{"s2": [{"CLOUDY_PIXEL_PERCENTAGE": 95}, ...]}``); a collection's size is the number
                that pass the expression's property filters (:func:`scene_passes`). Sources not named
                here have 12 images.
            s1_angle: (ix, iy) pixel indices → incidence angle in degrees of Sentinel-1 pixels. Outside
                :data:`S1_SWATH` the scene has border noise: those pixels come back
                :data:`BORDER_NOISE_DB` darker, unless the expression keeps ``min < angle < max``,
                which masks those outside its own bounds.
        """
        self._own_storage = storage is None
        root = Path(tempfile.mkdtemp(prefix="rsgee-fake-storage-")) if storage is None else Path(storage)
        self.state = _State(catalog or load_catalog(), latency, max_concurrent, empty, masked,
                            task_polls=task_polls, storage=root, max_pending=max_pending, list_page=list_page,
                            glo30=glo30, scenes=scenes, s1_angle=s1_angle)
        self.state.clock = clock
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._bucket_server: subprocess.Popen | None = None
        self._bucket_url: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[Recorded]:
        return self.state.requests

    @property
    def peak_in_flight(self) -> int:
        return self.state.peak_in_flight

    def pixel_requests(self) -> list[Recorded]:
        return [r for r in self.state.requests if r.path.endswith("image:computePixels")]

    def revoke(self, refresh_token: str) -> None:
        """Make the token endpoint answer ``invalid_grant`` for this refresh token (expired or revoked)."""
        with self.state.lock:
            self.state.revoked.add(refresh_token)

    def grant(self, refresh_token: str, scopes: tuple[str, ...]) -> None:
        """Let this refresh token carry ``scopes`` instead of :data:`LOGIN_SCOPES` (a login with ``--scopes``)."""
        with self.state.lock:
            self.state.granted[refresh_token] = tuple(scopes)

    def grant_of(self, authorization: str | None) -> str | None:
        """Which grant issued the bearer token of an ``Authorization`` header ("refresh", "jwt", "sts"), if any."""
        token = (authorization or "").removeprefix("Bearer ")
        with self.state.lock:
            return self.state.tokens.get(token)

    def add_fault(self, fault: Fault) -> None:
        with self.state.lock:
            self.state.faults.append(fault)

    def restrict(self, answers: int) -> None:
        """Let the next ``answers`` computePixels answers (errors too) report restricted mode in their headers."""
        with self.state.lock:
            self.state.restricted = answers

    def export_requests(self) -> list[Recorded]:
        """Every ``image:export`` request, in order (each would start a billed task on Earth Engine)."""
        return [r for r in self.state.requests if r.path.endswith("image:export")]

    def operation_requests(self) -> list[Recorded]:
        """Every status request for an operation (``ee.data.getOperation``)."""
        return [r for r in self.state.requests if r.method == "GET" and "/operations/" in r.path]

    def list_requests(self) -> list[Recorded]:
        """Every ``listOperations`` page requested."""
        return [r for r in self.state.requests if r.method == "GET" and r.path.endswith("/operations")]

    def add_poll_fault(self, fault: PollFault) -> None:
        with self.state.lock:
            self.state.poll_faults.append(fault)

    @property
    def peak_pending(self) -> int:
        """The most tasks that were pending or running at once."""
        return self.state.peak_pending

    def add_task_fault(self, fault: TaskFault) -> None:
        with self.state.lock:
            self.state.task_faults.append(fault)

    @property
    def storage(self) -> Path:
        """Where finished batch exports are written: ``gcs/<bucket>/<object>``, ``drive/<folder>/<file>``."""
        return self.state.storage

    @property
    def bucket_url(self) -> str:
        """Base URL of the fake Cloud Storage (started on first use, in its own process)."""
        if self._bucket_url is None:
            gcs = self.storage / "gcs"
            gcs.mkdir(parents=True, exist_ok=True)
            package_root = str(Path(__file__).resolve().parents[2])
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
            self._bucket_server = subprocess.Popen(
                [sys.executable, "-m", __name__, "serve-bucket", str(gcs), str(os.getpid())],
                stdout=subprocess.PIPE, text=True, env=env)
            port = self._bucket_server.stdout.readline().strip()
            if not port.isdigit():
                raise RuntimeError("the fake Cloud Storage server did not start")
            self._bucket_url = f"http://127.0.0.1:{port}"
        return self._bucket_url

    def gdal_env(self) -> dict[str, str]:
        """GDAL configuration under which ``/vsigs/<bucket>/<object>`` reads this fake's storage.

        ``CPL_GS_ENDPOINT`` replaces https://storage.googleapis.com/ (it must end with a slash) and
        ``GS_NO_SIGN_REQUEST=YES`` sends no credentials. GDAL caches what it read per ``/vsigs/``
        path for the life of the process, so tests should use a bucket name per fake.
        """
        return {"CPL_GS_ENDPOINT": self.bucket_url + "/", "GS_NO_SIGN_REQUEST": "YES"}

    def start(self) -> "FakeEarthEngine":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._bucket_server is not None:
            self._bucket_server.terminate()
            self._bucket_server.wait(10)
            self._bucket_server.stdout.close()
        if self._own_storage:
            shutil.rmtree(self.state.storage, ignore_errors=True)

    def __enter__(self) -> "FakeEarthEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _handler(state: _State):
    discovery = json.load(open(os.path.join(EE_TESTS, "cloud_api_discovery_document.json"), encoding="utf-8"))
    algorithms = open(os.path.join(EE_TESTS, "algorithms.json"), "rb").read()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def send(self, status: int, body: bytes, ctype: str = "application/json",
                 headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            names = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
            body = {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}}
            self.send(status, json.dumps(body).encode(), headers=headers)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            record = Recorded("GET", path, {k: v[0] for k, v in query.items()} if path.endswith("/operations") else None,
                              authorization=self.headers.get("Authorization"))
            with state.lock:
                state.requests.append(record)
            if path.startswith("/$discovery/rest"):
                doc = dict(discovery, rootUrl=f"http://{self.headers['Host']}/", baseUrl=f"http://{self.headers['Host']}/")
                self.send(200, json.dumps(doc).encode())
            elif path.endswith("/algorithms"):
                self.send(200, algorithms)
            elif "/operations" in path and self.poll_fault(record):
                return
            elif path.endswith("/operations"):
                self.list_operations(query)
            elif "/operations/" in path:
                self.operation(path[path.index("projects/"):])
            else:
                self.error(404, f"{path} is not faked")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length)
            path = self.path.split("?")[0]
            if path == TOKEN_PATH:
                return self.token(urllib.parse.parse_qs(raw.decode()))
            body = json.loads(raw or b"{}")
            source = _source_of(state.catalog, json.dumps(body.get("expression", "")))
            record = Recorded("POST", path, body, source, authorization=self.headers.get("Authorization"),
                              workload_tag=body.get("workloadTag"))
            with state.lock:
                state.requests.append(record)
            if path.endswith("value:compute"):
                expression = body.get("expression", {})
                region = _search_region(expression) if state.glo30 is not None and source == "dem" else None
                if state.empty is not None and state.empty(source or "", json.dumps(expression)):
                    size = 0
                elif region is not None:
                    size = len(state.glo30.found(region))
                elif state.scenes is not None and source in state.scenes:
                    size = sum(scene_passes(expression, scene) for scene in state.scenes[source])
                else:
                    size = 12
                return self.send(200, json.dumps({"result": size}).encode())
            if path.endswith("image:computePixels"):
                return self.compute_pixels(body, source, record)
            if path.endswith("image:export"):
                return self.export(body, source, path, record)
            self.error(404, f"{path} is not faked")

        def token(self, form: dict[str, list[str]]) -> None:
            """Google's OAuth token endpoint: an access token per grant, ``invalid_grant`` for a revoked
            refresh token, ``invalid_scope`` for a refresh that asks for scopes its login did not grant."""
            grant = _GRANTS.get(form.get("grant_type", [""])[0])
            scope = _jwt_scope(form.get("assertion", [""])[0]) if grant == "jwt" else form.get("scope", [None])[0]
            refresh_token = form.get("refresh_token", [""])[0]
            with state.lock:
                state.requests.append(Recorded("POST", TOKEN_PATH, {"grant": grant, "scope": scope}))
                revoked = grant == "refresh" and refresh_token in state.revoked
                granted = state.granted.get(refresh_token, LOGIN_SCOPES)
                beyond = grant == "refresh" and not set((scope or "").split()) <= set(granted)
                access = f"ya29.fake-{grant}-{next(state.ids)}"
                if grant is not None and not revoked and not beyond:
                    state.tokens[access] = grant
            if grant is None:
                body = {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."}
                return self.send(400, json.dumps(body).encode())
            if revoked:
                body = {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
                return self.send(400, json.dumps(body).encode())
            if beyond:
                return self.send(400, json.dumps(INVALID_SCOPE).encode())
            body = {"access_token": access, "expires_in": 3599, "token_type": "Bearer"}
            if grant == "refresh":
                body["scope"] = scope or " ".join(granted)
            elif scope:
                body["scope"] = scope  # service accounts and token exchange: all requested scopes granted
            if grant == "sts":
                body["issued_token_type"] = "urn:ietf:params:oauth:token-type:access_token"
            self.send(200, json.dumps(body).encode())

        def export(self, body: dict, source: str | None, path: str, record: Recorded) -> None:
            """Start a batch task: answer an Operation, as ``ee.data.exportImage`` expects.

            A repeated ``requestId`` gets the operation it started before, as Earth Engine does
            for a safely retried request.
            """
            try:
                grid = export_grid(body["expression"])
                options = body["fileExportOptions"]
                prefix = _destination(options)[1]
            except (KeyError, ValueError) as exc:
                record.status = 400
                return self.error(400, f"Invalid export request: {exc}")
            if source is None:
                record.status = 400
                return self.error(400, "Image.load: unknown collection")
            project = path.split("/projects/")[1].split("/")[0]
            with state.lock:
                name = state.by_request_id.get(body.get("requestId", ""))
                full = name is None and sum(not e["op"]["done"] for e in state.operations.values()) >= state.max_pending
                if name is None and not full:
                    fault = next((f for f in state.task_faults if f.times > 0
                                  and (f.match is None or f.match(source, prefix))), None)
                    if fault is not None:
                        fault.times -= 1
                    name = f"projects/{project}/operations/{next(state.ids):024d}"
                    now = _timestamp()
                    metadata = {"@type": "type.googleapis.com/google.earthengine.v1alpha.OperationMetadata",
                                "state": "PENDING", "description": body.get("description", ""), "createTime": now,
                                "updateTime": now, "type": "EXPORT_IMAGE", "attempt": 1}
                    state.operations[name] = {"op": {"name": name, "metadata": metadata, "done": False},
                                              "polls": 0, "body": body, "source": source, "grid": grid,
                                              "fault": fault}
                    if body.get("requestId"):
                        state.by_request_id[body["requestId"]] = name
                    state.peak_pending = max(state.peak_pending,
                                             sum(not e["op"]["done"] for e in state.operations.values()))
                op = None if full else json.loads(json.dumps(state.operations[name]["op"]))
            if full:
                record.status = 429
                return self.error(429, QUEUE_FULL.format(limit=state.max_pending))
            self.send(200, json.dumps(op).encode())

        def poll_fault(self, record: Recorded) -> bool:
            """Answer a status request with the next scripted :class:`PollFault`, if any is left."""
            with state.lock:
                fault = next((f for f in state.poll_faults if f.times > 0), None)
                if fault is not None:
                    fault.times -= 1
            if fault is not None:
                record.status = fault.status
                self.error(fault.status, fault.message)
            return fault is not None

        def operation(self, name: str) -> None:
            """An operation's status; each poll moves it on, and the last one writes its file."""
            with state.lock:
                entry = state.operations.get(name)
                if entry is None:
                    return self.error(404, f"Operation {name} not found.")
                _advance(state, entry)
                body = json.dumps(entry["op"]).encode()
            self.send(200, body)

        def list_operations(self, query: dict[str, list[str]]) -> None:
            """One page of the project's operations, newest first; listing an operation moves it on too."""
            size = min(int(query.get("pageSize", ["500"])[0]), state.list_page)
            start = int(query.get("pageToken", ["0"])[0])
            with state.lock:
                names = sorted(state.operations, reverse=True)
                page = names[start : start + size]
                for name in page:
                    _advance(state, state.operations[name])
                body = {"operations": [state.operations[n]["op"] for n in page]}
                if start + size < len(names):
                    body["nextPageToken"] = str(start + size)
                data = json.dumps(body).encode()
            self.send(200, data)

        def compute_pixels(self, body: dict, source: str | None, record: Recorded) -> None:
            grid = body["grid"]
            affine = grid["affineTransform"]
            x_min, y_max = affine.get("translateX", 0.0), affine.get("translateY", 0.0)
            with state.lock:
                state.in_flight += 1
                state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
                record.at, record.in_flight = state.clock(), state.in_flight
                over = state.max_concurrent is not None and state.in_flight > state.max_concurrent
                fault = None
                if not over:
                    for f in state.faults:
                        live = record.at < f.until if f.until is not None else f.times > 0
                        if live and (f.match is None or f.match(source or "", x_min, y_max)):
                            if f.until is None:
                                f.times -= 1
                            fault = f
                            break
                headers = dict([RESTRICTED_HEADER]) if state.restricted > 0 else {}
                state.restricted = max(0, state.restricted - 1)
            try:
                if state.latency:
                    time.sleep(state.latency)
                if over:
                    record.status = 429
                    return self.error(429, "Too many concurrent aggregations.", headers)
                if fault is not None and fault.kind == "hang":
                    time.sleep(fault.seconds)
                if fault is not None and fault.kind == "http":
                    record.status = fault.status
                    if fault.retry_after is not None:
                        headers["Retry-After"] = str(round(fault.retry_after))
                    return self.error(fault.status, fault.message, headers)
                if source is None:
                    record.status = 400
                    return self.error(400, "Image.load: unknown collection")
                if state.glo30 is not None and source == "dem":
                    payload = _glo30_npy(state.glo30, state.catalog[source], grid, body["expression"])
                else:
                    payload = _npy(state, state.catalog[source], grid, body["expression"])
                if fault is not None and fault.kind == "short":
                    payload = payload[: len(payload) // 2]
                if fault is not None and fault.kind == "truncate":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                record.nbytes = len(payload)
                self.send(200, payload, "application/octet-stream", headers)
            finally:
                with state.lock:
                    state.in_flight -= 1

    return Handler


def _jwt_scope(assertion: str) -> str | None:
    """The ``scope`` claim of a signed JWT (read, not verified: the fake trusts every key), if it has one."""
    try:
        payload = assertion.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("scope")
    except (IndexError, ValueError, AttributeError):
        return None


def _advance(state: _State, entry: dict) -> None:
    """One status poll of a task: RUNNING until ``task_polls``, then its end (written file or failure)."""
    op, metadata = entry["op"], entry["op"]["metadata"]
    if op["done"]:
        return
    entry["polls"] += 1
    metadata["updateTime"] = _timestamp()
    if entry["polls"] < state.task_polls:
        metadata.update(state="RUNNING", startTime=metadata.get("startTime", _timestamp()),
                        progress=entry["polls"] / state.task_polls)
        return
    fault = entry["fault"]
    failure = (fault.state, fault.message) if fault is not None else _file_limit(state, entry)
    if failure:
        state_name, message = failure
        metadata.update(state=state_name, endTime=_timestamp())
        op.update(done=True, error={"code": 1 if state_name == "CANCELLED" else 3, "message": message})
        return
    uris = _write_export(state, entry)
    metadata.update(state="SUCCEEDED", progress=1.0, endTime=_timestamp(), destinationUris=uris,
                    batchEecuUsageSeconds=1.5)
    op.update(done=True, response={"@type": "type.googleapis.com/google.protobuf.Empty"})


def _file_limit(state: _State, entry: dict) -> tuple[str, str] | None:
    """How Earth Engine fails an export whose files are over its limits, or None."""
    grid = entry["grid"]
    spec = state.catalog[entry["source"]]
    tile = entry["body"]["fileExportOptions"].get("geoTiffOptions", {}).get("tileDimensions", {})
    width = int(tile.get("width", grid["dimensions"]["width"]))
    height = int(tile.get("height", grid["dimensions"]["height"]))
    if max(width, height) > 131072:
        return "FAILED", FILE_TOO_WIDE.format(width=width, height=height)
    per_pixel = len(spec.bands) * spec.numpy_dtype.itemsize
    if width * height * per_pixel >= 2**34:
        return "FAILED", FILE_TOO_LARGE.format(nbytes=width * height * per_pixel, per_pixel=per_pixel)
    return None


def _source_of(catalog: Catalog, expression: str) -> str | None:
    for name, spec in catalog.sources.items():
        for asset in [spec.collection] + ([spec.fallback.image] if spec.fallback is not None else []):
            if f'"{asset}"' in expression or f'\\"{asset}\\"' in expression:
                return name
    return None


def _bands(state: _State, spec: SourceSpec, grid: dict, expression: dict) -> Iterator[np.ndarray]:
    """Each band's pixels on a computePixels-style grid (broadcastable to height × width), with
    masked pixels carrying the recipe's fill value, and Sentinel-1 border noise darkened or masked
    as ``expression`` asks (see ``s1_angle`` of :class:`FakeEarthEngine`)."""
    affine, dims = grid["affineTransform"], grid["dimensions"]
    width, height = int(dims["width"]), int(dims["height"])
    sx, sy = affine.get("scaleX", 10.0), affine.get("scaleY", -10.0)
    xs = affine.get("translateX", 0.0) + (np.arange(width) + 0.5) * sx
    ys = affine.get("translateY", 0.0) + (np.arange(height) + 0.5) * sy
    ix = np.floor(xs / 10.0).astype(np.int64)[None, :]
    iy = np.floor(ys / 10.0).astype(np.int64)[:, None]
    mask = state.masked(ix, iy) if state.masked is not None else None
    noisy = None
    if state.s1_angle is not None and spec.collection.startswith("COPERNICUS/S1"):
        angle = np.asarray(state.s1_angle(ix, iy), dtype=float)
        noisy = (angle <= S1_SWATH[0]) | (angle >= S1_SWATH[1])
        low, high = angle_mask_bounds(expression)
        outside = (angle <= low) | (angle >= high)
        mask = outside if mask is None else (mask | outside)
    fill = fill_value(spec)
    for i in range(len(spec.band_names)):
        values = fake_pixels(spec, i, ix, iy)
        if noisy is not None:
            values = np.where(noisy, values - np.array(BORDER_NOISE_DB, dtype=spec.numpy_dtype), values)
        if mask is not None:
            values = np.where(mask, np.array(fill, dtype=spec.numpy_dtype), values)
        yield values


def _npy(state: _State, spec: SourceSpec, grid: dict, expression: dict) -> bytes:
    dims = grid["dimensions"]
    width, height = int(dims["width"]), int(dims["height"])
    structured = np.zeros((height, width), dtype=[(b, spec.numpy_dtype.str) for b in spec.band_names])
    for band, values in zip(spec.band_names, _bands(state, spec, grid, expression)):
        structured[band] = np.broadcast_to(values, (height, width))
    buffer = io.BytesIO()
    np.save(buffer, structured)
    return buffer.getvalue()


def _calls(expression: dict, start: dict | None = None) -> list[tuple[str, dict]]:
    """Every function invocation of a serialized expression (or of its node ``start``): (name, arguments with
    references resolved)."""
    values, found = expression["values"], []

    def resolve(node):
        while isinstance(node, dict) and "valueReference" in node:
            node = values[node["valueReference"]]
        return node

    def walk(node):
        node = resolve(node)
        if isinstance(node, dict):
            if "functionInvocationValue" in node:
                call = node["functionInvocationValue"]
                found.append((call.get("functionName"), {k: resolve(v) for k, v in call["arguments"].items()}))
            body = node.get("functionDefinitionValue", {}).get("body")
            if isinstance(body, str):  # a mapped function's body is a reference into ``values``
                walk(values[body])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(values[expression["result"]] if start is None else start)
    return found


def _constant(node: dict) -> Any:
    """The value of a constant argument, through ``Image.constant`` (None if it is not one)."""
    call = node.get("functionInvocationValue", {})
    if call.get("functionName") == "Image.constant":
        node = call["arguments"]["value"]
    return node.get("constantValue")


def scene_passes(expression: dict, scene: Mapping[str, Any]) -> bool:
    """Whether an image with properties ``scene`` passes every property filter of ``expression``.

    A filter on a property the image lacks fails, as on Earth Engine; filters the fake cannot judge
    (footprints, dates) pass.
    """
    for name, args in _calls(expression):
        if name == "Filter.listContains" and "rightField" in args:  # ee.Filter.inList
            ok = scene.get(_constant(args["rightField"])) in (_constant(args["leftValue"]) or [])
        elif name == "Filter.listContains":
            ok = _constant(args["rightValue"]) in (scene.get(_constant(args["leftField"])) or [])
        elif name in ("Filter.equals", "Filter.lessThan", "Filter.greaterThan"):
            have, want = scene.get(_constant(args["leftField"])), _constant(args["rightValue"])
            compare = {"Filter.equals": lambda a, b: a == b, "Filter.lessThan": lambda a, b: a < b,
                       "Filter.greaterThan": lambda a, b: a > b}[name]
            ok = have is not None and compare(have, want)
        else:
            continue
        if not ok:
            return False
    return True


def angle_mask_bounds(expression: dict) -> tuple[float, float]:
    """(low, high) of the ``angle`` band's mask in ``expression``: the constants that ``Image.gt``
    and ``Image.lt`` compare ``select('angle')`` with; −inf/inf where there is none."""
    low, high = -np.inf, np.inf
    for name, args in _calls(expression):
        if name not in ("Image.gt", "Image.lt"):
            continue
        first = args["image1"].get("functionInvocationValue", {})
        if first.get("functionName") != "Image.select":
            continue
        bands = first["arguments"]["bandSelectors"].get("constantValue")
        value = _constant(args["image2"])
        if bands == ["angle"] and value is not None:
            low, high = (max(low, value), high) if name == "Image.gt" else (low, min(high, value))
    return low, high


def _glo30_npy(glo30: Glo30, spec: SourceSpec, grid: dict, expression: dict) -> bytes:
    """DEM pixels on a computePixels grid as NPY (see :func:`_glo30_pixels`)."""
    pixels = _glo30_pixels(glo30, spec, grid, expression)
    structured = np.zeros(pixels.shape, dtype=[(spec.band_names[0], spec.numpy_dtype.str)])
    structured[spec.band_names[0]] = pixels
    buffer = io.BytesIO()
    np.save(buffer, structured)
    return buffer.getvalue()


def _glo30_pixels(glo30: Glo30, spec: SourceSpec, grid: dict, expression: dict) -> np.ndarray:
    """DEM pixels (height × width, masked ones the wire fill) on a grid, from the mosaic graph of the request.

    The graphs are told apart by what they call (see :class:`Glo30`): ``Image.setDefaultProjection`` is the
    one-grid mosaic, alone or (with ``Image.mask``, whose full values rsgee keeps) under the tiles; the
    fallback's ``Image.load`` adds the fallback; a numeric ``Image.unmask`` before the final rename is the fill.
    """
    from pyproj import Transformer

    calls = _calls(expression)
    names = {name for name, _ in calls}
    loads = {(name, _constant(args["id"])) for name, args in calls if name in ("ImageCollection.load", "Image.load")}
    fill = next((_constant(args["value"]) for name, args in calls if name == "Image.unmask"
                 and args["input"].get("functionInvocationValue", {}).get("functionName") != "Image.rename"
                 and _constant(args["value"]) is not None), None)
    region = _search_region(expression)
    found = glo30.found(region) if region is not None else None
    affine, dims = grid["affineTransform"], grid["dimensions"]
    width, height = int(dims["width"]), int(dims["height"])
    xs = affine["translateX"] + (np.arange(width) + 0.5) * affine["scaleX"]
    ys = affine["translateY"] + (np.arange(height) + 0.5) * affine["scaleY"]
    x, y = np.meshgrid(xs, ys)
    lon, lat = Transformer.from_crs(grid["crsCode"], "EPSG:4326", always_xy=True).transform(x, y)
    values, valid = np.zeros(lon.shape), np.zeros(lon.shape, bool)
    if ("ImageCollection.load", spec.collection) in loads:
        if "Image.setDefaultProjection" in names and "Image.mask" not in names:
            values, valid = glo30.first_projection(lon, lat, fill, found)
        else:
            values, valid = glo30.sample(lon, lat, bilinear="Image.resample" in names, found=found)
            if "Image.setDefaultProjection" in names:
                one, ok = glo30.first_projection(lon, lat, None, found)
                values, valid = np.where(valid, values, one), valid | ok
    if spec.fallback is not None and ("Image.load", spec.fallback.image) in loads:
        other, ok = glo30.fallback(lon, lat)
        values, valid = np.where(valid, values, other), valid | ok
    if fill is not None:
        values, valid = np.where(valid, values, fill), np.ones(valid.shape, bool)
    return np.where(valid, values, fill_value(spec)).astype(spec.numpy_dtype)


def _search_region(expression: dict):
    """The footprint filter's rectangle (``filterBounds``) of an expression as a lon/lat polygon, or None."""
    import shapely
    from pyproj import Transformer

    values = expression["values"]

    def resolve(node: dict) -> dict:
        while "valueReference" in node:
            node = values[node["valueReference"]]
        return node

    for name, args in _calls(expression):
        if name != "Filter.intersects":
            continue
        for inner, rect in _calls(expression, args.get("rightValue", {})):
            if inner != "GeometryConstructors.Rectangle":
                continue
            x0, y0, x1, y1 = resolve(rect["coordinates"])["constantValue"]
            crs = resolve(resolve(rect["crs"])["functionInvocationValue"]["arguments"]["crs"])["constantValue"]
            t = np.linspace(0.0, 1.0, 65)  # the edges densified: straight in the grid's CRS, curved in lon/lat
            xs = np.concatenate([x0 + (x1 - x0) * t, np.full(65, x1), x1 - (x1 - x0) * t, np.full(65, x0)])
            ys = np.concatenate([np.full(65, y0), y0 + (y1 - y0) * t, np.full(65, y1), y1 - (y1 - y0) * t])
            lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys)
            return shapely.Polygon(np.column_stack([lon, lat]))
    return None


def export_grid(expression: dict) -> dict:
    """The pixel grid of a batch export, as a computePixels-style ``grid`` dict.

    ``ee.batch`` folds ``crs``, ``crsTransform`` and two-number ``dimensions`` into the expression
    (``ee.Image.prepare_for_export``): ``Image.clipToBoundsAndScale(input=Image.reproject(image, crs,
    crsTransform), geometry=Rectangle([0, 0, width, height], proj=…))``. This reads them back.

    Raises:
        ValueError: the expression is not an export on an exact grid.
    """
    values = expression["values"]

    def resolve(node: dict) -> dict:
        while "valueReference" in node:
            node = values[node["valueReference"]]
        return node

    def call(node: dict, name: str) -> dict:
        invocation = resolve(node).get("functionInvocationValue", {})
        if invocation.get("functionName") != name:
            raise ValueError(f"expected {name}, found {invocation.get('functionName')}; pass crs, crsTransform and "
                             "dimensions")
        return invocation["arguments"]

    clip = call(values[expression["result"]], "Image.clipToBoundsAndScale")
    _, _, width, height = call(clip["geometry"], "GeometryConstructors.Rectangle")["coordinates"]["constantValue"]
    reproject = call(clip["input"], "Image.reproject")
    crs = resolve(reproject["crs"])
    crs = crs["constantValue"] if "constantValue" in crs else call(crs, "Projection")["crs"]["constantValue"]
    a, b, c, d, e, f = resolve(reproject["crsTransform"])["constantValue"]
    return {"crsCode": crs, "dimensions": {"width": int(width), "height": int(height)},
            "affineTransform": {"scaleX": a, "shearX": b, "translateX": c, "shearY": d, "scaleY": e, "translateY": f}}


def _destination(options: dict) -> tuple[Path, str]:
    """(folder relative to the storage root, file name prefix) of an export's destination."""
    if "cloudStorageDestination" in options:
        dest = options["cloudStorageDestination"]
        return Path("gcs") / dest["bucket"], dest.get("filenamePrefix", "")
    dest = options["driveDestination"]
    return Path("drive") / dest.get("folder", ""), dest.get("filenamePrefix", "")


def _write_export(state: _State, entry: dict) -> list[str]:
    """Write a finished export's GeoTIFF(s) atomically, named as Earth Engine names them.

    One ``<prefix>.tif`` when the image fits the requested file dimensions, else one file per
    block named ``<prefix>-<row offset>-<col offset>.tif`` (10 digits each). The GeoTIFF's nodata
    is the requested ``noData``; pixel values come from :func:`fake_pixels`, or the DEM's from the
    :class:`Glo30` model.
    """
    import rasterio
    from affine import Affine

    body, grid = entry["body"], entry["grid"]
    spec = state.catalog[entry["source"]]
    options = body["fileExportOptions"]
    geotiff = options.get("geoTiffOptions", {})
    folder, prefix = _destination(options)
    width, height = grid["dimensions"]["width"], grid["dimensions"]["height"]
    tile = geotiff.get("tileDimensions", {})
    fw, fh = int(tile.get("width", width)), int(tile.get("height", height))
    g = grid["affineTransform"]
    transform = Affine(g["scaleX"], g["shearX"], g["translateX"], g["shearY"], g["scaleY"], g["translateY"])
    if state.glo30 is not None and entry["source"] == "dem":
        pixels = _glo30_pixels(state.glo30, spec, grid, body["expression"])[None]
    else:
        pixels = np.stack([np.broadcast_to(v, (height, width)) for v in _bands(state, spec, grid, body["expression"])])
    nodata = geotiff.get("noData", {}).get("floatValue")
    uris = []
    for row, col in itertools.product(range(0, height, fh), range(0, width, fw)):
        name = f"{prefix}.tif" if (fw >= width and fh >= height) else f"{prefix}-{row:010d}-{col:010d}.tif"
        path = state.storage / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        block = pixels[:, row : row + fh, col : col + fw]
        tmp = path.with_name(f".{path.name}.tmp")
        with rasterio.open(tmp, "w", driver="GTiff", width=block.shape[2], height=block.shape[1], count=len(block),
                           dtype=spec.dtype, crs=grid["crsCode"], transform=transform @ Affine.translation(col, row),
                           nodata=nodata, tiled=True, blockxsize=256, blockysize=256, compress="deflate") as dst:
            dst.write(block)
        os.replace(tmp, path)
        uris.append(f"https://console.developers.google.com/storage/browser/{folder.name}/{prefix}"
                    if folder.parts[0] == "gcs" else f"https://drive.google.com/#folders/{folder.name}")
    return sorted(set(uris))


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _bucket_handler(root: Path):
    """Cloud Storage's XML API over ``root/<bucket>/<object>``, as far as GDAL's /vsigs/ uses it:
    HEAD and (ranged) GET of objects, and prefix/delimiter listings of a bucket."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def reply(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def not_found(self, head: bool) -> None:
            xml = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code></Error>"
            self.reply(404, xml, {"Content-Type": "application/xml"}, head)

        def do_HEAD(self) -> None:
            self.serve(head=True)

        def do_GET(self) -> None:
            self.serve(head=False)

        def serve(self, head: bool) -> None:
            url = urllib.parse.urlsplit(self.path)
            bucket, _, key = urllib.parse.unquote(url.path).lstrip("/").partition("/")
            if not bucket or ".." in key.split("/"):
                return self.not_found(head)
            if not key:
                return self.listing(root / bucket, bucket, urllib.parse.parse_qs(url.query), head)
            path = root / bucket / key
            if not path.is_file() or path.name.startswith("."):
                return self.not_found(head)
            data = path.read_bytes()
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                       "Last-Modified": formatdate(path.stat().st_mtime, usegmt=True), "ETag": f'"{len(data)}"'}
            ranged = self.headers.get("Range", "")
            if not ranged.startswith("bytes="):
                return self.reply(200, data, headers, head)
            first, _, last = ranged[len("bytes="):].partition("-")
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
            if start >= len(data):
                return self.reply(416, b"", {"Content-Range": f"bytes */{len(data)}"}, head)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self.reply(206, data[start : end + 1], headers, head)

        def listing(self, folder: Path, bucket: str, query: dict, head: bool) -> None:
            prefix = query.get("prefix", [""])[0]
            delimiter = query.get("delimiter", [""])[0]
            keys, prefixes = [], set()
            if folder.is_dir():
                for path in sorted(folder.rglob("*")):
                    key = path.relative_to(folder).as_posix()
                    if not path.is_file() or path.name.startswith(".") or not key.startswith(prefix):
                        continue
                    rest = key[len(prefix):]
                    if delimiter and delimiter in rest:
                        prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
                    else:
                        keys.append((key, path.stat()))
            contents = "".join(
                f"<Contents><Key>{escape(k)}</Key><LastModified>"
                f"{time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime(st.st_mtime))}</LastModified>"
                f"<Size>{st.st_size}</Size></Contents>" for k, st in keys)
            common = "".join(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in sorted(prefixes))
            xml = ("<?xml version='1.0' encoding='UTF-8'?><ListBucketResult xmlns='http://doc.s3.amazonaws.com/2006-03-01'>"
                   f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><IsTruncated>false</IsTruncated>"
                   f"{contents}{common}</ListBucketResult>")
            self.reply(200, xml.encode(), {"Content-Type": "application/xml"}, head)

    return Handler


def serve_bucket(root: str, parent_pid: int) -> None:
    """Serve ``root`` as fake Cloud Storage on a free loopback port (printed on stdout) until the
    parent process goes away."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _bucket_handler(Path(root)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    while os.getppid() == parent_pid:
        time.sleep(0.5)


if __name__ == "__main__" and sys.argv[1:2] == ["serve-bucket"]:
    serve_bucket(sys.argv[2], int(sys.argv[3]))
