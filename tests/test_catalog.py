"""catalog.yaml: the shipped default and the one-line errors for bad catalogs."""

from __future__ import annotations

import copy
import math
import zipfile
from pathlib import Path

import pytest
import yaml

from rsgee.catalog import CORE_SOURCES, default_catalog_path, load_catalog, parse_catalog
from rsgee.errors import CatalogError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def default_data() -> dict:
    return yaml.safe_load((REPO / "catalog.yaml").read_text())


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_catalog_matches_the_paper_and_design():
    cat = load_catalog()
    assert default_catalog_path().resolve() == (REPO / "catalog.yaml").resolve()
    cat.require(*CORE_SOURCES)
    s1, s2, lulc, dem = (cat[n] for n in CORE_SOURCES)
    assert s1.collection == "COPERNICUS/S1_GRD_FLOAT"
    assert s1.band_names == ("VV", "VH") and s1.dtype == "float32" and s1.nodata_is_nan
    assert s1.composite == "mean" and s1.to_db and s1.db_floor == -50.0
    assert s1.filters == {"instrumentMode": "IW", "resolution_meters": 10}
    # Border noise: the incidence-angle range gee_s1_ard and geefetch keep.
    assert (s1.angle_mask.band, s1.angle_mask.min, s1.angle_mask.max) == ("angle", 30.63993, 45.23993)
    assert s1.require_bands.property == "transmitterReceiverPolarisation"
    assert s1.require_bands.values == ("VV", "VH")
    assert s2.collection == "COPERNICUS/S2_SR_HARMONIZED"
    assert s2.ee_bands == ("B2", "B3", "B4", "B8") and s2.dtype == "uint16" and s2.nodata == 0
    assert s2.composite == "median"
    # Overcast granules are not read; partly cloudy ones are kept for Cloud Score+ to mask per pixel.
    assert s2.filters_lt == {"CLOUDY_PIXEL_PERCENTAGE": 90.0}
    assert all(not cat[n].filters_lt and cat[n].angle_mask is None for n in ("lulc", "dem")) and not s1.filters_lt
    assert s2.cloud_mask.collection == "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"
    assert (s2.cloud_mask.band, s2.cloud_mask.threshold) == ("cs_cdf", 0.6)
    assert lulc.collection == "GOOGLE/DYNAMICWORLD/V1" and lulc.ee_bands == ("label",)
    assert lulc.dtype == "uint8" and lulc.nodata == 255 and lulc.composite == "mode"
    assert lulc.classes[0] == "water" and len(lulc.classes) == 9 and lulc.classes[8] == "snow_and_ice"
    assert lulc.categorical and not s2.categorical
    assert dem.collection == "COPERNICUS/DEM/GLO30" and dem.ee_bands == ("DEM",) and dem.band_names == ("dem",)
    assert dem.composite == "mosaic" and dem.resampling == "bilinear" and dem.scale_m == 30
    # Land without a GLO30 tile (Armenia, Azerbaijan) from NASADEM; 0 m only where neither has data (open ocean).
    assert (dem.fallback.image, dem.fallback.bands) == ("NASA/NASADEM_HGT/001", ("elevation",))
    assert dem.fill_missing == 0.0 and all(cat[n].fallback is None for n in ("s1", "s2", "lulc"))


def test_to_dict_round_trips(default_data):
    cat = parse_catalog(default_data, "x.yaml")
    again = parse_catalog(cat.to_dict(), "y.yaml")
    assert {k: v.to_dict() for k, v in again.sources.items()} == {k: v.to_dict() for k, v in cat.sources.items()}
    assert math.isnan(again["s1"].nodata)


def test_user_adds_a_band_and_a_source_by_editing_the_catalog(tmp_path, default_data):
    data = copy.deepcopy(default_data)
    data["sources"]["s2"]["bands"].append({"ee": "B11", "name": "B11", "description": "SWIR"})
    data["sources"]["ndvi_like"] = dict(data["sources"]["s2"], collection="MY/COLLECTION")
    cat = load_catalog(write(tmp_path, data))
    assert cat["s2"].band_names == ("B2", "B3", "B4", "B8", "B11")
    assert cat["ndvi_like"].collection == "MY/COLLECTION"


def mutate(data, dotted, value=None, delete=False):
    node = data
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if delete:
        del node[last]
    else:
        node[last] = value


@pytest.mark.parametrize(
    "dotted, value, delete, message",
    [
        ("sources.s2.colour", "x", False, r"sources\.s2\.colour: unknown key"),
        ("sources.s2.dtype", None, True, r"sources\.s2\.dtype: missing required field"),
        ("sources.s2.dtype", "uint17", False, r"sources\.s2\.dtype: 'uint17' is not one of uint8, uint16"),
        ("sources.s2.nodata", "nan", False, r"sources\.s2\.nodata: nan is not representable in uint16"),
        ("sources.lulc.nodata", 300, False, r"sources\.lulc\.nodata: 300 is not representable in uint8"),
        ("sources.lulc.nodata", 0, False, r"sources\.lulc\.nodata: 0 collides with class 0 \(water\)"),
        ("sources.lulc.resampling", "bilinear", False, r"class labels must be resampled with nearest or mode"),
        ("sources.s1.composite", "average", False, r"sources\.s1\.composite: 'average' is not one of"),
        ("sources.s1.db_floor", None, True, r"sources\.s1\.db_floor: missing required field"),
        ("sources.s2.cloud_mask.threshold", 1.5, False, r"cloud_mask\.threshold: must be within 0…1"),
        ("sources.s2.bands", [], False, r"sources\.s2\.bands: must be a non-empty list"),
        ("sources.s2.scale_m", -10, False, r"sources\.s2\.scale_m: must be > 0"),
        ("sources.s2.bands.0.colour", "blue", False, r"sources\.s2\.bands\[0\]\.colour: unknown key"),
        ("sources.dem.bands.0.name", "", False, r"sources\.dem\.bands\[0\]\.name: must be a non-empty string"),
        ("version", 2, False, r"version: unsupported catalog version 2"),
        ("sources.dem.fill_missing", "sea", False, r"sources\.dem\.fill_missing: must be a finite number"),
        ("sources.lulc.fill_missing", 300, False, r"sources\.lulc\.fill_missing: 300\.0 is not representable in uint8"),
        ("sources.lulc.fill_missing", 255, False, r"sources\.lulc\.fill_missing: 255\.0 is the nodata value"),
        ("sources.s2.filters_lt", [90], False, r"sources\.s2\.filters_lt: must be a mapping of property: number"),
        ("sources.s2.filters_lt.CLOUDY_PIXEL_PERCENTAGE", "90%", False,
         r"sources\.s2\.filters_lt\.CLOUDY_PIXEL_PERCENTAGE: must be a finite number, got '90%'"),
        ("sources.s1.angle_mask.max", None, True, r"sources\.s1\.angle_mask\.max: missing required field"),
        ("sources.s1.angle_mask.side", "near", False, r"sources\.s1\.angle_mask\.side: unknown key"),
        ("sources.s1.angle_mask.min", "30", False, r"sources\.s1\.angle_mask\.min: must be a finite number"),
        ("sources.s1.angle_mask.min", 46, False,
         r"sources\.s1\.angle_mask: needs 0 <= min < max <= 90 degrees, got min 46, max 45\.2399"),
        ("sources.s1.angle_mask.band", "", False, r"sources\.s1\.angle_mask\.band: must be a non-empty string"),
        ("sources.dem.fallback.bands", ["elevation", "num"], False,
         r"sources\.dem\.fallback\.bands: must list 1 band\(s\), one for each of the source's bands"),
        ("sources.dem.fallback.image", None, True, r"sources\.dem\.fallback\.image: missing required field"),
        ("sources.dem.fallback.collection", "JAXA/ALOS/AW3D30/V3_2", False,
         r"sources\.dem\.fallback\.collection: unknown key"),
        ("sources.dem.fallback.image", "", False, r"sources\.dem\.fallback\.image: must be a non-empty string"),
        ("sources.s2.fallback", {"image": "X", "bands": ["a", "b", "c", "d"]}, False,
         r"sources\.s2\.fallback: fills the gaps of a mosaic \(stored tiles such as a DEM's\), not of a median"),
    ],
)
def test_bad_catalogs_name_the_file_and_the_key(tmp_path, default_data, dotted, value, delete, message):
    data = copy.deepcopy(default_data)
    mutate(data, dotted, value, delete)
    path = write(tmp_path, data)
    with pytest.raises(CatalogError, match=message) as info:
        load_catalog(path)
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text


def test_duplicate_band_names_are_refused(tmp_path, default_data):
    default_data["sources"]["s1"]["bands"][1]["name"] = "VV"
    with pytest.raises(CatalogError, match="band name 'VV' appears twice"):
        load_catalog(write(tmp_path, default_data))


def test_unreadable_catalogs(tmp_path):
    with pytest.raises(CatalogError, match="catalog file not found"):
        load_catalog(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [unclosed\n")
    with pytest.raises(CatalogError, match=r"not valid YAML at line 2"):
        load_catalog(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(CatalogError, match="catalog: must be a mapping"):
        load_catalog(bad)


def test_missing_source_lookup_lists_what_there_is(default_data):
    cat = parse_catalog(default_data, "c.yaml")
    with pytest.raises(CatalogError, match=r"source 's3' is not in the catalog \(it has: s1, s2, lulc, dem\)"):
        cat["s3"]
    del default_data["sources"]["dem"]
    with pytest.raises(CatalogError, match="rsgee needs source"):
        parse_catalog(default_data, "c.yaml").require(*CORE_SOURCES)


@pytest.mark.slow
def test_non_editable_wheel_ships_the_catalog(tmp_path):
    """A regular (non-editable) install finds the same catalog.yaml inside the package."""
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("rsgee-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = zf.read("rsgee/catalog.yaml")
    assert shipped == (REPO / "catalog.yaml").read_bytes()
