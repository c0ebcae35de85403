"""rsgee predict: COGs on the AOI grid, no seams, the archive's own predictions, fill-clouds, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from rsgee.errors import RsgeeError
from rsgee.exports import read_export
from rsgee.grid import TILE_PX, Grid, Tile
from rsgee.models.normalisation import (lulc_to_model, model_to_reflectance, reflectance_to_s2, s1_to_model,
                                        terrain_to_model)
from rsgee.predict import blend_weights, predict_fusion, predict_seg, window_starts
from rsgee.train.fusion import load_fusion
from rsgee.train.segmentation import load_segmentation, real_test_samples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def export(small_archive):
    return small_archive.root.parent / "exports" / "valley"  # the AOI the archive was tiled from


def grid_of(export) -> Grid:
    return read_export(export).grid


def test_windows_cover_the_raster_and_weights_never_vanish():
    assert window_starts(768, 256, 192) == [0, 192, 384, 512]
    assert window_starts(512, 256, 256) == [0, 256] and window_starts(256, 256, 192) == [0]
    w = blend_weights(256, 64)
    assert w.min() > 0 and w[128, 128] == 1.0 and w[0, 0] < w[0, 64] < w[64, 64] == 1.0
    assert np.array_equal(w, w.T) and np.array_equal(w, w[::-1, ::-1])


def test_the_maps_colours_are_dynamic_worlds_as_the_figures_draw_them():
    from rsgee.predict import DW_COLOURS
    from rsgee.train.figures import DW_COLOURS as FIGURE_COLOURS

    assert DW_COLOURS == FIGURE_COLOURS[:9]


def test_the_map_is_a_cog_on_the_aoi_grid_with_classes_colours_and_nodata(tiny_runs, export, tmp_path):
    out = tmp_path / "map.tif"
    result = predict_seg(tiny_runs["seg"], export, out, probabilities=True, progress=False)
    grid = grid_of(export)
    assert result.status == "written" and result.windows == len(window_starts(grid.height, 256, 192)) * len(
        window_starts(grid.width, 256, 192))
    with rasterio.open(out) as src, rasterio.open(export / "s2.tif") as s2:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and src.overviews(1)
        assert (src.crs.to_epsg(), src.transform, src.width, src.height) == (grid.epsg, grid.transform, grid.width,
                                                                           grid.height)
        assert src.dtypes == ("uint8",) and src.nodata == 255
        assert src.colormap(1)[0] == (65, 155, 223, 255)  # Dynamic World's water
        assert json.loads(src.tags()["RSGEE_CLASSES"])[0] == "water"
        labels, observed = src.read(1), (s2.read() != 0).all(axis=0)
    assert np.array_equal(labels == 255, ~observed) and labels[observed].max() <= 8
    with rasterio.open(tmp_path / "map_probabilities.tif") as src:
        probabilities = src.read()
    assert probabilities.shape == (9, grid.height, grid.width)
    assert np.allclose(probabilities[:, observed].sum(0), 1.0, atol=1e-5)
    assert np.array_equal(probabilities[:, observed].argmax(0), labels[observed])
    assert predict_seg(tiny_runs["seg"], export, out, probabilities=True, progress=False).status == "up to date"


def test_no_strips_are_left_after_success_an_error_or_a_killed_run(tiny_runs, export, tmp_path, monkeypatch):
    """The hidden strips GeoTIFF is as large as the output: it never outlives a run, nor a killed one's rerun."""
    from rsgee import predict

    killed = [tmp_path / ".map.tif.strips.tif", tmp_path / ".map.tif.strips.tif.aux.xml",
              tmp_path / ".map_probabilities.tif.strips.tif"]
    for path in killed:
        path.write_bytes(b"left by a killed run")
    out = tmp_path / "map.tif"
    assert predict_seg(tiny_runs["seg"], export, out, probabilities=True, progress=False).status == "written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif", "map_probabilities.tif"]
    killed[0].write_bytes(b"left by a killed run")
    assert predict_seg(tiny_runs["seg"], export, out, probabilities=True, progress=False).status == "up to date"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif", "map_probabilities.tif"]

    slide = predict._slide

    def fails_after_one_strip(*args, **kwargs):
        strips = slide(*args, **kwargs)
        yield next(strips)
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(predict, "_slide", fails_after_one_strip)
    with pytest.raises(RuntimeError, match="No space left on device"):
        predict_fusion(tiny_runs["gan"], export, tmp_path / "s2.tif", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif", "map_probabilities.tif"]


def test_without_overlap_the_map_is_the_models_prediction_on_the_archive_tiles(tiny_runs, export, small_archive,
                                                                               tmp_path):
    out = tmp_path / "map.tif"
    predict_seg(tiny_runs["seg"], export, out, overlap=0, progress=False)
    task = load_segmentation(tiny_runs["seg"])
    samples = real_test_samples(small_archive, "train")
    with rasterio.open(out) as src:
        labels = src.read(1)
        for i, tile_id in enumerate(samples.packed.tile_ids):  # windows fall exactly on the lattice tiles
            row, col = rasterio.transform.rowcol(src.transform, *(Tile.from_id(tile_id).transform @ (0.5, 0.5)))
            with torch.no_grad():
                expected = task(samples[i]["image"][None]).argmax(1)[0].numpy()
            window = labels[row:row + TILE_PX, col:col + TILE_PX]
            assert np.array_equal(window[window != 255], expected[window != 255])


def test_blending_removes_the_seams_of_a_model_that_sees_only_its_window(export):
    from rsgee.predict import _Export, _slide  # the sliding machinery itself, with a stand-in model

    def window_mean(batch):  # every output pixel is its window's mean: window borders are hard steps
        image = batch["image"]
        return image.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *image.shape[-2:])

    def inputs(strip):
        s2 = strip["s2"].astype(np.float32) / 10000
        return {"image": s2}, np.ones(s2.shape[1:], bool)

    manifest = json.loads((export / "manifest.json").read_text())
    grid = Grid.from_dict(manifest["grid"])
    exp = _Export(export, "valley", grid, {"s2": str(export / "s2.tif")}, "", {"s2": 0}, {"s2": 0.0})

    def field(overlap):
        rows = [blended[0] for _, _, _, blended, _ in _slide(exp, ("s2",), inputs, window_mean, 1, overlap, 4, "cpu",
                                                              False)]
        return np.concatenate(rows)

    hard, soft = field(0), field(64)
    assert soft.shape == hard.shape == (grid.height, grid.width)
    jump = lambda f: max(np.abs(np.diff(f, axis=0)).max(), np.abs(np.diff(f, axis=1)).max())  # noqa: E731
    assert jump(hard) > 0 and jump(soft) < jump(hard) / 10  # a step spread over the 64-px ramp


def test_a_pixel_barely_depends_on_where_window_borders_fall(tiny_runs, export, tmp_path):
    probabilities = {}
    for overlap in (64, 96):  # windows start at other places: 0, 192, … against 0, 160, …
        predict_seg(tiny_runs["seg"], export, tmp_path / f"map{overlap}.tif", overlap=overlap, probabilities=True,
                    progress=False)
        with rasterio.open(tmp_path / f"map{overlap}_probabilities.tif") as src:
            probabilities[overlap] = src.read()
    difference = np.abs(probabilities[64] - probabilities[96])
    # stated tolerance (README): the class probabilities of two window layouts differ by under 0.01 on average;
    # the barely trained test model's classes are close calls, so labels may still flip on a few % of pixels
    assert np.nanmean(difference) < 0.01
    assert np.nanmean(probabilities[64].argmax(0) == probabilities[96].argmax(0)) > 0.9


def test_fusion_fill_clouds_keeps_real_pixels_and_fills_every_gap(tiny_runs, export, small_archive, tmp_path):
    out = tmp_path / "s2.tif"
    result = predict_fusion(tiny_runs["gan"], export, out, fill_clouds=True, overlap=0, progress=False)
    with rasterio.open(out) as src, rasterio.open(export / "s2.tif") as s2:
        assert src.descriptions == ("B2", "B3", "B4", "B8", "filled") and src.dtypes == ("uint16",) * 5
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        values, real = src.read(), s2.read()
    valid = (real != 0).all(axis=0)
    assert (~valid).any() and result.filled == int((~valid).sum())  # the synthetic scene has cloud gaps
    assert np.array_equal(values[:4][:, valid], real[:, valid])  # byte-identical where observed
    assert np.array_equal(values[4] == 1, ~valid) and (values[:4][:, ~valid] > 0).all()
    # the filled pixels are the generator's own output on the archive tile (overlap 0: windows = tiles), whose
    # inputs are read from its GeoTIFFs (the packed cache rounds terrain and SAR to its codes)
    task = load_fusion(tiny_runs["gan"])
    tile_id = small_archive.tiles("train")[0]["tile_id"]
    raw = {}
    for source in ("lulc", "s1", "terrain"):
        with rasterio.open(small_archive.tile_path(source, tile_id)) as src:
            raw[source] = src.read()
    norm = task.norm
    cond = {"lulc": lulc_to_model(raw["lulc"]), "s1": s1_to_model(raw["s1"], norm["s1_bands"]),
            "terrain": terrain_to_model(raw["terrain"], norm["dem_mean"], norm["dem_std"])}
    with torch.no_grad():
        generated = task({k: torch.from_numpy(v)[None] for k, v in cond.items()})
    expected = reflectance_to_s2(model_to_reflectance(generated)[0].numpy())
    with rasterio.open(out) as src:
        row, col = rasterio.transform.rowcol(src.transform, *(Tile.from_id(tile_id).transform @ (0.5, 0.5)))
    window = values[:, row:row + TILE_PX, col:col + TILE_PX]
    gaps = window[4] == 1
    assert gaps.any() and np.abs(window[:4][:, gaps].astype(int) - expected[:, gaps].astype(int)).max() <= 1


def test_bad_inputs_are_one_line(tiny_runs, export, tmp_path):
    with pytest.raises(RsgeeError, match="is a segmentation run, not a fusion run"):
        predict_fusion(tiny_runs["seg"], export, tmp_path / "x.tif", progress=False)
    with pytest.raises(RsgeeError, match="--overlap 128"):
        predict_seg(tiny_runs["seg"], export, tmp_path / "x.tif", overlap=128, progress=False)
    partial = tmp_path / "partial"
    partial.mkdir()
    manifest = json.loads((export / "manifest.json").read_text())
    del manifest["files"]["s1"]
    for name in manifest["files"]:  # the files stay in the export: a manifest names files in its own folder
        (partial / f"{name}.tif").symlink_to(export / f"{name}.tif")
    (partial / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RsgeeError, match="the export has no s1"):
        predict_fusion(tiny_runs["gan"], partial, tmp_path / "x.tif", progress=False)
    manifest["files"]["s2"]["bands"] = ["B2", "B3", "B4"]
    (partial / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RsgeeError, match=r"s2 has bands \['B2', 'B3', 'B4'\]"):
        predict_seg(tiny_runs["seg"], partial, tmp_path / "x.tif", progress=False)
    assert not list(tmp_path.glob("x*.tif")) and not list(tmp_path.glob(".x*"))  # nothing partial left


def test_the_cli_exports_a_new_aoi_and_predicts_it(tiny_runs, tmp_path, capsys):
    from rsgee.cli import main

    out = tmp_path / "lake.tif"
    code = main(["predict", "seg", str(tiny_runs["seg"]), "--aoi", "lake=10.70,46.60,10.73,46.62", "--source",
                 "synthetic", "--out", str(out), "--no-progress"])
    assert code == 0 and f"written: {out}" in capsys.readouterr().out
    with rasterio.open(out) as src:
        grid = grid_of(tmp_path / "lake_inputs" / "lake")
        assert (src.transform, src.width, src.height) == (grid.transform, grid.width, grid.height)
    code = main(["predict", "fusion", str(tiny_runs["seg"]), "--aoi", "lake=10.70,46.60,10.73,46.62", "--source",
                 "synthetic", "--out", str(tmp_path / "s2.tif"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "is a segmentation run" in err
    code = main(["predict", "seg", str(tiny_runs["seg"]), "--out", str(out)])
    assert code == 1 and "either exports (--exports DIR" in capsys.readouterr().err
    far = tmp_path / "far.tif"  # an AOI the given sources do not cover
    code = main(["predict", "seg", str(tiny_runs["seg"]), "--aoi", "far=11.50,46.60,11.53,46.62", "--source", "local",
                 "--input", f"s2={tmp_path / 'lake_inputs' / 'lake' / 's2.tif'}", "--out", str(far), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "does not cover the AOI grid" in err
    assert not far.exists() and not (tmp_path / "far_inputs").exists()


def test_predict_exports_a_new_aoi_from_earth_engine_first(tiny_runs, tmp_path, capsys, monkeypatch):
    import ee

    from rsgee.testing.earthengine import FakeEarthEngine
    from rsgee.cli import main

    out = tmp_path / "v.tif"
    monkeypatch.delenv("EE_PROJECT", raising=False)
    args = ["predict", "seg", str(tiny_runs["seg"]), "--aoi", "v=10.60,46.60,10.63,46.62", "--out", str(out),
            "--no-progress"]
    code = main(args)  # Earth Engine is the default source, as for rsgee export
    assert code == 1 and "no Earth Engine project: pass --project" in capsys.readouterr().err and not out.exists()
    try:
        with FakeEarthEngine() as server:
            code = main(args + ["--ee-url", server.url, "--no-auth", "--project", "fake"])
            requested = len(server.pixel_requests())
    finally:
        ee.Reset()
    assert code == 0 and f"written: {out}" in capsys.readouterr().out
    assert requested == 4  # 2×2 blocks of s2 only: nothing the model does not read is paid for
    manifest = json.loads((tmp_path / "v_inputs" / "v" / "manifest.json").read_text())
    assert manifest["source"] == "earthengine" and set(manifest["files"]) == {"s2"}  # only what the model reads
    with rasterio.open(out) as src, rasterio.open(tmp_path / "v_inputs" / "v" / "s2.tif") as s2:
        assert (src.transform, src.width, src.height) == (s2.transform, s2.width, s2.height)
        assert np.array_equal(src.read(1) == 255, ~(s2.read() != 0).all(axis=0))


def test_figures_leave_the_sessions_matplotlib_backend_alone(tmp_path):
    """A notebook's inline backend and open figures survive rsgee drawing its PNGs."""
    import matplotlib
    import matplotlib.pyplot as plt

    from rsgee.train.figures import curves, fusion_grid

    before = matplotlib.get_backend()
    mine = plt.figure()
    rng = np.random.default_rng(0)
    fusion_grid(tmp_path / "grid.png", generated=rng.random((1, 4, 8, 8)), real=rng.random((1, 4, 8, 8)),
                labels=np.zeros((1, 8, 8), int), sar_vv=None, titles=["t"], suptitle="s")
    curves(tmp_path / "curves.png", {"a": ([1, 2], [0.1, 0.2])}, ylabel="y", title="t")
    assert matplotlib.get_backend() == before and plt.fignum_exists(mine.number)
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "curves.png").exists()
    plt.close(mine)
