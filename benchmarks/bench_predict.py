"""rsgee predict throughput (km² per second) and peak memory against AOI size, on this machine.

Trains one-step runs (tiny and small RS-UNet and RS-SPADE: throughput does not depend on the weights),
exports synthetic AOIs of growing size, and runs ``rsgee predict seg`` and ``predict fusion
--fill-clouds`` on each in a fresh process, reporting seconds, km²/s and the process's peak RSS. Peak
memory should grow with the AOI's width only (one strip of 256 rows is held), not with its area: the
AOIs here grow in height at a fixed width, then in width.

Usage: python benchmarks/bench_predict.py [--work DIR] [--sizes 5x5,5x20,20x5] [--device cpu]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import subprocess
import sys
import time
from pathlib import Path

KM_PER_DEG_LAT = 111.32


def build(work: Path) -> dict[str, Path]:
    from rsgee.acquire.aoi import parse_aois
    from rsgee.acquire.export import export_aois
    from rsgee.acquire.synthetic import SyntheticSource
    from rsgee.catalog import load_catalog
    from rsgee.preprocess.split import SplitConfig
    from rsgee.configs import FusionConfig, SegmentationConfig
    from rsgee.preprocess.tiling import TileFilters, build_archive
    from rsgee.train.fusion import train_fusion
    from rsgee.train.segmentation import train_segmentation

    archive = work / "archive"
    if not (archive / "stats.json").exists():
        source = SyntheticSource(seed=0, cloud_cover=0.02, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
        export_aois(parse_aois(["valley=10.60,46.60,10.69,46.64"]), work / "exports", source, load_catalog(),
                    progress=False)
        build_archive([work / "exports"], archive, load_catalog(), split=SplitConfig(block=1, ratios=(5, 3, 2)),
                      filters=TileFilters(max_s2_nodata=0.5), progress=False)
    runs = {}
    for size in ("tiny", "small"):
        runs[f"seg-{size}"] = work / "runs" / f"seg-{size}"
        if not (runs[f"seg-{size}"] / "run.json").exists():
            train_segmentation(archive, runs[f"seg-{size}"], SegmentationConfig(size=size, batch_size=2, epochs=1,
                               steps_per_epoch=1, crop=64), progress=False)
        runs[f"fusion-{size}"] = work / "runs" / f"fusion-{size}"
        if not (runs[f"fusion-{size}"] / "run.json").exists():
            train_fusion(archive, runs[f"fusion-{size}"], FusionConfig(size=size, batch_size=2, epochs=1,
                         steps_per_epoch=1, crop=64), progress=False)
    return runs


def aoi_export(work: Path, width_km: float, height_km: float) -> Path:
    """A synthetic export of about width × height km (lattice-aligned, so slightly larger)."""
    from rsgee.acquire.aoi import parse_aois
    from rsgee.acquire.export import export_aois
    from rsgee.acquire.synthetic import SyntheticSource
    from rsgee.catalog import load_catalog

    lat0, lon0 = 46.0, 10.0
    dlat = height_km / KM_PER_DEG_LAT
    dlon = width_km / (KM_PER_DEG_LAT * math.cos(math.radians(lat0 + dlat / 2)))
    name = f"aoi_{width_km:g}x{height_km:g}".replace(".", "_")
    spec = f"{name}={lon0},{lat0},{lon0 + dlon:.5f},{lat0 + dlat:.5f}"
    source = SyntheticSource(seed=0, cloud_cover=0.05, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    (result,) = export_aois(parse_aois([spec]), work / "exports", source, load_catalog(), progress=False)
    return result.path


def timed_predict(kind: str, run: Path, export: Path, out: Path, device: str) -> dict:
    """Run one prediction in a fresh process; its wall time and peak RSS (VmHWM: ru_maxrss would carry the
    parent's peak over exec)."""
    code = (
        "import json, time\n"
        "from rsgee.predict import predict_fusion, predict_seg\n"
        "t = time.perf_counter()\n"
        f"r = predict_{kind}({str(run)!r}, {str(export)!r}, {str(out)!r}, device={device!r}, progress=False"
        + (", fill_clouds=True" if kind == "fusion" else "") + ")\n"
        "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'windows': r.windows,\n"
        "                  'rss_mb': int(hwm.split()[1]) / 1024}))\n")
    out.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rsgee-bench-predict"))
    parser.add_argument("--sizes", default="5x5,5x20,20x5,40x5", help="AOIs as WIDTHxHEIGHT in km")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    from rsgee.exports import read_export

    started = time.perf_counter()
    runs = build(args.work)
    print(f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}, device {args.device}\n")
    print("| model | AOI (km) | pixels | windows | seconds | km²/s | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for size_text in args.sizes.split(","):
        width, height = (float(v) for v in size_text.split("x"))
        export = aoi_export(args.work, width, height)
        grid = read_export(export).grid
        area = grid.width * grid.height * 1e-4  # 10 m pixels → km²
        for name, run in runs.items():
            kind = "seg" if name.startswith("seg") else "fusion"
            result = timed_predict(kind, run, export, args.work / "out" / f"{name}_{export.name}.tif", args.device)
            print(f"| {name} | {width:g} × {height:g} | {grid.width}×{grid.height} | {result['windows']} | "
                  f"{result['seconds']:.1f} | {area / result['seconds']:.2f} | {result['rss_mb']:.0f} |", flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
