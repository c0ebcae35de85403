"""Tiling speed and archive read throughput, measured side by side in one run.

Prints:
  * tiles per second per core of `rsgee tile` end to end (read exports, terrain, filter, write 4 GeoTIFFs,
    journal, stats), on synthetic exports;
  * archive read throughput in samples/s (all four sources of a random tile): per-tile GeoTIFFs vs the
    packed cache (decoded to the archive's units) vs the float32 cache it replaced, single process and through a torch DataLoader with 2 workers, against the goal of
    ≥ 500 samples/s per core (reading must never bound GPU training);
  * the time to load an index of 20,000 tiles.

Usage: python benchmarks/bench_tile.py [--tiles-per-side 6] [--reads 400] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.export import export_aois
from rsgee.acquire.synthetic import SyntheticSource
from rsgee.catalog import load_catalog
from rsgee.geotiff import GDAL_READ_ENV
from rsgee.grid import TILE_M, Tile
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.cache import build_cache, open_split
from rsgee.preprocess.split import SplitConfig
from rsgee.preprocess.tiling import build_archive

GOAL_PER_CORE = 500.0


class GeoTiffSamples:
    """All sources of a tile, read from the per-tile GeoTIFFs."""

    def __init__(self, archive: Archive, tile_ids: list[str]):
        self.root, self.tile_ids = archive.root, tile_ids
        self.sources = sorted(archive.sources())

    def __len__(self) -> int:
        return len(self.tile_ids)

    def __getitem__(self, i: int) -> dict:
        archive = Archive(self.root)
        with rasterio.Env(**GDAL_READ_ENV):
            out = {}
            for s in self.sources:
                with rasterio.open(archive.tile_path(s, self.tile_ids[i])) as src:
                    out[s] = src.read()
            return out


class Float32Cache:
    """The cache as rsgee stored it before the compact format: every source in its archive dtype, read by copy."""

    def __init__(self, archive: Archive, tile_ids: list[str], folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.arrays = {}
        for s, spec in sorted(archive.sources().items()):
            array = np.lib.format.open_memmap(folder / f"{s}.npy", mode="w+", dtype=spec.numpy_dtype,
                                              shape=(len(tile_ids), len(spec.bands), 256, 256))
            for i, tile_id in enumerate(tile_ids):
                with rasterio.open(archive.tile_path(s, tile_id)) as src:
                    array[i] = src.read()
            array.flush()
            self.arrays[s] = np.load(folder / f"{s}.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, i: int) -> dict:
        return {s: np.array(a[i]) for s, a in self.arrays.items()}

    def __getstate__(self) -> dict:
        return {"arrays": {s: (a.filename, a.shape) for s, a in self.arrays.items()}}

    def __setstate__(self, state) -> None:
        self.arrays = {s: np.load(name, mmap_mode="r") for s, (name, _) in state["arrays"].items()}


def make_exports(work: Path, per_side: int) -> Path:
    """One square synthetic AOI of per_side × per_side tiles (lowland, few rejects)."""
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(32631, 4326, always_xy=True)
    x0, y0 = 156 * TILE_M + 100, 2091 * TILE_M + 100
    x1, y1 = x0 + per_side * TILE_M - 200, y0 + per_side * TILE_M - 200
    lon0, lat0 = to_lonlat.transform(x0, y0)
    lon1, lat1 = to_lonlat.transform(x1, y1)
    bbox = f"bench={max(lon0, to_lonlat.transform(x0, y1)[0]):.6f},{lat0:.6f},{min(lon1, to_lonlat.transform(x1, y0)[0]):.6f},{lat1:.6f}"
    source = SyntheticSource(seed=0, cloud_cover=0.0, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    t = time.perf_counter()
    (result,) = export_aois(parse_aois([bbox]), work / "exports", source, load_catalog(), progress=False)
    print(f"synthetic export: {result.tiles} tiles in {time.perf_counter() - t:.1f} s")
    return work / "exports"


def time_reads(dataset, order: np.ndarray, loader_workers: int) -> float:
    """Samples per second reading ``dataset`` in ``order`` (0 workers = plain loop)."""
    if loader_workers == 0:
        dataset[int(order[0])]
        t = time.perf_counter()
        for i in order:
            dataset[int(i)]
        return len(order) / (time.perf_counter() - t)
    import torch
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(Subset(dataset, order.tolist()), batch_size=8, num_workers=loader_workers,
                        collate_fn=lambda batch: {k: torch.from_numpy(np.stack([b[k] for b in batch])) for k in batch[0]},
                        persistent_workers=False)
    batches = iter(loader)
    next(batches)  # worker start-up is not read throughput
    t = time.perf_counter()
    n = sum(len(batch["s2"]) for batch in batches)
    return n / (time.perf_counter() - t)


def index_load_time(archive: Archive, n: int, work: Path) -> float:
    """Seconds to load an index of ``n`` tiles (features cloned from the real index)."""
    template = next(iter(archive.read_index().values()))
    features = {}
    for k in range(n):
        tile = Tile(32631, k % 400, 2000 + k // 400)
        feature = json.loads(json.dumps(template))
        feature["id"] = feature["properties"]["tile_id"] = tile.id
        features[tile.id] = feature
    big = Archive(work / "big_index")
    big.root.mkdir(exist_ok=True)
    big.write_index(features)
    size_mb = big.index_path.stat().st_size / 1e6
    times = []
    for _ in range(5):
        t = time.perf_counter()
        loaded = big.read_index()
        times.append(time.perf_counter() - t)
    assert len(loaded) == n
    print(f"index of {n} tiles: {size_mb:.1f} MB")
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles-per-side", type=int, default=6)
    parser.add_argument("--reads", type=int, default=400, help="random samples read per configuration")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rsgee-bench-tile-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"rasterio {rasterio.__version__} (GDAL {rasterio.__gdal_version__}), numpy {np.__version__}")
    exports = make_exports(work, args.tiles_per_side)

    rows = []
    for workers in (1, 2):
        out = work / f"archive_w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        summary = build_archive([exports], out, load_catalog(), split=SplitConfig(block=1), workers=workers,
                                progress=False)
        seconds = time.perf_counter() - t
        rows.append((workers, summary.written, seconds))
    print("\n| rsgee tile | tiles | seconds | tiles/s | tiles/s per core |\n|---|---|---|---|---|")
    for workers, n, seconds in rows:
        print(f"| --workers {workers} | {n} | {seconds:.2f} | {n / seconds:.1f} | {n / seconds / workers:.1f} |")

    archive = Archive(work / "archive_w1")
    tile_ids = [p["tile_id"] for p in archive.tiles()]
    t = time.perf_counter()
    build_cache(archive, "train", progress=False)
    cache_seconds = time.perf_counter() - t
    packed = open_split(archive, "train", progress=False)
    train_ids = packed.tile_ids
    rng = np.random.default_rng(0)
    reads = {}
    geotiff = GeoTiffSamples(archive, tile_ids)
    float32 = Float32Cache(archive, train_ids, work / "float32_cache")
    print(f"packed cache: {packed.nbytes_per_tile():,} bytes per tile; float32 cache: "
          f"{sum(a[0].nbytes for a in float32.arrays.values()):,}")
    for name, dataset in (("GeoTIFF per tile", geotiff), ("float32 cache (before the compact format)", float32),
                          ("packed cache (.npy memmap, decoded)", packed)):
        order = rng.integers(0, len(dataset), size=args.reads)
        for loader_workers in (0, 2):
            reads[(name, loader_workers)] = time_reads(dataset, order, loader_workers)
    print(f"\npacked cache of {len(train_ids)} train tiles built in {cache_seconds:.2f} s (warm page cache below)")
    print("\n| reader | DataLoader workers | samples/s | per core | vs goal 500/s per core |\n|---|---|---|---|---|")
    for (name, loader_workers), rate in reads.items():
        cores = max(loader_workers, 1)
        print(f"| {name} | {loader_workers} | {rate:.0f} | {rate / cores:.0f} | {rate / cores / GOAL_PER_CORE:.2f}× |")
    packed_rate = reads[("packed cache (.npy memmap, decoded)", 0)]
    print(f"\npacked cache / GeoTIFF, single process: {packed_rate / reads[('GeoTIFF per tile', 0)]:.1f}×; "
          f"packed / float32 cache: {packed_rate / reads[('float32 cache (before the compact format)', 0)]:.2f}×")
    print(f"index load, 20,000 tiles: {index_load_time(archive, 20_000, work):.3f} s (median of 5)")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
