"""GeoTIFF read settings and atomic writing: the only place that sets creation options and tags.

Writes go to a hidden temporary file beside the target and are renamed into place only when
complete, so a killed process never leaves a file that looks finished; a rerun removes what a
killed one left (:func:`remove_temporaries`). A write that fails for want of space or permission
ends in one :class:`~rsgee.errors.StorageError` line naming the folder, with no temporary left.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import rasterio
from affine import Affine

from rsgee.catalog import SourceSpec
from rsgee.errors import WRITE_ONLY_ERRNOS, RsgeeError, StorageError, unwritable

_UMASK = os.umask(0o022)
os.umask(_UMASK)
#: Read-side GDAL settings: don't list the directory on every open (archives hold many files).
GDAL_READ_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


@dataclass(frozen=True)
class RasterGrid:
    """What a GeoTIFF is georeferenced by."""

    crs: str
    transform: Affine
    width: int
    height: int


#: zstd's own default level. GDAL's default (9) writes rsgee's tiles 2.8× slower for 1.6 % fewer bytes
#: (the four files of a tile, 20 tiles of a synthetic archive: 41.6 → 14.9 ms, 1.385 → 1.407 MB; see NOTES.md).
ZSTD_LEVEL = 3


#: The largest ``max_z_error`` rsgee writes floats with: 0.01 in each band's units (dB, m, degrees,
#: hillshade 0–255) is far below what Sentinel-1 (1 dB) and GLO-30 (< 2 m relative) resolve.
MAX_Z_ERROR_LIMIT = 0.01


def creation_profile(spec: SourceSpec, grid: RasterGrid, *, compress: str = "zstd",
                     max_z_error: float = 0.0) -> dict:
    """Tiled, compressed GeoTIFF profile for one source on one grid (predictor on, BigTIFF if needed).

    ``max_z_error`` > 0 stores a floating-point source bounded-lossy instead (LERC + zstd: every value
    within that absolute error, NaN kept); integer sources stay lossless.
    """
    floating = spec.numpy_dtype.kind == "f"
    block = 256 if grid.width % 256 == 0 and grid.height % 256 == 0 else None
    profile = {
        "driver": "GTiff",
        "dtype": spec.dtype,
        "count": len(spec.bands),
        "width": grid.width,
        "height": grid.height,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": spec.nodata,
        "compress": compress,
        "predictor": 3 if floating else 2,
        "bigtiff": "IF_SAFER",
    }
    if max_z_error and floating:
        if not 0.0 < max_z_error <= MAX_Z_ERROR_LIMIT:
            raise RsgeeError(f"max_z_error must be within 0…{MAX_Z_ERROR_LIMIT}, got {max_z_error!r}")
        del profile["predictor"]  # LERC encodes the values itself
        profile.update(compress="lerc_zstd", max_z_error=float(max_z_error))
    if profile["compress"] in ("zstd", "lerc_zstd"):
        profile["zstd_level"] = ZSTD_LEVEL
    if block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    return profile


def make_folder(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` (and its parents) unless it exists; a one-line error where it cannot be
    (a file in the way, a read-only file system, no permission)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(path, exc) or exc
    return path


def remove_temporaries(folder: str | os.PathLike) -> None:
    """Delete the temporaries (``.*.tmp``) a killed writer left in ``folder``.

    Only for a folder whose writer holds it alone (an export's AOI folder, a run's folders): another
    writer's temporary would go too.
    """
    for stale in Path(folder).glob(".*.tmp"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary goes whatever happens. A write the block could not finish for want of room or
    permission becomes a :class:`~rsgee.errors.StorageError` naming the folder.
    """
    path = Path(path)
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise unwritable(path.parent, exc) or exc
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; the result should look like any new file
    try:
        try:
            yield tmp_path
        except (OSError, rasterio.errors.RasterioError) as exc:
            raise disk_error(path.parent, exc) or exc
        try:
            os.replace(tmp_path, path)
        except OSError as exc:
            raise unwritable(path, exc) or exc
    finally:
        tmp_path.unlink(missing_ok=True)


def disk_error(folder: Path, exc: BaseException) -> StorageError | None:
    """``exc``, raised while writing into ``folder``, as the disk's fault when it was: an OSError that only a
    write raises (ENOSPC, EDQUOT, EROFS), or a GDAL write error while ``folder`` takes no more bytes (GDAL
    says "Write failed" and drops the reason). None for anything else, such as an input that failed to read."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return unwritable(folder, exc) if exc.errno in WRITE_ONLY_ERRNOS else None
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(bytes(2**20))
            probe.flush()
    except OSError as refused:
        return unwritable(folder, refused)
    return None


_libtiff_quiet = False


def _quiet_libtiff_io() -> None:
    """Stop libtiff printing "_tiffWriteProc: No space left on device." on stderr for every failed write.

    GDAL's TIFF I/O callbacks report through libtiff's process-wide error handler, which prints; GDAL
    then raises the same failure, which rsgee reports in one line. Clearing that handler (Linux, where
    the loaded library is found in /proc/self/maps; elsewhere nothing) silences only those callbacks:
    every other TIFF error goes through GDAL's own per-file handlers.
    """
    global _libtiff_quiet
    if _libtiff_quiet:
        return
    _libtiff_quiet = True
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            libraries = {line.split()[-1] for line in maps if Path(line.split()[-1]).name.startswith("libtiff")}
        for library in libraries:
            ctypes.CDLL(library).TIFFSetErrorHandler(None)
    except (OSError, AttributeError):  # no /proc, or a libtiff without the symbol: keep its messages
        pass


def write_json_atomic(path: str | os.PathLike, data: object) -> None:
    """Write JSON (sorted keys, trailing newline) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")


@contextlib.contextmanager
def open_for_writing(
    path: str | os.PathLike, spec: SourceSpec, grid: RasterGrid, *, tags: Mapping[str, str] | None = None,
    units: Sequence[str] | None = None, compress: str = "zstd", max_z_error: float = 0.0,
) -> Iterator[rasterio.io.DatasetWriter]:
    """Create a GeoTIFF for ``spec`` on ``grid`` atomically; yield the open dataset for block writes.

    Band descriptions come from the spec, units from ``units`` (one per band) or ``spec.units``;
    ``tags`` are written as dataset metadata. The file appears at ``path`` only after the ``with``
    block completes.
    """
    names = spec.band_names
    units = list(units or [spec.units] * len(names))
    _quiet_libtiff_io()
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **creation_profile(spec, grid, compress=compress, max_z_error=max_z_error)) as dst:
            for i, (name, unit) in enumerate(zip(names, units), start=1):
                dst.set_band_description(i, name)
                dst.set_band_unit(i, unit)
            dst.update_tags(**{k: str(v) for k, v in (tags or {}).items()})
            yield dst


def write_array(
    path: str | os.PathLike, array: np.ndarray, spec: SourceSpec, grid: RasterGrid, *,
    tags: Mapping[str, str] | None = None, units: Sequence[str] | None = None, compress: str = "zstd",
    max_z_error: float = 0.0,
) -> None:
    """Write a whole (bands, height, width) array as one GeoTIFF, atomically."""
    with open_for_writing(path, spec, grid, tags=tags, units=units, compress=compress, max_z_error=max_z_error) as dst:
        dst.write(array.astype(spec.numpy_dtype, copy=False))
