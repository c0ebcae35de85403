"""Normalisation statistics of the train split (never val or test: that would leak).

Per band: count, mean and standard deviation over every valid pixel, exact in float64 (per-tile
moments merged with Chan's formula in tile-id order, so the result does not depend on worker
scheduling); p2 and p98 from a fixed 1-in-16×16 pixel subsample of every tile; min and max.
Categorical sources (land cover) get class pixel counts instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from typing import Sequence

import numpy as np
import rasterio
from tqdm import tqdm

from rsgee.catalog import SourceSpec
from rsgee.errors import RsgeeError
from rsgee.geotiff import GDAL_READ_ENV, write_json_atomic
from rsgee.preprocess.archive import Archive
from rsgee.workers import process_pool

#: Percentiles come from every SAMPLE_STEP-th pixel in both directions of every tile.
SAMPLE_STEP = 16
PERCENTILES = (2.0, 98.0)


def tiles_digest(tile_ids: Sequence[str]) -> str:
    """Fingerprint of a set of tile ids (order-independent)."""
    return hashlib.sha256("\n".join(sorted(tile_ids)).encode()).hexdigest()


def stats_are_current(archive: Archive) -> bool:
    """Whether stats.json exists, is whole and was computed on exactly the archive's current train tiles."""
    try:
        stats = archive.stats
    except RsgeeError:  # missing or damaged: computed afresh
        return False
    return stats.get("tiles_sha256") == tiles_digest([t["tile_id"] for t in archive.tiles("train")])


def compute_stats(archive: Archive, *, workers: int = 1, progress: bool = True, write: bool = True) -> dict:
    """Compute (and by default write) stats.json from the train split's tiles."""
    specs = archive.sources()
    tile_ids = [t["tile_id"] for t in archive.tiles("train")]
    jobs = [(archive.root, tile_id, specs) for tile_id in tile_ids]
    bar = tqdm(total=len(jobs), desc="stats", unit="tile", disable=not progress, file=sys.stderr)
    acc = {name: _Accumulator(spec) for name, spec in specs.items()}
    with contextlib.ExitStack() as stack:
        if workers <= 1:
            parts = map(_tile_parts, jobs)
        else:
            parts = stack.enter_context(process_pool(workers)).map(_tile_parts, jobs, chunksize=16)
        for part in parts:  # in tile-id order whatever the scheduling
            for name, values in part.items():
                acc[name].add(values)
            bar.update(1)
    bar.close()
    stats = {
        "split": "train",
        "tiles": len(tile_ids),
        "tiles_sha256": tiles_digest(tile_ids),
        "method": {"moments": "exact, float64, all valid pixels",
                   "percentiles": f"linear interpolation on every {SAMPLE_STEP}th pixel in x and y"},
        "sources": {name: a.result() for name, a in acc.items()},
    }
    if write:
        write_json_atomic(archive.stats_path, stats)
    return stats


def _tile_parts(job) -> dict:
    root, tile_id, specs = job
    archive = Archive(root)
    out = {}
    with rasterio.Env(**GDAL_READ_ENV):
        for name, spec in specs.items():
            with rasterio.open(archive.tile_path(name, tile_id)) as src:
                data = src.read()
            out[name] = _parts(data, spec)
    return out


def _parts(data: np.ndarray, spec: SourceSpec) -> list:
    if spec.categorical:
        n = len(spec.classes or ()) or int(np.iinfo(spec.dtype).max)
        labels = data[0]
        return [np.bincount(labels[labels < n].ravel(), minlength=n)[:n].astype(np.int64)]
    parts = []
    for band in data:
        valid = np.isfinite(band) if spec.nodata_is_nan else band != spec.nodata
        values = band[valid].astype(np.float64)
        sub = band[::SAMPLE_STEP, ::SAMPLE_STEP]
        sub_valid = valid[::SAMPLE_STEP, ::SAMPLE_STEP]
        if values.size:
            mean = float(values.mean())
            parts.append((values.size, mean, float(((values - mean) ** 2).sum()), float(values.min()),
                          float(values.max()), sub[sub_valid].astype(np.float64)))
        else:
            parts.append((0, 0.0, 0.0, np.inf, -np.inf, np.empty(0)))
    return parts


class _Accumulator:
    """Merges per-tile parts of one source, in the order they are added."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.bands = [[0, 0.0, 0.0, np.inf, -np.inf, []] for _ in spec.bands]
        self.classes: np.ndarray | None = None

    def add(self, parts: list) -> None:
        if self.spec.categorical:
            self.classes = parts[0] if self.classes is None else self.classes + parts[0]
            return
        for band, (n, mean, m2, lo, hi, sample) in zip(self.bands, parts):
            if n == 0:
                continue
            n_a, mean_a, m2_a = band[0], band[1], band[2]
            total = n_a + n
            delta = mean - mean_a
            band[1] = mean_a + delta * n / total
            band[2] = m2_a + m2 + delta * delta * n_a * n / total
            band[0] = total
            band[3], band[4] = min(band[3], lo), max(band[4], hi)
            band[5].append(sample)

    def result(self) -> dict:
        if self.spec.categorical:
            counts = self.classes if self.classes is not None else np.zeros(len(self.spec.classes or ()), np.int64)
            names = self.spec.classes or tuple(str(i) for i in range(len(counts)))
            return {"class_counts": {name: int(c) for name, c in zip(names, counts)}}
        out = {}
        for spec_band, (n, mean, m2, lo, hi, samples) in zip(self.spec.bands, self.bands):
            if n == 0:
                out[spec_band.name] = {"count": 0}
                continue
            sample = np.concatenate(samples) if samples else np.empty(0)
            p_lo, p_hi = (np.percentile(sample, PERCENTILES) if sample.size else (mean, mean))
            out[spec_band.name] = {"count": int(n), "mean": mean, "std": float(np.sqrt(m2 / n)), "min": lo,
                                   "max": hi, "p2": float(p_lo), "p98": float(p_hi)}
        return out

