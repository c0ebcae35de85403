"""The export folder: the only module that knows its layout, its manifest and its names.

::

    OUT/<aoi>/              one folder per AOI, named by its safe name (:func:`safe_name`)
      manifest.json         written last, atomically: the AOI (name, area, lon/lat geometry), the source and
                            its request, the AOI's grid, the catalog sources, every file (path, bands, dtype,
                            nodata, units), failed blocks, provenance
      s1.tif s2.tif lulc.tif dem.tif
                            one GeoTIFF per exported catalog source, on the AOI's lattice grid
      <source>_halo.tif     optional (the DEM from Earth Engine): that source on the grid grown by ``halo_px``
                            pixels on every side, so that terrain at the AOI border uses real neighbours
      .partial/             the writer's resumable state (downloaded blocks, batch tasks), gone once complete

A folder without ``manifest.json`` is incomplete, whatever else it holds. A batch export's manifest
points at files elsewhere: GDAL ``/vsigs/<bucket>/<object>`` paths (Cloud Storage), read in place; every
other path is relative to the folder and stays inside it, so a manifest never makes rsgee read files
elsewhere.

Writers (:mod:`rsgee.acquire.export`, :mod:`rsgee.acquire.earthengine.batch`) start from
:func:`new_manifest`, compare it with the folder's (:func:`existing_manifest`, :func:`same_request`) and finish
with :func:`write_manifest`. Readers (``rsgee tile``, ``rsgee predict``, the xarray views, the map previews)
find exports with :func:`find_exports` or :func:`export_folders` and open one with :func:`read_export`, which
checks the manifest where it is read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import rasterio
from affine import Affine
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from rsgee import __version__
from rsgee.catalog import Catalog, SourceSpec, without_recipe_keys
from rsgee.errors import GridError, RsgeeError
from rsgee.geotiff import GDAL_READ_ENV, write_json_atomic
from rsgee.grid import Grid

MANIFEST = "manifest.json"
#: The writer's private folder inside an AOI folder, for resumable state; removed after a complete export.
WORKDIR = ".partial"
NAME_MAX_LEN = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HALO = "_halo"


def safe_name(raw: str) -> str:
    """A name usable as one path component: ``[A-Za-z0-9._-]``, no leading dot, at most 64 chars.

    Path separators, ``..`` and other characters collapse to ``_``, so a name can never point
    outside the output folder.
    """
    name = _UNSAFE.sub("_", raw.strip()).strip("._-")
    return re.sub(r"\.{2,}", ".", name)[:NAME_MAX_LEN].rstrip("._-")


class Area(Protocol):
    """What a manifest records of an AOI (a :class:`rsgee.acquire.aoi.AOI` is one)."""

    name: str
    geometry: BaseGeometry

    @property
    def area_km2(self) -> float: ...


# -- writing ------------------------------------------------------------------------------------

def new_manifest(aoi: Area, grid: Grid, source: str, request: dict, catalog: Catalog,
                 specs: Sequence[SourceSpec]) -> dict:
    """The manifest of a request, before its files are written: each source at ``<source>.tif``."""
    return {
        "rsgee_version": __version__,
        "aoi": {"name": aoi.name, "area_km2": round(aoi.area_km2, 6),
                "geometry": mapping(aoi.geometry)},
        "source": source,
        "synthetic": source == "synthetic",
        "request": request,
        "grid": grid.to_dict(),
        "catalog": {"path": str(catalog.path), "sources": {s.name: s.to_dict() for s in specs}},
        "files": {
            s.name: {"path": f"{s.name}.tif", "bands": list(s.band_names), "dtype": s.dtype,
                     "nodata": "nan" if s.nodata_is_nan else s.nodata, "units": s.units}
            for s in specs
        },
        "provenance": {
            "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "python": sys.version.split()[0],
        },
    }


def add_halo(manifest: dict, source: str, halo_px: int, path: str | None = None) -> None:
    """Record ``<source>_halo``: ``source`` on the grid grown by ``halo_px`` on every side, at ``path``
    (``<source>_halo.tif`` in the folder by default)."""
    key = source + _HALO
    manifest["files"][key] = dict(manifest["files"][source], path=path or f"{key}.tif", halo_px=halo_px)


def same_request(old: dict, new: dict) -> bool:
    """Whether two manifests describe the same request (same source, request, grid, files and catalog
    sources), so that the folder of ``old`` already holds, or will hold, what ``new`` asks for."""
    files = {k: v for k, v in old.get("files", {}).items() if not k.endswith(_HALO)}
    old_sources, new_sources = old.get("catalog", {}).get("sources", {}), new["catalog"]["sources"]
    if new.get("source") != "earthengine":  # recipe-only keys change nothing the offline sources deliver
        old_sources, new_sources = without_recipe_keys(old_sources), without_recipe_keys(new_sources)
    return (all(old.get(k) == new.get(k) for k in ("source", "request", "grid")) and files == new["files"]
            and old_sources == new_sources)


def existing_manifest(folder: str | Path) -> dict | None:
    """The manifest of the export in ``folder``, None where there is none (yet); an error when it is damaged."""
    return read_manifest(folder) if (Path(folder) / MANIFEST).exists() else None


def mark_incomplete(folder: str | Path) -> None:
    """Remove the manifest before the files change: from here on the folder is an unfinished export."""
    (Path(folder) / MANIFEST).unlink(missing_ok=True)


def write_manifest(folder: str | Path, manifest: dict) -> None:
    """Write the manifest, atomically and last: the folder is a complete export from then on."""
    write_json_atomic(Path(folder) / MANIFEST, manifest)


def file_tags(source: str, aoi: str, spec: SourceSpec) -> dict[str, str]:
    """The tags every exported GeoTIFF carries: where its pixels come from, labelled when synthetic."""
    synthetic = source == "synthetic"
    return {
        "RSGEE_VERSION": __version__,
        "RSGEE_SOURCE": source,
        "RSGEE_SYNTHETIC": "yes" if synthetic else "no",
        "RSGEE_AOI": aoi,
        "RSGEE_CATALOG_SOURCE": spec.name,
        "RSGEE_COLLECTION": spec.collection,
        "TIFFTAG_IMAGEDESCRIPTION": (
            f"rsgee {'SYNTHETIC ' if synthetic else ''}{spec.name}: {spec.description} ({spec.units})"
        ),
    }


# -- reading ------------------------------------------------------------------------------------

def read_manifest(folder: str | Path) -> dict:
    """The manifest of a complete export folder, checked where it is read (error if the export is missing,
    unfinished or damaged): every reader may then take its AOI name, grid and file paths as written."""
    return _load(Path(folder))[0]


def _load(folder: Path) -> tuple[dict, str]:
    """The checked manifest and the sha256 of its bytes."""
    path = folder / MANIFEST
    try:
        data = path.read_bytes()
        manifest = json.loads(data)
    except FileNotFoundError:
        raise RsgeeError(f"{folder}: no {MANIFEST}, so this export is missing or unfinished; re-run rsgee export") from None
    except (OSError, ValueError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    else:
        problem = _manifest_problem(manifest)
    if problem:
        raise RsgeeError(f"{path} is damaged ({problem}); re-run rsgee export with --overwrite") from None
    return manifest, hashlib.sha256(data).hexdigest()


def _manifest_problem(manifest: object) -> str | None:
    """What makes a parsed manifest unusable, or None.

    The AOI name becomes an archive's AOI and folder names, so it must be a safe name; every file must lie
    in the export folder (a relative path without ``..``) or in a Cloud Storage bucket (``/vsigs/``, a batch
    export's): a manifest never makes rsgee read files elsewhere.
    """
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    aoi = manifest.get("aoi")
    name = aoi.get("name") if isinstance(aoi, dict) else None
    if not isinstance(name, str) or not name or safe_name(name) != name:
        return f"AOI name {name!r} is not a safe name ([A-Za-z0-9._-], no leading dot)"
    if not isinstance(aoi.get("geometry"), dict) or not isinstance(manifest.get("source"), str):
        return "no AOI geometry or no source"
    for key in ("request", "catalog", "provenance", "failed_blocks"):
        if not isinstance(manifest.get(key, {}), dict):
            return f"{key} is not an object"
    try:
        Grid.from_dict(manifest.get("grid"))
    except (GridError, KeyError, TypeError, ValueError):
        return "no valid grid"
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        return "no file list"
    for key, entry in files.items():
        where = entry.get("path", f"{key}.tif")
        inside = isinstance(where, str) and where and not Path(where).is_absolute() and ".." not in Path(where).parts
        if not (inside or (isinstance(where, str) and where.startswith("/vsigs/"))):
            return f"file {key} is at {where!r}, outside the export folder"
    return None


def export_windows(manifest: dict) -> dict[str, list[str]] | None:
    """Date windows ``[start, end)`` (ISO dates, end excluded) per exported source, from the request.

    Earth Engine records one window per source, the synthetic source one for all; local files carry
    no dates, so their exports give None.
    """
    request = manifest.get("request", {})
    if "windows" in request:
        return {name: list(window) for name, window in sorted(request["windows"].items())}
    if "start" in request and "end" in request:
        names = [name for name in manifest.get("files", {}) if not name.endswith(_HALO)]
        return {name: [request["start"], request["end"]] for name in sorted(names)}
    return None


def export_folders(path: str | Path) -> list[Path]:
    """The complete AOI exports at ``path``: the folder itself when it is one, else those of its subfolders."""
    path = Path(path)
    if (path / MANIFEST).exists():
        return [path]
    return sorted(p.parent for p in path.glob(f"*/{MANIFEST}"))


def find_exports(paths: Sequence[str | Path]) -> list[Path]:
    """Export folders from the command line: each path is an AOI folder or a folder of them."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise RsgeeError(f"{path}: no such export folder")
        folders = export_folders(path)
        if not folders:
            raise RsgeeError(f"{path}: no complete AOI export here (no */{MANIFEST}); run rsgee export first")
        found.extend(folders)
    return found


@dataclass(frozen=True)
class Export:
    """A complete export folder as its manifest describes it (:func:`read_export` makes one)."""

    folder: Path
    manifest: dict
    manifest_sha256: str  # identifies the export: archives and predictions record what they were made from

    @property
    def name(self) -> str:
        return self.manifest["aoi"]["name"]

    @property
    def source(self) -> str:
        """The block source that wrote it: "synthetic", "earthengine" or "local"."""
        return self.manifest["source"]

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"

    @cached_property
    def grid(self) -> Grid:
        return Grid.from_dict(self.manifest["grid"])

    @property
    def geometry(self) -> BaseGeometry:
        """The AOI in lon/lat."""
        return shape(self.manifest["aoi"]["geometry"])

    @property
    def files(self) -> dict[str, dict]:
        """Every file's manifest entry (bands, dtype, nodata, units) by key: sources and their halos."""
        return self.manifest["files"]

    @property
    def layers(self) -> list[str]:
        """The sources with a file on the AOI's grid (halo files left out)."""
        return [key for key in self.files if not key.endswith(_HALO)]

    @cached_property
    def paths(self) -> dict[str, str]:
        """Where each file is: in the folder, or a GDAL ``/vsigs/bucket/…`` path of a batch export."""
        paths = {}
        for key, entry in self.files.items():
            path = entry.get("path", f"{key}.tif")
            paths[key] = path if path.startswith("/vsigs/") else str(self.folder / path)
        return paths

    @property
    def windows(self) -> dict[str, list[str]] | None:
        return export_windows(self.manifest)

    @contextmanager
    def open_file(self, key: str) -> Iterator[rasterio.io.DatasetReader]:
        """One file for reading, under rsgee's GDAL read settings; one that cannot be opened is a one-line
        error naming it."""
        path = self.paths[key]
        with rasterio.Env(**GDAL_READ_ENV):
            try:
                src = rasterio.open(path)
            except rasterio.errors.RasterioIOError as exc:
                raise RsgeeError(f"AOI '{self.name}': cannot open {path} ({str(exc).splitlines()[0]}); "
                                 "re-export it") from None
            with src:
                yield src


def read_export(folder: str | Path) -> Export:
    """The export in ``folder``, its manifest checked (:func:`read_manifest`); the files are opened as read."""
    folder = Path(folder)
    manifest, sha256 = _load(folder)
    return Export(folder, manifest, sha256)


def grid_problem(src, grid: Grid, halo: int = 0) -> str | None:
    """Why the open raster ``src`` is not on the AOI's ``grid`` (grown by ``halo`` pixels on every side), or None."""
    transform = grid.transform @ Affine.translation(-halo, -halo)
    width, height = grid.width + 2 * halo, grid.height + 2 * halo
    which = f"the AOI grid's (grown by {halo} px)" if halo else "the AOI grid's"
    if src.crs is None or src.crs.to_epsg() != grid.epsg:
        return f"CRS {src.crs} differs from the AOI grid's EPSG:{grid.epsg}"
    if src.transform != transform:
        return f"transform {tuple(src.transform)[:6]} differs from {which} {tuple(transform)[:6]}"
    if (src.width, src.height) != (width, height):
        return f"shape {src.width}×{src.height} differs from {which} {width}×{height}"
    return None
