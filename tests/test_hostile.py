"""A hostile user's inputs (issue #26, item 4): every file rsgee reads back, and every numeric option, is
checked where it is read, so a damaged or absurd one ends in one line naming the problem and the fix.

One tiny synthetic archive, a one-step fusion run and a one-step segmentation run are built once; each
test works on a hard-linked copy of them and spoils a file by replacing it (never in place, so the
shared copy stays whole). The command line is driven through ``rsgee.cli.main``: exit status 1, exactly
one ``rsgee: error:`` line on stderr, the fix named, and nothing half-written left behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import rsgee
from rsgee.cli import main
from rsgee.errors import RsgeeError
from rsgee.preprocess.split import SplitConfig
from rsgee.preprocess.tiling import TileFilters
from rsgee.train.fusion import FusionConfig
from rsgee.train.segmentation import SegmentationConfig

AOI = "valley=10.60,46.60,10.66,46.64"
TRAIN = ["--size", "tiny", "--steps", "1", "--batch-size", "2", "--accelerator", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """exports/valley, archive/ (6 tiles: train 4, val 1, test 1), fusion/ and seg/ runs of one step each."""
    root = tmp_path_factory.mktemp("hostile")
    rsgee.export(AOI, root / "exports", source="synthetic", cloud_cover=0.02, workers=1, progress=False)
    rsgee.tile(root / "exports", root / "archive", split_block=1, max_s2_nodata=0.5, progress=False)
    options = dict(size="tiny", steps=1, batch_size=2, accelerator="cpu", progress=False)
    rsgee.train_fusion(root / "archive", root / "fusion", val_figures=0, **options)
    rsgee.train_seg(root / "archive", root / "seg", **options)
    return root


@pytest.fixture
def work(base, tmp_path) -> Path:
    """The base folder again, as hard links (cheap); change its files only with :func:`spoil`."""
    shutil.copytree(base, tmp_path / "w", copy_function=os.link, ignore=shutil.ignore_patterns(".lock"))
    return tmp_path / "w"


def spoil(path: Path, data: bytes | str) -> None:
    """Give ``path`` new content as a new file: the base folder's link keeps the old one."""
    path.unlink()
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def edit_json(path: Path, change) -> None:
    spoil(path, json.dumps(change(json.loads(path.read_text()))))


def run(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def refused(args, capsys, *fragments: str) -> str:
    """Run a command that must stop in one line; every fragment must be in what it printed."""
    code, out, err = run(args, capsys)
    assert code == 1 and err.startswith("rsgee: error: ") and err.count("\n") == 1, err
    assert "internal error" not in err
    for fragment in fragments:
        assert fragment in out + err, out + err
    return out + err


def predict_seg(work: Path) -> list:
    return ["predict", "seg", work / "seg", "--exports", work / "exports" / "valley", "--out", work / "map.tif",
            "--no-progress"]


# -- stats.json and the archive's catalog.yaml ------------------------------------------------------------------

@pytest.mark.parametrize("content", ["garbage{", "", "[1, 2]", '{"sources": 3}'])
def test_a_damaged_stats_json_is_named_by_check_and_training(work, capsys, content):
    spoil(work / "archive" / "stats.json", content)
    refused(["check", work / "archive", "--no-progress"], capsys, "stats.json is damaged", "re-run rsgee tile")
    refused(["train", "seg", work / "archive", "--out", work / "new", *TRAIN], capsys, "stats.json is damaged")
    refused(["train", "fusion", work / "archive", "--out", work / "new", *TRAIN], capsys, "stats.json is damaged")
    assert not (work / "new").exists()


def test_the_advice_for_a_damaged_stats_json_works(work, capsys):
    spoil(work / "archive" / "stats.json", "[1, 2]")
    assert run(["tile", work / "exports", "--out", work / "archive", "--split-block", "1", "--max-s2-nodata", "0.5",
                "--no-progress"], capsys)[0] == 0
    assert run(["check", work / "archive", "--no-progress"], capsys)[0] == 0


@pytest.mark.parametrize("command", ["check", "cache", "stac", "tile", "train"])
def test_a_damaged_archive_catalog_is_one_line(work, capsys, command):
    spoil(work / "archive" / "catalog.yaml", "sources: [s2\n")
    archive = work / "archive"
    args = {"check": ["check", archive, "--no-progress"], "cache": ["cache", archive, "--force", "--no-progress"],
            "stac": ["stac", archive], "train": ["train", "seg", archive, "--out", work / "new", *TRAIN],
            "tile": ["tile", work / "exports", "--out", archive, "--split-block", "1", "--no-progress"]}[command]
    refused(args, capsys, "catalog.yaml", "not valid YAML", "restore this copy of the catalog")
    assert not (work / "new").exists() and not (archive / "stac").exists()


# -- checkpoints ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["empty", "truncated", "random", "fusion"])
def test_a_damaged_last_checkpoint_stops_resume_with_the_way_out(work, base, capsys, damage):
    last = work / "seg" / "checkpoints" / "last.ckpt"
    spoil(last, {"empty": b"", "truncated": last.read_bytes()[:1000], "random": os.urandom(5000),
                 "fusion": (base / "fusion" / "checkpoints" / "last.ckpt").read_bytes()}[damage])
    problem = "is a fusion checkpoint, not a segmentation one" if damage == "fusion" else "is damaged"
    refused(["train", "seg", work / "archive", "--out", work / "seg", "--resume", *TRAIN], capsys,
            f"checkpoint {last} {problem}", "resume from epoch0000.ckpt instead")
    assert not list((work / "seg" / "logs").glob("metrics.part*.csv"))  # the logs were left where they were


def test_an_empty_fusion_checkpoint_is_not_taken_for_ctrl_c(work, capsys):
    spoil(work / "fusion" / "checkpoints" / "last.ckpt", b"")
    refused(["train", "fusion", work / "archive", "--out", work / "fusion", "--resume", "--val-figures", "0", *TRAIN],
            capsys, "last.ckpt is damaged", "retrain")


def test_a_damaged_best_checkpoint_names_last_ckpt(work, capsys):
    best = work / "seg" / "checkpoints" / "epoch0000.ckpt"
    spoil(best, os.urandom(3000))
    refused(predict_seg(work), capsys, f"checkpoint {best} is damaged", "delete it to use last.ckpt instead")
    assert not any(p.name.endswith(".tif") for p in work.iterdir())
    best.unlink()  # the advice
    assert run(predict_seg(work), capsys)[0] == 0


# -- run.json ---------------------------------------------------------------------------------------------------

RUN_DAMAGE = {
    "garbage": lambda info: "nope{",
    "a list": lambda info: [1, 2],
    "kind flipped": lambda info: dict(info, kind="fusion"),
    "classes cut": lambda info: dict(info, classes=info["classes"][:3]),
    "config not an object": lambda info: dict(info, config=[1]),
}


@pytest.mark.parametrize("damage", RUN_DAMAGE)
def test_a_damaged_run_json_is_one_line_everywhere(work, capsys, damage):
    path = work / "seg" / "run.json"
    changed = RUN_DAMAGE[damage](json.loads(path.read_text()))
    spoil(path, changed if isinstance(changed, str) else json.dumps(changed))
    refused(predict_seg(work), capsys, "run.json is damaged", "train the run again")
    refused(["evaluate", "seg", work / "seg", "--out", work / "eval", "--accelerator", "cpu", "--no-progress"], capsys,
            "run.json is damaged")
    refused(["train", "seg", work / "archive", "--out", work / "seg", "--resume", *TRAIN], capsys, "run.json is damaged")
    assert not (work / "eval").exists() and not (work / "map.tif").exists()


def test_a_run_of_the_other_kind_is_named(work, capsys):
    refused(["generate", work / "seg", work / "archive", "--accelerator", "cpu", "--no-progress"], capsys,
            "is a segmentation run; rsgee generate needs a fusion run")
    refused(["train", "fusion", work / "archive", "--out", work / "seg", "--resume", *TRAIN], capsys,
            "holds a segmentation run; resume it with `rsgee train seg`")
    edit_json(work / "fusion" / "run.json", lambda info: dict(info, kind="segmentation"))
    refused(["generate", work / "fusion", work / "archive", "--accelerator", "cpu", "--no-progress"], capsys,
            "run.json is damaged (the segmentation config has no valid mix)")
    assert not (work / "archive" / "gen").exists()


def test_a_run_whose_archive_is_gone_asks_for_archive(work, capsys):
    edit_json(work / "seg" / "run.json", lambda info: dict(info, archive=str(work / "moved")))
    refused(["evaluate", "seg", work / "seg", "--out", work / "eval", "--accelerator", "cpu", "--no-progress"], capsys,
            f"was trained on {work / 'moved'}", "pass --archive")


# -- options ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, option, fragment", [
    ("fusion", ["--lr-g", "-1"], "--lr-g -1.0: use a finite number > 0"),
    ("fusion", ["--lr-d", "nan"], "--lr-d nan"),
    ("fusion", ["--seed", "-5"], "--seed -5: use a whole number in [0, 4294967295]"),
    ("fusion", ["--l1-weight", "-1"], "--l1-weight -1.0"),
    ("seg", ["--lr", "inf"], "--lr inf"),
    ("seg", ["--seed", "-5"], "--seed -5"),
])
def test_absurd_training_options_are_refused_before_run_json(work, capsys, command, option, fragment):
    refused(["train", command, work / "archive", "--out", work / "new", *TRAIN, *option], capsys, fragment)
    assert not (work / "new").exists()


@pytest.mark.parametrize("ratios", ["1e400:1:1", "nan:1:1", "0:0:0"])
def test_absurd_split_ratios_leave_no_archive(work, capsys, ratios):
    refused(["tile", work / "exports", "--out", work / "new", "--split-ratios", ratios, "--no-progress"], capsys,
            "split ratios", "finite, non-negative")
    assert not (work / "new").exists()


def test_a_300_character_aoi_name_is_shortened_not_an_os_error(tmp_path, capsys):
    code, _, err = run(["export", "--aoi", "x" * 300 + "=10.60,46.60,10.61,46.61", "--source", "synthetic", "--workers",
                        "1", "--out", tmp_path, "--no-progress"], capsys)
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["x" * 64]


# -- index tile ids and manifests ------------------------------------------------------------------------------

def climb_out(index: dict) -> dict:
    feature = index["features"][0]
    feature["id"] = feature["properties"]["tile_id"] = "../" + feature["id"]
    return index


@pytest.mark.parametrize("command", ["cache", "tile", "generate", "stac", "check"])
def test_a_tile_id_climbing_out_of_the_archive_is_refused(work, capsys, command):
    edit_json(work / "archive" / "index.geojson", climb_out)
    archive = work / "archive"
    args = {"cache": ["cache", archive, "--force", "--no-progress"], "stac": ["stac", archive],
            "check": ["check", archive, "--no-progress"],
            "generate": ["generate", work / "fusion", archive, "--accelerator", "cpu", "--no-progress"],
            "tile": ["tile", work / "exports", "--out", archive, "--split-block", "1", "--no-progress"]}[command]
    refused(args, capsys, "index.geojson", "'../32632_")
    assert not (archive / "gen").exists() and not (archive / "stac").exists()


MANIFEST_DAMAGE = {
    "a list": (lambda m: [1, 2], "a JSON list, not an object"),
    "AOI name ../../x": (lambda m: dict(m, aoi=dict(m["aoi"], name="../../x")), "AOI name '../../x' is not a safe name"),
    "absolute s2 path": (lambda m: dict(m, files=dict(m["files"], s2=dict(m["files"]["s2"], path="/etc/hosts"))),
                         "file s2 is at '/etc/hosts', outside the export folder"),
    "s2 path up": (lambda m: dict(m, files=dict(m["files"], s2=dict(m["files"]["s2"], path="../other/s2.tif"))),
                   "outside the export folder"),
}


@pytest.mark.parametrize("damage", MANIFEST_DAMAGE)
def test_a_damaged_manifest_is_refused_by_every_reader(work, capsys, damage):
    change, problem = MANIFEST_DAMAGE[damage]
    folder = work / "exports" / "valley"
    edit_json(folder / "manifest.json", change)
    fix = "re-run rsgee export with --overwrite"
    refused(["tile", work / "exports", "--out", work / "new", "--no-progress"], capsys, problem, fix)
    refused(predict_seg(work), capsys, problem, fix)
    with pytest.raises(RsgeeError, match="outside the export folder|not a safe name|not an object"):
        rsgee.open_export(folder)
    assert not (work / "new").exists() and not (work / "map.tif").exists()


def test_the_advice_for_a_damaged_manifest_is_no_dead_end(work, capsys):
    folder = work / "exports" / "valley"
    spoil(folder / "manifest.json", "[1, 2]")
    export = ["export", "--aoi", AOI, "--source", "synthetic", "--cloud-cover", "0.02", "--workers", "1", "--out",
              work / "exports", "--no-progress"]
    refused(export, capsys, "manifest.json is damaged", "--overwrite")
    assert run([*export, "--overwrite"], capsys)[0] == 0
    assert rsgee.open_export(folder).attrs["aoi"] == "valley"


# -- the Python API ---------------------------------------------------------------------------------------------

API_CASES = {
    "train_fusion(epochs=0)": (lambda w: rsgee.train_fusion(w / "archive", w / "new", size="tiny", epochs=0),
                               "--epochs 0"),
    "train_fusion(steps_per_epoch=0)": (lambda w: rsgee.train_fusion(w / "archive", w / "new", steps_per_epoch=0),
                                        "--steps-per-epoch 0"),
    "train_seg(batch_size=0)": (lambda w: rsgee.train_seg(w / "archive", w / "new", batch_size=0), "--batch-size 0"),
    "train_seg(mix=(1, 2, 3))": (lambda w: rsgee.train_seg(w / "archive", w / "new", mix=(1, 2, 3)), "--mix"),
    "tile(max_nodata=2)": (lambda w: rsgee.tile(w / "exports", w / "new", max_nodata=2), "--max-nodata 2"),
    "tile(split_ratios=(1, 2))": (lambda w: rsgee.tile(w / "exports", w / "new", split_ratios=(1, 2)),
                                  "split ratios (1, 2)"),
    "tile(workers=0)": (lambda w: rsgee.tile(w / "exports", w / "new", workers=0), "--workers 0"),
    "Archive('/nonexistent').tile_ids": (lambda w: rsgee.Archive(w / "new").tile_ids, "not an rsgee archive"),
    "to_xarray('bogus')": (lambda w: rsgee.Archive(w / "archive").to_xarray("bogus"), "'bogus' is not a split"),
    "predict_seg(batch_size=0)": (lambda w: rsgee.predict_seg(w / "seg", w / "new", exports=w / "exports" / "valley",
                                                              batch_size=0), "--batch-size 0"),
    "generate(batch_size=0)": (lambda w: rsgee.generate(w / "fusion", w / "archive", batch_size=0), "--batch-size 0"),
    "cache(workers=0)": (lambda w: rsgee.cache(w / "archive", workers=0), "--workers 0"),
}


@pytest.mark.parametrize("case", API_CASES)
def test_bad_python_calls_are_one_line_refusals(work, case):
    call, fragment = API_CASES[case]
    with pytest.raises(RsgeeError) as info:
        call(work)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert not (work / "new").exists() and not (work / "archive" / "gen").exists()


def test_split_ratios_may_be_numbers_from_python(work):
    summary = rsgee.tile(work / "exports", work / "new", split_ratios=(7, 2, 1), split_block=1, max_s2_nodata=0.5,
                         progress=False)
    assert summary.index_tiles == 6


@pytest.mark.parametrize("make, fragment", [
    (lambda: FusionConfig(betas=(1.5, 0.9)), "--betas 1.5"),
    (lambda: FusionConfig(ema_decay=1.0), "--ema-decay 1.0"),
    (lambda: FusionConfig(val_every=0), "--val-every 0"),
    (lambda: FusionConfig(clip_grad_norm=0.0), "--clip-grad-norm 0.0"),
    (lambda: FusionConfig(size="huge"), "--size 'huge'"),
    (lambda: SegmentationConfig(weight_decay=float("nan")), "--weight-decay nan"),
    (lambda: SegmentationConfig(crop=33), "--crop 33"),
    (lambda: SegmentationConfig(num_workers=-1), "--workers -1"),
    (lambda: SplitConfig(ratios=(float("inf"), 1, 1)), "finite"),
    (lambda: SplitConfig(seed=1.5), "--split-seed 1.5"),
    (lambda: TileFilters(max_s2_nodata=-0.1), "--max-s2-nodata -0.1"),
])
def test_the_configs_check_their_own_ranges(make, fragment):
    with pytest.raises(RsgeeError) as info:
        make()
    assert fragment in str(info.value)
