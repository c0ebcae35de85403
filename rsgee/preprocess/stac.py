"""``rsgee stac``: the archive as a STAC Collection with one Item per tile, for catalogues and loaders.

Layout: ``ARCHIVE/stac/collection.json`` and ``ARCHIVE/stac/<tile_id>/<tile_id>.json``. Every href
is relative (items → ``../../<source>/<tile_id>.tif``), so the archive folder can be moved or
published whole. The catalog is written beside ``stac/`` and swapped in under the archive's writer
lock (another writer, such as ``rsgee tile``, is waited for): readers see the previous catalog or the
new one, never a mix.

Each Item holds:

- the tile footprint in lon/lat (from the index) and the projection extension in its UTM zone
  (``proj:code``, ``proj:transform``, ``proj:shape``, ``proj:bbox``);
- ``start_datetime``/``end_datetime``: the union of the export date windows of the AOI's
  time-stamped sources, as recorded in ``archive.json`` (mosaic sources such as the DEM carry no
  dates). A window ``[start, end)`` ends at ``end`` − 1 s. AOIs without a recorded window take
  ``start``/``end`` from the caller: those exported from local files (no dates), and those tiled by
  an older rsgee, which a re-run of ``rsgee tile`` on the same exports fixes;
- ``ml-aoi:split`` (``train``, ``validate``, ``test``);
- assets ``s1``, ``s2``, ``lulc``, ``terrain`` and ``gen`` (when generated), each a GeoTIFF with
  roles, ``ml-aoi:role`` (``label`` for land cover, else ``feature``), STAC 1.1 ``bands`` (names),
  ``raster:bands`` (nodata, data type, unit, resolution), ``eo:bands`` for Sentinel-2 bands, and
  the classification extension with the tile's class counts on ``lulc``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pystac
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, NoDataStrings, RasterBand, RasterExtension

from rsgee import __version__
from rsgee.catalog import Catalog, SourceSpec
from rsgee.errors import RsgeeError
from rsgee.grid import PIXEL_M, TILE_PX, Tile
from rsgee.preprocess.archive import Archive, recorded_float_error, terrain_units

ML_AOI = "https://stac-extensions.github.io/ml-aoi/v0.2.0/schema.json"
#: Archive split → ml-aoi's name for it.
ML_AOI_SPLITS = {"train": "train", "val": "validate", "test": "test"}
#: Sentinel-2 MSI bands (Earth Engine names): eo common name and centre wavelength (µm, Sentinel-2A).
SENTINEL2_BANDS = {
    "B1": ("coastal", 0.443), "B2": ("blue", 0.490), "B3": ("green", 0.560), "B4": ("red", 0.665),
    "B5": ("rededge", 0.705), "B6": ("rededge", 0.740), "B7": ("rededge", 0.783), "B8": ("nir", 0.842),
    "B8A": ("nir08", 0.865), "B9": ("nir09", 0.945), "B10": ("cirrus", 1.375), "B11": ("swir16", 1.610),
    "B12": ("swir22", 2.190),
}
ROLES = {"s1": ["data", "backscatter"], "s2": ["data", "reflectance"], "lulc": ["data", "labels"],
         "terrain": ["data"], "gen": ["data", "reflectance"]}


class StacError(RsgeeError):
    """The archive cannot be described as STAC (no tiles, no dates)."""


def write_stac(archive: Archive, *, start: dt.date | None = None, end: dt.date | None = None) -> Path:
    """Write ``ARCHIVE/stac/`` from the index and archive.json; returns the path of collection.json.

    Args:
        archive: the archive to describe.
        start, end: the date window ``[start, end)`` of AOIs whose window archive.json lacks.
    """
    if (start is None) != (end is None) or (start is not None and not start < end):
        raise StacError(f"start {start}, end {end}: give --start and --end together, with start before end")
    archive.read_meta()  # refuse a folder that is no archive before the lock creates anything in it
    with archive.lock(wait=True):
        meta = archive.read_meta()
        features = archive.read_index()
        if not features:
            raise StacError(f"{archive.root} holds no tiles; run rsgee tile first")
        catalog = archive.catalog()
        tiled = {f["properties"]["aoi"] for f in features.values()}
        periods = {name: _period(archive, name, meta["aois"][name], catalog, start, end) for name in sorted(tiled)}
        collection = _collection(archive, features, periods)
        final = archive.stac_dir
        work = final.with_name(".stac.building")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            for item in collection.get_items():
                _write(work / Path(item.get_self_href()).relative_to(final.resolve()),
                       item.to_dict(include_self_link=False, transform_hrefs=True))
            _write(work / "collection.json", collection.to_dict(include_self_link=False, transform_hrefs=True))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        old = final.with_name(".stac.old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    return final / "collection.json"


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def _period(archive: Archive, aoi: str, record: dict, catalog: Catalog, start, end) -> tuple[dt.datetime, dt.datetime]:
    """The AOI's time span: its time-stamped sources' windows joined, else the caller's window."""
    windows = record.get("windows")
    if windows:
        timed = [w for name, w in windows.items() if name not in catalog or catalog[name].composite != "mosaic"]
        spans = [(dt.date.fromisoformat(a), dt.date.fromisoformat(b)) for a, b in timed or windows.values()]
        start, end = min(a for a, _ in spans), max(b for _, b in spans)
    elif start is None and "windows" in record:
        raise StacError(f"AOI '{aoi}' was exported from local files, which carry no dates; pass --start and --end")
    elif start is None:
        raise StacError(f"AOI '{aoi}' has no date window in {archive.meta_path} (tiled by an older rsgee); re-run "
                        "rsgee tile on its export folder with the same options to record it, or pass --start and --end")
    first = dt.datetime.combine(start, dt.time(), tzinfo=dt.timezone.utc)
    last = dt.datetime.combine(end, dt.time(), tzinfo=dt.timezone.utc) - dt.timedelta(seconds=1)
    return first, last


def _collection(archive: Archive, features: dict[str, dict], periods: dict) -> pystac.Collection:
    root = archive.root.resolve()
    sources = sorted({f["properties"]["source"] for f in features.values()})
    synthetic = "synthetic" in sources
    description = (f"rsgee training archive: {len(features)} tiles of {TILE_PX}×{TILE_PX} px at {PIXEL_M} m "
                   f"(Sentinel-1, Sentinel-2, Dynamic World land cover, terrain) from {len(periods)} AOI(s); "
                   f"pixels from {', '.join(sources)}.")
    if synthetic:
        description += " SYNTHETIC pixels: rsgee's procedural offline stand-in for Earth Engine, not real imagery."
    max_error = recorded_float_error(archive.read_meta())
    if max_error:
        description += (f" Sentinel-1 and terrain stored bounded-lossy: every value within {max_error!r} of the "
                        "exact one, in its unit.")
    boxes = [_bbox(f["geometry"]) for f in features.values()]
    extent = pystac.Extent(
        pystac.SpatialExtent([[min(b[0] for b in boxes), min(b[1] for b in boxes),
                               max(b[2] for b in boxes), max(b[3] for b in boxes)]]),
        pystac.TemporalExtent([[min(p[0] for p in periods.values()), max(p[1] for p in periods.values())]]),
    )
    splits = sorted({f["properties"]["split"] for f in features.values()}, key=list(ML_AOI_SPLITS).index)
    collection = pystac.Collection(
        id=root.name, title=f"rsgee archive {root.name}" + (" (synthetic)" if synthetic else ""),
        description=description, extent=extent, license="various", stac_extensions=[ML_AOI],
        summaries=pystac.Summaries({"ml-aoi:split": [ML_AOI_SPLITS[s] for s in splits]}),
        extra_fields={"rsgee:version": __version__, "rsgee:synthetic": synthetic,
                      # > 0: S1 and terrain assets are within this absolute error of the exact values
                      "rsgee:max_float_error": max_error},
        catalog_type=pystac.CatalogType.SELF_CONTAINED,
    )
    specs = archive.sources()
    gen_note = _generated_note(archive)
    for tile_id in sorted(features):
        collection.add_item(_item(archive, features[tile_id], specs, periods, gen_note))
    collection.normalize_hrefs(str(archive.stac_dir.resolve()))
    collection.make_all_asset_hrefs_relative()
    return collection


def _item(archive: Archive, feature: dict, specs: dict[str, SourceSpec], periods: dict, gen_note: str) -> pystac.Item:
    props = feature["properties"]
    tile = Tile.from_id(props["tile_id"])
    first, last = periods[props["aoi"]]
    item = pystac.Item(
        id=tile.id, geometry=feature["geometry"], bbox=_bbox(feature["geometry"]), datetime=None,
        start_datetime=first, end_datetime=last, stac_extensions=[ML_AOI],
        properties={"ml-aoi:split": ML_AOI_SPLITS[props["split"]], "rsgee:aoi": props["aoi"],
                    "rsgee:source": props["source"]},
    )
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        code=tile.crs, transform=list(tile.transform)[:6], shape=[TILE_PX, TILE_PX], bbox=list(tile.bounds))
    for name, spec in sorted(specs.items()):
        _add_asset(item, name, spec, archive.tile_path(name, tile.id), spec.description)
    if archive.generated_path(tile.id).exists():
        _add_asset(item, "gen", specs["s2"], archive.generated_path(tile.id), gen_note)
    lulc = ClassificationExtension.ext(item.assets["lulc"], add_if_missing=True)
    classes = specs["lulc"].classes or ()
    lulc.classes = [Classification.create(value=i, name=c, count=int(n))
                    for i, (c, n) in enumerate(zip(classes, props["class_hist"]))] + [
        Classification.create(value=int(specs["lulc"].nodata), name="nodata", nodata=True)]
    return item


def _add_asset(item: pystac.Item, name: str, spec: SourceSpec, path: Path, description: str) -> None:
    asset = pystac.Asset(href=str(path.resolve()), media_type=pystac.MediaType.GEOTIFF,
                         roles=list(ROLES.get(name, ["data"])), title=name, description=description,
                         extra_fields={"ml-aoi:role": "label" if name == "lulc" else "feature",
                                       "bands": [{"name": b.name, "description": b.description or b.name}
                                                 for b in spec.bands]})
    item.add_asset(name, asset)  # the extensions below record themselves on the asset's owner
    units = terrain_units(spec) if name == "terrain" else [spec.units] * len(spec.bands)
    nodata = NoDataStrings.NAN if spec.nodata_is_nan else spec.nodata
    RasterExtension.ext(asset, add_if_missing=True).bands = [
        RasterBand.create(nodata=nodata, data_type=DataType(spec.dtype), unit=unit, spatial_resolution=PIXEL_M)
        for unit in units]
    if spec.collection.startswith("COPERNICUS/S2"):
        EOExtension.ext(asset, add_if_missing=True).bands = [
            Band.create(name=b.name, common_name=SENTINEL2_BANDS.get(b.ee, (None, None))[0],
                        center_wavelength=SENTINEL2_BANDS.get(b.ee, (None, None))[1], description=b.description or None)
            for b in spec.bands]


def _generated_note(archive: Archive) -> str:
    """What made ``gen/`` (from gen/generated.json), for the gen assets' description."""
    try:
        record = archive.generated_record() or {}
    except RsgeeError:  # a description is no reason to stop: the tiles are there
        return "pseudo-Sentinel-2 generated by a fusion run (rsgee generate); not observed imagery"
    return (f"pseudo-Sentinel-2 generated by the fusion run {record.get('run')} ({record.get('weights', 'raw')} "
            "weights, rsgee generate); not observed imagery")


def _bbox(geometry: dict) -> list[float]:
    xs = [x for ring in geometry["coordinates"] for x, _ in ring]
    ys = [y for ring in geometry["coordinates"] for _, y in ring]
    return [min(xs), min(ys), max(xs), max(ys)]
