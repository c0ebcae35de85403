"""Shared fixtures: the real-data folder beside the checkout, temporary AOI files, a small synthetic archive and
tiny runs trained on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """../shared beside the checkout, or $RSGEE_SHARED."""
    return Path(os.environ.get("RSGEE_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data/real (small real rasters); tests using it skip where it is absent."""
    path = shared_dir() / "data" / "real"
    if not path.is_dir():
        pytest.skip(f"real test data not found at {path}")
    return path


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory):
    """Six tiles of a synthetic valley: train 4, val 1, test 1 (1×1-tile split blocks), built once per session."""
    import datetime as dt

    from rsgee.acquire.aoi import parse_aois
    from rsgee.acquire.export import export_aois
    from rsgee.acquire.synthetic import SyntheticSource
    from rsgee.catalog import load_catalog
    from rsgee.preprocess.archive import Archive
    from rsgee.preprocess.split import SplitConfig
    from rsgee.preprocess.tiling import TileFilters, build_archive

    root = tmp_path_factory.mktemp("train-archive")
    source = SyntheticSource(seed=0, cloud_cover=0.02, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    export_aois(parse_aois(["valley=10.60,46.60,10.66,46.64"]), root / "exports", source, load_catalog(), progress=False)
    build_archive([root / "exports"], root / "archive", load_catalog(), split=SplitConfig(block=1),
                  filters=TileFilters(max_s2_nodata=0.5), progress=False)
    archive = Archive(root / "archive")
    counts = {s: len(archive.tiles(s)) for s in ("train", "val", "test")}
    assert counts == {"train": 4, "val": 1, "test": 1}, counts
    return archive


@pytest.fixture(scope="session")
def tiny_runs(small_archive, tmp_path_factory) -> dict:
    """A tiny RS-UNet run ("seg") and a tiny RS-SPADE run keeping an EMA ("gan"), two steps each on
    :func:`small_archive`, for the tests that apply trained models (predict, export-model); read-only."""
    from rsgee.configs import FusionConfig, SegmentationConfig
    from rsgee.train.fusion import train_fusion
    from rsgee.train.segmentation import train_segmentation

    folder = tmp_path_factory.mktemp("tiny-runs")
    seg = train_segmentation(small_archive.root, folder / "seg", SegmentationConfig(
        size="tiny", batch_size=2, epochs=1, steps_per_epoch=2, crop=64), progress=False)
    gan = train_fusion(small_archive.root, folder / "gan", FusionConfig(  # keeps an EMA (--ema-decay 0.999)
        size="tiny", batch_size=2, epochs=1, steps_per_epoch=2, crop=64, val_figures=0), progress=False)
    return {"seg": seg, "gan": gan}

