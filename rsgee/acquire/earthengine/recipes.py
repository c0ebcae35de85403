"""Earth Engine expression graphs ("recipes") built from the catalog's source specs.

A recipe turns one :class:`~rsgee.catalog.SourceSpec`, an AOI region and a date window into an
``ee.Image`` that is ready for ``computePixels`` on the 10 m archive grid or for a batch export:
bands renamed to the archive names, values in archive units, masked pixels filled, cast to the
archive dtype. Nothing here is specific to one source: every step is driven by a catalog field, so
a band or a source added to catalog.yaml needs no code change.

The graph, in order (each step only when the catalog asks for it):

1. ``filterBounds`` → ``filterDate`` (not for ``mosaic`` sources such as the DEM, which carry no
   acquisition date) → property ``filters`` → ``filters_lt`` (scene pre-filters such as Sentinel-2's
   cloudy percentage, so that overcast scenes are never read) → ``require_bands`` → Sentinel-1 orbit pass.
2. Per image: link the cloud-score collection and keep pixels with ``band >= threshold``; keep pixels
   with ``min < angle < max`` (Sentinel-1 border noise); select the catalog bands (dropping the score
   and angle bands); ``resample`` for bilinear/cubic.
3. Composite: mean, median, mode or mosaic. A resampled mosaic (the DEM's 1° tiles) takes each tile's
   value where the tile's resampled mask is full; along tile edges, where a tile's kernel reaches past
   the tile, it takes the mosaic resampled once, on one tile's grid. Then the ``fallback`` image where
   no tile has data (land without a GLO30 tile), then ``fill_missing`` where nothing has (open ocean).
4. ``scale_factor``; ``to_db`` (10·log10 of the *linear* composite, clamped at ``db_floor``);
   rounding for integer dtypes; rename to archive names; ``unmask(fill)``; cast to the dtype.

Building a recipe never contacts Earth Engine: an empty collection (no data for this AOI and
window) is only found when :func:`collection_size` is evaluated, and a band the collection lacks
only when pixels are computed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable

import ee

from rsgee.catalog import SourceSpec
from rsgee.errors import RsgeeError

#: What masked pixels of float sources whose nodata is NaN carry on the wire. NaN cannot be sent
#: through ``unmask`` reliably (it does not survive JSON and is not a valid mask value), so the
#: client maps this sentinel back to NaN. It lies far outside every float source of the default
#: catalog (dB ≥ db_floor, elevations ≥ −500 m) and is exact in float32.
FLOAT_FILL = -32768.0

#: Sentinel-1 property holding the orbit pass.
ORBIT_PROPERTY = "orbitProperties_pass"
ORBITS = ("ASCENDING", "DESCENDING")

# Catalog resampling name → Earth Engine ``Image.resample`` mode. Nearest is EE's default.
_EE_RESAMPLING = {"bilinear": "bilinear", "cubic": "bicubic"}
_CASTS = {"uint8": "toUint8", "uint16": "toUint16", "int16": "toInt16", "float32": "toFloat"}
_SENTINEL1_PREFIX = "COPERNICUS/S1"
#: A resampled layer's pixel is used only where its mask is full: at a tile's edge bilinear interpolation reads
#: past the tile and may leave a partial mask, whose value blends in what is not there. (Not exactly 1: the
#: kernel's weights need not sum to exactly 1 in float32.)
FULL_MASK = 0.9999


@dataclass(frozen=True)
class Window:
    """A date window ``[start, end)``: ``end`` is excluded, as in ``filterDate``."""

    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            if not isinstance(getattr(self, name), dt.date):
                raise RsgeeError(f"date window {name} must be a date, got {getattr(self, name)!r}")
        if not self.start < self.end:
            raise RsgeeError(f"date window {self.start}…{self.end} is empty; the end must be after the start")


@dataclass(frozen=True)
class RecipeOptions:
    """Per-run choices that are not properties of a source (those live in the catalog).

    Attributes:
        s1_orbit: Sentinel-1 orbit pass: None or "both" (no filter), "ASCENDING" or "DESCENDING".
            Mixing passes changes the viewing geometry and can leave seams, so users may pin one.
            Applies to every source whose collection is a Sentinel-1 collection; others ignore it.
    """

    s1_orbit: str | None = None

    def __post_init__(self) -> None:
        orbit = self.s1_orbit
        if orbit is None:
            return
        normal = str(orbit).strip().upper()
        if normal == "BOTH":
            normal = None
        elif normal not in ORBITS:
            raise RsgeeError(f"S1 orbit {orbit!r} is not one of both, ascending, descending")
        object.__setattr__(self, "s1_orbit", normal)


@dataclass(frozen=True)
class Recipe:
    """One source's Earth Engine graph for one region and window.

    Attributes:
        source: catalog source name.
        image: archive band names, units and dtype; masked pixels carry ``fill``. Ready for
            ``computePixels`` with an explicit grid, or for ``Export.image``.
        collection: the filtered collection before per-image processing; ``size() == 0`` means
            there is no data for this AOI and window (and ``image`` would fail server-side).
        fill: the value masked pixels carry on the wire; the client maps it to the archive nodata.
    """

    source: str
    image: ee.Image
    collection: ee.ImageCollection
    fill: float | int


def fill_value(spec: SourceSpec) -> float | int:
    """What masked pixels of ``spec`` carry on the wire.

    The archive nodata itself for integer dtypes (0 for S2, 255 for land cover, never 0 there: 0 is
    water) and for floats with a numeric nodata; :data:`FLOAT_FILL` where nodata is NaN.
    """
    return FLOAT_FILL if spec.nodata_is_nan else spec.nodata


def build_recipe(
    spec: SourceSpec, region: ee.Geometry, window: Window, options: RecipeOptions = RecipeOptions(), *,
    empty: bool = False,
) -> Recipe:
    """Build the Earth Engine graph of one source for one region and date window, offline.

    Args:
        spec: the catalog source.
        region: where to look for images (any projection), not a clip, since the pixel grid comes
            from the request; for mosaics it must reach as far as the requested pixels read.
        window: the date window; ignored for ``mosaic`` sources (not time-stamped).
        options: per-run choices (Sentinel-1 orbit).
        empty: the collection has no image here (:func:`collection_size` said 0) and the source
            has a ``fallback``: the image is the fallback's alone, since a mosaic of no images has
            no bands to fill (an AOI wholly on land without GLO30 tiles).

    Returns:
        The recipe. Evaluate :func:`collection_size` before requesting pixels: an empty collection
        makes the image fail server-side, unless it is rebuilt with ``empty``.

    Raises:
        RsgeeError: the source asks for a resampling recipes do not support (average, mode), the
            orbit option contradicts the catalog's own orbit filter, or ``empty`` without a fallback.
    """
    resample = _resampling(spec)
    collection = _filtered(spec, region, window, options)
    cloud = spec.cloud_mask
    angle = spec.angle_mask
    bands = list(spec.ee_bands)
    if empty and spec.fallback is None:
        raise RsgeeError(f"source '{spec.name}': no images in {spec.collection} here and no fallback to use instead")

    images = collection
    if cloud is not None:
        images = images.linkCollection(ee.ImageCollection(cloud.collection), [cloud.band])

    def prepare(image: ee.Image, mode: str | None = resample) -> ee.Image:
        if cloud is not None:
            image = image.updateMask(image.select(cloud.band).gte(cloud.threshold))
        if angle is not None:
            # Per image, before the mean: a scene's dark edges would otherwise pull the composite down in
            # stripes wherever they overlap a neighbouring scene's valid pixels.
            incidence = image.select(angle.band)
            image = image.updateMask(incidence.gt(angle.min).And(incidence.lt(angle.max)))
        image = image.select(bands)
        # Resample each image before compositing, from its own grid: a composite has no meaningful
        # native projection for resample() to act on (EE: "resample the images used to create it").
        # For a mosaic this matters too: GLO30 tiles change their longitude spacing at 50°, 60°,
        # 70° and 80° latitude, and a mosaic resampled from one tile's projection would first be
        # nearest-sampled onto that tile's grid on the other side of such a line.
        if mode is not None:
            image = image.resample(mode)
        return image

    if empty:
        image = None
    elif spec.composite == "mosaic" and resample is not None:
        image = _seamless_mosaic(collection, images, prepare, bands[0], resample)
    else:
        image = _composite(spec, images.map(prepare))
    if spec.fallback is not None:
        # Land without a tile of the collection (GLO30 over Armenia and Azerbaijan): a whole second DEM, in
        # float so that interpolated heights of an integer DEM (NASADEM's int16) keep their fractions.
        fallback = ee.Image(spec.fallback.image).select(list(spec.fallback.bands)).toFloat()
        if resample is not None:
            fallback = _where_full(fallback.resample(resample))
        image = fallback if image is None else image.unmask(fallback, False)
    if spec.fill_missing is not None:
        # Where no image has data (GLO30 over open ocean) the value is known. The fill is exact: only
        # pixels whose masks were full were kept, so nothing blends it with nodata.
        image = image.unmask(spec.fill_missing, False)
    if spec.scale_factor is not None:
        image = image.multiply(spec.scale_factor)
    if spec.to_db:
        image = _to_db(image, spec.db_floor)
    if spec.numpy_dtype.kind != "f" and _may_be_fractional(spec):
        # EE's integer casts truncate; round so that a median of 1000 and 1001 is not biased down.
        image = image.round()
    fill = fill_value(spec)
    image = image.rename(list(spec.band_names)).unmask(fill, False)
    image = getattr(image, _CASTS[spec.dtype])()
    return Recipe(source=spec.name, image=image, collection=collection, fill=fill)


def _seamless_mosaic(collection: ee.ImageCollection, images: ee.ImageCollection,
                     prepare: Callable[..., ee.Image], band: str, resample: str) -> ee.Image:
    """Each tile interpolated on its own grid where its mask stays full, elsewhere the mosaic interpolated once.

    Along a tile's edge (half a source pixel wide) the kernel reads past the tile, so the tile's resampled mask
    is partial or empty there and so may its neighbour's be: unmasked to 0, such pixels would leave 0-m rims
    between tiles. There the mosaic of the tiles, given the first tile's grid and resampled from it, has all
    the kernel's nodes. Its grid is exact for tiles of the same latitude band as the first; across a band
    line (50°, 60°, 70°, 80°) the edge pixels are off by at most half a source pixel of slope, never 0.
    """
    tiles = images.map(lambda image: _where_full(prepare(image))).mosaic()
    first = ee.Image(collection.first()).select([band]).projection()
    one_grid = images.map(lambda image: prepare(image, None)).mosaic().setDefaultProjection(first).resample(resample)
    return tiles.unmask(_where_full(one_grid), False)


def _where_full(image: ee.Image) -> ee.Image:
    """``image`` masked wherever its mask is not full (see :data:`FULL_MASK`)."""
    return image.updateMask(image.mask().gte(FULL_MASK))


def collection_size(recipe: Recipe) -> ee.Number:
    """How many images feed the recipe (unevaluated); 0 means no data for this AOI and window."""
    return recipe.collection.size()


def _resampling(spec: SourceSpec) -> str | None:
    """EE resample mode, None for nearest (EE's default); raise for aggregating methods.

    ``average``/``mode`` would need ``reduceResolution`` on every image before compositing, and it
    only aggregates where source pixels are finer than the requested 10 m grid — never the case for
    Sentinel-1/2, Dynamic World (10 m) or the DEM (30 m): there it degenerates to nearest with extra
    cost. Rather than silently substitute a method, recipes refuse them.
    """
    if spec.resampling == "nearest":
        return None
    if spec.resampling in _EE_RESAMPLING:
        return _EE_RESAMPLING[spec.resampling]
    raise RsgeeError(
        f"source '{spec.name}': resampling '{spec.resampling}' is not supported for Earth Engine; "
        "use nearest (labels) or bilinear/cubic (continuous values) in the catalog"
    )


def _is_sentinel1(spec: SourceSpec) -> bool:
    return spec.collection.startswith(_SENTINEL1_PREFIX)


def _filtered(spec: SourceSpec, region: ee.Geometry, window: Window, options: RecipeOptions) -> ee.ImageCollection:
    collection = ee.ImageCollection(spec.collection).filterBounds(region)
    if spec.composite != "mosaic":
        collection = collection.filterDate(window.start.isoformat(), window.end.isoformat())
    for prop, value in spec.filters.items():
        collection = collection.filter(_property_filter(prop, value))
    for prop, value in spec.filters_lt.items():
        collection = collection.filter(ee.Filter.lt(prop, value))
    if spec.require_bands is not None:
        for value in spec.require_bands.values:
            collection = collection.filter(ee.Filter.listContains(spec.require_bands.property, value))
    orbit = options.s1_orbit
    if orbit is not None and _is_sentinel1(spec):
        pinned = spec.filters.get(ORBIT_PROPERTY)
        allowed = pinned if isinstance(pinned, list) else [pinned]
        if pinned is not None and orbit not in allowed:
            raise RsgeeError(
                f"source '{spec.name}': orbit {orbit} contradicts the catalog filter {ORBIT_PROPERTY}: {pinned}"
            )
        if pinned != orbit:
            collection = collection.filter(ee.Filter.eq(ORBIT_PROPERTY, orbit))
    return collection


def _property_filter(prop: str, value: Any) -> ee.Filter:
    if isinstance(value, (list, tuple)):
        return ee.Filter.inList(prop, list(value))
    return ee.Filter.eq(prop, value)


def _composite(spec: SourceSpec, images: ee.ImageCollection) -> ee.Image:
    if spec.composite == "mean":
        return images.mean()
    if spec.composite == "median":
        return images.median()
    if spec.composite == "mode":
        # reduce.mode keeps the band names (Reducer.mode via reduce() would append "_mode").
        return images.mode()
    # mosaic (nearest): every pixel is computed on the requested grid from the image under it, so it
    # needs no default projection; terrain is derived locally from the 10 m DEM.
    return images.mosaic()


def _to_db(image: ee.Image, floor: float) -> ee.Image:
    """10·log10 of a linear-power composite, clamped at ``floor`` dB.

    The linear values are first raised to the floor's linear equivalent so that a zero mean never
    reaches log10 (no −inf in the graph, whatever EE does with it); the final clamp makes the floor
    exact despite rounding in log10.
    """
    return image.max(10.0 ** (floor / 10.0)).log10().multiply(10).max(floor)


def _may_be_fractional(spec: SourceSpec) -> bool:
    """Whether the composite of an integer source can hold fractions that a cast would truncate."""
    return spec.composite in ("mean", "median") or spec.scale_factor is not None or spec.resampling != "nearest"


__all__ = [
    "FLOAT_FILL",
    "FULL_MASK",
    "Recipe",
    "RecipeOptions",
    "Window",
    "build_recipe",
    "collection_size",
    "fill_value",
]
