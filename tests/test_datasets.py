"""ArchiveDataset and ArchiveDataModule: torchgeo-style samples whose values are the archive's."""

from __future__ import annotations

import datetime as dt
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
from pyproj import CRS, Transformer

from rsgee.acquire.aoi import parse_aois
from rsgee.acquire.export import export_aois
from rsgee.acquire.synthetic import SyntheticSource
from rsgee.catalog import load_catalog
from rsgee.datasets import MODEL_TERRAIN_BANDS, ArchiveDataset, collate
from rsgee.errors import RsgeeError
from rsgee.preprocess.archive import Archive, tile_sources
from rsgee.preprocess.cache import cache_dir, codecs, open_split
from rsgee.preprocess.split import SplitConfig
from rsgee.preprocess.tiling import TileFilters, build_archive

SAMPLE_KEYS = {"image", "mask", "crs", "bounds", "tile_id"}


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> Archive:
    """Six tiles of a synthetic valley: train 4, val 1, test 1 (as tests/train's small_archive)."""
    root = tmp_path_factory.mktemp("datasets-archive")
    source = SyntheticSource(seed=0, cloud_cover=0.02, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    export_aois(parse_aois(["valley=10.60,46.60,10.66,46.64"]), root / "exports", source, load_catalog(),
                progress=False)
    build_archive([root / "exports"], root / "archive", load_catalog(), split=SplitConfig(block=1),
                  filters=TileFilters(max_s2_nodata=0.5), progress=False)
    archive = Archive(root / "archive")
    assert {s: len(archive.tiles(s)) for s in ("train", "val", "test")} == {"train": 4, "val": 1, "test": 1}
    return archive


def read_tif(archive: Archive, source: str, tile_id: str) -> np.ndarray:
    with rasterio.open(archive.tile_path(source, tile_id)) as src:
        return src.read()


def test_class_attributes_are_the_default_catalog():
    specs = tile_sources(load_catalog())
    assert ArchiveDataset.source_bands == {s: specs[s].band_names for s in ArchiveDataset.all_sources}
    assert ArchiveDataset.classes == specs["lulc"].classes
    assert ArchiveDataset.ignore_index == specs["lulc"].nodata == 255


def test_raw_samples_are_the_archive_values(archive):
    """image = the sources stacked s1, s2, terrain (whatever the order asked), each the cache's decoded
    values, within the cache's tolerances of the tile's GeoTIFF (S2 exactly); mask = the land-cover GeoTIFF."""
    dataset = ArchiveDataset(archive.root, "train", ("terrain", "s2", "s1"), progress=False)
    assert dataset.sources == ("s1", "s2", "terrain")
    assert dataset.bands == ("VV", "VH", "B2", "B3", "B4", "B8", "dem", "slope", "aspect", "hillshade")
    packed, coders = open_split(archive, "train", progress=False), codecs(archive)
    for i, tile_id in enumerate(archive.split("train")):
        sample = dataset[i]
        assert set(sample) == SAMPLE_KEYS and sample["tile_id"] == tile_id
        image, mask = sample["image"], sample["mask"]
        assert image.dtype == torch.float32 and image.shape == (10, 256, 256)
        assert mask.dtype == torch.int64 and mask.shape == (256, 256)
        cached = packed.read(i)
        channels = dict(zip(("s1", "s2", "terrain"), torch.split(image, [2, 4, 4])))
        for source, got in channels.items():
            np.testing.assert_array_equal(got.numpy(), cached[source].astype(np.float32))
            assert coders[source].errors(read_tif(archive, source, tile_id), got.numpy()) == []
        np.testing.assert_array_equal(channels["s2"].numpy(), read_tif(archive, "s2", tile_id))
        np.testing.assert_array_equal(mask.numpy(), read_tif(archive, "lulc", tile_id)[0])


def test_nodata_land_cover_becomes_the_ignore_index(archive, tmp_path):
    """A land-cover tile with nodata: the stale cache is rebuilt and the mask holds 255 exactly there."""
    copy = Archive(shutil.copytree(archive.root, tmp_path / "archive"))
    tile_id = copy.split("val")[0]
    path = copy.tile_path("lulc", tile_id)
    with rasterio.open(path) as src:
        labels, profile = src.read(), src.profile
    labels[0, :40, :90] = 255
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels)
    mask = ArchiveDataset(copy.root, "val", "s2", progress=False)[0]["mask"].numpy()
    expected = labels[0].astype(np.int64)
    assert (mask == 255).sum() == 40 * 90 and (mask[:40, :90] == ArchiveDataset.ignore_index).all()
    np.testing.assert_array_equal(mask, expected)
    assert 0 < expected[40:].max() < len(ArchiveDataset.classes)


def test_crs_and_bounds_are_the_tiles(archive):
    """bounds = the tile's lattice cell in its UTM zone (the GeoTIFF's bounds), whose corners are the
    lon/lat footprint in index.geojson; crs = the zone's EPSG."""
    index = archive.read_index()
    for split in ("train", "val", "test"):
        dataset = ArchiveDataset(archive, split, "s1", progress=False)
        for i, tile_id in enumerate(dataset.tile_ids):
            sample, props = dataset[i], index[tile_id]["properties"]
            assert sample["crs"] == CRS.from_epsg(props["epsg"]) and sample["crs"].to_epsg() == props["epsg"]
            x, y = sample["bounds"]
            assert (x.start, x.stop, x.step) == (props["col"] * 2560.0, (props["col"] + 1) * 2560.0, 10.0)
            assert (y.start, y.stop, y.step) == (props["row"] * 2560.0, (props["row"] + 1) * 2560.0, 10.0)
            with rasterio.open(archive.tile_path("s1", tile_id)) as src:
                assert tuple(src.bounds) == (x.start, y.start, x.stop, y.stop)
                assert src.crs.to_epsg() == props["epsg"]
            to_lonlat = Transformer.from_crs(sample["crs"], "EPSG:4326", always_xy=True)
            corners = [to_lonlat.transform(*c) for c in [(x.start, y.stop), (x.stop, y.stop), (x.stop, y.start),
                                                          (x.start, y.start)]]
            footprint = index[tile_id]["geometry"]["coordinates"][0][:4]
            assert np.allclose(corners, footprint, atol=1e-6), (corners, footprint)


def test_length_is_the_split(archive):
    for split in ("train", "val", "test"):
        dataset = ArchiveDataset(archive, split, progress=False)
        assert len(dataset) == len(archive.tiles(split))
        assert dataset.tile_ids == archive.split(split)


def test_rsgee_normalisation_is_what_rsgee_models_read(archive):
    """S2 as RS-UNet's samples, S1 and terrain as the fusion models' conditioning, channel for channel."""
    from rsgee.train.data import FusionSamples, archive_normalisation
    from rsgee.train.segmentation import SegmentationSamples, image_stats

    dataset = ArchiveDataset(archive, "train", normalisation="rsgee", progress=False)
    assert dataset.bands == ("VV", "VH", "B2", "B3", "B4", "B8", *MODEL_TERRAIN_BANDS)
    fusion = FusionSamples(archive, "train", ("s1", "terrain"), archive_normalisation(archive))
    segmentation = SegmentationSamples(archive, "train", *image_stats(archive))
    for i in range(len(dataset)):
        image = dataset[i]["image"]
        assert torch.isfinite(image).all()
        cond = fusion[i]["cond"]
        torch.testing.assert_close(image, torch.cat([cond["s1"], segmentation[i]["image"], cond["terrain"]]),
                                   rtol=0, atol=0)


def test_transforms_get_the_sample(archive):
    def flip(sample):
        return dict(sample, image=sample["image"].flip(-1), mask=sample["mask"].flip(-1), seen=True)

    plain = ArchiveDataset(archive, "test", "s2", progress=False)[0]
    flipped = ArchiveDataset(archive, "test", "s2", transforms=flip, progress=False)[0]
    assert flipped["seen"] and torch.equal(flipped["image"], plain["image"].flip(-1))
    assert torch.equal(flipped["mask"], plain["mask"].flip(-1)) and flipped["bounds"] == plain["bounds"]


def test_a_missing_cache_is_built(archive, tmp_path):
    copy = Archive(shutil.copytree(archive.root, tmp_path / "archive", ignore=shutil.ignore_patterns("cache")))
    assert not cache_dir(copy, "test").exists()
    dataset = ArchiveDataset(copy, "test", "s2", progress=False)
    assert (cache_dir(copy, "test") / "tiles.json").exists() and len(dataset) == 1


@pytest.mark.parametrize("split, sources, normalisation, words", [
    ("training", "s2", "raw", ["'training'", "train, val, test"]),
    ("train", ("s2", "s3"), "raw", ["'s3'", "s1, s2, terrain"]),
    ("train", "lulc", "raw", ["'lulc'", "land cover is the mask"]),
    ("train", (), "raw", ["no source", "s1, s2, terrain"]),
    ("train", "s2", "zscore", ["'zscore'", "raw, rsgee"]),
])
def test_unknown_split_source_or_normalisation_is_one_line(archive, split, sources, normalisation, words):
    with pytest.raises(RsgeeError) as info:
        ArchiveDataset(archive, split, sources, normalisation=normalisation, progress=False)
    message = str(info.value)
    assert "\n" not in message and all(word in message for word in words), message
    assert not (archive.root / "cache" / "training").exists()  # refused before anything is built


def test_not_an_archive_is_one_line(tmp_path):
    with pytest.raises(RsgeeError, match="not an rsgee archive"):
        ArchiveDataset(tmp_path, "train", progress=False)


def test_collate_stacks_tensors_and_keeps_the_rest_as_lists(archive):
    dataset = ArchiveDataset(archive, "train", ("s2", "s1"), progress=False)
    batch = collate([dataset[0], dataset[2]])
    assert set(batch) == SAMPLE_KEYS
    assert batch["image"].shape == (2, 6, 256, 256) and batch["mask"].shape == (2, 256, 256)
    assert torch.equal(batch["image"][1], dataset[2]["image"]) and torch.equal(batch["mask"][0], dataset[0]["mask"])
    assert batch["tile_id"] == [dataset.tile_ids[0], dataset.tile_ids[2]]
    assert batch["crs"] == [dataset[0]["crs"], dataset[2]["crs"]] and batch["bounds"][1] == dataset[2]["bounds"]


WITHOUT_LIGHTNING = """
import sys
sys.modules["lightning"] = None  # as if Lightning were not installed
from rsgee.datasets import ArchiveDataset
sample = ArchiveDataset(sys.argv[1], "val", progress=False)[0]
print(sorted(sample), tuple(sample["image"].shape))
try:
    import rsgee.datamodules
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_the_dataset_needs_no_lightning(archive):
    result = subprocess.run([sys.executable, "-c", WITHOUT_LIGHTNING, str(archive.root)], capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "['bounds', 'crs', 'image', 'mask', 'tile_id'] (10, 256, 256)"
    assert lines[1].startswith("MissingExtra") and "pip install 'rsgee[train]'" in lines[1]


def test_the_data_module_trains_a_plain_lightning_model(archive, tmp_path):
    import lightning as L

    from rsgee.datamodules import ArchiveDataModule

    class Segmenter(L.LightningModule):
        def __init__(self, channels: int):
            super().__init__()
            self.net = torch.nn.Conv2d(channels, len(ArchiveDataset.classes), 1)
            self.losses, self.batches, self.val_tiles = [], [], []

        def training_step(self, batch, batch_idx):
            self.batches.append(batch)
            loss = torch.nn.functional.cross_entropy(self.net(batch["image"]), batch["mask"],
                                                     ignore_index=ArchiveDataset.ignore_index)
            self.losses.append(loss.item())
            return loss

        def validation_step(self, batch, batch_idx):
            self.val_tiles += batch["tile_id"]

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.05)

    L.seed_everything(0)
    data = ArchiveDataModule(archive.root, ("s2", "terrain"), batch_size=2, num_workers=0, progress=False)
    model = Segmenter(channels=9)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=12, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        check_val_every_n_epoch=6, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    assert model.val_tiles == archive.split("val")  # validated once, after epoch 6 (12 steps of 2 of 4 tiles)
    assert len(model.losses) == 12 and all(map(math.isfinite, model.losses))
    assert np.mean(model.losses[-4:]) < np.mean(model.losses[:4]), model.losses
    batch = model.batches[0]
    assert set(batch) == SAMPLE_KEYS
    assert batch["image"].shape == (2, 9, 256, 256) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 256, 256) and batch["mask"].dtype == torch.int64
    assert all(isinstance(crs, CRS) for crs in batch["crs"]) and len(batch["bounds"]) == len(batch["tile_id"]) == 2
    epoch = {tile for b in model.batches[:2] for tile in b["tile_id"]}
    assert epoch == set(archive.split("train"))  # one epoch: every train tile once, shuffled

    data = ArchiveDataModule(archive.root, "s1", batch_size=4, num_workers=1, progress=False)
    data.setup("test")
    batches = list(data.test_dataloader())  # through a worker process: crs and bounds pickle
    assert [b["tile_id"] for b in batches] == [archive.split("test")]
    assert batches[0]["crs"][0] == CRS.from_epsg(32632) and batches[0]["image"].shape == (1, 2, 256, 256)


def test_the_data_module_refuses_an_empty_split(archive, tmp_path):
    from rsgee.datamodules import ArchiveDataModule

    root = tmp_path / "archive"  # the same exports, every tile pinned to train
    build_archive([archive.root.parent / "exports"], root, load_catalog(),
                  split=SplitConfig(block=1, pinned=(("valley", "train"),)), filters=TileFilters(max_s2_nodata=0.5),
                  progress=False)
    data = ArchiveDataModule(root, progress=False)
    data.prepare_data()
    with pytest.raises(RsgeeError, match="the val split has no tiles") as info:
        data.setup("fit")
    assert "\n" not in str(info.value)
    with pytest.raises(RsgeeError, match="the test split has no tiles"):
        data.setup("test")


def test_torchgeo_segmentation_task_trains_on_the_data_module(archive, tmp_path):
    """torchgeo's own trainer reads ArchiveDataModule's batches (skipped where torchgeo does not import)."""
    try:
        from torchgeo.datasets.utils import stack_samples
        from torchgeo.trainers import SemanticSegmentationTask
    except (ImportError, RuntimeError, OSError) as exc:  # RuntimeError: torchvision built for another torch
        pytest.skip(f"torchgeo does not import here: {type(exc).__name__}: {exc}")
    import lightning as L

    from rsgee.datamodules import ArchiveDataModule

    samples = [ArchiveDataset(archive, "train", progress=False)[i] for i in (0, 3)]
    ours, theirs = collate(samples), stack_samples(samples)
    assert ours.keys() == theirs.keys() and all(
        torch.equal(ours[k], theirs[k]) if torch.is_tensor(ours[k]) else ours[k] == theirs[k] for k in ours)

    L.seed_everything(0)
    data = ArchiveDataModule(archive.root, ("s1", "s2"), batch_size=2, progress=False)
    task = SemanticSegmentationTask(model="fcn", backbone="resnet18", in_channels=6,
                                    num_classes=len(ArchiveDataset.classes), loss="ce",
                                    ignore_index=ArchiveDataset.ignore_index, lr=1e-3)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                        default_root_dir=tmp_path)
    trainer.fit(task, datamodule=data)
    assert trainer.global_step == 4
    assert math.isfinite(float(trainer.callback_metrics["train_loss"]))
    assert trainer.test(task, datamodule=data, verbose=False)[0]["test_loss"] >= 0
