"""xarray/rioxarray views of exports, archive tiles and packed caches: read-only, lazy (read when indexed).

Notebook users get the files as labelled arrays instead of paths: ``rsgee.open_export(folder)``,
``Archive.open_tile(tile_id)`` and ``Archive.to_xarray(split)``. Each source is one variable on the
shared ``y``/``x`` grid; because the sources have different band counts, each keeps its own band
dimension, named ``<source>_band`` (``ds.s2.sel(s2_band="B4")``).

Nodata: float sources and Sentinel-2 are masked to NaN (Sentinel-2 becomes float32); class labels
stay integers with their nodata in ``_FillValue`` (NaN would force floats onto categories). Every
variable keeps the file's nodata as its ``nodata`` attribute. Export folders are read through
:mod:`rsgee.exports`, archives through :class:`~rsgee.preprocess.archive.Archive`. This module imports
xarray, so it is imported only where a view is asked for (``import rsgee`` stays fast).
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import rasterio
import rioxarray
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from rsgee.errors import RsgeeError
from rsgee.exports import read_export
from rsgee.grid import PIXEL_M, TILE_PX, Tile

#: Dask chunk shape of export views: 8×8 of the files' 256-px blocks (~64 MB of float32 Sentinel-2).
EXPORT_CHUNK_PX = 2048


class ViewError(RsgeeError):
    """Files that cannot be viewed together (missing, or not on one grid)."""


def open_export(folder: str | os.PathLike, *, chunks: bool | Mapping[str, int] | None = None) -> xr.Dataset:
    """One AOI export folder as a Dataset: variables ``s1``, ``s2``, ``lulc``, ``dem`` (those exported).

    Args:
        folder: an export folder (``<out>/<aoi>``, with ``manifest.json``).
        chunks: None reads dask chunks of 2048×2048 px when dask is installed and lazily loaded
            arrays otherwise; False never uses dask; a mapping is passed to rioxarray as dask chunks.

    Example::

        ds = rsgee.open_export("exports/valley")
        ds.s2.sel(s2_band="B4").plot()      # reflectance × 10000, clouds NaN
        ds.rio.crs                          # EPSG:326zz of the AOI's grid
    """
    export = read_export(folder)
    specs = export.manifest.get("catalog", {}).get("sources", {})
    layers = {name: (export.paths[name], list(export.files[name]["bands"]), specs.get(name, {}).get("classes"))
              for name in export.layers}
    default = {"band": -1, "y": EXPORT_CHUNK_PX, "x": EXPORT_CHUNK_PX}
    ds = _open_layers(layers, _dask_chunks(chunks, default), where=str(export.folder))
    ds.attrs.update(aoi=export.name, source=export.source, synthetic=int(export.synthetic))
    return ds


def open_tile(archive, tile_id: str, *, chunks: bool | Mapping[str, int] | None = None) -> xr.Dataset:
    """One archive tile as a Dataset: ``s1``, ``s2``, ``lulc``, ``terrain``, and ``gen`` when generated.

    ``chunks`` as in :func:`open_export`, except that by default a tile is a single dask chunk.
    """
    tile = Tile.from_id(tile_id)
    specs = archive.sources()
    layers = {name: (archive.tile_path(name, tile.id), list(spec.band_names), spec.classes)
              for name, spec in sorted(specs.items())}
    missing = [name for name, (path, _, _) in layers.items() if not path.exists()]
    if missing:
        raise ViewError(f"tile {tile.id} is not in {archive.root} (no {', '.join(f'{m}/{tile.id}.tif' for m in missing)}); "
                        "take tile ids from Archive.tiles() or index.geojson")
    gen = archive.generated_path(tile.id)
    if gen.exists():  # pseudo-Sentinel-2 written with the s2 spec by `rsgee generate`
        layers["gen"] = (gen, list(specs["s2"].band_names), None)
    ds = _open_layers(layers, _dask_chunks(chunks, {"band": -1, "y": TILE_PX, "x": TILE_PX}), where=tile.id)
    ds.attrs.update(tile_id=tile.id)
    return ds


def to_xarray(archive, split: str) -> xr.Dataset:
    """A split's packed cache as a lazy ``(tile, <source>_band, y, x)`` Dataset over its memory maps.

    Only what is indexed is read and decoded (``.chunk()`` makes it dask). Nothing is masked: values
    are the archive's (Sentinel-2 nodata 0, labels 255, NaN for floats; see each variable's
    ``nodata``), Sentinel-1 and terrain within the cache's stated tolerances. The cache is (re)built
    first when missing or stale, as for training. Tiles may lie in different UTM zones, so the grid
    is given per tile: ``epsg``, ``x_origin`` and ``y_origin`` (the upper-left corner, metres) along
    ``tile``; pixel centres are ``x_origin + (x + 0.5) * pixel_m`` and ``y_origin - (y + 0.5) * pixel_m``.
    """
    from rsgee.preprocess.cache import open_split
    from rsgee.preprocess.split import SPLITS

    if split not in SPLITS:
        raise ViewError(f"'{split}' is not a split; choose from {', '.join(SPLITS)}")
    packed = open_split(archive, split)
    specs = archive.sources()
    aois = {p["tile_id"]: p["aoi"] for p in archive.tiles(split)}
    tiles = [Tile.from_id(t) for t in packed.tile_ids]
    data_vars = {}
    for name in packed.sources:
        spec = specs[name]
        attrs = {"nodata": _nodata_attr(spec.nodata), "units": spec.units}
        if spec.classes:
            attrs.update(_class_attrs(spec.classes))
        array = indexing.LazilyIndexedArray(_CachedSource(packed, name, len(spec.band_names), spec.numpy_dtype))
        data_vars[name] = xr.Variable(("tile", f"{name}_band", "y", "x"), array, attrs=attrs)
    coords = {f"{name}_band": list(specs[name].band_names) for name in packed.sources}
    coords.update(
        tile=[t.id for t in tiles],
        aoi=("tile", [aois[t.id] for t in tiles]),
        epsg=("tile", np.array([t.epsg for t in tiles], dtype=np.int32)),
        x_origin=("tile", np.array([t.transform.c for t in tiles], dtype=np.float64)),
        y_origin=("tile", np.array([t.transform.f for t in tiles], dtype=np.float64)),
    )
    return xr.Dataset(data_vars, coords=coords, attrs={"split": split, "pixel_m": PIXEL_M})


class _CachedSource(BackendArray):
    """One source of a packed cache as an xarray backend array: reads and decodes what is indexed."""

    def __init__(self, packed, source: str, bands: int, dtype):
        self.packed, self.source = packed, source
        self.shape = (len(packed), bands, TILE_PX, TILE_PX)
        self.dtype = np.dtype(dtype)

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._read)

    def _read(self, key: tuple) -> np.ndarray:
        tiles, bands, rows, cols = (k if isinstance(k, slice) else slice(k, k + 1) for k in key)
        data = self.packed.read(tiles, [self.source], window=(rows, cols))[self.source][:, bands]
        return data[tuple(slice(None) if isinstance(k, slice) else 0 for k in key)]


def _open_layers(layers: Mapping[str, tuple[Path | str, Sequence[str], Sequence[str] | None]], chunks, where: str) -> xr.Dataset:
    """Open each (path, band names, classes) as a variable and merge them on their common grid."""
    arrays = {}
    for name, (path, bands, classes) in layers.items():
        try:
            da = rioxarray.open_rasterio(path, masked=not classes, chunks=chunks, cache=False)
        except (rasterio.errors.RasterioError, OSError) as exc:
            raise ViewError(f"{where}: cannot open {path} ({str(exc).splitlines()[0]}); re-export or re-tile it") from None
        if da.sizes["band"] != len(bands):
            raise ViewError(f"{where}: {path} has {da.sizes['band']} bands, expected {len(bands)} ({', '.join(bands)})")
        nodata = da.rio.encoded_nodata if da.rio.encoded_nodata is not None else da.rio.nodata
        da.attrs["nodata"] = _nodata_attr(nodata)
        if classes:
            da.attrs.update(_class_attrs(classes))
        arrays[name] = da.assign_coords(band=list(bands)).rename(band=f"{name}_band")
    crs = {str(da.rio.crs) for da in arrays.values()}
    if len(crs) > 1:
        raise ViewError(f"{where}: the files are in different CRSs ({', '.join(sorted(crs))}); re-export the folder")
    try:
        return xr.merge([da.to_dataset(name=name) for name, da in arrays.items()], join="exact",
                        compat="no_conflicts", combine_attrs="override")
    except ValueError:
        raise ViewError(f"{where}: the files are not on one grid (x/y differ); re-export the folder") from None


def _dask_chunks(chunks, default: Mapping[str, int]):
    """rioxarray's ``chunks`` argument: dask only where installed (or asked for)."""
    if chunks is None:
        return dict(default) if importlib.util.find_spec("dask") is not None else None
    if chunks is False:
        return None
    if chunks is True:
        return dict(default)
    return dict(chunks)


def _nodata_attr(value) -> float | int | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isnan(value) or not value.is_integer() else int(value)


def _class_attrs(classes: Sequence[str]) -> dict:
    """CF flag attributes: GIS and plotting tools read class names from them."""
    return {"flag_values": np.arange(len(classes), dtype=np.uint8), "flag_meanings": " ".join(classes)}
