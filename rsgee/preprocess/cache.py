"""A packed, compact, memory-mappable copy of an archive split, for training-speed reads.

Opening four GeoTIFFs per sample reads ~150–250 samples/s per core; memory-mapped arrays read
thousands. The GeoTIFFs stay the archive of record: the cache is derived from them, carries a
fingerprint of the tiles it was built from (ids, file sizes and modification times) and of its own
encoding, and is rebuilt whenever either no longer matches.

A tile takes 15 bytes per pixel (983,040 bytes; the GeoTIFFs' bands in their own dtypes take 32),
so the paper's 15,000 tiles fit in 15 GB. Sentinel-2 and land cover are stored exactly; Sentinel-1
and terrain as codes whose error is far below what the products themselves resolve, decoded on
read back to the archive's units, dtypes and nodata:

- **S1 VV, VH**: uint8, 254 steps over the dB range the models see (``S1_DB_RANGES``; values
  outside clip to it, as the models clip them anyway). Error ≤ half a step: 0.049 dB (VV),
  0.064 dB (VH), against Sentinel-1's 1 dB (3σ) radiometric accuracy and speckle of a few dB.
- **dem**: int16 half metres. Error ≤ 0.25 m, against GLO-30's < 4 m absolute and < 2 m relative.
- **slope**: uint8, 254 steps over 0–90°, error ≤ 0.18°; **aspect**: uint8, 254 directions,
  error ≤ 0.71°. (A 2 m height error across a 30 m DEM cell moves slope by up to ~4°.)
- **hillshade**: not stored; gdaldem's shade is a function of slope and aspect, recomputed from
  their codes on read. Error ≤ 3.01 of 255 (the bound follows from the two steps above).

NaN, flat aspect (−1) and Sentinel-1 nodata survive exactly. ``rsgee check`` compares every cached
sample with its GeoTIFFs against these tolerances (:func:`verify_cache`).

Layout: ``ARCHIVE/cache/<split>/<file>.npy`` (N, bands, 256, 256): ``s2``, ``lulc``, ``s1``,
``terrain_dem``, ``terrain_slope_aspect``; and ``ARCHIVE/cache/<split>/tiles.json``, the manifest,
with the tile ids in row order, the fingerprint, the encoding and each array's size in bytes and
``rows_sha256`` (the sha256 of its rows' sha256 digests, one row a tile: the workers hash what they
write, so the hash costs no second read of gigabytes).

A split's cache is whole only as its manifest describes it. It is built in a hidden folder, the
manifest written last, and swapped in; opening it compares every array's size with the manifest
(a stat each), so a missing or truncated array, left by a build cut short or a copy, is rebuilt by
``rsgee cache`` and training and refused in one line by a plain reader; ``rsgee check`` also
compares the hashes. Every build holds the archive's lock (:meth:`Archive.lock`), and a second
builder waits for it, saying so in one line, rather than fail: the build is the same whoever makes
it, so what a second ``rsgee cache`` (or the second rank of a training job) wants is to find the
first one's cache up to date once it is done. A reader that finds the cache current takes no lock
(an archive on a read-only disk can be trained from).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import rasterio
from tqdm import tqdm

from rsgee.errors import RsgeeError, unwritable
from rsgee.geotiff import GDAL_READ_ENV, write_json_atomic
from rsgee.grid import TILE_PX
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.terrain import ASPECT_FLAT_BELOW
from rsgee.radiometry import s1_db_range
from rsgee.workers import process_pool

#: Bumped whenever the layout or an encoding changes: older caches are then stale and rebuilt.
CACHE_FORMAT = 3
MANIFEST = "tiles.json"
STEPS = 254  # uint8 codes: 0 is nodata (and 1 flat aspect), the rest are steps
_FLOAT_SLACK = 1e-3  # float32 rounding of the decoded values and of the archive's own hillshade


class ExactCodec:
    """A source stored as it is in the GeoTIFFs (Sentinel-2, land cover, anything unrecognised)."""

    def __init__(self, name: str, dtype, bands: Sequence[str]):
        self.name, self.bands = name, tuple(bands)
        self.dtype = np.dtype(dtype)
        self.files = {name: (self.dtype, len(self.bands))}

    def describe(self) -> dict:
        return {"stored": "exact"}

    def encode(self, array: np.ndarray) -> dict[str, np.ndarray]:
        return {self.name: array}

    def decode(self, parts: dict[str, np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return np.array(parts[self.name])
        np.copyto(out, parts[self.name])
        return out

    def errors(self, reference: np.ndarray, decoded: np.ndarray) -> list[str]:
        same = np.array_equal(reference, decoded, equal_nan=reference.dtype.kind == "f")
        return [] if same else ["differs from its GeoTIFF"]


class DecibelCodec:
    """Sentinel-1 dB as uint8 codes: 0 = nodata, 1…255 = ``STEPS`` steps over each band's range."""

    def __init__(self, name: str, bands: Sequence[str]):
        self.name, self.bands = name, tuple(bands)
        self.dtype = np.dtype(np.float32)
        self.files = {name: (np.dtype(np.uint8), len(self.bands))}
        self.ranges = [s1_db_range(b) for b in self.bands]
        self.steps = [(high - low) / STEPS for low, high in self.ranges]
        self._step = np.array(self.steps, np.float32)[:, None, None]  # code k ↦ low + (k − 1)·step
        self._offset = np.array([low - step for (low, _), step in zip(self.ranges, self.steps)], np.float32)[:, None, None]

    def describe(self) -> dict:
        return {"stored": "uint8", "db_ranges": dict(zip(self.bands, map(list, self.ranges)))}

    def encode(self, array: np.ndarray) -> dict[str, np.ndarray]:
        codes = np.zeros(array.shape, np.uint8)
        for b, ((low, high), step) in enumerate(zip(self.ranges, self.steps)):
            values = array[b]
            finite = ~np.isnan(values)
            codes[b][finite] = 1 + np.rint((np.clip(values[finite], low, high) - low) / step).astype(np.uint8)
        return {self.name: codes}

    def decode(self, parts: dict[str, np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        codes = parts[self.name]
        out = np.multiply(codes, self._step, out=out, dtype=np.float32)  # arithmetic: 2–3× faster than a lookup
        out += self._offset
        _fill_codes(out, codes, 0, np.nan)
        return out

    def errors(self, reference: np.ndarray, decoded: np.ndarray) -> list[str]:
        problems = []
        for b, (band, (low, high), step) in enumerate(zip(self.bands, self.ranges, self.steps)):
            expected = np.clip(reference[b], low, high)
            problems += _compare(band, expected, decoded[b], step / 2)
        return problems


class TerrainCodec:
    """dem in int16 half metres; slope and aspect as one uint16 per pixel (slope code · 256 + aspect
    code); hillshade recomputed from that pair by one table lookup.

    Hillshade is gdaldem's ``1 + 254·max(0, sin(alt)·cos(slope) + cos(alt)·sin(slope)·cos(az − aspect))``
    (1 where the sun is below the local horizon), which equals the archive's value to ~1e-4.
    Slope codes: 0 nodata, 1 + k for k steps; aspect codes: 0 nodata, 1 flat, 2 + k for k steps.
    """

    BANDS = ("dem", "slope", "aspect", "hillshade")
    DEM_STEP_M = 0.5
    DEM_NODATA = -32768

    def __init__(self, name: str, *, azimuth: float = 315.0, altitude: float = 45.0):
        self.name, self.bands = name, self.BANDS
        self.dtype = np.dtype(np.float32)
        self.azimuth, self.altitude = float(azimuth), float(altitude)
        self.files = {f"{name}_dem": (np.dtype(np.int16), 1), f"{name}_slope_aspect": (np.dtype(np.uint16), 1)}
        self.slope_step, self.aspect_step = 90.0 / STEPS, 360.0 / STEPS
        code = np.arange(256)
        slope = np.where(code == 0, np.nan, np.deg2rad((code - 1) * self.slope_step))[:, None]
        aspect = np.where(code < 2, 0.0, (code - 2) * self.aspect_step)  # flat: slope is 0, aspect moot
        aspect = np.where(code == 0, np.nan, aspect)[None, :]
        alt = math.radians(self.altitude)
        shade = math.sin(alt) * np.cos(slope) + math.cos(alt) * np.sin(slope) * np.cos(np.deg2rad(self.azimuth - aspect))
        with np.errstate(invalid="ignore"):
            self.hillshade_lut = np.where(shade <= 0, 1.0, 1.0 + 254.0 * shade).astype(np.float32).reshape(-1)
        # |d shade/d slope| ≤ 1 and |d shade/d aspect| ≤ cos(alt): the bound of half a step of each
        self.hillshade_tolerance = 254.0 * (math.radians(self.slope_step / 2)
                                            + abs(math.cos(alt)) * math.radians(self.aspect_step / 2))

    def describe(self) -> dict:
        return {"stored": "dem int16 half metres, slope and aspect uint8 codes in one uint16, hillshade derived",
                "azimuth": self.azimuth, "altitude": self.altitude}

    def encode(self, array: np.ndarray) -> dict[str, np.ndarray]:
        dem, slope, aspect = array[0], array[1], array[2]
        dem_codes = np.full(dem.shape, self.DEM_NODATA, np.int16)
        finite = ~np.isnan(dem)
        dem_codes[finite] = np.clip(np.rint(dem[finite] / self.DEM_STEP_M), -32767, 32767)
        slope_codes = np.zeros(dem.shape, np.uint16)
        finite = ~np.isnan(slope)
        slope_codes[finite] = 1 + np.rint(np.clip(slope[finite], 0.0, 90.0) / self.slope_step)
        aspect_codes = np.zeros(dem.shape, np.uint16)
        flat, sloped = aspect < ASPECT_FLAT_BELOW, aspect >= ASPECT_FLAT_BELOW  # both False where NaN
        aspect_codes[flat] = 1
        aspect_codes[sloped] = 2 + (np.rint(aspect[sloped] / self.aspect_step).astype(np.int64) % STEPS)
        return {f"{self.name}_dem": dem_codes[None], f"{self.name}_slope_aspect": (slope_codes << 8 | aspect_codes)[None]}

    def decode(self, parts: dict[str, np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        dem = parts[f"{self.name}_dem"][..., 0, :, :]
        pair = parts[f"{self.name}_slope_aspect"][..., 0, :, :]
        if out is None:
            out = np.empty((*dem.shape[:-2], 4, *dem.shape[-2:]), np.float32)
        np.multiply(dem, np.float32(self.DEM_STEP_M), out=out[..., 0, :, :], dtype=np.float32)
        _fill_codes(out[..., 0, :, :], dem, self.DEM_NODATA, np.nan)
        slope, aspect = pair >> 8, pair & 0xFF
        np.multiply(slope, np.float32(self.slope_step), out=out[..., 1, :, :], dtype=np.float32)
        out[..., 1, :, :] -= np.float32(self.slope_step)
        _fill_codes(out[..., 1, :, :], slope, 0, np.nan)
        np.multiply(aspect, np.float32(self.aspect_step), out=out[..., 2, :, :], dtype=np.float32)
        out[..., 2, :, :] -= np.float32(2 * self.aspect_step)
        _fill_codes(out[..., 2, :, :], aspect, 1, -1.0)
        _fill_codes(out[..., 2, :, :], aspect, 0, np.nan)
        np.take(self.hillshade_lut, pair, out=out[..., 3, :, :], mode="clip")  # "clip" writes in place; codes fit
        return out

    def errors(self, reference: np.ndarray, decoded: np.ndarray) -> list[str]:
        problems = _compare("dem", reference[0], decoded[0], self.DEM_STEP_M / 2)
        problems += _compare("slope", reference[1], decoded[1], self.slope_step / 2)
        ref, got = reference[2], decoded[2]
        if not np.array_equal(np.isnan(ref), np.isnan(got)) or not np.array_equal(ref < ASPECT_FLAT_BELOW, got < ASPECT_FLAT_BELOW):
            problems.append("aspect: nodata or flat pixels differ from its GeoTIFF")
        else:
            both = ref >= ASPECT_FLAT_BELOW
            turn = np.abs(ref[both] - got[both]) % 360.0
            worst = float(np.minimum(turn, 360.0 - turn).max(initial=0.0))
            if worst > self.aspect_step / 2 + _FLOAT_SLACK:
                problems.append(f"aspect: {worst:.3g}° from its GeoTIFF (tolerance {self.aspect_step / 2:.3g}°)")
        problems += _compare("hillshade", reference[3], decoded[3], self.hillshade_tolerance)
        return problems


def _fill_codes(out: np.ndarray, codes: np.ndarray, code: int, value: float) -> None:
    """``out[codes == code] = value``; a cheap min/max test first skips the mask (nodata and flat are rare)."""
    if codes.size and codes.min() <= code <= codes.max():
        np.copyto(out, np.float32(value), where=codes == code)


def _compare(band: str, expected: np.ndarray, decoded: np.ndarray, tolerance: float) -> list[str]:
    """Problems of one decoded band against its GeoTIFF values: nodata must match, values within tolerance."""
    missing = np.isnan(expected)
    if not np.array_equal(missing, np.isnan(decoded)):
        return [f"{band}: nodata pixels differ from its GeoTIFF"]
    worst = float(np.abs(expected[~missing] - decoded[~missing]).max(initial=0.0))
    if worst > tolerance + _FLOAT_SLACK:
        return [f"{band}: {worst:.3g} from its GeoTIFF (tolerance {tolerance:.3g})"]
    return []


def codecs(archive: Archive) -> dict[str, ExactCodec | DecibelCodec | TerrainCodec]:
    """How each of the archive's sources is stored in its cache."""
    out = {}
    for name, spec in sorted(archive.sources().items()):
        if name == "s1" and spec.numpy_dtype.kind == "f":
            out[name] = DecibelCodec(name, spec.band_names)
        elif name == "terrain" and tuple(spec.band_names) == TerrainCodec.BANDS:
            shading = archive.read_meta().get("terrain", {})
            out[name] = TerrainCodec(name, azimuth=shading.get("azimuth", 315.0), altitude=shading.get("altitude", 45.0))
        else:
            out[name] = ExactCodec(name, spec.numpy_dtype, spec.band_names)
    return out


def encoding(archive: Archive) -> dict:
    """The cache format and each source's encoding, as recorded in ``tiles.json``."""
    return {"format": CACHE_FORMAT, "sources": {name: codec.describe() for name, codec in codecs(archive).items()}}


def cache_dir(archive: Archive, split: str) -> Path:
    return archive.root / "cache" / split


def _rows_sha256(row_digests: Iterable[bytes]) -> str:
    """An array's ``rows_sha256``: independent of how the rows were shared among the workers that wrote them."""
    digest = hashlib.sha256()
    for row in row_digests:
        digest.update(row)
    return digest.hexdigest()


def _manifest(folder: Path) -> tuple[dict | None, str | None]:
    """``(manifest, damage)``: the folder's manifest (None when there is none) and what keeps the cache from
    being read as the manifest describes it: an array missing or of another size, or the manifest unreadable.

    A manifest of an older format records no arrays: its cache is stale (rebuilt on use), not damaged.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"{MANIFEST} unreadable ({exc})"
    try:
        if manifest["encoding"]["format"] != CACHE_FORMAT:
            return manifest, None
        for file, record in sorted(manifest["arrays"].items()):
            try:
                size = (folder / f"{file}.npy").stat().st_size
            except FileNotFoundError:
                return manifest, f"{file}.npy is missing"
            if size != record["bytes"]:
                return manifest, f"{file}.npy holds {size:,} bytes, {MANIFEST} records {record['bytes']:,}"
    except (KeyError, TypeError, AttributeError, ValueError):
        return None, f"{MANIFEST} is not a cache manifest"
    return manifest, None


def damage(archive: Archive, split: str) -> str | None:
    """What keeps the split's cache from being read (a missing or truncated array …), or None."""
    return _manifest(cache_dir(archive, split))[1]


def fingerprint(archive: Archive, split: str) -> str:
    """Hash of the split's tile ids and their files' sizes and modification times."""
    digest = hashlib.sha256()
    for props in archive.tiles(split):
        for source in sorted(archive.sources()):
            stat = os.stat(archive.tile_path(source, props["tile_id"]))
            digest.update(f"{props['tile_id']}/{source}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def is_current(archive: Archive, split: str) -> bool:
    """Whether the split's cache is whole, in this rsgee's encoding and built from the archive's current tiles."""
    stored, broken = _manifest(cache_dir(archive, split))
    if stored is None or broken:
        return False
    try:
        return stored["encoding"] == encoding(archive) and stored["fingerprint"] == fingerprint(archive, split)
    except (KeyError, TypeError):
        return False


def update_caches(archive: Archive, splits: Sequence[str], *, workers: int = 1, force: bool = False,
                  progress: bool = True) -> list[str]:
    """Build the caches of ``splits`` that are not current (every one with ``force``); returns those built.

    Decides and builds under the archive's lock, taken once and waited for when another process holds it:
    processes that ask at once (two ``rsgee cache``, the ranks of a torchrun job) build each cache once.
    """
    todo = [split for split in splits if force or not is_current(archive, split)]
    if not todo:
        return []
    with archive.lock(wait=True):
        todo = [split for split in todo if force or not is_current(archive, split)]  # the one waited for built them
        for split in todo:
            build_cache(archive, split, workers=workers, progress=progress)
    return todo


def verify_hashes(archive: Archive, split: str) -> list[str]:
    """The arrays of a whole cache whose bytes no longer hash to the manifest's ``rows_sha256``."""
    folder = cache_dir(archive, split)
    stored, _ = _manifest(folder)
    changed = []
    for file, record in sorted(stored["arrays"].items()):
        rows = np.load(folder / f"{file}.npy", mmap_mode="r")
        if _rows_sha256(hashlib.sha256(row).digest() for row in rows) != record["rows_sha256"]:
            changed.append(f"{file}.npy")
    return changed


_RUN = 64  # tiles per unit of work when building


def build_cache(archive: Archive, split: str, *, workers: int = 1, progress: bool = True) -> Path:
    """(Re)build the packed cache of one split; returns its folder. Written aside, its manifest last, then
    swapped in. Call it under the archive's lock (:func:`update_caches` does): two builders share the folders.

    ``workers`` processes read and encode disjoint runs of tiles into the same memory-mapped files.
    """
    tiles = [p["tile_id"] for p in archive.tiles(split)]
    final = cache_dir(archive, split)
    work = final.with_name(f".{split}.building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        arrays = _write_arrays(archive, split, tiles, work, workers, progress)
        write_json_atomic(work / MANIFEST, {"split": split, "tiles": tiles, "fingerprint": fingerprint(archive, split),
                                            "encoding": encoding(archive), "arrays": arrays})
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # a failed or interrupted build leaves no half-built folder
        raise
    old = final.with_name(f".{split}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(work, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _write_arrays(archive: Archive, split: str, tiles: list[str], work: Path, workers: int,
                  progress: bool) -> dict[str, dict]:
    """Fill the split's arrays in ``work``; returns each one's manifest record (size and ``rows_sha256``)."""
    row_digests: dict[str, list[bytes]] = {}
    for codec in codecs(archive).values():
        for file, (dtype, bands) in codec.files.items():
            np.lib.format.open_memmap(work / f"{file}.npy", mode="w+", dtype=dtype,
                                      shape=(len(tiles), bands, TILE_PX, TILE_PX)).flush()
            _reserve(work / f"{file}.npy")
            row_digests[file] = []
    runs = [(start, tiles[start:start + _RUN]) for start in range(0, len(tiles), _RUN)]
    bar = tqdm(total=len(tiles), desc=f"cache {split}", unit="tile", disable=not progress, file=sys.stderr)
    with bar, contextlib.ExitStack() as stack:
        if workers <= 1 or len(runs) < 2:
            filled = (_fill(str(archive.root), str(work), *run) for run in runs)
        else:
            pool = stack.enter_context(process_pool(min(workers, len(runs))))
            filled = pool.map(_fill, [str(archive.root)] * len(runs), [str(work)] * len(runs), *zip(*runs))
        for (_, run), digests in zip(runs, filled):  # in row order, whatever the scheduling
            for file, rows in digests.items():
                row_digests[file] += rows
            bar.update(len(run))
    return {file: {"bytes": (work / f"{file}.npy").stat().st_size, "rows_sha256": _rows_sha256(rows)}
            for file, rows in row_digests.items()}


def _reserve(path: Path) -> None:
    """Allocate the blocks of the (sparse) array file ``path`` now: on a full disk a write through its memory
    map would kill the process with SIGBUS, where this fails in one line."""
    if not hasattr(os, "posix_fallocate"):  # macOS: the writes find out, as before
        return
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as exc:
            error = unwritable(path.parent, exc)
            if error is not None:
                raise error from None
            # a file system without fallocate: the writes find out, as before


def _fill(root: str, work: str, start: int, tile_ids: Sequence[str]) -> dict[str, list[bytes]]:
    """Read, encode and write rows ``start…`` of the cache files in ``work``; returns each file's row digests."""
    archive = Archive(root)
    coders = codecs(archive)
    arrays = {file: np.load(Path(work) / f"{file}.npy", mmap_mode="r+")
              for codec in coders.values() for file in codec.files}
    digests: dict[str, list[bytes]] = {file: [] for file in arrays}
    with rasterio.Env(**GDAL_READ_ENV):
        for row, tile_id in enumerate(tile_ids, start):
            for name, codec in coders.items():
                for file, codes in codec.encode(_read_tile(archive, name, tile_id, len(codec.bands))).items():
                    arrays[file][row] = codes
                    digests[file].append(hashlib.sha256(arrays[file][row]).digest())  # the bytes as written
    for array in arrays.values():
        array.flush()
    return digests


def _read_tile(archive: Archive, source: str, tile_id: str, bands: int) -> np.ndarray:
    """A tile's GeoTIFF of ``source``; a missing, cut short or misshapen one is a one-line error naming it."""
    path = archive.tile_path(source, tile_id)
    try:
        with rasterio.open(path) as src:
            data = src.read()
    except rasterio.errors.RasterioError as exc:
        problem = f"unreadable ({str(exc).splitlines()[0]})"
    else:
        if data.shape == (bands, TILE_PX, TILE_PX):
            return data
        problem = f"of shape {data.shape}, not {(bands, TILE_PX, TILE_PX)}"
    raise RsgeeError(f"tile {tile_id}: {path} is {problem}; run rsgee check {archive.root} to list the damaged tiles")


class PackedSplit:
    """Read-only view of a split's cache: ``split[i]`` → {source: (bands, 256, 256) array}.

    Samples come back decoded, in the archive's dtypes, units and nodata (within the tolerances of
    the module docstring). Arrays are opened lazily (so a DataLoader can fork before the first read)
    and every sample is fresh memory, so callers may modify it (a sample's sources share one buffer).
    """

    def __init__(self, archive: Archive, split: str):
        folder = cache_dir(archive, split)
        self._fix = f"run rsgee cache {archive.root} to rebuild it"
        meta, broken = _manifest(folder)
        if broken:
            raise RsgeeError(f"{folder}: {broken}; {self._fix}")
        if meta is None:
            raise RsgeeError(f"{archive.root}: no packed cache for split '{split}'; run rsgee cache")
        if meta["encoding"]["format"] != CACHE_FORMAT:
            raise RsgeeError(f"{folder}: a packed cache of an older rsgee; {self._fix}")
        self.folder = folder
        self.split = split
        self.tile_ids: list[str] = meta["tiles"]
        self.codecs = codecs(archive)
        self.sources = sorted(self.codecs)
        self._arrays: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.tile_ids)

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            try:
                self._arrays = {file: np.load(self.folder / f"{file}.npy", mmap_mode="r")
                                for codec in self.codecs.values() for file in codec.files}
            except (OSError, ValueError) as exc:  # changed since it was opened (removed, cut short)
                raise RsgeeError(f"{self.folder}: unreadable ({exc}); {self._fix}") from None
        return self._arrays

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.read(i)

    def read(self, i, sources=None, window: tuple[slice, slice] | None = None) -> dict[str, np.ndarray]:
        """Sample ``i`` — only ``sources`` (default all), only ``window`` (rows, cols) if given.

        ``i`` may also be a slice of samples: arrays then gain a leading sample axis.
        """
        rows, cols = window or (slice(None), slice(None))
        arrays = self._open()
        parts = {source: {file: arrays[file][i, :, rows, cols] for file in self.codecs[source].files}
                 for source in sources or self.sources}
        # One fresh buffer for the whole sample, carved into the sources' arrays: several separate
        # ~0.5–1 MB arrays made glibc trim and re-fault its heap on every sample (3–4× slower reads).
        shapes = {}
        for source, files in parts.items():
            codec, first = self.codecs[source], next(iter(files.values()))
            shapes[source] = (*first.shape[:-3], len(codec.bands), *first.shape[-2:])
        nbytes = {s: math.prod(shape) * self.codecs[s].dtype.itemsize for s, shape in shapes.items()}
        buffer = np.empty(sum(-(-n // 64) * 64 for n in nbytes.values()), np.uint8)  # each array 64-byte aligned
        out, start = {}, 0
        for source, shape in shapes.items():
            codec = self.codecs[source]
            view = buffer[start:start + nbytes[source]].view(codec.dtype).reshape(shape)
            out[source] = codec.decode(parts[source], out=view)
            start += -(-nbytes[source] // 64) * 64
        return out

    def nbytes_per_tile(self) -> int:
        """Bytes one tile takes in the cache files."""
        return sum(np.dtype(dtype).itemsize * bands * TILE_PX * TILE_PX
                   for codec in self.codecs.values() for dtype, bands in codec.files.values())

    def __getstate__(self) -> dict:  # pickles without open memory maps
        return dict(self.__dict__, _arrays=None)


def open_split(archive: Archive, split: str, *, rebuild: bool = True, progress: bool = True) -> PackedSplit:
    """The packed cache of ``split``, (re)built first when missing or stale (unless ``rebuild`` is False).

    Processes that open the same split at once (the ranks of a torchrun job) wait for one builder.
    """
    if rebuild:
        update_caches(archive, [split], progress=progress)
    elif not is_current(archive, split):
        raise RsgeeError(f"{archive.root}: the packed cache of split '{split}' is missing, incomplete or stale; "
                         f"run rsgee cache {archive.root}")
    return PackedSplit(archive, split)


def verify_cache(archive: Archive, split: str) -> list[str]:
    """Compare every cached sample with its GeoTIFFs, within the encodings' tolerances; returns the mismatches."""
    packed = PackedSplit(archive, split)
    problems = []
    if packed.tile_ids != [p["tile_id"] for p in archive.tiles(split)]:
        problems.append(f"cache/{split}: tile list differs from the index")
        return problems
    with rasterio.Env(**GDAL_READ_ENV):
        for i, tile_id in enumerate(packed.tile_ids):
            for source, decoded in packed[i].items():
                with rasterio.open(archive.tile_path(source, tile_id)) as src:
                    reference = src.read()
                problems += [f"cache/{split}: {tile_id} {source} {p}"
                             for p in packed.codecs[source].errors(reference, decoded)]
    return problems
