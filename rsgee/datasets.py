"""An archive split as a torch Dataset in torchgeo's sample convention, for models trained outside rsgee.

rsgee's own trainers read samples in shapes of their own (:mod:`rsgee.train.data`); this module owns the
view that other code trains on: :class:`ArchiveDataset`, one split of the packed cache
(:mod:`rsgee.preprocess.cache`) as torchgeo-style sample dicts, and :func:`collate`, which batches them as
torchgeo's ``stack_samples`` does. A sample is::

    {"image": float32 (C, 256, 256),  # the chosen input sources, stacked in ArchiveDataset.all_sources order
     "mask": int64 (256, 256),        # Dynamic World class 0–8; nodata → ArchiveDataset.ignore_index (255)
     "crs": pyproj.CRS,               # the tile's UTM zone (torchgeo ≥ 0.8 gives a pyproj CRS too)
     "bounds": (slice(xmin, xmax, 10.0), slice(ymin, ymax, 10.0)),  # torchgeo ≥ 0.8's GeoSlice, metres
     "tile_id": "32632_243_2016"}

``bounds`` has no time slice: every tile is a composite over its AOI's export windows (``archive.json``,
the STAC items). The Lightning data module over the three splits lives in :mod:`rsgee.datamodules`, so
that this module imports no Lightning.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pyproj import CRS

from rsgee.errors import RsgeeError
from rsgee.grid import PIXEL_M, Tile
from rsgee.optional import require
from rsgee.preprocess.archive import Archive
from rsgee.preprocess.cache import open_split
from rsgee.preprocess.split import SPLITS

try:
    import torch
    from torch.utils.data import Dataset
except ImportError:
    require("train")  # a one-line error naming the extra; torch is its only part this module needs
    raise

#: Channel names of the terrain source under ``normalisation="rsgee"``
#: (:func:`rsgee.models.normalisation.terrain_to_model`).
MODEL_TERRAIN_BANDS = ("dem", "slope", "aspect_sin", "aspect_cos", "hillshade")


class ArchiveDataset(Dataset):
    """One split of an rsgee archive: input sources as ``image``, Dynamic World land cover as ``mask``.

    Samples are read from the split's packed cache, which is built first when it is missing or stale
    (as rsgee's training does; a second process waits for the builder). Sentinel-1 and terrain therefore
    come within the cache's tolerances of the GeoTIFFs (README, ``rsgee cache``), Sentinel-1 clipped to the
    models' dB ranges; Sentinel-2 and land cover are exact.

    Normalisation (``normalisation``):

    - ``"raw"`` (the default, as torchgeo's datasets): the archive's units, as float32. S1 VV, VH in dB
      (NaN nodata); S2 B2, B3, B4, B8 as reflectance × 10000 (0 nodata); terrain dem (m), slope (°), aspect
      (° from north, −1 flat), hillshade (0–255), NaN nodata. Nodata stays visible, so a transform can mask it.
    - ``"rsgee"``: rsgee's model inputs, without NaN. S2 as RS-UNet reads it (reflectance clipped to [0, 1]
      and standardised with the train split's band mean and std); S1 and terrain as the fusion models read
      them (S1 mapped to [0, 1] over its dB range, nodata 0; terrain as five channels, ``MODEL_TERRAIN_BANDS``:
      the DEM standardised with the train statistics, slope/90, sin and cos of aspect, hillshade/255, nodata 0).
      The functions are :mod:`rsgee.models.normalisation`'s, the statistics those of :mod:`rsgee.train`
      (the ``train`` extra).

    Args:
        archive: the archive folder (or an :class:`~rsgee.preprocess.archive.Archive`).
        split: "train", "val" or "test".
        sources: input sources, any of :attr:`all_sources` (a single name may be a string). They are stacked
            in :attr:`all_sources` order whatever the order given, so that a model reads the same channels
            however it was configured; :attr:`bands` names the channels.
        normalisation: "raw" or "rsgee" (above).
        transforms: called with each sample dict; returns the sample to serve (augmentation, crops …).
        progress: show a progress bar while the cache is built.

    Raises:
        RsgeeError: a split, source or normalisation that does not exist, or an archive whose land-cover
            classes are not Dynamic World's (one line each).
    """

    #: Sources that can be stacked into ``image``, in stacking order (land cover is the mask).
    all_sources = ("s1", "s2", "terrain")
    #: Each source's bands in rsgee's default catalog (an archive built with another catalog has its own:
    #: see :attr:`bands`).
    source_bands = {"s1": ("VV", "VH"), "s2": ("B2", "B3", "B4", "B8"),
                    "terrain": ("dem", "slope", "aspect", "hillshade")}
    #: Dynamic World's classes; ``mask`` holds their positions.
    classes = ("water", "trees", "grass", "flooded_vegetation", "crops", "shrub_and_scrub", "built", "bare",
               "snow_and_ice")
    #: ``mask`` value of pixels without a class (the archive's land-cover nodata, 255, kept as it is).
    ignore_index = 255
    normalisations = ("raw", "rsgee")

    def __init__(self, archive: str | os.PathLike | Archive, split: str, sources: str | Sequence[str] = all_sources,
                 *, normalisation: str = "raw", transforms: Callable[[dict], dict] | None = None,
                 progress: bool = True):
        self.archive = archive if isinstance(archive, Archive) else Archive(archive)
        self.archive.read_meta()  # a folder that is no archive: one line, before anything is built
        if split not in SPLITS:
            raise RsgeeError(f"split {split!r} does not exist; choose from {', '.join(SPLITS)}")
        wanted = [sources] if isinstance(sources, str) else list(sources)
        unknown = [s for s in wanted if s not in self.all_sources]
        if unknown or not wanted:
            what = f"unknown source(s) {', '.join(map(repr, unknown))}" if unknown else "no source given"
            raise RsgeeError(f"{what}; choose from {', '.join(self.all_sources)} (land cover is the mask)")
        if normalisation not in self.normalisations:
            raise RsgeeError(f"normalisation {normalisation!r} does not exist; choose from "
                             f"{', '.join(self.normalisations)}")
        specs = self.archive.sources()
        if tuple(specs["lulc"].classes or ()) != self.classes:
            raise RsgeeError(f"{self.archive.root}: its land cover is not Dynamic World's {len(self.classes)} classes "
                             f"({', '.join(self.classes)})")
        self.split = split
        self.sources = tuple(s for s in self.all_sources if s in wanted)
        self.normalisation = normalisation
        self.transforms = transforms
        self.bands = tuple(band for s in self.sources for band in (
            MODEL_TERRAIN_BANDS if s == "terrain" and normalisation == "rsgee" else specs[s].band_names))
        self._stats = _model_statistics(self.archive) if normalisation == "rsgee" else None
        self._packed = open_split(self.archive, split, progress=progress)
        self._crs: dict[int, CRS] = {}

    @property
    def tile_ids(self) -> list[str]:
        """The split's tile ids, in sample order."""
        return self._packed.tile_ids

    def __len__(self) -> int:
        return len(self._packed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index`` of the split (see the module docstring), after :attr:`transforms`."""
        raw = self._packed.read(index, ("lulc", *self.sources))
        image = np.concatenate([self._input(source, raw[source]) for source in self.sources])
        mask = raw["lulc"][0].astype(np.int64)
        mask[mask >= len(self.classes)] = self.ignore_index  # nodata (255), and no other value in a valid archive
        tile = Tile.from_id(self._packed.tile_ids[index])
        x_min, y_min, x_max, y_max = (float(v) for v in tile.bounds)
        sample = {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask), "crs": self._zone(tile.epsg),
                  "bounds": (slice(x_min, x_max, float(PIXEL_M)), slice(y_min, y_max, float(PIXEL_M))),
                  "tile_id": tile.id}
        return self.transforms(sample) if self.transforms is not None else sample

    def _input(self, source: str, array: np.ndarray) -> np.ndarray:
        """One source's channels of ``image``, as float32 in the dataset's normalisation."""
        if self._stats is None:
            return array.astype(np.float32, copy=False)
        from rsgee.models.normalisation import s1_to_model, s2_to_segmenter, terrain_to_model

        stats = self._stats
        if source == "s1":
            return s1_to_model(array, stats["s1_bands"])
        if source == "terrain":
            return terrain_to_model(array, stats["dem_mean"], stats["dem_std"])
        return s2_to_segmenter(array, stats["s2_mean"], stats["s2_std"])

    def _zone(self, epsg: int) -> CRS:
        """The pyproj CRS of a UTM zone, made once per zone (tiles of an archive lie in a few)."""
        if epsg not in self._crs:
            self._crs[epsg] = CRS.from_epsg(epsg)
        return self._crs[epsg]


def _model_statistics(archive: Archive) -> dict:
    """The train split's statistics rsgee's models are normalised with (``stats.json``)."""
    from rsgee.train.data import archive_normalisation
    from rsgee.train.segmentation import image_stats

    norm, (mean, std) = archive_normalisation(archive), image_stats(archive)
    return {"s1_bands": norm["s1_bands"], "dem_mean": norm["dem_mean"], "dem_std": norm["dem_std"],
            "s2_mean": mean, "s2_std": std}


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A batch of samples as torchgeo's ``stack_samples`` makes it: tensors stacked along a new first axis,
    everything else (``crs``, ``bounds``, ``tile_id``) kept as lists."""
    return {key: torch.stack([s[key] for s in samples]) if torch.is_tensor(value) else [s[key] for s in samples]
            for key, value in samples[0].items()}
