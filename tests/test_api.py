"""rsgee's Python API: the module's examples run, and Python gives what the command line gives."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys

import pytest
import shapely.geometry

import rsgee
from rsgee.errors import RsgeeError

AOI = "valley=10.60,46.60,10.63,46.62"


def tree(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.tif"))}


def test_the_modules_examples_run(tmp_path):
    import rsgee.api

    failures, tried = doctest.testmod(rsgee.api, extraglobs={"out": tmp_path / "exports", "archive": tmp_path / "a"},
                                      optionflags=doctest.ELLIPSIS, report=True)
    assert tried >= 5 and failures == 0


def test_import_rsgee_stays_light_and_names_the_api():
    code = "import sys, rsgee; print(sorted(m for m in ('rsgee.api', 'torch', 'xarray') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
    assert {"export", "tile", "check", "train_fusion", "predict_seg", "Archive"} <= set(dir(rsgee))


def test_python_and_the_command_line_write_the_same_export(tmp_path):
    from rsgee.cli import main

    assert main(["export", "--aoi", AOI, "--source", "synthetic", "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    (result,) = rsgee.export(AOI, tmp_path / "py", source="synthetic", progress=False)
    assert result.ok and tree(tmp_path / "py") == tree(tmp_path / "cli")  # same defaults, byte for byte
    polygon = shapely.geometry.box(10.60, 46.60, 10.63, 46.62)
    feature = {"type": "Feature", "properties": {"name": "valley"}, "geometry": shapely.geometry.mapping(polygon)}
    (from_dict,) = rsgee.export([feature], tmp_path / "dict", source="synthetic", progress=False)
    (from_shape,) = rsgee.export([polygon], tmp_path / "shape", source="synthetic", progress=False)
    assert tree(tmp_path / "dict") == tree(tmp_path / "py") and from_shape.tiles == result.tiles == 4
    plan = rsgee.export(AOI, tmp_path / "dry", source="synthetic", dry_run=True)
    assert plan.aois[0]["name"] == "valley" and plan.aois[0]["tiles"] == plan.total["tiles"] == 4
    assert plan.lines()[0].startswith("valley:") and not (tmp_path / "dry").exists()
    with pytest.raises(RsgeeError, match="not a date"):
        rsgee.export(AOI, tmp_path / "x", source="synthetic", start="June")
    with pytest.raises(RsgeeError, match="not an area"):
        rsgee.export([shapely.geometry.Point(10.6, 46.6)], tmp_path / "x", source="synthetic")


@pytest.mark.slow
def test_train_evaluate_and_predict_from_python(tmp_path):
    rsgee.export("ridge=10.60,46.60,10.69,46.64", tmp_path / "exports", source="synthetic", cloud_cover=0.02,
                 progress=False)
    rsgee.tile(tmp_path / "exports", tmp_path / "archive", split_block=1, split_ratios="5:3:2", max_s2_nodata=0.5,
               progress=False)
    archive = rsgee.Archive(tmp_path / "archive")
    assert sorted(archive.splits) == ["test", "train", "val"] and len(archive.tile_ids) == 9
    assert archive.split("val") == archive.splits["val"] and archive.stats["sources"]["s2"]
    assert [(c.split, c.built, c.tiles) for c in rsgee.cache(archive.root, progress=False)] == [
        ("train", True, 5), ("val", True, 3), ("test", True, 1)]
    run = rsgee.train_seg(archive.root, tmp_path / "seg", size="tiny", epochs=1, steps_per_epoch=1, crop=64,
                          progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["batch_size"] == 4 and info["config"]["mix"] == [1, 0]  # the command's defaults
    rows, figures = rsgee.evaluate_seg(run, out=tmp_path / "eval", progress=False)
    assert rows[-1]["run"] == str(run) and (tmp_path / "eval" / "seg_table.csv").exists() and figures
    result = rsgee.predict_seg(run, tmp_path / "lake.tif", aoi="lake=10.70,46.60,10.73,46.62", source="synthetic",
                               progress=False)
    assert result.status == "written" and (tmp_path / "lake.tif").exists()
    with pytest.raises(RsgeeError, match="either exports .* or aoi"):
        rsgee.predict_seg(run, tmp_path / "x.tif")


@pytest.mark.slow
def test_the_readmes_python_example_runs_as_a_plain_script(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = []
    for heading in ("## Python\n", "## Python: xarray views\n", "## Python: your own models on an archive\n"):
        # the later ones use what the first wrote
        section = readme[readme.index(heading):]
        start = section.index("```python\n") + len("```python\n")
        code.append(section[start:section.index("```", start)])
    script = tmp_path / "example.py"
    script.write_text("\n".join(code))  # as a user saves it: a plain script, no __main__ guard
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "{'test': 1, 'train': 5, 'val': 3}" and out[1].startswith("written: lake_s2.tif")
    assert out[2] == "EPSG:32632" and out[3].startswith("{'tile': 5, ")
    assert "['bounds', 'crs', 'image', 'mask', 'tile_id'] (4, 256, 256)" in out
