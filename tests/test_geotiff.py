"""GeoTIFF writing: lossless zstd at rsgee's level, atomic, values read back exactly; a full disk is one line."""

from __future__ import annotations

import errno
import os
import tempfile

import numpy as np
import pytest
import rasterio
import rasterio.io
from affine import Affine

from rsgee.catalog import load_catalog
from rsgee.errors import RsgeeError, StorageError
from rsgee.geotiff import ZSTD_LEVEL, RasterGrid, creation_profile, write_array

GRID = RasterGrid("EPSG:32632", Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5100000.0), 256, 256)


def _speckle_db(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    db = 10.0 * np.log10(rng.gamma(4.0, 0.25, size=(2, 256, 256)) * np.array([0.1, 0.02])[:, None, None])
    db[0, :3, :5] = np.nan
    return db.astype(np.float32)


def test_write_array_is_lossless_zstd_with_the_predictor(tmp_path):
    spec = load_catalog().sources["s1"]
    array = _speckle_db(0)
    write_array(tmp_path / "s1.tif", array, spec, GRID)
    with rasterio.open(tmp_path / "s1.tif") as src:
        assert src.compression.name == "zstd" and src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"
        np.testing.assert_array_equal(src.read(), array)  # NaN where NaN, every other bit equal
    assert [p.name for p in tmp_path.iterdir()] == ["s1.tif"]  # no temporary left beside it


def test_the_zstd_level_reaches_gdal(tmp_path):
    """GDAL honours the level: level 1 and level 19 give different files, rsgee's default is level 3's."""
    spec = load_catalog().sources["s1"]
    array = _speckle_db(1)
    sizes = {}
    for level in (1, ZSTD_LEVEL, 19):
        profile = dict(creation_profile(spec, GRID), zstd_level=level)
        with rasterio.open(tmp_path / f"l{level}.tif", "w", **profile) as dst:
            dst.write(array)
        sizes[level] = (tmp_path / f"l{level}.tif").stat().st_size
    assert creation_profile(spec, GRID)["zstd_level"] == ZSTD_LEVEL == 3
    assert sizes[1] != sizes[19]
    assert sizes[19] <= sizes[ZSTD_LEVEL] <= sizes[1]
    write_array(tmp_path / "default.tif", array, spec, GRID)
    with rasterio.open(tmp_path / "default.tif") as a, rasterio.open(tmp_path / "l3.tif") as b:
        assert a.block_size(1, 0, 0) == b.block_size(1, 0, 0)  # the same compressed first block


def test_a_max_z_error_makes_floats_bounded_lossy_and_leaves_integers_exact(tmp_path):
    catalog = load_catalog()
    array = _speckle_db(2)
    write_array(tmp_path / "s1.tif", array, catalog.sources["s1"], GRID, max_z_error=0.01)
    with rasterio.open(tmp_path / "s1.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "LERC_ZSTD"
        back = src.read()
    assert np.array_equal(np.isnan(back), np.isnan(array))
    finite = ~np.isnan(array)
    assert 0.005 < np.abs(back[finite] - array[finite]).max() <= 0.01 + 1e-5
    labels = np.random.default_rng(3).integers(0, 9, size=(1, 256, 256)).astype(np.uint8)
    write_array(tmp_path / "lulc.tif", labels, catalog.sources["lulc"], GRID, max_z_error=0.01)
    with rasterio.open(tmp_path / "lulc.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "ZSTD"
        np.testing.assert_array_equal(src.read(), labels)
    with pytest.raises(RsgeeError, match=r"max_z_error must be within 0…0.01, got 0.5"):
        creation_profile(catalog.sources["s1"], GRID, max_z_error=0.5)


def test_gdals_write_failed_is_a_full_disk_only_when_the_folder_takes_no_more_bytes(tmp_path, monkeypatch):
    """GDAL says "Write failed" without the reason: a write into the folder tells a full disk from anything else."""
    spec = load_catalog().sources["s1"]

    def write_failed(*args, **kwargs):
        raise rasterio.errors.RasterioIOError("Write failed. See previous exception for details.")

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", write_failed)
    with pytest.raises(rasterio.errors.RasterioIOError):  # the disk has room: not blamed on it
        write_array(tmp_path / "s1.tif", _speckle_db(0), spec, GRID)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    with pytest.raises(StorageError) as info:
        write_array(tmp_path / "s1.tif", _speckle_db(0), spec, GRID)
    assert str(info.value) == (f"cannot write {tmp_path}: no space left on device; free space there, then re-run the "
                               "same command to resume")
    assert not list(tmp_path.iterdir())  # no temporary left
