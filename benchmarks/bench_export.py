"""Earth Engine download throughput against the loopback fake, as a ratio of the ideal.

The fake server runs in its own process with a fixed per-request latency and Earth Engine's cap of
concurrent requests; the ideal rate is cap ÷ latency blocks per second. Prints the achieved rate
of the download phase (requests, NPY decoding, validation, atomic saves) as a ratio of that ideal
(goal ≥ 0.9), the client CPU time per block, and the time to assemble the GeoTIFFs afterwards.

Usage: python benchmarks/bench_export.py [--latency 0.2] [--cap 40] [--tiles-per-side 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import ee

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.earthengine.download import EarthEngineSource, RetryPolicy, parse_windows
from rsgee.acquire.earthengine.session import SessionConfig
from rsgee.acquire.export import export_aois
from rsgee.catalog import load_catalog
from rsgee.grid import TILE_M


def serve(latency: float, cap: int, queue, cpus: set[int] | None) -> None:
    from rsgee.testing.earthengine import FakeEarthEngine

    if cpus:
        os.sched_setaffinity(0, cpus)

    with FakeEarthEngine(latency=latency, max_concurrent=cap) as fake:
        queue.put(fake.url)
        queue.get()  # until the benchmark says stop
        queue.put((fake.peak_in_flight, sum(r.status == 429 for r in fake.pixel_requests())))


class TimedSource(EarthEngineSource):
    """Records the wall and CPU time of the download phase alone."""

    def _download(self, todo, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        super()._download(todo, *args)
        self.download_wall = time.perf_counter() - wall
        self.download_cpu = time.process_time() - cpu
        self.downloaded = len(todo)


def aoi_of(per_side: int) -> str:
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(32632, 4326, always_xy=True)
    x0, y0 = 250 * TILE_M + 50, 2000 * TILE_M + 50
    lon0, lat0 = to_lonlat.transform(x0, y0)
    lon1, lat1 = to_lonlat.transform(x0 + per_side * TILE_M - 100, y0 + per_side * TILE_M - 100)
    return f"bench={lon0:.6f},{lat0:.6f},{lon1:.6f},{lat1:.6f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request at the fake server")
    parser.add_argument("--cap", type=int, default=40, help="concurrent requests allowed (and client workers)")
    parser.add_argument("--tiles-per-side", type=int, default=10)
    parser.add_argument("--shared-cores", action="store_true", help="let client and fake share all cores")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"earthengine-api {ee.__version__}")
    queue = mp.get_context("spawn").Queue()
    cores = sorted(os.sched_getaffinity(0))
    split = len(cores) >= 2 and not args.shared_cores  # the fake on its own core(s), as a remote server would be
    server_cpus = set(cores[len(cores) // 2:]) if split else None
    server = mp.get_context("spawn").Process(target=serve, args=(args.latency, args.cap, queue, server_cpus),
                                             daemon=True)
    server.start()
    url = queue.get(timeout=60)
    if split:
        os.sched_setaffinity(0, set(cores[: len(cores) // 2]))
        print(f"client on cores {cores[: len(cores) // 2]}, fake server on {sorted(server_cpus)}")
    work = Path(tempfile.mkdtemp(prefix="rsgee-bench-export-"))
    catalog = load_catalog()
    aois = parse_aois([aoi_of(args.tiles_per_side)])
    source = TimedSource(SessionConfig(project="bench", url=url, auth=False, workers=args.cap),
                         parse_windows(dt.date(2023, 6, 1), dt.date(2023, 9, 1), [], list(catalog.sources)),
                         policy=RetryPolicy(), progress=False)
    t = time.perf_counter()
    (result,) = export_aois(aois, work, source, catalog, progress=False)
    total = time.perf_counter() - t
    queue.put("stop")
    peak, throttled = queue.get(timeout=60)
    server.join(timeout=10)
    ideal = args.cap / args.latency
    achieved = source.downloaded / source.download_wall
    print(f"\n{result.line()}")
    print("\n| blocks | latency | cap = workers | ideal blocks/s | achieved blocks/s | ratio (goal ≥ 0.9) | "
          "client CPU per block | peak in flight | 429s |\n|---|---|---|---|---|---|---|---|---|")
    print(f"| {source.downloaded} | {args.latency * 1000:.0f} ms | {args.cap} | {ideal:.0f} | {achieved:.1f} | "
          f"{achieved / ideal:.2f} | {source.download_cpu / source.downloaded * 1000:.1f} ms | {peak} | {throttled} |")
    print(f"\ndownload phase {source.download_wall:.2f} s; whole export incl. GeoTIFF assembly {total:.2f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
