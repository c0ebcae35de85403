"""rsgee.maps: headless geemap previews of AOIs, exports and archives, and the Earth Engine composite layer."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.io import MemoryFile
from shapely.geometry import box, shape

pytest.importorskip("geemap")  # the maps extra; CI installs it (make test), so this never skips there

import ee  # noqa: E402
import httplib2  # noqa: E402

import rsgee.maps as maps  # noqa: E402
from rsgee.acquire.aoi import parse_aois  # noqa: E402
from rsgee.acquire.earthengine.recipes import Window, build_recipe  # noqa: E402
from rsgee.acquire.export import export_aois  # noqa: E402
from rsgee.acquire.synthetic import SyntheticSource  # noqa: E402
from rsgee.catalog import load_catalog  # noqa: E402
from rsgee.errors import RsgeeError  # noqa: E402
from rsgee.preprocess.archive import Archive  # noqa: E402
from rsgee.preprocess.split import SplitConfig  # noqa: E402
from rsgee.preprocess.tiling import TileFilters, build_archive  # noqa: E402
from rsgee.testing.earthengine import FakeEarthEngine  # noqa: E402

VALLEY = "valley=10.60,46.60,10.66,46.64"  # 2×3 tiles of EPSG:32632
SLOPE = "slope=10.675,46.60,10.70,46.64"  # 2×3 tiles just east of it


def layers(m) -> dict:
    return {layer.name: layer for layer in m.layers}


def png_of(overlay) -> np.ndarray:
    head, data = overlay.url.split(",", 1)
    assert head == "data:image/png;base64"
    with MemoryFile(base64.b64decode(data)) as memfile, memfile.open() as src:
        return src.read()


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports")
    source = SyntheticSource(seed=0, cloud_cover=0.3, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    export_aois(parse_aois([VALLEY, SLOPE]), out, source, load_catalog(), progress=False)
    return out


@pytest.fixture(scope="module")
def archive(exports, tmp_path_factory) -> Archive:
    root = tmp_path_factory.mktemp("archive") / "archive"
    # every tile kept, cloudy or not: 2×2-tile blocks put 3 in train, 4 in val, 5 in test
    build_archive([exports], root, load_catalog(), split=SplitConfig(ratios=(1, 1, 1), block=2),
                  filters=TileFilters(max_s2_nodata=1.0), progress=False)
    return Archive(root)


def test_aois_with_their_export_grid(tmp_path):
    path = tmp_path / "fields.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {"name": "field"},
                                "geometry": {"type": "Polygon", "coordinates": [[[10.70, 46.60], [10.73, 46.60],
                                                                                 [10.73, 46.62], [10.70, 46.60]]]}}))
    m = maps.preview([VALLEY, str(path)])
    found = layers(m)
    assert list(found) == ["OpenStreetMap.Mapnik", "AOIs", "export grid"]
    aois = found["AOIs"].data["features"]
    assert [f["properties"]["name"] for f in aois] == ["valley", "field"]
    assert found["AOIs"].style["color"] == maps.AOI_COLOUR
    expected = [t.id for a in parse_aois([VALLEY, str(path)]) for t in a.grid().tiles()]
    assert [f["properties"]["tile_id"] for f in found["export grid"].data["features"]] == expected
    assert len(expected) == 6 + 4  # valley 2×3 tiles, the field 2×2
    # every exported tile overlaps its AOI's bounding box (the grid covers it); the map is centred on the AOIs
    for f in found["export grid"].data["features"]:
        aoi = next(a for a in aois if a["properties"]["name"] == f["properties"]["aoi"])
        assert shape(f["geometry"]).intersects(box(*shape(aoi["geometry"]).bounds))
    assert m.center == pytest.approx(((46.60 + 46.64) / 2, (10.60 + 10.73) / 2))
    assert 10 <= m.zoom <= 14


def test_archive_tiles_by_split_blocks_and_aois(archive):
    m = maps.preview(archive)
    found = layers(m)
    assert list(found) == ["OpenStreetMap.Mapnik", "tiles: train", "tiles: val", "tiles: test", "split blocks",
                           "AOIs (tiled extent)"]
    index = archive.read_index()
    for split in ("train", "val", "test"):
        layer = found[f"tiles: {split}"]
        assert [f["id"] for f in layer.data["features"]] == [t["tile_id"] for t in archive.tiles(split)]
        assert layer.style["color"] == layer.style["fillColor"] == maps.SPLIT_COLOURS[split]
    assert [len(found[f"tiles: {s}"].data["features"]) for s in ("train", "val", "test")] == [3, 4, 5]
    blocks = found["split blocks"].data["features"]
    by_block: dict[str, list] = {}
    for f in index.values():
        by_block.setdefault(f["properties"]["block"], []).append(f)
    assert [b["properties"]["block"] for b in blocks] == sorted(by_block)
    assert len(blocks) < len(index)  # 2×2-tile blocks: some blocks hold several tiles
    for block in blocks:
        tiles = by_block[block["properties"]["block"]]
        assert {t["properties"]["split"] for t in tiles} == {block["properties"]["split"]}
        assert block["properties"]["style"]["color"] == maps.SPLIT_COLOURS[block["properties"]["split"]]
        assert shape(block["geometry"]).area == pytest.approx(sum(shape(t["geometry"]).area for t in tiles), rel=1e-6)
    outlines = found["AOIs (tiled extent)"].data["features"]
    assert [(f["properties"]["name"], f["properties"]["tiles"]) for f in outlines] == [("slope", 6), ("valley", 6)]
    # the archive's folder gives the same map
    assert list(layers(maps.preview(str(archive.root)))) == list(found)


def test_export_overlays_show_the_geotiffs(exports):
    m = maps.preview(exports / "valley", overlay_max_px=128)
    found = layers(m)
    assert list(found) == ["OpenStreetMap.Mapnik", "valley: dem", "valley: lulc", "valley: s1", "valley: s2",
                           "valley: AOI", "valley: grid"]
    assert len(found["valley: grid"].data["features"]) == 6
    (south, west), (north, east) = found["valley: s2"].bounds
    assert south < 46.60 and west < 10.60 and north > 46.64 and east > 10.66  # the grid covers the AOI

    s2 = png_of(found["valley: s2"])
    assert s2.shape[0] == 4 and max(s2.shape[1:]) == 128
    # Every overlay pixel is the GeoTIFF's value at that place: true colour B4/B3/B2 / 3000, nodata transparent.
    to_merc = Transformer.from_crs(4326, 3857, always_xy=True)
    x0, y1 = to_merc.transform(west, north)
    x1, y0 = to_merc.transform(east, south)
    rows, cols = np.meshgrid(np.arange(5, s2.shape[1], 9), np.arange(5, s2.shape[2], 9), indexing="ij")
    xs = x0 + (cols.ravel() + 0.5) * (x1 - x0) / s2.shape[2]
    ys = y1 - (rows.ravel() + 0.5) * (y1 - y0) / s2.shape[1]
    with rasterio.open(exports / "valley" / "s2.tif") as src:
        ux, uy = Transformer.from_crs(3857, src.crs, always_xy=True).transform(xs, ys)
        inside = (ux > src.bounds.left) & (ux < src.bounds.right) & (uy > src.bounds.bottom) & (uy < src.bounds.top)
        values = np.array(list(src.sample(zip(ux[inside], uy[inside]), indexes=[3, 2, 1])))
    got = s2[:, rows.ravel(), cols.ravel()].T
    assert (got[~inside, 3] == 0).all()  # outside the raster: transparent
    cloudy = (values == 0).any(axis=1)
    expected = np.round(np.clip(values / maps.S2_MAX, 0, 1) * 255)
    match = np.where(cloudy, got[inside, 3] == 0,
                     (got[inside, 3] == 255) & (np.abs(got[inside, :3] - expected) <= 1).all(axis=1))
    assert cloudy.any() and (~cloudy).any()  # the synthetic clouds are there to check
    assert match.mean() > 0.97  # nearest-neighbour resampling may pick a neighbour right at pixel edges

    lulc = png_of(found["valley: lulc"])
    opaque = lulc[3] == 255
    colours = {"#%02x%02x%02x" % tuple(px) for px in lulc[:3, opaque].T}
    with rasterio.open(exports / "valley" / "lulc.tif") as src:
        classes = set(np.unique(src.read(1)).tolist()) - {255}
    assert colours == {maps.DW_PALETTE[k] for k in classes}
    assert set(np.unique(lulc[3]).tolist()) == {0, 255}

    both = layers(maps.preview(exports, overlay_max_px=64))
    assert [n for n in both if n.endswith(": AOI")] == ["slope: AOI", "valley: AOI"]


def test_preview_draws_onto_a_given_map(exports, archive):
    m = maps.preview(archive)
    assert maps.preview(exports / "slope", map=m, overlay_max_px=32) is m
    assert "tiles: train" in layers(m) and "slope: s2" in layers(m)


def test_refusals_are_one_line(tmp_path):
    with pytest.raises(RsgeeError, match="neither an archive .* nor an export") as err:
        maps.preview(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(RsgeeError, match="cannot preview int"):
        maps.preview(42)
    with pytest.raises(RsgeeError, match="not an rsgee archive"):
        maps.preview(Archive(tmp_path))


class MapsAnswer:
    """An httplib2-style transport for ``ee``: ``projects.maps.create`` answered as Earth Engine answers it
    (``{"name": "projects/P/maps/ID"}``, the only field the client asks for), the rest sent to the fake."""

    def __init__(self):
        self.http = httplib2.Http(proxy_info=None)
        self.bodies: list[dict] = []

    def request(self, uri, method="GET", body=None, headers=None, **kwargs):
        path = urllib.parse.urlsplit(uri).path
        if method == "POST" and path.endswith("/maps"):
            self.bodies.append(json.loads(body))
            name = f"{path[path.index('projects/'):]}/map{len(self.bodies)}"
            return httplib2.Response({"status": 200, "content-type": "application/json"}), json.dumps(
                {"name": name}).encode()
        return self.http.request(uri, method=method, body=body, headers=headers, **kwargs)


@pytest.fixture
def earth_engine():
    """The real ``ee`` client against the fake (collection sizes) and :class:`MapsAnswer` (map ids)."""
    transport = MapsAnswer()
    with FakeEarthEngine(empty=lambda source, expression: source == "lulc") as fake:
        ee.Initialize(credentials=None, url=fake.url, project="fake", http_transport=transport)
        try:
            yield fake, transport
        finally:
            ee.Reset()


def test_preview_recipe_adds_the_export_composite(earth_engine):
    fake, transport = earth_engine
    m = maps.preview_recipe([VALLEY, SLOPE], "s2", "2023-06-01", "2023-09-01")
    found = layers(m)
    assert list(found) == ["OpenStreetMap.Mapnik", "AOIs", "export grid", "valley: s2 2023-06-01…2023-09-01",
                           "slope: s2 2023-06-01…2023-09-01"]
    # The layer's image is the export's recipe on the AOI's grid rectangle, fill transparent, clipped there.
    spec = load_catalog()["s2"]
    for i, aoi in enumerate(parse_aois([VALLEY, SLOPE])):
        grid = aoi.grid()
        region = ee.Geometry.Rectangle(list(grid.bounds), grid.crs, False)
        recipe = build_recipe(spec, region, Window(dt.date(2023, 6, 1), dt.date(2023, 9, 1)))
        image = recipe.image.updateMask(recipe.image.neq(0)).clip(region)
        name = f"{aoi.name}: s2 2023-06-01…2023-09-01"
        assert m.ee_layers[name]["ee_object"].serialize() == image.serialize()
        assert m.ee_layers[name]["vis_params"] == maps.EE_VIS["s2"]
        # … and that is what the map request asked Earth Engine to render, with the true-colour stretch.
        visualized = image.visualize(bands=["B4", "B3", "B2"], min=0, max=3000)
        assert transport.bodies[i]["expression"] == ee.serializer.encode(visualized, for_cloud_api=True)
        assert found[name].url == f"{fake.url}/v1/projects/fake/maps/map{i + 1}/tiles/{{z}}/{{x}}/{{y}}"
    # the collection size was asked once per AOI, as rsgee export asks it
    sizes = [r for r in fake.requests if r.path.endswith("value:compute")]
    assert [r.source for r in sizes] == ["s2", "s2"]


def test_preview_recipe_land_cover_palette_and_refusals(earth_engine):
    fake, transport = earth_engine
    with pytest.raises(RsgeeError, match=r"no lulc images in GOOGLE/DYNAMICWORLD/V1 between 2023-06-01 and "
                                         r"2023-09-01 for AOI 'valley'; widen the window"):
        maps.preview_recipe(VALLEY, "lulc", "2023-06-01", "2023-09-01")
    assert not transport.bodies  # nothing rendered for an empty window
    m = maps.preview_recipe(VALLEY, "dem", dt.date(2023, 6, 1), dt.date(2023, 9, 1),
                            vis={"bands": ["dem"], "min": 1000, "max": 2000})
    layer = m.ee_layers["valley: dem 2023-06-01…2023-09-01"]
    assert layer["vis_params"] == {"bands": ["dem"], "min": 1000, "max": 2000}
    visualized = layer["ee_object"].visualize(bands=["dem"], min=1000, max=2000)
    assert transport.bodies[-1]["expression"] == ee.serializer.encode(visualized, for_cloud_api=True)
    with pytest.raises(RsgeeError, match="'2023-13-01' is not a date"):
        maps.preview_recipe(VALLEY, "s2", "2023-13-01", "2023-09-01")
    with pytest.raises(RsgeeError, match="source 'b11' is not in the catalog"):
        maps.preview_recipe(VALLEY, "b11", "2023-06-01", "2023-09-01")


def test_preview_recipe_needs_an_earth_engine_session():
    ee.Reset()
    with pytest.raises(RsgeeError, match=r"needs an Earth Engine session: run ee.Initialize\(project="):
        maps.preview_recipe(VALLEY, "s2", "2023-06-01", "2023-09-01")


def test_palette_is_dynamic_worlds():
    figures = pytest.importorskip("rsgee.train.figures")
    assert maps.DW_PALETTE == figures.DW_COLOURS[:9]


WITHOUT_GEEMAP = """
import sys
sys.modules["geemap"] = None  # as if `pip install rsgee` had been run without the maps extra
import rsgee
from rsgee.errors import RsgeeError
try:
    {access}
except RsgeeError as exc:
    print(type(exc).__name__, exc)
"""


@pytest.mark.parametrize("access, error", [("rsgee.maps.preview", "MissingExtraModule"),
                                           ("import rsgee.maps", "MissingExtra"),
                                           ("print(hasattr(rsgee, 'maps')); rsgee.maps", "False\nMissingExtraModule")])
def test_without_the_maps_extra_the_error_names_it(access, error):
    result = subprocess.run([sys.executable, "-c", WITHOUT_GEEMAP.format(access=access)], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f"{error} this needs rsgee's optional 'maps' dependencies (geemap not "
                                     "installed); install them with: pip install 'rsgee[maps]'")
