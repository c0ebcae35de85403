"""A hostile user's inputs and environment (issue #26): every file rsgee reads back, and every numeric
option, is checked where it is read (item 4); SIGTERM stops every long command as Ctrl-C does (item 2);
a full disk or an unwritable ``--out`` is one line (item 3). Each ends in one line naming the problem
and the fix.

One tiny synthetic archive, a one-step fusion run and a one-step segmentation run are built once; each
test works on a hard-linked copy of them and spoils a file by replacing it (never in place, so the
shared copy stays whole). The command line is driven through ``rsgee.cli.main``: exit status 1, exactly
one ``rsgee: error:`` line on stderr, the fix named, and nothing half-written left behind. Signals are
real: the command runs in a child process, stalled where it has workers and temporaries, and is sent
SIGTERM; its exit status (143), its one line, and that none of its processes outlive it are checked.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import rasterio.io
import torch

import rsgee
from rsgee.cli import main
from rsgee.errors import RsgeeError
from rsgee.preprocess.split import SplitConfig
from rsgee.preprocess.tiling import TileFilters
from rsgee.train import trainer
from rsgee.configs import FusionConfig, SegmentationConfig
from rsgee.train.segmentation import SegmentationTask

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


# -- signals ----------------------------------------------------------------------------------------------------

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")

#: rsgee with one function replaced by a stall: it says it got there (a marker file), then waits to be stopped.
STALLED = textwrap.dedent("""
    import importlib, pathlib, sys, time
    import rsgee.preprocess.cache
    from rsgee.cli import main

    marker, target, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    module, name = target.rsplit(".", 1)

    def stall(*_, **__):
        pathlib.Path(marker).touch()
        time.sleep(300)

    setattr(importlib.import_module(module), name, stall)
    rsgee.preprocess.cache._RUN = 2  # several runs of tiles, so that a small archive's cache uses its workers
    sys.exit(main(args))
""")

#: rsgee training, saying (a marker file) when its third optimiser step has started.
TRAINING = textwrap.dedent("""
    import pathlib, sys
    from rsgee.cli import main
    from rsgee.train.trainer import GuardedTask

    marker, args = sys.argv[1], sys.argv[2:]
    start_step = GuardedTask.start_step

    def counted(self):
        start_step(self)
        if self.steps_done == 3:
            pathlib.Path(marker).touch()

    GuardedTask.start_step = counted
    sys.exit(main(args))
""")


def processes() -> dict[int, tuple[int, str]]:
    """Every live process: pid → (parent pid, state letter)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError):
            continue
        table[int(stat.parent.name)] = (int(parent), state)
    return table


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (its workers, the multiprocessing resource tracker)."""
    table, found, todo = processes(), set(), [pid]
    while todo:
        parent = todo.pop()
        children = {p for p, (pp, _) in table.items() if pp == parent}
        found |= children
        todo += children
    return found


def sigterm_when_busy(script: str, tmp_path: Path, *args) -> tuple[int, str, set[int], set[int]]:
    """Run ``script`` with ``args`` in a child process; once busy, send it SIGTERM. Returns its exit status, its
    stderr, the processes it had started and those of them still alive (not zombies) 10 s after it ended."""
    marker = tmp_path / "busy"
    child = subprocess.Popen([sys.executable, "-c", script, str(marker), *map(str, args)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 180
    while not marker.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"never got busy: {child.communicate()[1][-3000:]}")
        time.sleep(0.05)
    workers = descendants(child.pid)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    deadline = time.monotonic() + 10
    while (left := {p for p in workers if processes().get(p, (0, "Z"))[1] != "Z"}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return child.returncode, err, workers, left


BUSY_COMMANDS = {
    "export": ("rsgee.acquire.export._checked_block",
               lambda w: ["export", "--aoi", AOI, "--source", "synthetic", "--cloud-cover", "0.02", "--workers", "2",
                          "--out", w / "new", "--no-progress"]),
    "tile": ("rsgee.preprocess.tiling._write_tile",
             lambda w: ["tile", w / "exports", "--out", w / "new", "--workers", "2", "--split-block", "1",
                        "--max-s2-nodata", "0.5", "--no-progress"]),
    "cache": ("rsgee.preprocess.cache._fill", lambda w: ["cache", w / "archive", "--workers", "2", "--force",
                                                         "--no-progress"]),
}


@needs_proc
@pytest.mark.parametrize("command", BUSY_COMMANDS)
def test_sigterm_stops_a_command_its_workers_and_its_temporaries_in_one_line(work, tmp_path, capsys, command):
    target, args = BUSY_COMMANDS[command]
    code, err, workers, left = sigterm_when_busy(STALLED, tmp_path, target, *args(work))
    assert code == 143 and err == "rsgee: interrupted by SIGTERM; re-run the same command to resume\n", err
    assert len(workers) >= 2 and not left  # its workers (and the resource tracker) went with it
    assert not list(work.glob("**/.*.tmp")) and not list(work.glob("**/.*.building"))
    assert not (work / "new" / "valley" / "manifest.json").exists()
    assert run(args(work), capsys)[0] == 0  # the advice


@needs_proc
def test_sigterm_stops_training_at_a_batch_with_a_checkpoint_and_says_how_to_resume(work, tmp_path, capsys):
    args = ["train", "seg", work / "archive", "--out", work / "new", "--size", "tiny", "--epochs", "100",
            "--batch-size", "2", "--accelerator", "cpu", "--no-progress"]
    code, err, _, left = sigterm_when_busy(TRAINING, tmp_path, *args)
    last = work / "new" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)["rsgee_steps_done"]
    assert code == 143 and not left, err
    lines = [line for line in err.splitlines() if not line.startswith("rsgee: warning: ")]
    assert lines == [f"rsgee: interrupted by SIGTERM; resume from step {saved} of 200 ({last}) with the same command "
                     "and --resume"]
    assert saved >= 3 and trainer.read_run(work / "new")["steps_done"] == saved  # where it stopped, not an epoch's end
    assert not list((work / "new").glob("**/.*.tmp"))
    code, _, err = run([*args[:7], "--epochs", "3", *args[9:], "--resume"], capsys)
    assert code == 0, err


def scores(values):
    """A validation that logs ``values`` in turn as val/miou (a resumed run may score a repeated epoch otherwise)."""
    values = iter(values)

    def on_validation_epoch_end(self):
        self.val_metrics.reset()
        self.log("val/miou", next(values))
    return on_validation_epoch_end


def interrupt_once(hook):
    """``hook`` (a callback or module hook), raising Ctrl-C the first time it is called instead."""
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return hook(*args, **kwargs)
    return interrupted


@pytest.mark.parametrize("where, values", [
    # in the module's hook, after validation, before either checkpoint of epoch 0 (Lightning's order)
    ("module", [1.0, 1.0, 0.5, 0.25]),
    # between the best checkpoint's save and last.ckpt's; a repeated epoch 0 scores lower than the first try
    ("last.ckpt", [1.0, 0.1, 0.5, 0.25]),
])
def test_the_best_checkpoint_and_its_score_survive_ctrl_c_at_an_epochs_end(work, capsys, monkeypatch, where, values):
    monkeypatch.setattr(SegmentationTask, "on_validation_epoch_end", scores(values))
    owner = SegmentationTask if where == "module" else trainer.LastCheckpoint
    monkeypatch.setattr(owner, "on_train_epoch_end", interrupt_once(owner.on_train_epoch_end))
    run_dir = work / "new"
    args = ["train", "seg", work / "archive", "--out", run_dir, "--size", "tiny", "--epochs", "3", "--batch-size",
            "1", "--crop", "64", "--checkpoint-every", "2", "--accelerator", "cpu", "--no-progress"]
    code, _, err = run(args, capsys)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert code == 130 and err.count("\n") == 1, err
    assert err == (f"rsgee: interrupted by SIGINT; resume from step 2 of 12 ({last}) with the same command and "
                   "--resume\n")
    code, _, err = run([*args, "--resume"], capsys)
    assert code == 0, err
    assert trainer.read_run(run_dir)["best_checkpoint"] == "epoch0000.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)["callbacks"]
    best = next(v for k, v in state.items() if "ModelCheckpoint" in k)
    assert best["best_model_score"].item() == 1.0 and Path(best["best_model_path"]).name == "epoch0000.ckpt"
    assert sorted(p.name for p in last.parent.iterdir()) == ["epoch0000.ckpt", "last.ckpt"]


def test_ctrl_c_is_one_line_with_status_130(work, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("rsgee.preprocess.check.check_archive", interrupted)
    code, _, err = run(["check", work / "archive", "--no-progress"], capsys)
    assert code == 130 and err.strip() == "rsgee: interrupted by SIGINT; re-run the same command to resume"


def test_a_rerun_removes_what_a_killed_export_was_writing(work, capsys):
    folder = work / "exports" / "valley"
    (folder / "manifest.json").unlink()  # killed before it finished
    (folder / ".s1.tif.k1ll3d.tmp").write_bytes(b"half a GeoTIFF")
    code, _, err = run(["export", "--aoi", AOI, "--source", "synthetic", "--cloud-cover", "0.02", "--workers", "1",
                        "--out", work / "exports", "--no-progress"], capsys)
    assert code == 0, err
    assert not list(folder.glob(".*.tmp")) and (folder / "manifest.json").exists()


# -- full disk and unwritable outputs ---------------------------------------------------------------------------

def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_stops_export_in_one_line_and_leaves_no_temporary(work, capsys, monkeypatch):
    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", no_space)
    export = ["export", "--aoi", AOI, "--source", "synthetic", "--cloud-cover", "0.02", "--workers", "1", "--out",
              work / "new", "--no-progress"]
    refused(export, capsys, f"cannot write {work / 'new' / 'valley'}: no space left on device; free space there, "
            "then re-run the same command to resume")
    assert not list((work / "new").glob("**/.*.tmp")) and not (work / "new" / "valley" / "manifest.json").exists()


def test_a_full_disk_stops_tile_without_blaming_the_export(work, capsys, monkeypatch):
    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", no_space)
    tile = ["tile", work / "exports", "--out", work / "new", "--split-block", "1", "--max-s2-nodata", "0.5",
            "--no-progress"]
    said = refused(tile, capsys, f"cannot write {work / 'new'}", "no space left on device", "re-run the same command")
    assert "re-export" not in said
    assert not list((work / "new").glob("**/.*.tmp"))
    monkeypatch.undo()
    assert run(tile, capsys)[0] == 0  # the advice
    assert run(["check", work / "new", "--no-progress"], capsys)[0] == 0


def test_a_full_disk_stops_training_in_one_line_and_resume_leaves_no_temporary(work, capsys, monkeypatch):
    save = L.Trainer.save_checkpoint

    def full_in_epoch_1(self, filepath, *args, **kwargs):
        if self.current_epoch == 1:
            Path(filepath).write_bytes(b"the first 5 MB")
            no_space()
        return save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", full_in_epoch_1)
    run_dir = work / "new"
    args = ["train", "seg", work / "archive", "--out", run_dir, "--size", "tiny", "--epochs", "2", "--batch-size", "2",
            "--accelerator", "cpu", "--no-progress"]
    code, _, err = run(args, capsys)
    lines = [line for line in err.splitlines() if not line.startswith("rsgee: warning: ")]
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"rsgee: error: cannot write {run_dir / 'checkpoints'}"), lines
    assert lines[0].endswith(": no space left on device; free space there, then resume with the same command and "
                             "--resume"), lines
    assert not list(run_dir.glob("**/.*.tmp"))
    (run_dir / "checkpoints" / ".epoch0001.ckpt.tmp").write_bytes(b"left by a kill")
    monkeypatch.undo()
    code, _, err = run([*args, "--resume"], capsys)
    assert code == 0, err
    assert not list(run_dir.glob("**/.*.tmp"))


OUT_COMMANDS = {
    "export": lambda w, out: ["export", "--aoi", AOI, "--source", "synthetic", "--workers", "1", "--out", out,
                              "--no-progress"],
    "tile": lambda w, out: ["tile", w / "exports", "--out", out, "--no-progress"],
    "train": lambda w, out: ["train", "seg", w / "archive", "--out", out, *TRAIN],
    "predict": lambda w, out: [*predict_seg(w)[:-3], "--out", out / "map.tif", "--no-progress"],
}


@pytest.mark.parametrize("command", OUT_COMMANDS)
def test_an_out_under_a_file_is_named(work, capsys, command):
    (work / "afile").write_text("not a folder")
    refused(OUT_COMMANDS[command](work, work / "afile" / "sub"), capsys,
            f"{work / 'afile'} is a file, not a folder; choose another --out")


@pytest.mark.parametrize("command", OUT_COMMANDS)
def test_an_out_on_a_read_only_file_system_is_named(work, capsys, monkeypatch, command):
    mkdir, mount = os.mkdir, work / "ro"

    def read_only(path, *args, **kwargs):  # a read-only mount at work/ro
        if Path(path).is_relative_to(mount):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    refused(OUT_COMMANDS[command](work, mount / "out"), capsys, "not writable (read-only file system); choose another "
            "--out or make it writable")
    assert not mount.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder whatever its mode")
def test_an_out_without_write_permission_is_named(work, capsys):
    (work / "locked").mkdir(mode=0o555)
    try:
        refused(OUT_COMMANDS["export"](work, work / "locked"), capsys, f"cannot write {work / 'locked' / 'valley'}: "
                "not writable (permission denied)")
    finally:
        (work / "locked").chmod(0o755)
