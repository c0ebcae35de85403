"""The export folder's contract (rsgee.exports): finding exports, reading one, where its files are, its grid."""

from __future__ import annotations

import hashlib
import json

import pytest

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.export import export_aois
from rsgee.acquire.synthetic import SyntheticSource
from rsgee.catalog import load_catalog
from rsgee.errors import RsgeeError
from rsgee.exports import (MANIFEST, add_halo, existing_manifest, export_folders, find_exports, grid_problem,
                           mark_incomplete, read_export, write_manifest)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    (result,) = export_aois(parse_aois(["valley=10.60,46.60,10.63,46.62"]), out, SyntheticSource(), load_catalog(),
                            progress=False)
    return result.path


def test_an_export_reads_as_its_manifest_says(folder):
    export = read_export(folder)
    assert (export.name, export.source, export.synthetic) == ("valley", "synthetic", True)
    assert sorted(export.layers) == ["dem", "lulc", "s1", "s2"]
    assert export.paths == {name: str(folder / f"{name}.tif") for name in export.layers}
    assert export.windows == {name: ["2023-06-01", "2023-09-01"] for name in sorted(export.layers)}
    assert export.manifest_sha256 == hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
    assert export.geometry.bounds == pytest.approx((10.60, 46.60, 10.63, 46.62))
    with export.open_file("s2") as src:
        assert grid_problem(src, export.grid) is None
        assert grid_problem(src, export.grid, halo=1).startswith("transform")
        assert "grown by 1 px" in grid_problem(src, export.grid, halo=1)


def test_a_batch_export_reads_its_files_in_cloud_storage_in_place(folder, tmp_path):
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["s2"]["path"] = "/vsigs/bucket/p/valley/s2.tif"
    add_halo(manifest, "dem", 1, "/vsigs/bucket/p/valley/dem_halo.tif")
    write_manifest(tmp_path, manifest)
    export = read_export(tmp_path)
    assert export.paths["s2"] == "/vsigs/bucket/p/valley/s2.tif" and export.paths["lulc"] == str(tmp_path / "lulc.tif")
    assert export.paths["dem_halo"] == "/vsigs/bucket/p/valley/dem_halo.tif" and "dem_halo" not in export.layers
    assert export.files["dem_halo"]["halo_px"] == 1 and export.files["dem_halo"]["bands"] == export.files["dem"]["bands"]
    with pytest.raises(RsgeeError, match=f"AOI 'valley': cannot open {export.paths['lulc']} .*; re-export it"):
        with export.open_file("lulc"):
            pass


def test_a_folder_without_its_manifest_is_no_export(folder, tmp_path):
    assert export_folders(folder) == [folder] == export_folders(folder.parent) == find_exports([folder.parent])
    (tmp_path / "e" / "half").mkdir(parents=True)
    (tmp_path / "e" / "half" / MANIFEST).write_text((folder / MANIFEST).read_text())
    assert existing_manifest(tmp_path / "e" / "half")["aoi"]["name"] == "valley"
    mark_incomplete(tmp_path / "e" / "half")
    assert existing_manifest(tmp_path / "e" / "half") is None and export_folders(tmp_path / "e") == []
    with pytest.raises(RsgeeError, match="no complete AOI export here"):
        find_exports([tmp_path / "e"])
    with pytest.raises(RsgeeError, match="no such export folder"):
        find_exports([tmp_path / "missing"])
    with pytest.raises(RsgeeError, match="no manifest.json, so this export is missing or unfinished"):
        read_export(tmp_path / "e" / "half")
