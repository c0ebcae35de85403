"""Areas of interest from GeoJSON files, bboxes or WKT, validated and safely named.

Every AOI is a lon/lat (EPSG:4326) Polygon or MultiPolygon with a name that is safe as a single
path component (it becomes ``exports/<name>/``; the rule is :func:`rsgee.exports.safe_name`). Anything unusable — an unreadable file, a point, a
self-intersecting ring, projected coordinates, an absurdly large area — is a one-line
:class:`~rsgee.errors.AOIError` that says what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import shapely
import shapely.wkt
from pyproj import Geod
from shapely.geometry import MultiPolygon, Polygon, box, shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from rsgee.errors import AOIError, GridError
from rsgee.exports import safe_name
from rsgee.grid import Grid, grid_for_geometry

#: Larger AOIs are refused as a likely mistake (50 000 km² ≈ 7 600 tiles of 6.55 km², one raster of
#: 0.5 gigapixels per band); split them, or raise the limit with ``max_area_km2`` / ``--max-area``.
MAX_AREA_KM2 = 50_000.0
_NAMED_SPEC = re.compile(r"^([A-Za-z0-9._-]+)=(.+)$", re.S)
_WGS84 = Geod(ellps="WGS84")
_LONLAT_CRS = ("urn:ogc:def:crs:OGC:1.3:CRS84", "urn:ogc:def:crs:OGC::CRS84", "EPSG:4326", "urn:ogc:def:crs:EPSG::4326")


@dataclass(frozen=True)
class AOI:
    """A named lon/lat Polygon or MultiPolygon."""

    name: str
    geometry: BaseGeometry

    @property
    def area_km2(self) -> float:
        return geodesic_area_km2(self.geometry)

    def grid(self) -> Grid:
        """The AOI's lattice-aligned UTM grid (raises :class:`AOIError` where none exists)."""
        try:
            return grid_for_geometry(self.geometry, name=self.name)
        except GridError as exc:
            raise AOIError(str(exc)) from None

    def to_geojson(self) -> dict:
        return {"type": "Feature", "properties": {"name": self.name}, "geometry": shapely.geometry.mapping(self.geometry)}


def geodesic_area_km2(geometry: BaseGeometry) -> float:
    """Area on the WGS84 ellipsoid in km² (orientation-independent)."""
    return abs(_WGS84.geometry_area_perimeter(geometry)[0]) / 1e6


def parse_aois(specs: Iterable[str | Path | AOI | dict | BaseGeometry], *,
               max_area_km2: float = MAX_AREA_KM2) -> list[AOI]:
    """Parse every ``--aoi`` value into validated AOIs with unique names.

    Each spec is one of: a path to a GeoJSON file (Feature, FeatureCollection or bare geometry), a
    bbox ``minlon,minlat,maxlon,maxlat``, or WKT. A bbox or WKT may be prefixed ``NAME=``; otherwise
    it is named from its coordinates. From Python, a spec may also be an :class:`AOI`, a GeoJSON
    object (dict) or a shapely Polygon/MultiPolygon in lon/lat.
    """
    aois: list[AOI] = []
    for spec in specs:
        if isinstance(spec, AOI):
            aois.append(spec)
        elif isinstance(spec, dict):
            aois.extend(aois_from_geojson(spec, "GeoJSON AOI"))
        elif isinstance(spec, BaseGeometry):
            aois.append(AOI(_auto_name(spec), spec))
        else:
            aois.extend(parse_aoi_spec(str(spec)))
    seen: dict[str, int] = {}
    for i, aoi in enumerate(aois):
        if aoi.name in seen:
            raise AOIError(
                f"two AOIs are named '{aoi.name}' (#{seen[aoi.name] + 1} and #{i + 1}); give each a unique "
                "'name' property (or NAME= prefix)"
            )
        seen[aoi.name] = i
    for aoi in aois:
        validate(aoi, max_area_km2=max_area_km2)
    return aois


def parse_aoi_spec(spec: str) -> list[AOI]:
    """One ``--aoi`` value → AOIs (not yet validated)."""
    text = spec.strip()
    if not text:
        raise AOIError("empty --aoi value; give a GeoJSON file, a bbox minlon,minlat,maxlon,maxlat or WKT")
    named = _NAMED_SPEC.match(text)
    if named and not _is_file(text):
        name, body = named.group(1), named.group(2).strip()
        geometry = _parse_inline(body)
        return [AOI(_checked_name(name, body), geometry)]
    if _looks_like_bbox(text) or _looks_like_wkt(text):
        geometry = _parse_inline(text)
        return [AOI(_auto_name(geometry), geometry)]
    return read_geojson(Path(text))


def _is_file(path: str | Path) -> bool:
    """Whether ``path`` names an existing file; False, not OSError, for text no file system takes as a
    path (a 300-character ``NAME=`` spec is too long a file name)."""
    try:
        return Path(path).is_file()
    except OSError:
        return False


def read_geojson(path: Path) -> list[AOI]:
    """AOIs from a GeoJSON file: one per Polygon/MultiPolygon feature."""
    if not _is_file(path):
        raise AOIError(
            f"--aoi {path}: no such file, and not a bbox (minlon,minlat,maxlon,maxlat) or WKT either"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise AOIError(f"{path}: cannot read the file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise AOIError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict) or "type" not in data:
        raise AOIError(f"{path}: not a GeoJSON object (no 'type' member)")
    _check_crs(data, path)
    return aois_from_geojson(data, str(path), safe_name(path.stem) or "aoi")


def aois_from_geojson(data: dict, where: str, stem: str = "aoi") -> list[AOI]:
    """AOIs from a GeoJSON object (FeatureCollection, Feature or bare geometry), named by their 'name'
    property or after ``stem``; not yet validated."""
    if not isinstance(data, dict) or "type" not in data:
        raise AOIError(f"{where}: not a GeoJSON object (no 'type' member)")
    kind = data["type"]
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list) or not features:
            raise AOIError(f"{where}: the FeatureCollection has no features")
    elif kind == "Feature":
        features = [data]
    else:
        features = [{"type": "Feature", "properties": {}, "geometry": data}]
    aois = []
    for i, feature in enumerate(features):
        at = f"{where}: feature {i + 1}"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise AOIError(f"{at}: not a GeoJSON Feature")
        geometry = _geometry_from_geojson(feature.get("geometry"), at)
        props = feature.get("properties") or {}
        raw = props.get("name") if isinstance(props, dict) else None
        if raw is None or str(raw).strip() == "":
            raw = stem if len(features) == 1 else f"{stem}_{i + 1}"
        aois.append(AOI(_checked_name(str(raw), at), geometry))
    return aois


def validate(aoi: AOI, *, max_area_km2: float = MAX_AREA_KM2) -> None:
    """Raise :class:`AOIError` unless ``aoi`` is a usable lon/lat area that has a UTM grid."""
    geom, name = aoi.geometry, aoi.name
    if not isinstance(geom, (Polygon, MultiPolygon)):
        raise AOIError(f"AOI '{name}': a {geom.geom_type} is not an area; use a Polygon or MultiPolygon")
    if geom.is_empty:
        raise AOIError(f"AOI '{name}': the geometry is empty")
    lon_min, lat_min, lon_max, lat_max = geom.bounds
    if not (-180 <= lon_min and lon_max <= 180 and -90 <= lat_min and lat_max <= 90):
        raise AOIError(
            f"AOI '{name}': coordinates ({lon_min:g}, {lat_min:g}, {lon_max:g}, {lat_max:g}) are not lon/lat "
            "degrees; rsgee reads AOIs in EPSG:4326 (reproject the file first)"
        )
    if not geom.is_valid:
        raise AOIError(f"AOI '{name}': invalid geometry ({explain_validity(geom)}); fix it, e.g. with QGIS "
                       "'Fix geometries' or shapely.make_valid")
    area = geodesic_area_km2(geom)
    if area <= 0.0:
        raise AOIError(f"AOI '{name}': the geometry has no area")
    if area > max_area_km2:
        raise AOIError(
            f"AOI '{name}': {area:,.0f} km² is larger than the {max_area_km2:,.0f} km² limit; split it into smaller AOIs"
        )
    aoi.grid()  # antimeridian, poles and zone span


def _parse_inline(text: str) -> BaseGeometry:
    if _looks_like_bbox(text):
        return _parse_bbox(text)
    if _looks_like_wkt(text):
        try:
            return shapely.wkt.loads(text)
        except shapely.errors.ShapelyError as exc:
            raise AOIError(f"--aoi: not valid WKT ({exc})") from None
    raise AOIError(f"--aoi '{text[:60]}': expected minlon,minlat,maxlon,maxlat or WKT after NAME=")


def _looks_like_bbox(text: str) -> bool:
    return bool(re.fullmatch(r"\s*[-+0-9.eE]+\s*(,\s*[-+0-9.eE]+\s*){3}", text))


def _looks_like_wkt(text: str) -> bool:
    return bool(re.match(r"\s*(MULTI)?(POLYGON|POINT|LINESTRING|GEOMETRYCOLLECTION)\b", text, re.I))


def _parse_bbox(text: str) -> Polygon:
    try:
        lon_min, lat_min, lon_max, lat_max = (float(v) for v in text.split(","))
    except ValueError:
        raise AOIError(f"--aoi '{text}': a bbox is four numbers minlon,minlat,maxlon,maxlat") from None
    if lon_min > lon_max:
        raise AOIError(
            f"bbox '{text}': minlon > maxlon; if it crosses the antimeridian, split it into two AOIs at 180°"
        )
    if lat_min >= lat_max or lon_min == lon_max:
        raise AOIError(f"bbox '{text}': the box is empty; expected minlon,minlat,maxlon,maxlat with min < max")
    return box(lon_min, lat_min, lon_max, lat_max)


def _geometry_from_geojson(geometry: Any, where: str) -> BaseGeometry:
    if not isinstance(geometry, dict) or "type" not in geometry:
        raise AOIError(f"{where}: has no geometry")
    if geometry["type"] not in ("Polygon", "MultiPolygon"):
        raise AOIError(f"{where}: a {geometry['type']} is not an area; use a Polygon or MultiPolygon")
    try:
        return shape(geometry)
    except (ValueError, TypeError, AttributeError, IndexError, shapely.errors.ShapelyError) as exc:
        raise AOIError(f"{where}: malformed {geometry['type']} coordinates ({exc})") from None


def _check_crs(data: dict, path: Path) -> None:
    crs = data.get("crs")
    if crs is None:
        return
    name = crs.get("properties", {}).get("name") if isinstance(crs, dict) else None
    if name not in _LONLAT_CRS:
        raise AOIError(f"{path}: CRS {name or crs!r} is not lon/lat; reproject the file to EPSG:4326 first")


def _checked_name(raw: str, where: str) -> str:
    name = safe_name(raw)
    if not name:
        raise AOIError(f"{where}: name {raw!r} has no usable characters; use letters, digits, '.', '_' or '-'")
    return name


def _auto_name(geometry: BaseGeometry) -> str:
    if geometry.is_empty:
        return "aoi_empty"  # validate() refuses it with a clear message
    digest = hashlib.sha1(geometry.wkb).hexdigest()[:8]
    lon, lat = geometry.centroid.x, geometry.centroid.y
    return safe_name(f"aoi_{abs(lat):.3f}{'N' if lat >= 0 else 'S'}_{abs(lon):.3f}{'E' if lon >= 0 else 'W'}_{digest}")
