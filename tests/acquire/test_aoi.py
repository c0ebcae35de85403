"""AOI parsing: GeoJSON, bbox, WKT, safe names, and one-line errors for unusable geometries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rsgee.acquire.aoi import parse_aois
from rsgee.errors import AOIError
from rsgee.exports import safe_name

SQUARE = [[10.50, 46.50], [10.55, 46.50], [10.55, 46.55], [10.50, 46.55], [10.50, 46.50]]


def feature(coords=SQUARE, name=None, kind="Polygon"):
    props = {} if name is None else {"name": name}
    return {"type": "Feature", "properties": props, "geometry": {"type": kind, "coordinates": [coords]}}


def write_geojson(tmp_path: Path, data, name="aois.geojson") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_feature_collection_with_names(tmp_path):
    shifted = [[x + 0.1, y] for x, y in SQUARE]
    path = write_geojson(tmp_path, {"type": "FeatureCollection", "features": [feature(name="Val Venosta"), feature(shifted, "b")]})
    aois = parse_aois([path])
    assert [a.name for a in aois] == ["Val_Venosta", "b"]
    assert aois[0].geometry.bounds == (10.5, 46.5, 10.55, 46.55)
    # 0.05° × 0.05° at 46.5°N: 3.83 km × 5.56 km
    assert aois[0].area_km2 == pytest.approx(21.3, rel=0.01)
    assert aois[1].grid().epsg == 32632


def test_unnamed_features_are_named_after_the_file(tmp_path):
    one = parse_aois([write_geojson(tmp_path, feature(), "my field.geojson")])
    assert [a.name for a in one] == ["my_field"]
    shifted = [[x + 0.1, y] for x, y in SQUARE]
    two = parse_aois([write_geojson(tmp_path, {"type": "FeatureCollection", "features": [feature(), feature(shifted)]}, "f.json")])
    assert [a.name for a in two] == ["f_1", "f_2"]


def test_multipolygon_and_bare_geometry(tmp_path):
    multi = {"type": "MultiPolygon", "coordinates": [[SQUARE], [[[x + 0.1, y] for x, y in SQUARE]]]}
    (aoi,) = parse_aois([write_geojson(tmp_path, multi, "multi.geojson")])
    assert aoi.name == "multi" and aoi.geometry.geom_type == "MultiPolygon"
    assert aoi.area_km2 == pytest.approx(2 * 21.3, rel=0.01)


def test_bbox_and_wkt_with_and_without_names():
    a, b, c = parse_aois(["10.5,46.5,10.6,46.6", "alps=10.5,46.5,10.6,46.6",
                          "wkt=POLYGON((0 0, 0.1 0, 0.1 0.1, 0 0.1, 0 0))"])
    assert a.name.startswith("aoi_46.550N_10.550E_") and a.geometry.bounds == (10.5, 46.5, 10.6, 46.6)
    assert b.name == "alps"
    assert c.name == "wkt" and c.grid().epsg == 32631
    (s,) = parse_aois(["-70.1,-33.5,-70.0,-33.4"])
    assert s.name.startswith("aoi_33.450S_70.050W_") and s.grid().epsg == 32719


@pytest.mark.parametrize(
    "raw, safe",
    [("../../etc/passwd", "etc_passwd"), ("..", ""), ("a/b\\c", "a_b_c"), (".hidden", "hidden"),
     ("Vallée d'Aoste", "Vall_e_d_Aoste"), ("ok-name_1.2", "ok-name_1.2"), ("x" * 100, "x" * 64), ("a..b", "a.b")],
)
def test_safe_names_cannot_escape_the_output_folder(raw, safe):
    assert safe_name(raw) == safe
    if safe:
        assert "/" not in safe and not safe.startswith(".") and ".." not in safe


def test_traversal_name_in_geojson_stays_inside(tmp_path):
    (aoi,) = parse_aois([write_geojson(tmp_path, feature(name="../../outside"))])
    out = tmp_path / "exports"
    assert (out / aoi.name).resolve().parent == out.resolve()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("POLYGON((0 0, 1 1, 1 0, 0 1, 0 0))", r"invalid geometry \(Self-intersection"),
        ("179,0,-179,1", "crosses the antimeridian"),
        ("0,85,1,86", "UTM grids exist only between"),
        ("0,0,10,1", "larger than the 50,000 km² limit"),
        ("POINT(1 2)", "a Point is not an area"),
        ("LINESTRING(1 2, 3 4)", "a LineString is not an area"),
        ("10,46,10,47", "the box is empty"),
        ("10.5,46.5,10.6", "no such file, and not a bbox"),
        ("POLYGON((0 0, 1 1", "not valid WKT"),
        ("POLYGON EMPTY", "the geometry is empty"),
        ("POLYGON((500000 5000000, 501000 5000000, 501000 5001000, 500000 5000000))", "not lon/lat degrees"),
        ("   ", "empty --aoi value"),
    ],
)
def test_bad_aois_get_one_line_errors(spec, message):
    with pytest.raises(AOIError, match=message) as info:
        parse_aois([spec])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"not valid JSON \(line 1"),
        ('{"features": []}', "not a GeoJSON object"),
        ('{"type": "FeatureCollection", "features": []}', "has no features"),
        (json.dumps(feature(kind="Point", coords=[1, 2])), "feature 1: a Point is not an area"),
        (json.dumps({"type": "Feature", "properties": {}}), "feature 1: has no geometry"),
        (json.dumps({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[1, 2]]]}}), "malformed Polygon"),
        (json.dumps(dict(feature(), crs={"type": "name", "properties": {"name": "EPSG:32632"}})), "is not lon/lat"),
        (json.dumps({"type": "FeatureCollection", "features": [feature(name="a"), feature(name="a")]}),
         "two AOIs are named 'a'"),
        (json.dumps(feature(name="///")), "has no usable characters"),
    ],
)
def test_bad_geojson_files(tmp_path, content, message):
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(AOIError, match=message) as info:
        parse_aois([str(path)])
    assert "\n" not in str(info.value)


def test_max_area_is_configurable():
    assert parse_aois(["0,0,1,1"], max_area_km2=20_000)  # ~12,300 km²
    with pytest.raises(AOIError, match="larger than the 1,000 km² limit"):
        parse_aois(["0,0,1,1"], max_area_km2=1_000)
