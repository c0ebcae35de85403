"""How the archive pipeline scales: synthetic archives of growing size, stage by stage, to 15,000 tiles.

For each size (default about 250, 1,000 and 4,000 tiles) one square synthetic AOI near 10°E 46°N is
exported, tiled, checked and cached with the command-line tool, each stage in its own process
(`rsgee export --source synthetic --workers N`, `rsgee tile --workers N`, `rsgee check --workers N`,
`rsgee cache --workers N`). Prints per stage and size:

  * wall seconds and tiles/s per core (tiles ÷ seconds ÷ N);
  * peak anonymous RSS (RssAnon: heap and arrays, what can run a machine out of memory; the pages
    of memory-mapped files, which the kernel writes back and drops, are not counted): the largest
    single process and the process tree summed (workers included), sampled every 0.1 s from /proc
    (a spike shorter than that can be missed);
  * bytes per tile the stage leaves on disk (apparent file sizes of its output folder);
  * the growth exponent between consecutive sizes, log(t2/t1) / log(n2/n1) (1 = linear) for
    seconds and for peak RSS (0 = flat: memory does not grow with the AOI's area);
  * the extrapolation to 15,000 tiles, linear from the largest size, against the goal of the whole
    archive (export + tile + check + cache) in ≤ 30 minutes and ≤ 30 GB on this machine, and the disk
    left once the exports (after tiling read only by `rsgee predict --exports`) are deleted.

``--max-float-error E`` builds the archives with `rsgee tile --max-float-error E` (bounded-lossy S1
and terrain tiles) to measure what that saves.

Usage: python benchmarks/bench_archive_scale.py [--sizes 250,1000,4000] [--workers N] [--workdir DIR]
       [--keep] [--json OUT] [--max-float-error E]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from rsgee.preprocess.archive import Archive

STAGES = ("export", "tile", "check", "cache")
PAPER_TILES = 15_000
GOAL_MINUTES, GOAL_GB = 30.0, 30.0
# Tile footprint at 46°N: 2.56 km is 0.0230° of latitude and 0.0331° of longitude.
TILE_DEG_LAT, TILE_DEG_LON = 2.56 / 111.2, 2.56 / (111.32 * math.cos(math.radians(46.0)))


def aoi_for(tiles: int) -> str:
    """A box of about ``tiles`` tiles (the grid's own count is reported, not this estimate)."""
    side = math.sqrt(tiles)
    lon0, lat0 = 10.0, 46.0
    return f"scale{tiles}={lon0},{lat0},{lon0 + side * TILE_DEG_LON:.5f},{lat0 + side * TILE_DEG_LAT:.5f}"


def run_stage(argv: list[str]) -> dict:
    """Run one CLI stage; wall seconds and the peak RSS (largest process, whole tree) in bytes."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "rsgee", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    peak = {"single": 0, "tree": 0}

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
                rss = [anonymous_rss(p.pid) for p in procs]
            except (psutil.Error, OSError):
                continue
            peak["single"], peak["tree"] = max(peak["single"], max(rss)), max(peak["tree"], sum(rss))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    sampler.join()
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"rsgee {' '.join(argv)} failed ({proc.returncode}):\n{output[-3000:]}")
    return {"seconds": seconds, "rss_single": peak["single"], "rss_tree": peak["tree"]}


def anonymous_rss(pid: int) -> int:
    """RssAnon of a process in bytes (/proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(size: int, work: Path, workers: int, max_float_error: float) -> dict:
    """Export, tile, check and cache one AOI of about ``size`` tiles; the per-stage figures."""
    exports, archive = work / "exports", work / "archive"
    stages = {
        "export": ["export", "--source", "synthetic", "--aoi", aoi_for(size), "--out", str(exports),
                   "--workers", str(workers), "--no-progress"],
        "tile": ["tile", str(exports), "--out", str(archive), "--workers", str(workers), "--no-progress",
                 "--max-float-error", str(max_float_error)],
        "check": ["check", str(archive), "--workers", str(workers), "--no-progress"],
        "cache": ["cache", str(archive), "--workers", str(workers), "--no-progress"],
    }
    outputs = {"export": exports, "tile": archive, "check": None, "cache": archive / "cache"}
    result = {}
    for stage in STAGES:
        figures = run_stage(stages[stage])
        figures["bytes"] = folder_bytes(outputs[stage]) if outputs[stage] else 0  # tile: before the cache exists
        result[stage] = figures
        print(f"  {size:>5} {stage:<6} {figures['seconds']:8.1f} s  peak RSS {figures['rss_single'] / 1e6:6.0f} MB "
              f"(tree {figures['rss_tree'] / 1e6:6.0f} MB)", flush=True)
    tiles = len(Archive(archive).tile_ids)
    area_km2 = tiles * 2.56 ** 2
    return {"requested": size, "tiles": tiles, "area_km2": area_km2, "stages": result}


def exponent(a: float, b: float, n1: int, n2: int) -> float:
    return math.log(b / a) / math.log(n2 / n1) if a > 0 and b > 0 and n2 != n1 else float("nan")


def report(runs: list[dict], workers: int) -> None:
    print("\n| stage | tiles | seconds | tiles/s per core | peak RssAnon, largest process (MB) | peak RssAnon, tree (MB) "
          "| disk per tile (MB) |\n|---|---|---|---|---|---|---|")
    for stage in STAGES:
        for run in runs:
            f = run["stages"][stage]
            print(f"| {stage} | {run['tiles']:,} | {f['seconds']:.1f} | {run['tiles'] / f['seconds'] / workers:.1f} | "
                  f"{f['rss_single'] / 1e6:.0f} | {f['rss_tree'] / 1e6:.0f} | {f['bytes'] / run['tiles'] / 1e6:.3f} |")
    print("\nGrowth exponents between consecutive sizes (seconds: 1 = linear; peak RSS of the largest process: "
          "0 = flat), and RSS slope in MB per 1,000 km²:\n")
    print("| stage | sizes | seconds exponent | RSS exponent | RSS slope (MB / 1,000 km²) |\n|---|---|---|---|---|")
    for stage in STAGES:
        for a, b in zip(runs, runs[1:]):
            fa, fb = a["stages"][stage], b["stages"][stage]
            slope = (fb["rss_single"] - fa["rss_single"]) / 1e6 / ((b["area_km2"] - a["area_km2"]) / 1000)
            print(f"| {stage} | {a['tiles']:,} → {b['tiles']:,} | {exponent(fa['seconds'], fb['seconds'], a['tiles'], b['tiles']):.2f} | "
                  f"{exponent(fa['rss_single'], fb['rss_single'], a['tiles'], b['tiles']):.2f} | {slope:+.1f} |")
    last = runs[-1]
    scale = PAPER_TILES / last["tiles"]
    print(f"\nExtrapolated to {PAPER_TILES:,} tiles (linear from {last['tiles']:,}), {workers} workers:\n")
    print("| stage | minutes | GB on disk |\n|---|---|---|")
    minutes = gigabytes = 0.0
    for stage in STAGES:
        f = last["stages"][stage]
        m, g = f["seconds"] * scale / 60, f["bytes"] * scale / 1e9
        minutes, gigabytes = minutes + m, gigabytes + g
        print(f"| {stage} | {m:.1f} | {g:.1f} |")
    verdict = lambda ok: "meets" if ok else "misses"  # noqa: E731
    print(f"| **all** | **{minutes:.1f}** ({verdict(minutes <= GOAL_MINUTES)} ≤ {GOAL_MINUTES:.0f}) "
          f"| **{gigabytes:.1f}** ({verdict(gigabytes <= GOAL_GB)} ≤ {GOAL_GB:.0f}) |")
    kept = gigabytes - last["stages"]["export"]["bytes"] * scale / 1e9
    print(f"\nWithout the exports (after tiling only predict --exports reads them): {kept:.1f} GB ({verdict(kept <= GOAL_GB)} ≤ {GOAL_GB:.0f}).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="250,1000,4000", help="comma-separated approximate tile counts")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the archives (default: delete each after measuring)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    parser.add_argument("--max-float-error", type=float, default=0.0,
                        help="rsgee tile --max-float-error (0 = lossless tiles, the default)")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rsgee-bench-scale-"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"Python {platform.python_version()}; workers {args.workers}; tile --max-float-error {args.max_float_error:g}; "
          f"work folder {work}")
    runs = []
    for size in sizes:
        folder = work / f"n{size}"
        shutil.rmtree(folder, ignore_errors=True)
        runs.append(build(size, folder, args.workers, args.max_float_error))
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    report(runs, args.workers)
    if args.json:
        args.json.write_text(json.dumps({"workers": args.workers, "max_float_error": args.max_float_error,
                                         "runs": runs}, indent=1))
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
