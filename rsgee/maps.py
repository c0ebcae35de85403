"""geemap previews: look at AOIs, exports, archives and Earth Engine composites before paying for them.

:func:`preview` draws local things — the AOIs of ``--aoi``, an export folder, an :class:`Archive` — as
GeoJSON layers and PNG image overlays rendered here, so it needs neither Earth Engine credentials
(``geemap.Map(ee_initialize=False)``) nor a tile server (geemap's own ``add_raster`` would need
``localtileserver``). :func:`preview_recipe` adds the composite ``rsgee export`` would download, built by
the same recipe code, as an Earth Engine tile layer; that one needs an initialised ``ee`` session. Export
folders are read through :mod:`rsgee.exports`, archives through :class:`~rsgee.preprocess.archive.Archive`.

Needs the ``maps`` extra: ``pip install 'rsgee[maps]'``.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from rsgee.optional import require

require("maps")

import ee  # noqa: E402
import geemap  # noqa: E402
import ipyleaflet  # noqa: E402
import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import shapely  # noqa: E402
from pyproj import Transformer  # noqa: E402
from rasterio.io import MemoryFile  # noqa: E402
from rasterio.transform import from_bounds  # noqa: E402
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_bounds  # noqa: E402
from shapely.geometry import mapping, shape  # noqa: E402

from rsgee.acquire.aoi import AOI, parse_aois  # noqa: E402
from rsgee.acquire.earthengine.download import search_region  # noqa: E402
from rsgee.acquire.earthengine.recipes import RecipeOptions, Window, build_recipe, collection_size  # noqa: E402
from rsgee.catalog import Catalog, load_catalog  # noqa: E402
from rsgee.errors import RsgeeError  # noqa: E402
from rsgee.exports import export_folders, read_export  # noqa: E402
from rsgee.grid import Grid  # noqa: E402
from rsgee.preprocess.archive import Archive  # noqa: E402
from rsgee.preprocess.split import SPLITS  # noqa: E402

#: Tile footprints and split blocks are drawn in their split's colour.
SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
AOI_COLOUR = "#e31a1c"
GRID_COLOUR = "#6a3d9a"
#: Dynamic World's class colours, water … snow_and_ice (the same as ``rsgee.train.figures.DW_COLOURS``,
#: which lives in the train extra).
DW_PALETTE = ("#419bdf", "#397d49", "#88b053", "#7a87c6", "#e49635", "#dfc35a", "#c4281b", "#a59b8f", "#b39fe1")
#: Reflectance × 10000 shown at full brightness (the usual 2–3× stretch of surface reflectance).
S2_MAX = 3000
#: Sentinel-1 dB shown from black to white (the models' input range for VV).
S1_RANGE = (-25.0, 0.0)
#: Earth Engine visualisation of each source of the default catalog; other sources need ``vis=``.
EE_VIS = {
    "s2": {"bands": ["B4", "B3", "B2"], "min": 0, "max": S2_MAX},
    "s1": {"bands": ["VV"], "min": S1_RANGE[0], "max": S1_RANGE[1]},
    "lulc": {"bands": ["label"], "min": 0, "max": len(DW_PALETTE) - 1, "palette": [c[1:] for c in DW_PALETTE]},
    "dem": {"bands": ["dem"], "min": 0, "max": 3000},
}
#: The longer side of an export's image overlay, in pixels (an overlay is one PNG inside the notebook).
OVERLAY_MAX_PX = 1024


def preview(obj: Any, *, map: geemap.Map | None = None, overlay_max_px: int = OVERLAY_MAX_PX) -> geemap.Map:
    """A map of AOIs, an export folder or an archive, without Earth Engine.

    Args:
        obj: an :class:`~rsgee.preprocess.archive.Archive` or its folder (tile footprints coloured by split,
            the split blocks, the outline of each AOI's tiles); an export folder ``OUT/<aoi>`` or ``OUT``
            (the AOI, its tile grid, and each GeoTIFF as an image overlay: Sentinel-2 in true colour,
            Sentinel-1 VV, land cover in Dynamic World's colours, the DEM stretched); or AOIs as ``--aoi``
            takes them (a GeoJSON file, a bbox, WKT, ``NAME=``…, a list of those, or
            :class:`~rsgee.acquire.aoi.AOI` objects) with the tile grid each would be exported on.
        map: draw onto this map instead of a new one.
        overlay_max_px: longer side of an export's image overlays; larger rasters are shown downsampled.

    Returns:
        The map (``geemap.Map``); display it in a notebook.

    Example:
        >>> m = preview("alps=10.60,46.60,10.66,46.64")  # doctest: +SKIP
    """
    m = map if map is not None else _new_map()
    if isinstance(obj, Archive):
        bounds = _add_archive(m, obj)
    elif isinstance(obj, (str, os.PathLike)) and Path(obj).is_dir():
        bounds = _add_folder(m, Path(obj), overlay_max_px)
    else:
        bounds = _add_aois(m, _as_aois(obj))
    _view(m, bounds)
    return m


def preview_recipe(aoi: Any, source: str, start: str | dt.date, end: str | dt.date, *,
                   map: geemap.Map | None = None, catalog: Catalog | None = None, s1_orbit: str | None = None,
                   vis: dict | None = None) -> geemap.Map:
    """Add the Earth Engine composite that ``rsgee export`` would download, to check clouds and coverage first.

    The layer is the exact image of the export (same recipe, region and window), clipped to the AOI's
    grid, with its fill value (masked pixels: clouds, no data) transparent. Rendering it spends a little
    Earth Engine compute, far less than an export. Call ``ee.Initialize(project=...)`` first.

    Args:
        aoi: AOIs as ``--aoi`` takes them (or :class:`~rsgee.acquire.aoi.AOI` objects); one layer each.
        source: a catalog source (``s1``, ``s2``, ``lulc``, ``dem``).
        start: first day of the window (``YYYY-MM-DD`` or a date), as ``--start``.
        end: the day after the window, as ``--end`` (excluded).
        map: draw onto this map instead of a new one.
        catalog: the catalog of the export (the shipped one by default), as ``--catalog``.
        s1_orbit: ``ASCENDING`` or ``DESCENDING``, as ``--s1-orbit``.
        vis: Earth Engine visualisation parameters (``bands``, ``min``, ``max``, ``palette``); the default
            catalog's sources have defaults (:data:`EE_VIS`).

    Returns:
        The map, with the AOIs, their grids and one Earth Engine layer per AOI named
        ``"<aoi>: <source> <start>…<end>"``.

    Raises:
        RsgeeError: Earth Engine is not initialised, the window holds no image, or the server refused.

    Example:
        >>> ee.Initialize(project="my-ee-project")  # doctest: +SKIP
        >>> m = preview_recipe("alps=10.60,46.60,10.66,46.64", "s2", "2023-06-01", "2023-09-01")  # doctest: +SKIP
    """
    if not ee.data.is_initialized():
        raise RsgeeError("preview_recipe needs an Earth Engine session: run ee.Initialize(project='MY-PROJECT') "
                         "first (after `earthengine authenticate`)")
    spec = (catalog or load_catalog())[source]
    if vis is None and source not in EE_VIS:
        raise RsgeeError(f"no default visualisation for source '{source}'; pass vis={{'bands': [...], 'min': ..., "
                         "'max': ...}")
    window = Window(_date(start, "start"), _date(end, "end"))
    options = RecipeOptions(s1_orbit=s1_orbit)
    aois = _as_aois(aoi)
    m = map if map is not None else _new_map()
    bounds = _add_aois(m, aois)
    for one in aois:
        grid = one.grid()
        # The images of rsgee.acquire.earthengine.download.EarthEngineSource, shown on the AOI's grid rectangle.
        region = search_region(grid, spec)
        recipe = build_recipe(spec, region, window, options)
        name = f"{one.name}: {source} {window.start}…{window.end}"
        try:
            if not collection_size(recipe).getInfo():
                if spec.fallback is None:
                    dates = "" if spec.composite == "mosaic" else f" between {window.start} and {window.end}"
                    raise RsgeeError(f"no {source} images in {spec.collection}{dates} for AOI '{one.name}'; widen the "
                                     "window")
                recipe = build_recipe(spec, region, window, options, empty=True)
            image = recipe.image.updateMask(recipe.image.neq(recipe.fill))
            image = image.clip(ee.Geometry.Rectangle(list(grid.bounds), grid.crs, False))
            m.add_layer(image, dict(vis or EE_VIS[source]), name)
        except ee.EEException as exc:
            raise RsgeeError(f"Earth Engine could not render {name}: {str(exc).strip().splitlines()[0]}") from None
    _view(m, bounds)
    return m


# -- layers -----------------------------------------------------------------------------------------
def _new_map() -> geemap.Map:
    return geemap.Map(ee_initialize=False)


def _as_aois(obj: Any) -> list[AOI]:
    if isinstance(obj, AOI):
        return [obj]
    if isinstance(obj, (str, os.PathLike)):
        return parse_aois([os.fspath(obj)])
    if isinstance(obj, Iterable):
        items = list(obj)
        if items and all(isinstance(a, AOI) for a in items):
            return items
        if items and all(isinstance(a, (str, os.PathLike)) for a in items):
            return parse_aois([os.fspath(a) for a in items])
    raise RsgeeError(f"cannot preview {type(obj).__name__} {obj!r:.80}; pass AOIs (as --aoi takes them), an export "
                     "folder or an Archive")


def _add_aois(m: geemap.Map, aois: Sequence[AOI]) -> tuple[float, float, float, float]:
    """The AOIs and the grid tiles each is exported on; returns their lon/lat bounds."""
    _add(m, "AOIs", [aoi.to_geojson() for aoi in aois], {"color": AOI_COLOUR, "weight": 2, "fillOpacity": 0.05})
    _add(m, "export grid", [f for aoi in aois for f in _grid_features(aoi.grid(), aoi.name)],
         {"color": GRID_COLOUR, "weight": 1, "fillOpacity": 0})
    return _union_bounds(aoi.geometry.bounds for aoi in aois)


def _add_folder(m: geemap.Map, folder: Path, overlay_max_px: int) -> tuple[float, float, float, float]:
    if Archive(folder).exists():
        return _add_archive(m, Archive(folder))
    exports = export_folders(folder)
    if not exports:
        raise RsgeeError(f"{folder} is neither an archive (archive.json) nor an export (manifest.json in it or its "
                         "subfolders); pass an archive, an export folder or AOIs")
    return _union_bounds(_add_export(m, f, overlay_max_px) for f in exports)


def _add_export(m: geemap.Map, folder: Path, overlay_max_px: int) -> tuple[float, float, float, float]:
    """One export folder: overlays first (under the outlines), then its AOI and grid."""
    export = read_export(folder)
    name = export.name
    for source in export.layers:  # halo files are their source again; batch files in Cloud Storage are skipped
        if not export.paths[source].startswith("/vsi"):
            m.add(_overlay(Path(export.paths[source]), f"{name}: {source}", export.files[source]["bands"],
                           overlay_max_px))
    geometry = export.geometry
    _add(m, f"{name}: AOI", [{"type": "Feature", "properties": {"name": name}, "geometry": mapping(geometry)}],
         {"color": AOI_COLOUR, "weight": 2, "fillOpacity": 0})
    _add(m, f"{name}: grid", _grid_features(export.grid, name),
         {"color": GRID_COLOUR, "weight": 1, "fillOpacity": 0})
    return geometry.bounds


def _add_archive(m: geemap.Map, archive: Archive) -> tuple[float, float, float, float]:
    """Tile footprints by split, the split blocks and the outline of each AOI's tiles."""
    archive.read_meta()  # a one-line error for a folder that is not an archive
    features = list(archive.read_index().values())
    if not features:
        raise RsgeeError(f"{archive.root} holds no tiles yet; run rsgee tile first")
    for split in SPLITS:
        _add(m, f"tiles: {split}", [f for f in features if f["properties"]["split"] == split],
             {"color": SPLIT_COLOURS[split], "weight": 1, "fillColor": SPLIT_COLOURS[split], "fillOpacity": 0.35})
    blocks: dict[str, list] = {}
    aois: dict[str, list] = {}
    for f in features:
        blocks.setdefault(f["properties"]["block"], []).append(f)
        aois.setdefault(f["properties"]["aoi"], []).append(f)
    block_style = {"weight": 3, "fillOpacity": 0, "dashArray": "6 4"}
    _add(m, "split blocks", [_dissolved(fs, block=key, split=fs[0]["properties"]["split"])
                             for key, fs in sorted(blocks.items())], block_style,
         style_callback=lambda f: {**block_style, "color": SPLIT_COLOURS[f["properties"]["split"]]})
    _add(m, "AOIs (tiled extent)", [_dissolved(fs, name=key, tiles=len(fs)) for key, fs in sorted(aois.items())],
         {"color": AOI_COLOUR, "weight": 2, "fillOpacity": 0})
    return _union_bounds(shape(f["geometry"]).bounds for f in features)


def _add(m: geemap.Map, name: str, features: list[dict], style: dict, style_callback=None) -> None:
    """A GeoJSON layer; a ``style_callback`` styles each feature (ipyleaflet stores it in the feature)."""
    callback = {} if style_callback is None else {"style_callback": style_callback}
    m.add(ipyleaflet.GeoJSON(data={"type": "FeatureCollection", "features": features}, style=style, name=name,
                             **callback))


def _dissolved(features: list[dict], **properties) -> dict:
    geometry = shapely.union_all([shape(f["geometry"]) for f in features])
    return {"type": "Feature", "properties": properties, "geometry": mapping(geometry)}


def _grid_features(grid: Grid, aoi: str) -> list[dict]:
    to_lonlat = _to_lonlat(grid.epsg)
    features = []
    for tile in grid.tiles():
        x0, y0, x1, y1 = tile.bounds
        xs, ys = to_lonlat.transform([x0, x1, x1, x0, x0], [y1, y1, y0, y0, y1])
        ring = [[round(x, 7), round(y, 7)] for x, y in zip(xs, ys)]
        features.append({"type": "Feature", "properties": {"tile_id": tile.id, "aoi": aoi},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    return features


@functools.lru_cache(maxsize=None)
def _to_lonlat(epsg: int) -> Transformer:
    return Transformer.from_crs(epsg, 4326, always_xy=True)


# -- image overlays ---------------------------------------------------------------------------------
def _overlay(path: Path, name: str, bands: Sequence[str], max_px: int) -> ipyleaflet.ImageOverlay:
    """A GeoTIFF as a PNG overlay, reprojected to Web Mercator so that Leaflet places every pixel right."""
    show = _display_bands(bands)
    with rasterio.open(path) as src:
        _, width, height = calculate_default_transform(src.crs, "EPSG:3857", src.width, src.height, *src.bounds)
        scale = min(1.0, max_px / max(width, height))
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        bounds = transform_bounds(src.crs, "EPSG:3857", *src.bounds, densify_pts=21)
        data = np.full((len(show), height, width), np.nan, dtype="float32")
        reproject(rasterio.band(src, [i + 1 for i in show]), data, src_nodata=src.nodata,
                  dst_transform=from_bounds(*bounds, width, height), dst_crs="EPSG:3857", dst_nodata=np.nan,
                  resampling=Resampling.nearest)
    west, south, east, north = transform_bounds("EPSG:3857", "EPSG:4326", *bounds)
    png = _png(_colourise(data, [bands[i] for i in show]))
    return ipyleaflet.ImageOverlay(url="data:image/png;base64," + base64.b64encode(png).decode(),
                                   bounds=((south, west), (north, east)), name=name)


def _display_bands(bands: Sequence[str]) -> list[int]:
    """Which bands an overlay shows: true colour for Sentinel-2, VV for Sentinel-1, else the first band."""
    if {"B4", "B3", "B2"} <= set(bands):
        return [bands.index(b) for b in ("B4", "B3", "B2")]
    if "VV" in bands:
        return [bands.index("VV")]
    return [0]


def _colourise(data: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """(bands, y, x) float values with NaN nodata → (4, y, x) uint8 RGBA, nodata transparent."""
    valid = ~np.isnan(data).any(axis=0)
    if len(bands) == 3:
        rgb = np.clip(np.nan_to_num(data) / S2_MAX, 0, 1) * 255
    elif bands[0] == "label":
        palette = np.array([[int(c[j:j + 2], 16) for j in (1, 3, 5)] for c in DW_PALETTE], dtype=np.uint8)
        labels = np.nan_to_num(data[0], nan=0).astype(int)
        valid &= labels < len(DW_PALETTE)
        rgb = palette[np.clip(labels, 0, len(DW_PALETTE) - 1)].transpose(2, 0, 1)
    else:
        lo, hi = S1_RANGE if bands[0] == "VV" else _percentiles(data[0][valid])
        grey = np.clip((np.nan_to_num(data[0], nan=lo) - lo) / max(hi - lo, 1e-6), 0, 1) * 255
        rgb = np.broadcast_to(grey, (3,) + grey.shape)
    alpha = np.where(valid, 255, 0)[None]
    return np.concatenate([np.where(valid, rgb, 0), alpha]).round().astype(np.uint8)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    """The 2nd and 98th percentiles: a stretch that no single spike or pit flattens."""
    if not values.size:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [2, 98])
    return float(lo), float(hi)


def _png(rgba: np.ndarray) -> bytes:
    """Encode with GDAL's PNG driver (no imaging library needed)."""
    with MemoryFile() as memfile:
        with memfile.open(driver="PNG", width=rgba.shape[2], height=rgba.shape[1], count=4, dtype="uint8") as dst:
            dst.write(rgba)
        return memfile.read()


# -- view -------------------------------------------------------------------------------------------
def _view(m: geemap.Map, bounds: tuple[float, float, float, float]) -> None:
    """Centre on ``bounds`` at the largest zoom that shows them (set here: fit_bounds needs a browser)."""
    west, south, east, north = bounds
    m.center = ((south + north) / 2, (west + east) / 2)
    span = max(east - west, (north - south) * 1.5, 1e-6)
    m.zoom = int(max(2, min(18, math.floor(math.log2(360.0 / span)) + 1)))


def _union_bounds(bounds: Iterable[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    west, south, east, north = zip(*bounds)
    return min(west), min(south), max(east), max(north)


def _date(value: str | dt.date, what: str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise RsgeeError(f"{what} '{value}' is not a date; give YYYY-MM-DD") from None


__all__ = ["preview", "preview_recipe", "EE_VIS", "SPLIT_COLOURS", "DW_PALETTE"]
