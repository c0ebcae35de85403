"""The archive's layout: the only module that knows where things live inside an archive folder.

::

    ARCHIVE/
      archive.json          format, sources and bands, split and filter settings, max_float_error
                            (0.0 = lossless float tiles), AOIs tiled (with their exports' date windows)
      catalog.yaml          the catalog the archive was built with (a byte copy)
      index.geojson         one Feature per tile: footprint in lon/lat, tile id, AOI, split,
                            valid fractions, class histogram (a GIS opens it as is)
      stats.json            per-band mean/std/p2/p98 of the train split
      s1/<tile_id>.tif      VV, VH (dB)                     float32, NaN nodata
      s2/<tile_id>.tif      B2, B3, B4, B8 (reflectance×1e4) uint16, 0 nodata
      lulc/<tile_id>.tif    label (Dynamic World 0–8)        uint8, 255 nodata
      terrain/<tile_id>.tif dem, slope, aspect, hillshade   float32, NaN nodata
      cache/<split>/        packed arrays for training (rsgee.preprocess.cache)
      gen/<tile_id>.tif     pseudo-S2 from a fusion run (rsgee generate), gen/generated.json says which
      stac/                 a STAC Collection of the tiles (rsgee stac): collection.json,
                            <tile_id>/<tile_id>.json, asset hrefs relative (rsgee.preprocess.stac)

A tile is in ``index.geojson`` only once all its files are complete. While ``rsgee tile`` runs,
finished tiles are appended to ``index.journal`` (one JSON line each) and merged into the index at
the end, or at the start of the next run if the process was killed.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

import filelock

from rsgee.catalog import BandSpec, Catalog, CatalogError, SourceSpec, load_catalog
from rsgee.errors import GridError, RsgeeError, unwritable
from rsgee.geotiff import atomic_path, make_folder, write_json_atomic
from rsgee.grid import Tile
from rsgee.preprocess.split import SPLITS, SplitConfig

log = logging.getLogger("rsgee")

FORMAT = "rsgee-archive"
FORMAT_VERSION = 1
TERRAIN_BANDS = (
    ("slope", "degrees"),
    ("aspect", "degrees clockwise from north, -1 flat"),
    ("hillshade", "0-255, azimuth 315, altitude 45"),
)


def terrain_spec(dem: SourceSpec) -> SourceSpec:
    """The archive's terrain source: the DEM band followed by slope, aspect and hillshade."""
    extra = tuple(BandSpec(name, name, unit) for name, unit in TERRAIN_BANDS)
    return replace(dem, name="terrain", bands=dem.bands + extra, dtype="float32", nodata=float("nan"),
                   description=f"{dem.description}, with Horn slope, aspect and hillshade (gdaldem conventions)",
                   units="m")


def terrain_units(spec: SourceSpec) -> list[str]:
    """Per-band units of the terrain source (the DEM's own unit first)."""
    return [spec.units] + [unit for _, unit in TERRAIN_BANDS]


def recorded_float_error(meta: dict) -> float:
    """archive.json's bound on the float tiles' error: 0.0 = lossless (archives from before the option are)."""
    return float(meta.get("max_float_error", 0.0))


def tile_sources(catalog: Catalog) -> dict[str, SourceSpec]:
    """Archive sources: every catalog source except the DEM, which becomes ``terrain``."""
    catalog.require("s1", "s2", "lulc", "dem")
    specs = {name: spec for name, spec in catalog.sources.items() if name != "dem"}
    specs["terrain"] = terrain_spec(catalog["dem"])
    return specs


class Archive:
    """An archive folder: paths, metadata, index and journal."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._catalog: Catalog | None = None  # parsed once: an archive keeps the catalog it started with
        self._locked = False  # this object holds :meth:`lock`

    # -- paths ------------------------------------------------------------------------------
    @property
    def meta_path(self) -> Path:
        return self.root / "archive.json"

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.yaml"

    @property
    def index_path(self) -> Path:
        return self.root / "index.geojson"

    @property
    def journal_path(self) -> Path:
        return self.root / "index.journal"

    @property
    def stats_path(self) -> Path:
        return self.root / "stats.json"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def tile_path(self, source: str, tile_id: str) -> Path:
        return self.root / source / f"{tile_id}.tif"

    @property
    def generated_dir(self) -> Path:
        """``gen/``: pseudo-Sentinel-2 made by a fusion run (``rsgee generate``), never archive data."""
        return self.root / "gen"

    def generated_path(self, tile_id: str) -> Path:
        return self.generated_dir / f"{tile_id}.tif"

    @property
    def generated_meta_path(self) -> Path:
        return self.generated_dir / "generated.json"

    def generated_record(self) -> dict | None:
        """``gen/generated.json``: the run and checkpoint whose tiles ``gen/`` holds, checked (None before the
        first ``rsgee generate``)."""
        try:
            record = json.loads(self.generated_meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        else:
            problem = None if isinstance(record, dict) and isinstance(record.get("run"), str) else "it names no run"
        if problem:
            raise RsgeeError(f"{self.generated_meta_path} is damaged ({problem}); run `rsgee generate RUN {self.root} "
                             "--overwrite` to generate gen/ again")
        return record

    @property
    def stac_dir(self) -> Path:
        """``stac/``: inside the archive, so that the relative asset hrefs survive moving the folder."""
        return self.root / "stac"

    def exists(self) -> bool:
        return self.meta_path.exists()

    # -- metadata ---------------------------------------------------------------------------
    def read_meta(self) -> dict:
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RsgeeError(f"{self.root} is not an rsgee archive (no archive.json); build one with rsgee tile") from None
        except (OSError, ValueError) as exc:
            raise RsgeeError(f"{self.meta_path}: unreadable ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
            raise RsgeeError(f"{self.meta_path}: not an {FORMAT} version {FORMAT_VERSION} archive")
        try:
            SplitConfig.from_dict(meta["split"])
        except (KeyError, TypeError, ValueError, AttributeError, RsgeeError):
            problem = "no valid split settings"
        else:
            problem = None if isinstance(meta.get("aois"), dict) else "no AOI list"
        if problem:
            raise RsgeeError(f"{self.meta_path} is damaged ({problem}); restore it, or rebuild the archive with rsgee "
                             "tile into a new folder")
        return meta

    def write_meta(self, meta: dict) -> None:
        write_json_atomic(self.meta_path, meta)

    def catalog(self) -> Catalog:
        """The catalog the archive was built with (read once per Archive object: it never changes)."""
        if self._catalog is None:
            fix = ("restore this copy of the catalog the archive was built with (the --catalog given to rsgee tile, or "
                   "rsgee's own catalog.yaml), or rebuild the archive with rsgee tile into a new folder")
            if not self.catalog_path.exists():
                raise CatalogError(f"{self.catalog_path} is missing; {fix}")
            try:
                self._catalog = load_catalog(self.catalog_path)
            except CatalogError as exc:
                raise CatalogError(f"{exc}; {fix}") from None
        return self._catalog

    def sources(self) -> dict[str, SourceSpec]:
        return tile_sources(self.catalog())

    def linked_copy(self, dest: str | os.PathLike) -> "Archive":
        """A copy of the archive at ``dest`` whose files are hard links to these, without ``gen/`` or the lock file.

        Safe because rsgee never changes an archive file in place (every write goes to a temporary file that
        is renamed over it), and cheap: an experiment gives each generator's tiles an archive of their own.
        (A linked lock file would make the two archives lock each other.) Made aside and renamed into place; an
        existing ``dest`` is kept as it is.
        """
        dest = Path(dest)
        if not dest.exists():
            work = dest.with_name(f".{dest.name}.linking")
            shutil.rmtree(work, ignore_errors=True)
            own = [self.generated_dir.name, self.lock_path.name]
            shutil.copytree(self.root, work, copy_function=os.link,
                            ignore=lambda folder, names: own if Path(folder) == self.root else [])
            os.replace(work, dest)
        return Archive(dest)

    def save_catalog(self, catalog: Catalog) -> None:
        """Copy the catalog file byte for byte (once: an archive keeps the catalog it started with)."""
        if not self.catalog_path.exists():
            with atomic_path(self.catalog_path) as tmp:
                shutil.copyfile(catalog.path, tmp)

    # -- index ------------------------------------------------------------------------------
    def read_index(self) -> dict[str, dict]:
        """Index features by tile id (an empty dict for a new archive), each checked: its id is a tile id
        (a hand-edited ``../x`` would name files outside the archive), and its properties name it, its AOI
        and a split."""
        if not self.index_path.exists():
            self.read_meta()  # a folder that is no archive is an error, not an archive without tiles
            return {}
        text = self.index_path.read_text(encoding="utf-8")
        enabled = gc.isenabled()
        gc.disable()  # parsing builds ~10 containers per tile; collector passes would double the time
        try:
            data = json.loads(text)
            features = {f["id"]: f for f in data["features"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptIndex(self, f"{type(exc).__name__}: {exc}") from None
        finally:
            if enabled:
                gc.enable()
        for tile_id, feature in features.items():
            problem = _feature_problem(tile_id, feature)
            if problem:
                raise CorruptIndex(self, problem)
        return features

    def write_index(self, features: dict[str, dict]) -> None:
        """Write the index atomically, sorted by tile id (same tiles → same bytes)."""
        ordered = [features[k] for k in sorted(features)]
        collection = {"type": "FeatureCollection", "name": "rsgee_tiles", "features": ordered}
        with atomic_path(self.index_path) as tmp:
            tmp.write_text(json.dumps(collection, separators=(",", ":"), sort_keys=True, allow_nan=False) + "\n")

    def tiles(self, split: str | None = None) -> list[dict]:
        """Index properties of every tile (of one split), sorted by tile id."""
        index = self.read_index()
        return [index[k]["properties"] for k in sorted(index) if split is None or index[k]["properties"]["split"] == split]

    @property
    def tile_ids(self) -> list[str]:
        """Every indexed tile id, sorted."""
        return sorted(self.read_index())

    @property
    def splits(self) -> dict[str, list[str]]:
        """``{split: sorted tile ids}`` for the splits that hold tiles."""
        out: dict[str, list[str]] = {}
        for record in self.tiles():
            out.setdefault(record["split"], []).append(record["tile_id"])
        return out

    def split(self, name: str) -> list[str]:
        """The tile ids of one split (empty when it holds none)."""
        return [t["tile_id"] for t in self.tiles(name)]

    @property
    def index(self) -> list[dict]:
        """The index records (tile id, AOI, split, valid fractions …) of every tile, sorted by tile id."""
        return self.tiles()

    @property
    def stats(self) -> dict:
        """``stats.json``: per-source statistics of the train split (what training normalises with), checked
        against the archive's sources, so that every reader may take the numbers it needs as written."""
        try:
            stats = json.loads(self.stats_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RsgeeError(f"{self.root}: no stats.json; run rsgee tile to finish the archive") from None
        except (OSError, ValueError) as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        else:
            problem = _stats_problem(stats, self.sources())
        if problem:
            raise RsgeeError(f"{self.stats_path} is damaged ({problem}); re-run rsgee tile with the archive's exports "
                             f"and --out {self.root} to recompute it")
        return stats

    @contextlib.contextmanager
    def journal(self) -> Iterator["Journal"]:
        """Append-only log of finished tiles; each line is flushed before the next tile starts."""
        with open(self.journal_path, "a", encoding="utf-8") as handle:
            yield Journal(handle)

    def merge_journal(self) -> int:
        """Fold journalled tiles into the index, then drop the journal. Returns tiles added.

        A truncated last line (the process died while writing it) is ignored; its tile was not
        recorded as complete and will be rebuilt.
        """
        if not self.journal_path.exists():
            return 0
        features = self.read_index()
        added = 0
        for line in self.journal_path.read_text(encoding="utf-8").splitlines():
            try:
                feature = json.loads(line)
            except ValueError:
                continue
            if feature["id"] not in features:
                added += 1
            features[feature["id"]] = feature
        self.write_index(features)
        self.journal_path.unlink()
        return added

    # -- views (imported inside the methods: xarray and pystac load only when asked for) ----
    def open_tile(self, tile_id: str, *, chunks=None):
        """One tile as an ``xarray.Dataset`` (s1, s2, lulc, terrain, gen when generated); see :mod:`rsgee.views`.

        Example::

            ds = Archive("archive").open_tile("32632_243_2016")
            ds.terrain.sel(terrain_band="slope")
        """
        from rsgee.views import open_tile

        return open_tile(self, tile_id, chunks=chunks)

    def to_xarray(self, split: str):
        """The split's packed cache as a ``(tile, band, y, x)`` Dataset over the memory maps, without copying."""
        from rsgee.views import to_xarray

        return to_xarray(self, split)

    def to_stac(self, *, start=None, end=None) -> Path:
        """Write ``stac/``, a STAC Collection of the tiles; returns collection.json (:mod:`rsgee.preprocess.stac`)."""
        from rsgee.preprocess.stac import write_stac

        return write_stac(self, start=start, end=end)

    # -- safety -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, *, wait: bool = False) -> Iterator[None]:
        """Exclusive writer lock of the archive, between processes.

        Without ``wait`` a second writer fails fast (``rsgee tile``: two runs, likely of other exports, would
        interleave their tiles); with it, it says in one line that it waits, then waits (the stores derived from
        the tiles, the same whoever builds them: the cache (:mod:`rsgee.preprocess.cache`), ``gen/``, ``stac/``).
        A writer holding the lock through this object may take it again (``generate`` building a cache), which
        a second open of the lock file would deadlock on.
        """
        if self._locked:
            yield
            return
        make_folder(self.root)
        lock = filelock.FileLock(self.lock_path)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            if not wait:
                raise RsgeeError(f"another rsgee process is writing to {self.root}; wait for it to finish") from None
            log.info("waiting for another rsgee process to finish writing to %s", self.root)
            lock.acquire()
        except OSError as exc:  # after Timeout, which is one too
            raise unwritable(self.root, exc) or exc
        self._locked = True
        try:
            yield
        finally:
            self._locked = False
            lock.release()

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files left by a killed run (call only under :meth:`lock`)."""
        count = 0
        for tmp in self.root.glob("**/.*.tmp"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count


def _feature_problem(tile_id: object, feature: object) -> str | None:
    """What makes one index feature unusable, or None."""
    try:
        Tile.from_id(tile_id)
    except (GridError, TypeError):
        return f"tile id {tile_id!r} is not <epsg>_<col>_<row>"
    props = feature.get("properties") if isinstance(feature, dict) else None
    if not isinstance(props, dict) or props.get("tile_id") != tile_id:
        return f"tile {tile_id}: its properties do not name it"
    if props.get("split") not in SPLITS or not isinstance(props.get("aoi"), str):
        return f"tile {tile_id}: split {props.get('split')!r} or AOI {props.get('aoi')!r} is not valid"
    return None


def _stats_problem(stats: object, specs: dict[str, SourceSpec]) -> str | None:
    """What makes a parsed stats.json unusable for the archive's sources, or None."""
    sources = stats.get("sources") if isinstance(stats, dict) else None
    if not isinstance(sources, dict):
        return "no per-source statistics"
    for name, spec in specs.items():
        entry = sources.get(name)
        if spec.categorical:
            if not isinstance(entry, dict) or not isinstance(entry.get("class_counts"), dict):
                return f"no class counts of {name}"
            continue
        for band in spec.band_names:
            values = entry.get(band) if isinstance(entry, dict) else None
            count = values.get("count") if isinstance(values, dict) else None
            if not isinstance(count, int) or count < 0:
                return f"no pixel count of {name}.{band}"
            numbers = [values.get(key) for key in ("mean", "std")] if count else []
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
                return f"{name}.{band} has no finite mean and std"
    return None


class Journal:
    """Writer side of the index journal."""

    def __init__(self, handle):
        self._handle = handle

    def append(self, features: Iterable[dict]) -> None:
        try:
            for feature in features:
                self._handle.write(json.dumps(feature, separators=(",", ":"), sort_keys=True, allow_nan=False) + "\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise unwritable(self._handle.name, exc) or exc


class CorruptIndex(RsgeeError):
    """index.geojson cannot be parsed (a disk filled up, a hand edit, a copy cut short)."""

    def __init__(self, archive: Archive, reason: str):
        self.reason = reason
        super().__init__(f"{archive.index_path} is not a valid tile index ({reason}); run `rsgee check {archive.root}` "
                         "to see the state of the archive, and restore the file or rebuild the archive with "
                         "`rsgee tile` into a new folder")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
