"""Per-AOI exports from the synthetic source: the file contract, metadata, atomicity, re-runs."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest
import rasterio

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.export import export_aois
from rsgee.acquire.synthetic import SyntheticSource
from rsgee.catalog import load_catalog
from rsgee.errors import RsgeeError
from rsgee.exports import MANIFEST, read_manifest

AOI = "valley=10.60,46.60,10.63,46.62"  # 2.3 km × 2.2 km in the Alps → 2×2 tiles in EPSG:32632


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    aois = parse_aois([AOI])
    source = SyntheticSource(seed=7, cloud_cover=0.1, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    (result,) = export_aois(aois, out, source, load_catalog(), progress=False)
    return out, result


def test_export_writes_the_four_geotiffs_on_the_aoi_grid(exported):
    out, result = exported
    folder = out / "valley"
    assert result.status == "written" and result.path == folder
    assert sorted(p.name for p in folder.iterdir()) == ["dem.tif", "lulc.tif", "manifest.json", "s1.tif", "s2.tif"]
    grid = parse_aois([AOI])[0].grid()
    expected = {
        "s1": ("float32", ("VV", "VH"), math.nan, "dB"),
        "s2": ("uint16", ("B2", "B3", "B4", "B8"), 0, "surface reflectance x 10000"),
        "lulc": ("uint8", ("label",), 255, "class"),
        "dem": ("float32", ("dem",), math.nan, "m"),
    }
    for name, (dtype, bands, nodata, units) in expected.items():
        with rasterio.open(folder / f"{name}.tif") as src:
            assert src.crs.to_epsg() == grid.epsg == 32632
            assert src.transform == grid.transform
            assert (src.width, src.height) == (grid.width, grid.height) == (512, 512)
            assert src.dtypes == (dtype,) * len(bands)
            assert src.descriptions == bands
            assert src.units == (units,) * len(bands)
            assert (math.isnan(src.nodata) and math.isnan(nodata)) or src.nodata == nodata
            assert src.profile["tiled"] and src.profile["blockxsize"] == 256
            assert src.compression.name == "zstd"  # ZSTD_LEVEL 3: see rsgee.geotiff
            assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == ("3" if dtype == "float32" else "2")
            tags = src.tags()
            assert tags["RSGEE_SOURCE"] == "synthetic" and tags["RSGEE_SYNTHETIC"] == "yes"
            assert "SYNTHETIC" in tags["TIFFTAG_IMAGEDESCRIPTION"]


def test_exported_values_are_plausible(exported):
    out, _ = exported
    folder = out / "valley"
    with rasterio.open(folder / "dem.tif") as src:
        dem = src.read(1)
    assert np.isfinite(dem).all() and 0 < dem.min() < dem.max() < 9000
    with rasterio.open(folder / "s1.tif") as src:
        s1 = src.read()
    valid = s1[np.isfinite(s1)]
    assert -50 <= valid.min() and valid.max() < 20 and -25 < np.median(valid) < 0  # dB, not linear power
    with rasterio.open(folder / "s2.tif") as src:
        s2 = src.read()
    cloud = (s2 == 0).all(axis=0)
    assert 0.02 < cloud.mean() < 0.3  # cloud_cover=0.1 → masked to nodata 0 in all bands together
    assert ((s2 == 0).any(axis=0) == cloud).all()
    assert s2[:, ~cloud].max() <= 10000
    with rasterio.open(folder / "lulc.tif") as src:
        lulc = src.read(1)
    assert set(np.unique(lulc)) <= set(range(9))


def test_manifest_records_source_grid_catalog_and_files(exported):
    out, _ = exported
    manifest = read_manifest(out / "valley")
    assert manifest["source"] == "synthetic" and manifest["synthetic"] is True
    assert manifest["request"] == {"source": "synthetic", "seed": 7, "cloud_cover": 0.1, "start": "2023-06-01",
                                   "end": "2023-09-01", "n_s1_images": 7, "scene_version": 1}
    assert manifest["grid"]["epsg"] == 32632 and manifest["grid"]["ncols"] == 2
    assert set(manifest["catalog"]["sources"]) == {"s1", "s2", "lulc", "dem"}
    assert manifest["catalog"]["sources"]["s2"]["collection"] == "COPERNICUS/S2_SR_HARMONIZED"
    assert manifest["files"]["lulc"] == {"path": "lulc.tif", "bands": ["label"], "dtype": "uint8", "nodata": 255,
                                         "units": "class"}
    assert manifest["aoi"]["name"] == "valley" and manifest["aoi"]["geometry"]["type"] == "Polygon"


def test_same_seed_same_bytes_and_rerun_is_a_no_op(exported, tmp_path):
    out, _ = exported
    aois = parse_aois([AOI])
    source = SyntheticSource(seed=7, cloud_cover=0.1, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    (again,) = export_aois(aois, tmp_path, source, load_catalog(), progress=False)
    for name in ("s1", "s2", "lulc", "dem"):
        assert (tmp_path / "valley" / f"{name}.tif").read_bytes() == (out / "valley" / f"{name}.tif").read_bytes()
    before = (tmp_path / "valley" / MANIFEST).read_bytes()
    (rerun,) = export_aois(aois, tmp_path, source, load_catalog(), progress=False)
    assert rerun.status == "up to date"
    assert (tmp_path / "valley" / MANIFEST).read_bytes() == before


def test_different_parameters_need_overwrite(tmp_path):
    aois = parse_aois([AOI])
    export_aois(aois, tmp_path, SyntheticSource(seed=1), load_catalog(), progress=False)
    (refused,) = export_aois(aois, tmp_path, SyntheticSource(seed=2), load_catalog(), progress=False)
    assert refused.status == "failed" and "different parameters; pass --overwrite" in refused.error
    assert read_manifest(tmp_path / "valley")["request"]["seed"] == 1  # untouched
    (result,) = export_aois(aois, tmp_path, SyntheticSource(seed=2), load_catalog(), overwrite=True, progress=False)
    assert result.status == "written" and read_manifest(tmp_path / "valley")["request"]["seed"] == 2


def test_interrupted_export_leaves_nothing_that_looks_complete(tmp_path):
    class DiesAfterTwoBlocks(SyntheticSource):
        def blocks(self, grid, specs, workdir):
            for i, item in enumerate(super().blocks(grid, specs, workdir)):
                if i == 2:
                    raise KeyboardInterrupt
                yield item

    aois = parse_aois([AOI])
    with pytest.raises(KeyboardInterrupt):
        export_aois(aois, tmp_path, DiesAfterTwoBlocks(seed=3), load_catalog(), progress=False)
    folder = tmp_path / "valley"
    assert not (folder / MANIFEST).exists()
    assert not list(folder.glob("*.tif")) and not list(folder.glob(".*.tmp"))  # no half-written file in place
    with pytest.raises(RsgeeError, match="missing or unfinished"):
        read_manifest(folder)
    # the next run completes it
    (result,) = export_aois(aois, tmp_path, SyntheticSource(seed=3), load_catalog(), progress=False)
    assert result.status == "written" and json.loads((folder / MANIFEST).read_text())["request"]["seed"] == 3


def test_subset_of_sources_and_extra_catalog_band(tmp_path):
    import yaml

    data = yaml.safe_load(load_catalog().path.read_text())
    data["sources"]["s2"]["bands"].append({"ee": "B11", "name": "B11", "description": "SWIR 1610 nm"})
    cat_path = tmp_path / "catalog.yaml"
    cat_path.write_text(yaml.safe_dump(data))
    aois = parse_aois([AOI])
    export_aois(aois, tmp_path / "out", SyntheticSource(seed=0), load_catalog(cat_path), source_names=["s2"],
                progress=False)
    folder = tmp_path / "out" / "valley"
    assert sorted(p.name for p in folder.glob("*.tif")) == ["s2.tif"]
    with rasterio.open(folder / "s2.tif") as src:
        assert src.descriptions == ("B2", "B3", "B4", "B8", "B11")
        assert src.read(5).max() > 0


def test_an_offline_export_made_before_a_recipe_only_catalog_key_stays_current(exported, tmp_path):
    import shutil

    out, _ = exported
    shutil.copytree(out / "valley", tmp_path / "valley")
    manifest = read_manifest(tmp_path / "valley")
    sources = manifest["catalog"]["sources"]
    assert sources["dem"].pop("fill_missing") == 0  # as written before the key existed
    # ... and before the scene filters and Sentinel-1's angle mask
    assert sources["s2"].pop("filters_lt") and sources["s1"].pop("angle_mask")
    sources["s1"]["filters"] = {"instrumentMode": "IW"}
    (tmp_path / "valley" / MANIFEST).write_text(json.dumps(manifest))
    source = SyntheticSource(seed=7, cloud_cover=0.1, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    (rerun,) = export_aois(parse_aois([AOI]), tmp_path, source, load_catalog(), progress=False)
    assert rerun.status == "up to date"  # those keys only change what Earth Engine selects and composites


def test_synthetic_export_in_several_processes_is_byte_identical(exported, tmp_path):
    out, _ = exported
    source = SyntheticSource(seed=7, cloud_cover=0.1, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1), workers=2)
    (result,) = export_aois(parse_aois([AOI]), tmp_path, source, load_catalog(), progress=False)
    assert result.status == "written" and result.tiles == 4
    for name in ("s1", "s2", "lulc", "dem"):
        assert (tmp_path / "valley" / f"{name}.tif").read_bytes() == (out / "valley" / f"{name}.tif").read_bytes()
    assert read_manifest(tmp_path / "valley")["request"] == read_manifest(out / "valley")["request"]  # same request
    with pytest.raises(RsgeeError, match="workers must be a whole number"):
        SyntheticSource(workers=0)
