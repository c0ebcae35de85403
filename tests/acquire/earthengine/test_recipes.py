"""Recipes: the Earth Engine graphs built from catalog specs, checked on their serialized form.

Nothing is evaluated: the ``ee_offline`` fixture (pulled in by ``region``) fails any remote call. Each test builds a recipe,
serializes it and walks the graph (:class:`Graph`) to find invocations and their arguments.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Iterator

import ee
import pytest

from rsgee.acquire.earthengine.recipes import (
    FLOAT_FILL,
    FULL_MASK,
    RecipeOptions,
    Window,
    build_recipe,
    collection_size,
    fill_value,
)
from rsgee.catalog import FallbackSpec, load_catalog, parse_catalog
from rsgee.errors import RsgeeError

WINDOW = Window(dt.date(2021, 6, 1), dt.date(2021, 9, 1))
RECT = [500000, 5000000, 502560, 5002560]


# --- a small walker over serialized expression graphs --------------------------------------------


class Call:
    """One function invocation: its name and its (resolved) arguments."""

    def __init__(self, name: str, args: dict[str, Any]):
        self.name = name
        self.args = args

    def __repr__(self) -> str:
        return f"Call({self.name}, {sorted(self.args)})"

    def value(self, arg: str) -> Any:
        """The constant an argument holds (through Image.constant and arrays)."""
        return constant(self.args[arg])


class Const:
    def __init__(self, value: Any):
        self.value = value


class Func:
    """A function definition (the body of a ``map``)."""

    def __init__(self, names: list[str], body: Any):
        self.names = names
        self.body = body


class Arg:
    """A reference to a function argument (the image inside a ``map``)."""

    def __init__(self, name: str):
        self.name = name


def constant(node: Any) -> Any:
    if isinstance(node, Const):
        return node.value
    if isinstance(node, list):
        return [constant(n) for n in node]
    if isinstance(node, dict):
        return {k: constant(v) for k, v in node.items()}
    if isinstance(node, Call) and node.name == "Image.constant":
        return constant(node.args["value"])
    raise AssertionError(f"not a constant: {node!r}")


class Graph:
    """The serialized graph of an ee object, with shared nodes resolved to shared objects."""

    def __init__(self, obj: ee.ComputedObject):
        self.text = obj.serialize()
        data = json.loads(self.text)
        self._values = data["values"]
        self._memo: dict[str, Any] = {}
        self.root = self._ref(data["result"])

    def _ref(self, ref: str) -> Any:
        if ref not in self._memo:
            self._memo[ref] = self._node(self._values[ref])
        return self._memo[ref]

    def _node(self, node: dict) -> Any:
        (kind, body), = node.items()
        if kind == "valueReference":
            return self._ref(body)
        if kind == "constantValue":
            return Const(body)
        if kind == "arrayValue":
            return [self._node(v) for v in body["values"]]
        if kind == "dictionaryValue":
            return {k: self._node(v) for k, v in body["values"].items()}
        if kind == "functionInvocationValue":
            args = {k: self._node(v) for k, v in body.get("arguments", {}).items()}
            return Call(body["functionName"], args)
        if kind == "functionDefinitionValue":
            return Func(body["argumentNames"], self._ref(body["body"]))
        if kind == "argumentReference":
            return Arg(body)
        raise AssertionError(f"unexpected node kind {kind}")

    def calls(self, name: str | None = None, start: Any = None) -> list[Call]:
        """Invocations (of ``name``) reachable from ``start`` (default: the root), each once."""
        found = [c for c in _walk(self.root if start is None else start) if name is None or c.name == name]
        return found

    def one(self, name: str, start: Any = None) -> Call:
        found = self.calls(name, start)
        assert len(found) == 1, f"expected one {name}, found {len(found)}"
        return found[0]

    def upstream(self, call: Call) -> list[Call]:
        """Everything that feeds ``call`` (its arguments, transitively, map bodies included)."""
        return [c for c in _walk(call) if c is not call]

    def names(self) -> set[str]:
        return {c.name for c in self.calls()}


def _walk(node: Any) -> Iterator[Call]:
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, Call):
            yield n
            stack.extend(n.args.values())
        elif isinstance(n, Func):
            stack.append(n.body)
        elif isinstance(n, list):
            stack.extend(n)
        elif isinstance(n, dict):
            stack.extend(n.values())


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture
def region(ee_offline):
    """An AOI in UTM 32N; requesting it initialises the offline ee client."""
    return ee.Geometry.Rectangle(RECT, "EPSG:32632", False)


def recipe_graph(catalog, name, region, options=RecipeOptions(), window=WINDOW):
    recipe = build_recipe(catalog[name], region, window, options)
    return recipe, Graph(recipe.image)


def edited(catalog, name, **changes):
    """A user-edited copy of the default catalog (as if catalog.yaml had been changed)."""
    data = catalog.to_dict()
    data["sources"][name].update(changes)
    return parse_catalog(data, "edited.yaml")


# --- collections and filters --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, ids",
    [
        ("s1", {"COPERNICUS/S1_GRD_FLOAT"}),
        ("s2", {"COPERNICUS/S2_SR_HARMONIZED", "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"}),
        ("lulc", {"GOOGLE/DYNAMICWORLD/V1"}),
        ("dem", {"COPERNICUS/DEM/GLO30"}),
    ],
)
def test_collection_ids(catalog, region, name, ids):
    recipe, graph = recipe_graph(catalog, name, region)
    assert {c.value("id") for c in graph.calls("ImageCollection.load")} == ids
    assert recipe.source == name
    # The exposed collection is the filtered source collection itself.
    assert {c.value("id") for c in Graph(recipe.collection).calls("ImageCollection.load")} == {catalog[name].collection}


@pytest.mark.parametrize("name", ["s1", "s2", "lulc", "dem"])
def test_filter_bounds_on_the_region(catalog, region, name):
    _, graph = recipe_graph(catalog, name, region)
    bounds = graph.one("Filter.intersects")
    rect = graph.one("GeometryConstructors.Rectangle", bounds)
    assert rect.value("coordinates") == RECT
    assert graph.one("Projection", rect).value("crs") == "EPSG:32632"


@pytest.mark.parametrize("name", ["s1", "s2", "lulc"])
def test_filter_date_is_the_window(catalog, region, name):
    _, graph = recipe_graph(catalog, name, region)
    date = graph.one("Filter.dateRangeContains")
    assert date.value("rightField") == "system:time_start"
    span = graph.one("DateRange", date)
    assert (span.value("start"), span.value("end")) == ("2021-06-01", "2021-09-01")


def test_dem_mosaic_is_not_filtered_by_date(catalog, region):
    _, graph = recipe_graph(catalog, "dem", region)
    assert not graph.calls("Filter.dateRangeContains")
    assert not graph.calls("DateRange")


def test_s1_property_filters(catalog, region):
    _, graph = recipe_graph(catalog, "s1", region)
    equals = {(c.value("leftField"), c.value("rightValue")) for c in graph.calls("Filter.equals")}
    assert equals == {("instrumentMode", "IW"), ("resolution_meters", 10)}
    contains = {(c.value("leftField"), c.value("rightValue")) for c in graph.calls("Filter.listContains")}
    assert contains == {("transmitterReceiverPolarisation", "VV"), ("transmitterReceiverPolarisation", "VH")}


def orbit_filters(graph):
    return [c.value("rightValue") for c in graph.calls("Filter.equals") if c.value("leftField") == "orbitProperties_pass"]


@pytest.mark.parametrize("orbit", [None, "both", "BOTH"])
def test_no_orbit_filter_unless_asked(catalog, region, orbit):
    _, graph = recipe_graph(catalog, "s1", region, RecipeOptions(s1_orbit=orbit))
    assert orbit_filters(graph) == []


@pytest.mark.parametrize("orbit, expected", [("ASCENDING", "ASCENDING"), ("descending", "DESCENDING")])
def test_orbit_filter_when_asked(catalog, region, orbit, expected):
    _, graph = recipe_graph(catalog, "s1", region, RecipeOptions(s1_orbit=orbit))
    assert orbit_filters(graph) == [expected]
    # Sentinel-2 has no orbit pass property: the option leaves it alone.
    _, s2 = recipe_graph(catalog, "s2", region, RecipeOptions(s1_orbit=orbit))
    assert orbit_filters(s2) == []


def test_bad_orbit_is_one_line_error():
    with pytest.raises(RsgeeError, match="not one of both, ascending, descending"):
        RecipeOptions(s1_orbit="sideways")


def test_orbit_option_against_a_catalog_orbit_filter(catalog, region):
    pinned = edited(catalog, "s1", filters={"instrumentMode": "IW", "orbitProperties_pass": "DESCENDING"})
    with pytest.raises(RsgeeError, match="s1.*contradicts"):
        build_recipe(pinned["s1"], region, WINDOW, RecipeOptions(s1_orbit="ASCENDING"))
    graph = Graph(build_recipe(pinned["s1"], region, WINDOW, RecipeOptions(s1_orbit="DESCENDING")).image)
    assert orbit_filters(graph) == ["DESCENDING"]  # once, not twice


def test_list_filter_becomes_in_list(catalog, region):
    spec = edited(catalog, "s2", filters={"MGRS_TILE": ["32TMT", "32TNT"]})["s2"]
    graph = Graph(build_recipe(spec, region, WINDOW).image)
    (in_list,) = [c for c in graph.calls("Filter.listContains") if "rightField" in c.args]
    assert (in_list.value("rightField"), in_list.value("leftValue")) == ("MGRS_TILE", ["32TMT", "32TNT"])


# --- bands, composites, masks -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, ee_bands, archive_bands",
    [
        ("s1", ["VV", "VH"], ["VV", "VH"]),
        ("s2", ["B2", "B3", "B4", "B8"], ["B2", "B3", "B4", "B8"]),
        ("lulc", ["label"], ["label"]),
        ("dem", ["DEM"], ["dem"]),
    ],
)
def test_band_selection_and_renaming(catalog, region, name, ee_bands, archive_bands):
    _, graph = recipe_graph(catalog, name, region)
    selections = [c.value("bandSelectors") for c in graph.calls("Image.select")]
    assert ee_bands in selections
    assert graph.one("Image.rename").value("names") == archive_bands


@pytest.mark.parametrize(
    "name, composite",
    [("s1", "reduce.mean"), ("s2", "reduce.median"), ("lulc", "reduce.mode"), ("dem", "ImageCollection.mosaic")],
)
def test_composite_reducer(catalog, region, name, composite):
    _, graph = recipe_graph(catalog, name, region)
    reducers = {"reduce.mean", "reduce.median", "reduce.mode", "ImageCollection.mosaic", "ImageCollection.reduce"}
    assert graph.names() & reducers == {composite}


def where_full(call):
    """The image that ``call`` keeps only where its own mask is full (``updateMask(mask().gte(FULL_MASK))``)."""
    assert call.name == "Image.updateMask"
    mask = call.args["mask"]
    assert mask.name == "Image.gte" and mask.args["image1"].name == "Image.mask" and mask.value("image2") == FULL_MASK
    assert mask.args["image1"].args["image"] is call.args["image"]
    return call.args["image"]


def seam_fill(graph):
    """The unmask that fills the tiles' mosaic from the one-grid mosaic."""
    return next(c for c in graph.calls("Image.unmask") if c.args["input"].name == "ImageCollection.mosaic")


def test_dem_tiles_are_resampled_on_their_own_grids_where_their_masks_are_full(catalog, region):
    """No tile's projection is borrowed inside tiles (across 50°/60°/70°/80° the GLO30 tiles' grids differ); along
    tile edges, where a tile's kernel reads past it, the mosaic resampled once on the first tile's grid."""
    _, graph = recipe_graph(catalog, "dem", region)
    seam = seam_fill(graph)
    assert seam.value("sameFootprint") is False
    tiles = seam.args["input"]
    per_tile = graph.one("Image.updateMask", tiles)
    resample = where_full(per_tile)
    assert resample.name == "Image.resample" and resample.value("mode") == "bilinear"
    assert "Image.setDefaultProjection" not in {c.name for c in graph.upstream(tiles)}
    one_grid = where_full(seam.args["value"])
    assert one_grid.name == "Image.resample" and one_grid.value("mode") == "bilinear"
    default = one_grid.args["image"]
    assert default.name == "Image.setDefaultProjection" and default.args["image"].name == "ImageCollection.mosaic"
    assert "Image.resample" not in {c.name for c in graph.upstream(default.args["image"])}  # tiles on their grids
    projection = default.args["crs"]
    assert projection.name == "Image.projection" and projection.args["image"].value("bandSelectors") == ["DEM"]
    assert projection.args["image"].args["input"].name == "Collection.first"


def test_land_without_tiles_takes_the_fallback_and_only_the_rest_is_zero(catalog, region):
    assert catalog["dem"].fallback == FallbackSpec("NASA/NASADEM_HGT/001", ("elevation",))
    assert all(catalog[n].fallback is None and catalog[n].fill_missing is None for n in ("s1", "s2", "lulc"))
    assert catalog["dem"].fill_missing == 0.0
    _, graph = recipe_graph(catalog, "dem", region)
    fill = next(c for c in graph.calls("Image.unmask") if c.args["value"].name == "Image.constant"
                and c.value("value") == 0)
    assert fill.value("sameFootprint") is False
    fallback = fill.args["input"]
    assert fallback.name == "Image.unmask" and fallback.args["input"] is seam_fill(graph)
    resample = where_full(fallback.args["value"])
    assert resample.name == "Image.resample" and resample.value("mode") == "bilinear"
    assert resample.args["image"].name == "Image.toFloat"  # NASADEM's int16 heights interpolated in float
    select = resample.args["image"].args["value"]
    assert select.value("bandSelectors") == ["elevation"] and select.args["input"].name == "Image.load"
    assert select.args["input"].value("id") == "NASA/NASADEM_HGT/001"
    _, plain = recipe_graph(edited(catalog, "dem", fill_missing=None, fallback=None), "dem", region)
    inputs = sorted(c.args["input"].name for c in plain.calls("Image.unmask"))
    assert inputs == ["Image.rename", "ImageCollection.mosaic"]
    assert "Image.load" not in plain.names()


def test_an_empty_collection_leaves_the_fallback_alone(catalog, region):
    """An AOI wholly on land without GLO30 tiles: a mosaic of no images has no band to fill, so none is built."""
    recipe = build_recipe(catalog["dem"], region, WINDOW, empty=True)
    graph = Graph(recipe.image)
    assert not graph.names() & {"ImageCollection.load", "ImageCollection.mosaic", "Image.setDefaultProjection"}
    fill = graph.root.args["value"].args["input"].args["input"]
    assert fill.name == "Image.unmask" and fill.value("value") == 0
    assert where_full(fill.args["input"]).name == "Image.resample"
    assert {c.value("id") for c in Graph(recipe.collection).calls("ImageCollection.load")} == {"COPERNICUS/DEM/GLO30"}
    with pytest.raises(RsgeeError, match="no images in COPERNICUS/S2_SR_HARMONIZED here and no fallback"):
        build_recipe(catalog["s2"], region, WINDOW, empty=True)


def test_s2_cloud_score_mask(catalog, region):
    _, graph = recipe_graph(catalog, "s2", region)
    link = graph.one("Image.linkCollection")
    assert graph.one("ImageCollection.load", link.args["imageCollection"]).value("id") == (
        "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"
    )
    assert link.value("linkedBands") == ["cs_cdf"]
    gte = graph.one("Image.gte")
    assert gte.args["image1"].name == "Image.select" and gte.args["image1"].value("bandSelectors") == ["cs_cdf"]
    assert gte.value("image2") == 0.6
    update = graph.one("Image.updateMask")
    assert update.args["mask"] is gte
    # The score band is dropped: the bands selected after masking are the catalog's only.
    after = [c for c in graph.calls("Image.select") if c.args["input"] is update]
    assert [c.value("bandSelectors") for c in after] == [["B2", "B3", "B4", "B8"]]
    # The mask is applied per image, before the median.
    assert update in graph.upstream(graph.one("reduce.median"))


@pytest.mark.parametrize("name", ["s1", "lulc", "dem"])
def test_no_cloud_mask_without_catalog_entry(catalog, region, name):
    _, graph = recipe_graph(catalog, name, region)
    assert "Image.linkCollection" not in graph.names()
    # the DEM's only masks keep pixels where a resampled layer's own mask is full
    masks = [c for c in graph.calls("Image.updateMask") if c.args["mask"].name != "Image.gte"
             or c.args["mask"].args["image1"].name != "Image.mask"]
    assert len(masks) == (1 if name == "s1" else 0)  # s1: the angle mask
    assert all(c.args["image1"].name == "Image.mask" for c in graph.calls("Image.gte"))


def angle_bounds(graph):
    """{comparison: constant} of the comparisons made on the ``angle`` band."""
    return {c.name: c.value("image2") for c in graph.calls() if c.name in ("Image.gt", "Image.lt")
            and c.args["image1"].name == "Image.select" and c.args["image1"].value("bandSelectors") == ["angle"]}


def test_s1_incidence_angle_mask_per_image_before_the_mean(catalog, region):
    _, graph = recipe_graph(catalog, "s1", region)
    assert angle_bounds(graph) == {"Image.gt": 30.63993, "Image.lt": 45.23993}
    update = graph.one("Image.updateMask")
    both = update.args["mask"]
    assert both.name == "Image.and" and {both.args["image1"].name, both.args["image2"].name} == {"Image.gt", "Image.lt"}
    # Masked per image (inside the map), before the linear mean and its dB; the angle band is dropped after.
    assert isinstance(update.args["image"], Arg)
    assert update in graph.upstream(graph.one("reduce.mean"))
    after = [c for c in graph.calls("Image.select") if c.args["input"] is update]
    assert [c.value("bandSelectors") for c in after] == [["VV", "VH"]]


def test_angle_mask_bounds_from_the_catalog(catalog, region):
    wider = edited(catalog, "s1", angle_mask={"band": "angle", "min": 29.0, "max": 46.0})
    _, graph = recipe_graph(wider, "s1", region)
    assert angle_bounds(graph) == {"Image.gt": 29.0, "Image.lt": 46.0}
    _, off = recipe_graph(edited(catalog, "s1", angle_mask=None), "s1", region)
    assert angle_bounds(off) == {} and not off.calls("Image.updateMask")


def test_s2_scene_prefilter_on_cloudy_percentage(catalog, region):
    recipe, graph = recipe_graph(catalog, "s2", region)
    below = graph.one("Filter.lessThan")
    assert (below.value("leftField"), below.value("rightValue")) == ("CLOUDY_PIXEL_PERCENTAGE", 90.0)
    # On the S2 collection itself (what the empty-collection check counts), not on Cloud Score+'s.
    collection = Graph(recipe.collection)
    assert collection.one("Filter.lessThan").value("rightValue") == 90.0
    link = graph.one("Image.linkCollection")
    assert not graph.calls("Filter.lessThan", link.args["imageCollection"])
    for name in ("s1", "lulc", "dem"):
        assert not recipe_graph(catalog, name, region)[1].calls("Filter.lessThan")
    _, stricter = recipe_graph(edited(catalog, "s2", filters_lt={"CLOUDY_PIXEL_PERCENTAGE": 60}), "s2", region)
    assert stricter.one("Filter.lessThan").value("rightValue") == 60.0


def test_s1_db_after_the_linear_mean(catalog, region):
    _, graph = recipe_graph(catalog, "s1", region)
    mean, log10 = graph.one("reduce.mean"), graph.one("Image.log10")
    assert mean in graph.upstream(log10)
    assert log10 not in graph.upstream(mean)
    # Between them only the linear clamp at the floor (10^(-50/10)): a zero mean never hits log10.
    linear_clamp = log10.args["value"]
    assert linear_clamp.name == "Image.max" and linear_clamp.args["image1"] is mean
    assert linear_clamp.value("image2") == pytest.approx(1e-5)
    times10 = [c for c in graph.calls("Image.multiply") if c.args["image1"] is log10]
    assert len(times10) == 1 and times10[0].value("image2") == 10
    floor = [c for c in graph.calls("Image.max") if c.args["image1"] is times10[0]]
    assert len(floor) == 1 and floor[0].value("image2") == -50.0
    assert graph.one("Image.rename").args["input"] is floor[0]


@pytest.mark.parametrize("name", ["s2", "lulc", "dem"])
def test_no_db_for_other_sources(catalog, region, name):
    _, graph = recipe_graph(catalog, name, region)
    assert "Image.log10" not in graph.names()


@pytest.mark.parametrize(
    "name, fill, cast",
    [("s1", FLOAT_FILL, "Image.toFloat"), ("s2", 0, "Image.toUint16"), ("lulc", 255, "Image.toUint8"),
     ("dem", FLOAT_FILL, "Image.toFloat")],
)
def test_unmask_fill_then_cast(catalog, region, name, fill, cast):
    recipe, graph = recipe_graph(catalog, name, region)
    assert recipe.fill == fill == fill_value(catalog[name])
    assert graph.root.name == cast  # the cast is the last step...
    unmask = graph.root.args["value"]
    assert unmask.name == "Image.unmask"  # ...right after unmasking
    assert unmask.value("value") == fill
    assert unmask.value("sameFootprint") is False
    assert unmask.args["input"].name == "Image.rename"
    # the DEM's others: tiles ← one-grid mosaic, ← fallback, ← fill_missing
    assert len(graph.calls("Image.unmask")) == (4 if name == "dem" else 1)


def test_land_cover_fill_is_never_water(catalog):
    assert fill_value(catalog["lulc"]) == 255 and catalog["lulc"].classes[0] == "water"


def test_float_source_with_numeric_nodata_uses_it(catalog, region):
    spec = edited(catalog, "dem", nodata=-9999.0)["dem"]
    recipe = build_recipe(spec, region, WINDOW)
    assert recipe.fill == -9999.0
    assert Graph(recipe.image).root.args["value"].value("value") == -9999.0


# --- resampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["s1", "s2"])
def test_composites_resample_each_image_first(catalog, region, name):
    _, graph = recipe_graph(catalog, name, region)
    resample = graph.one("Image.resample")
    assert resample.value("mode") == "bilinear"
    composite = graph.one({"s1": "reduce.mean", "s2": "reduce.median"}[name])
    assert resample in graph.upstream(composite)


def test_nearest_is_the_default_no_resample(catalog, region):
    _, graph = recipe_graph(catalog, "lulc", region)
    assert "Image.resample" not in graph.names()


def test_cubic_is_bicubic(catalog, region):
    spec = edited(catalog, "s2", resampling="cubic")["s2"]
    assert Graph(build_recipe(spec, region, WINDOW).image).one("Image.resample").value("mode") == "bicubic"


@pytest.mark.parametrize("name, method", [("lulc", "mode"), ("dem", "average")])
def test_aggregating_resampling_is_refused(catalog, region, name, method):
    spec = edited(catalog, name, resampling=method)[name]
    with pytest.raises(RsgeeError, match=rf"source '{name}': resampling '{method}' is not supported"):
        build_recipe(spec, region, WINDOW)


def test_integer_composites_are_rounded_before_the_cast(catalog, region):
    _, s2 = recipe_graph(catalog, "s2", region)
    assert s2.one("Image.rename").args["input"].name == "Image.round"
    _, lulc = recipe_graph(catalog, "lulc", region)  # mode of labels, nearest: already integral
    assert "Image.round" not in lulc.names()


# --- the catalog drives the graph ----------------------------------------------------------------


def test_extra_s2_band_from_the_catalog(catalog, region):
    bands = [b for b in catalog.to_dict()["sources"]["s2"]["bands"]]
    bands.append({"ee": "B11", "name": "B11", "description": "SWIR 1610 nm"})
    spec = edited(catalog, "s2", bands=bands)["s2"]
    graph = Graph(build_recipe(spec, region, WINDOW).image)
    assert ["B2", "B3", "B4", "B8", "B11"] in [c.value("bandSelectors") for c in graph.calls("Image.select")]
    assert graph.one("Image.rename").value("names") == ["B2", "B3", "B4", "B8", "B11"]


def test_cloud_threshold_from_the_catalog(catalog, region):
    cloud = dict(catalog.to_dict()["sources"]["s2"]["cloud_mask"], threshold=0.5, band="cs")
    spec = edited(catalog, "s2", cloud_mask=cloud)["s2"]
    graph = Graph(build_recipe(spec, region, WINDOW).image)
    assert graph.one("Image.gte").value("image2") == 0.5
    assert graph.one("Image.linkCollection").value("linkedBands") == ["cs"]


def test_a_new_source_needs_no_code(catalog, region):
    data = catalog.to_dict()
    data["sources"]["landsat"] = {
        "description": "Landsat 8 surface reflectance, red band",
        "collection": "LANDSAT/LC08/C02/T1_L2",
        "bands": [{"ee": "SR_B4", "name": "red"}],
        "dtype": "int16",
        "units": "reflectance x 10000",
        "scale_m": 30,
        "nodata": -32768,
        "composite": "median",
        "resampling": "cubic",
        "scale_factor": 0.275,
        "filters": {"WRS_PATH": [195, 196]},
    }
    spec = parse_catalog(data, "edited.yaml")["landsat"]
    recipe = build_recipe(spec, region, WINDOW)
    graph = Graph(recipe.image)
    assert graph.one("ImageCollection.load").value("id") == "LANDSAT/LC08/C02/T1_L2"
    assert graph.one("Image.multiply").value("image2") == 0.275
    assert graph.one("Image.rename").value("names") == ["red"]
    assert graph.root.name == "Image.toInt16"
    assert recipe.fill == -32768
    assert graph.one("Image.resample").value("mode") == "bicubic"


# --- determinism, laziness, inputs ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["s1", "s2", "lulc", "dem"])
def test_same_inputs_same_graph(catalog, region, name):
    first = build_recipe(catalog[name], region, WINDOW).image.serialize()
    again = build_recipe(load_catalog()[name], ee.Geometry.Rectangle(RECT, "EPSG:32632", False), WINDOW)
    assert first == again.image.serialize()


def test_other_window_other_graph(catalog, region):
    other = Window(dt.date(2022, 6, 1), dt.date(2022, 9, 1))
    a = build_recipe(catalog["s2"], region, WINDOW).image.serialize()
    b = build_recipe(catalog["s2"], region, other).image.serialize()
    assert a != b


def test_lon_lat_region(catalog, ee_offline):
    region = ee.Geometry.Polygon([[[9.0, 45.0], [9.03, 45.0], [9.03, 45.02], [9.0, 45.02], [9.0, 45.0]]])
    graph = Graph(build_recipe(catalog["s1"], region, WINDOW).image)
    assert graph.one("GeometryConstructors.Polygon").value("coordinates")[0][0] == [9.0, 45.0]


def test_collection_size_is_lazy(catalog, region):
    recipe = build_recipe(catalog["s1"], region, WINDOW)
    size = collection_size(recipe)
    assert isinstance(size, ee.Number)
    graph = Graph(size)
    assert graph.root.name == "Collection.size"
    # Counting needs only the filtered collection, not the per-image processing.
    assert "Collection.map" not in graph.names()
    assert "Filter.dateRangeContains" in graph.names()


def test_nothing_is_evaluated_remotely(catalog, region):
    recipe = build_recipe(catalog["s2"], region, WINDOW)
    with pytest.raises(AssertionError, match="evaluate on Earth Engine"):
        collection_size(recipe).getInfo()


@pytest.mark.parametrize(
    "start, end", [(dt.date(2021, 9, 1), dt.date(2021, 6, 1)), (dt.date(2021, 6, 1), dt.date(2021, 6, 1))]
)
def test_empty_window_is_refused(start, end):
    with pytest.raises(RsgeeError, match="is empty"):
        Window(start, end)


def test_window_needs_dates():
    with pytest.raises(RsgeeError, match="must be a date"):
        Window("2021-06-01", dt.date(2021, 9, 1))
