"""catalog.yaml → typed source specs.

The catalog says, per source, where the data comes from in Earth Engine and what it becomes in the
archive (bands, dtype, units, nodata, compositing, resampling). Everything downstream reads these
specs instead of hard-coding bands, so a user adds a band or a source by editing the catalog.

Validation is strict: an unknown key, a missing field or a bad value is a one-line
:class:`~rsgee.errors.CatalogError` naming the file and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from rsgee.errors import CatalogError

DTYPES = ("uint8", "uint16", "int16", "float32")
COMPOSITES = ("mean", "median", "mode", "mosaic")
RESAMPLINGS = ("nearest", "bilinear", "cubic", "average", "mode")
#: The sources the archive and the models are built from.
CORE_SOURCES = ("s1", "s2", "lulc", "dem")

_SOURCE_KEYS = {
    "required": ("description", "collection", "bands", "dtype", "units", "scale_m", "nodata", "composite", "resampling"),
    "optional": ("scale_factor", "to_db", "db_floor", "filters", "filters_lt", "require_bands", "cloud_mask",
                 "angle_mask", "classes", "fill_missing", "fallback"),
}
_BAND_KEYS = {"required": ("ee", "name"), "optional": ("description",)}
_CLOUD_KEYS = {"required": ("collection", "band", "threshold"), "optional": ()}
_REQUIRE_KEYS = {"required": ("property", "values"), "optional": ()}
_ANGLE_KEYS = {"required": ("band", "min", "max"), "optional": ()}
_FALLBACK_KEYS = {"required": ("image", "bands"), "optional": ()}


@dataclass(frozen=True)
class BandSpec:
    """One band: its Earth Engine name and its archive name."""

    ee: str
    name: str
    description: str = ""


@dataclass(frozen=True)
class CloudMaskSpec:
    """Keep pixels where ``band`` of the linked ``collection`` is ≥ ``threshold``."""

    collection: str
    band: str
    threshold: float


@dataclass(frozen=True)
class AngleMaskSpec:
    """Keep pixels where ``min < band < max`` (degrees): Sentinel-1's incidence angle, whose extremes are
    the scene edges where residual border noise darkens the backscatter."""

    band: str
    min: float
    max: float


@dataclass(frozen=True)
class FallbackSpec:
    """A second source, one Earth Engine image, for pixels where no image of a mosaic's collection has
    data (land without a GLO30 tile); ``bands`` stand for the source's bands, in their order."""

    image: str
    bands: tuple[str, ...]


@dataclass(frozen=True)
class RequireBandsSpec:
    """Keep images whose list property ``property`` contains every one of ``values``."""

    property: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class SourceSpec:
    """What one source is in Earth Engine and in the archive."""

    name: str
    description: str
    collection: str
    bands: tuple[BandSpec, ...]
    dtype: str
    units: str
    scale_m: float
    nodata: float
    composite: str
    resampling: str
    scale_factor: float | None = None
    to_db: bool = False
    db_floor: float | None = None
    filters: Mapping[str, Any] = field(default_factory=dict)
    #: Keep images whose property is below the value, e.g. ``{CLOUDY_PIXEL_PERCENTAGE: 90}``.
    filters_lt: Mapping[str, float] = field(default_factory=dict)
    require_bands: RequireBandsSpec | None = None
    cloud_mask: CloudMaskSpec | None = None
    angle_mask: AngleMaskSpec | None = None
    classes: tuple[str, ...] | None = None
    #: Value (in Earth Engine's units) where no image has data, e.g. 0 m for the DEM's open ocean.
    fill_missing: float | None = None
    #: Where no image of the collection has data, the value of this image (before ``fill_missing``).
    fallback: FallbackSpec | None = None

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def ee_bands(self) -> tuple[str, ...]:
        return tuple(b.ee for b in self.bands)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def nodata_is_nan(self) -> bool:
        return isinstance(self.nodata, float) and math.isnan(self.nodata)

    @property
    def categorical(self) -> bool:
        """Labels: resampled by nearest/mode, never interpolated."""
        return self.resampling in ("nearest", "mode")

    def to_dict(self) -> dict:
        """JSON-ready form (NaN nodata written as the string "nan")."""
        out: dict[str, Any] = {
            "description": self.description,
            "collection": self.collection,
            "bands": [{"ee": b.ee, "name": b.name, "description": b.description} for b in self.bands],
            "dtype": self.dtype,
            "units": self.units,
            "scale_m": self.scale_m,
            "nodata": "nan" if self.nodata_is_nan else self.nodata,
            "composite": self.composite,
            "resampling": self.resampling,
        }
        if self.scale_factor is not None:
            out["scale_factor"] = self.scale_factor
        if self.to_db:
            out["to_db"] = True
            out["db_floor"] = self.db_floor
        if self.filters:
            out["filters"] = dict(self.filters)
        if self.filters_lt:
            out["filters_lt"] = dict(self.filters_lt)
        if self.require_bands:
            out["require_bands"] = {"property": self.require_bands.property, "values": list(self.require_bands.values)}
        if self.cloud_mask:
            cm = self.cloud_mask
            out["cloud_mask"] = {"collection": cm.collection, "band": cm.band, "threshold": cm.threshold}
        if self.angle_mask:
            am = self.angle_mask
            out["angle_mask"] = {"band": am.band, "min": am.min, "max": am.max}
        if self.classes:
            out["classes"] = list(self.classes)
        if self.fill_missing is not None:
            out["fill_missing"] = self.fill_missing
        if self.fallback is not None:
            out["fallback"] = {"image": self.fallback.image, "bands": list(self.fallback.bands)}
        return out


@dataclass(frozen=True)
class Catalog:
    """The validated catalog: source specs by name, and the file they came from."""

    path: Path
    sources: Mapping[str, SourceSpec]

    def __getitem__(self, name: str) -> SourceSpec:
        try:
            return self.sources[name]
        except KeyError:
            raise CatalogError(
                f"{self.path}: source '{name}' is not in the catalog (it has: {', '.join(self.sources)})"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.sources

    def require(self, *names: str) -> None:
        """Raise unless every named source is in the catalog."""
        missing = [n for n in names if n not in self.sources]
        if missing:
            raise CatalogError(
                f"{self.path}: rsgee needs source(s) {', '.join(missing)} here; add them (see the default catalog.yaml)"
            )

    def to_dict(self) -> dict:
        return {"version": 1, "sources": {name: spec.to_dict() for name, spec in self.sources.items()}}


#: Catalog keys that change only how Earth Engine selects and composites a source, never what the offline sources
#: deliver or how tiles are cut: exports from other sources, and archives, compare their catalogs without them (an
#: archive or synthetic export made before ``fill_missing``, the fallback, the scene filters or the angle mask stays
#: current).
RECIPE_ONLY_KEYS = ("fill_missing", "filters", "filters_lt", "angle_mask", "fallback")


def without_recipe_keys(sources: dict) -> dict:
    """``{name: spec dict}`` with the :data:`RECIPE_ONLY_KEYS` left out, for comparisons that ignore them."""
    return {name: {k: v for k, v in spec.items() if k not in RECIPE_ONLY_KEYS} for name, spec in sources.items()}


def default_catalog_path() -> Path:
    """The catalog.yaml shipped with rsgee (the repository's, in an editable install)."""
    return Path(str(resources.files("rsgee") / "catalog.yaml"))


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a catalog file (the shipped default when ``path`` is None)."""
    path = Path(path) if path is not None else default_catalog_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"{path}: catalog file not found; pass an existing file to --catalog") from None
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalog ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise CatalogError(f"{path}: not valid YAML{line}: {problem}") from None
    return parse_catalog(data, path)


def parse_catalog(data: Any, path: str | Path = "<catalog>") -> Catalog:
    """Validate an already-parsed catalog mapping."""
    check = _Checker(Path(path))
    check.mapping(data, "catalog", {"required": ("sources",), "optional": ("version",)})
    if data.get("version", 1) != 1:
        check.fail("version", f"unsupported catalog version {data['version']!r} (this rsgee reads version 1)")
    sources = data["sources"]
    if not isinstance(sources, dict) or not sources:
        check.fail("sources", "must be a mapping with at least one source")
    return Catalog(check.path, {str(name): check.source(str(name), spec) for name, spec in sources.items()})


class _Checker:
    """Validation helpers whose errors all name the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> None:
        raise CatalogError(f"{self.path}: {key}: {problem}")

    def mapping(self, value: Any, key: str, keys: Mapping[str, tuple[str, ...]]) -> None:
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping, got {type(value).__name__}")
        allowed = keys["required"] + keys["optional"]
        for k in value:
            if k not in allowed:
                self.fail(f"{key}.{k}", f"unknown key (allowed: {', '.join(allowed)})")
        for k in keys["required"]:
            if k not in value:
                self.fail(f"{key}.{k}", "missing required field")

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def number(self, value: Any, key: str, *, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, f"must be a finite number, got {value!r}")
        if positive and value <= 0:
            self.fail(key, f"must be > 0, got {value!r}")
        return value

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            self.fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def source(self, name: str, spec: Any) -> SourceSpec:
        key = f"sources.{name}"
        self.mapping(spec, key, _SOURCE_KEYS)
        dtype = self.choice(spec["dtype"], f"{key}.dtype", DTYPES)
        bands = self.bands(spec["bands"], f"{key}.bands")
        nodata = self.nodata(spec["nodata"], f"{key}.nodata", dtype)
        to_db = spec.get("to_db", False)
        if not isinstance(to_db, bool):
            self.fail(f"{key}.to_db", f"must be true or false, got {to_db!r}")
        if to_db and not dtype.startswith("float"):
            self.fail(f"{key}.to_db", f"dB values need a float dtype, not {dtype}")
        db_floor = spec.get("db_floor")
        if db_floor is not None:
            db_floor = float(self.number(db_floor, f"{key}.db_floor"))
        elif to_db:
            self.fail(f"{key}.db_floor", "missing required field (to_db needs a noise floor in dB, e.g. -50)")
        scale_factor = spec.get("scale_factor")
        if scale_factor is not None:
            scale_factor = float(self.number(scale_factor, f"{key}.scale_factor", positive=True))
        filters = spec.get("filters") or {}
        if not isinstance(filters, dict):
            self.fail(f"{key}.filters", "must be a mapping of property: value")
        filters_lt = spec.get("filters_lt") or {}
        if not isinstance(filters_lt, dict):
            self.fail(f"{key}.filters_lt", "must be a mapping of property: number")
        filters_lt = {str(p): float(self.number(v, f"{key}.filters_lt.{p}")) for p, v in filters_lt.items()}
        require = spec.get("require_bands")
        if require is not None:
            self.mapping(require, f"{key}.require_bands", _REQUIRE_KEYS)
            values = require["values"]
            if not isinstance(values, list) or not values:
                self.fail(f"{key}.require_bands.values", "must be a non-empty list")
            require = RequireBandsSpec(
                self.string(require["property"], f"{key}.require_bands.property"),
                tuple(self.string(v, f"{key}.require_bands.values") for v in values),
            )
        cloud = spec.get("cloud_mask")
        if cloud is not None:
            self.mapping(cloud, f"{key}.cloud_mask", _CLOUD_KEYS)
            threshold = self.number(cloud["threshold"], f"{key}.cloud_mask.threshold")
            if not 0.0 <= threshold <= 1.0:
                self.fail(f"{key}.cloud_mask.threshold", f"must be within 0…1, got {threshold}")
            cloud = CloudMaskSpec(
                self.string(cloud["collection"], f"{key}.cloud_mask.collection"),
                self.string(cloud["band"], f"{key}.cloud_mask.band"),
                float(threshold),
            )
        angle = spec.get("angle_mask")
        if angle is not None:
            self.mapping(angle, f"{key}.angle_mask", _ANGLE_KEYS)
            low = float(self.number(angle["min"], f"{key}.angle_mask.min"))
            high = float(self.number(angle["max"], f"{key}.angle_mask.max"))
            if not 0.0 <= low < high <= 90.0:
                self.fail(f"{key}.angle_mask", f"needs 0 <= min < max <= 90 degrees, got min {low:g}, max {high:g}")
            angle = AngleMaskSpec(self.string(angle["band"], f"{key}.angle_mask.band"), low, high)
        resampling = self.choice(spec["resampling"], f"{key}.resampling", RESAMPLINGS)
        classes = spec.get("classes")
        if classes is not None:
            if not isinstance(classes, list) or not classes:
                self.fail(f"{key}.classes", "must be a non-empty list of class names")
            classes = tuple(self.string(c, f"{key}.classes") for c in classes)
            if not dtype.startswith("uint") or len(classes) > np.iinfo(dtype).max:
                self.fail(f"{key}.classes", f"{len(classes)} classes need an unsigned integer dtype that holds them")
            if not math.isnan(nodata) and nodata < len(classes):
                self.fail(f"{key}.nodata", f"{nodata} collides with class {int(nodata)} ({classes[int(nodata)]})")
            if resampling not in ("nearest", "mode"):
                self.fail(f"{key}.resampling", f"class labels must be resampled with nearest or mode, not {resampling}")
        fill_missing = spec.get("fill_missing")
        if fill_missing is not None:
            fill_missing = float(self.number(fill_missing, f"{key}.fill_missing"))
            if not dtype.startswith("float") and (fill_missing != int(fill_missing)
                                                  or not np.iinfo(dtype).min <= fill_missing <= np.iinfo(dtype).max):
                self.fail(f"{key}.fill_missing", f"{fill_missing!r} is not representable in {dtype}")
            if fill_missing == nodata:
                self.fail(f"{key}.fill_missing", f"{fill_missing!r} is the nodata value; leave fill_missing out instead")
        fallback = spec.get("fallback")
        if fallback is not None:
            fallback = self.fallback(fallback, f"{key}.fallback", len(bands), spec["composite"])
        return SourceSpec(
            name=name,
            description=self.string(spec["description"], f"{key}.description"),
            collection=self.string(spec["collection"], f"{key}.collection"),
            bands=bands,
            dtype=dtype,
            units=self.string(spec["units"], f"{key}.units"),
            scale_m=float(self.number(spec["scale_m"], f"{key}.scale_m", positive=True)),
            nodata=nodata,
            composite=self.choice(spec["composite"], f"{key}.composite", COMPOSITES),
            resampling=resampling,
            scale_factor=scale_factor,
            to_db=to_db,
            db_floor=db_floor,
            filters=dict(filters),
            filters_lt=filters_lt,
            require_bands=require,
            cloud_mask=cloud,
            angle_mask=angle,
            classes=classes,
            fill_missing=fill_missing,
            fallback=fallback,
        )

    def fallback(self, value: Any, key: str, n_bands: int, composite: Any) -> FallbackSpec:
        self.mapping(value, key, _FALLBACK_KEYS)
        if composite != "mosaic":
            self.fail(key, f"fills the gaps of a mosaic (stored tiles such as a DEM's), not of a {composite} composite")
        bands = value["bands"]
        if not isinstance(bands, list) or len(bands) != n_bands:
            self.fail(f"{key}.bands", f"must list {n_bands} band(s), one for each of the source's bands, got {bands!r}")
        return FallbackSpec(self.string(value["image"], f"{key}.image"),
                            tuple(self.string(b, f"{key}.bands") for b in bands))

    def bands(self, value: Any, key: str) -> tuple[BandSpec, ...]:
        if not isinstance(value, list) or not value:
            self.fail(key, "must be a non-empty list of {ee, name} entries")
        bands = []
        for i, band in enumerate(value):
            self.mapping(band, f"{key}[{i}]", _BAND_KEYS)
            bands.append(
                BandSpec(
                    self.string(band["ee"], f"{key}[{i}].ee"),
                    self.string(band["name"], f"{key}[{i}].name"),
                    str(band.get("description", "")),
                )
            )
        names = [b.name for b in bands]
        for n in names:
            if names.count(n) > 1:
                self.fail(key, f"band name '{n}' appears twice")
        return tuple(bands)

    def nodata(self, value: Any, key: str, dtype: str) -> float:
        if isinstance(value, str) and value.strip().lower() in ("nan", ".nan"):
            value = float("nan")
        if isinstance(value, float) and math.isnan(value):
            if not dtype.startswith("float"):
                self.fail(key, f"nan is not representable in {dtype}; use an integer such as 0 or 255")
            return value
        value = self.number(value, key)
        if not dtype.startswith("float"):
            info = np.iinfo(dtype)
            if value != int(value) or not info.min <= value <= info.max:
                self.fail(key, f"{value!r} is not representable in {dtype} ({info.min}…{info.max})")
            return int(value)
        return float(value)
