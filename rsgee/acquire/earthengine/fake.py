"""A loopback Earth Engine REST server, so that the real ``ee`` client can be exercised offline.

It answers what rsgee uses — discovery, algorithms (for ``ee.Initialize``), ``value:compute``,
``image:computePixels`` (NPY), ``image:export`` and operations — from the discovery document and
``algorithms.json`` shipped in the earthengine-api wheel. Pixels are a deterministic function of
the requested grid (:func:`fake_pixels`), so a test can check that every block lands where it
belongs. Faults (HTTP errors with Earth Engine's own messages, truncated bodies, hangs), per-request
latency and Earth Engine's concurrency cap are scripted.

Used by the test suite and ``benchmarks/bench_export.py``; point rsgee at it with
``--ee-url URL --no-auth --project fake``.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import ee
import numpy as np

from rsgee.acquire.earthengine.recipes import fill_value
from rsgee.catalog import Catalog, SourceSpec, load_catalog

EE_TESTS = os.path.join(os.path.dirname(ee.__file__), "tests")


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
    """

    kind: str = "http"
    status: int = 500
    message: str = "An internal error has occurred."
    times: int = 1
    seconds: float = 0.0
    match: Callable[[str, float, float], bool] | None = None


@dataclass
class Recorded:
    method: str
    path: str
    body: dict | None
    source: str | None = None
    status: int = 200


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


class FakeEarthEngine:
    """The loopback server. Use as a context manager; ``url`` is what ``ee.Initialize`` gets."""

    def __init__(self, catalog: Catalog | None = None, *, latency: float = 0.0, max_concurrent: int | None = None,
                 empty: Callable[[str, str], bool] | None = None,
                 masked: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None):
        """Args:
            catalog: the sources whose collections the fake recognises in expressions.
            latency: seconds every computePixels answer is delayed.
            max_concurrent: computePixels requests beyond this many in flight get Earth Engine's 429.
            empty: (source, serialized expression) → whether its collection is empty (size 0).
            masked: (ix, iy) pixel indices → which pixels come back masked (the wire fill value).
        """
        self.state = _State(catalog or load_catalog(), latency, max_concurrent, empty, masked)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

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

    def add_fault(self, fault: Fault) -> None:
        with self.state.lock:
            self.state.faults.append(fault)

    def start(self) -> "FakeEarthEngine":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

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

        def send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def error(self, status: int, message: str) -> None:
            names = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
            body = {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}}
            self.send(status, json.dumps(body).encode())

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            with state.lock:
                state.requests.append(Recorded("GET", path, None))
            if path.startswith("/$discovery/rest"):
                doc = dict(discovery, rootUrl=f"http://{self.headers['Host']}/", baseUrl=f"http://{self.headers['Host']}/")
                self.send(200, json.dumps(doc).encode())
            elif path.endswith("/algorithms"):
                self.send(200, algorithms)
            else:
                self.error(404, f"{path} is not faked")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            path = self.path.split("?")[0]
            source = _source_of(state.catalog, json.dumps(body.get("expression", "")))
            record = Recorded("POST", path, body, source)
            with state.lock:
                state.requests.append(record)
            if path.endswith("value:compute"):
                expression = json.dumps(body.get("expression", ""))
                size = 0 if state.empty is not None and state.empty(source or "", expression) else 12
                return self.send(200, json.dumps({"result": size}).encode())
            if path.endswith("image:computePixels"):
                return self.compute_pixels(body, source, record)
            self.error(404, f"{path} is not faked")

        def compute_pixels(self, body: dict, source: str | None, record: Recorded) -> None:
            grid = body["grid"]
            affine = grid["affineTransform"]
            x_min, y_max = affine.get("translateX", 0.0), affine.get("translateY", 0.0)
            with state.lock:
                state.in_flight += 1
                state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
                over = state.max_concurrent is not None and state.in_flight > state.max_concurrent
                fault = None
                if not over:
                    for f in state.faults:
                        if f.times > 0 and (f.match is None or f.match(source or "", x_min, y_max)):
                            f.times -= 1
                            fault = f
                            break
            try:
                if state.latency:
                    time.sleep(state.latency)
                if over:
                    record.status = 429
                    return self.error(429, "Too many concurrent aggregations.")
                if fault is not None and fault.kind == "hang":
                    time.sleep(fault.seconds)
                if fault is not None and fault.kind == "http":
                    record.status = fault.status
                    return self.error(fault.status, fault.message)
                if source is None:
                    record.status = 400
                    return self.error(400, "Image.load: unknown collection")
                payload = _npy(state, state.catalog[source], grid)
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
                self.send(200, payload, "application/octet-stream")
            finally:
                with state.lock:
                    state.in_flight -= 1

    return Handler


def _source_of(catalog: Catalog, expression: str) -> str | None:
    for name, spec in catalog.sources.items():
        if f'"{spec.collection}"' in expression or f'\\"{spec.collection}\\"' in expression:
            return name
    return None


def _npy(state: _State, spec: SourceSpec, grid: dict) -> bytes:
    affine, dims = grid["affineTransform"], grid["dimensions"]
    width, height = int(dims["width"]), int(dims["height"])
    sx, sy = affine.get("scaleX", 10.0), affine.get("scaleY", -10.0)
    xs = affine.get("translateX", 0.0) + (np.arange(width) + 0.5) * sx
    ys = affine.get("translateY", 0.0) + (np.arange(height) + 0.5) * sy
    ix = np.floor(xs / 10.0).astype(np.int64)[None, :]
    iy = np.floor(ys / 10.0).astype(np.int64)[:, None]
    structured = np.zeros((height, width), dtype=[(b, spec.numpy_dtype.str) for b in spec.band_names])
    mask = state.masked(ix, iy) if state.masked is not None else None
    fill = fill_value(spec)
    for i, band in enumerate(spec.band_names):
        values = fake_pixels(spec, i, ix, iy)
        if mask is not None:
            values = np.where(mask, np.array(fill, dtype=spec.numpy_dtype), values)
        structured[band] = np.broadcast_to(values, (height, width))
    buffer = io.BytesIO()
    np.save(buffer, structured)
    return buffer.getvalue()
