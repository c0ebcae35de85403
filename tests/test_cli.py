"""The rsgee command line: help, version, one-line errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import rasterio
from click.testing import CliRunner

from rsgee import __version__
from rsgee.cli import cli, main


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"rsgee, version {__version__}"


def walk(group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if hasattr(command, "commands"):
            yield from walk(command, prefix + (name,))


@pytest.mark.parametrize("path", [p for p, _ in walk(cli)], ids=lambda p: " ".join(p))
def test_every_option_is_documented(path):
    command = cli
    for name in path:
        command = command.commands[name]
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    for param in command.params:
        if param.param_type_name == "option":
            assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"
            assert param.opts[0] in result.output


def test_export_help_states_units_and_defaults():
    out = " ".join(CliRunner().invoke(cli, ["export", "--help"]).output.split())
    for fragment in ("minlon,minlat,maxlon,maxlat", "[default: exports]", "km²", "YYYY-MM-DD", "[default: 0.05; 0.0<=x<=1.0]",
                     "[default: earthengine]", "40 is the per-project limit", "EE_PROJECT"):
        assert fragment in out


def test_bad_aoi_is_one_line_on_stderr_with_nonzero_exit(capsys, tmp_path):
    code, out, err = run(["export", "--aoi", "POLYGON((0 0, 1 1, 1 0, 0 1, 0 0))", "--out", str(tmp_path)], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("rsgee: error: ") and "Self-intersection" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_catalog_is_one_line(capsys, tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("sources:\n  s2: {dtype: uint17}\n")
    code, _, err = run(["catalog", "--catalog", str(bad)], capsys)
    assert code == 1 and err.count("\n") == 1 and "sources.s2" in err and str(bad) in err


def test_usage_errors_exit_2(capsys):
    code, _, err = run(["export", "--aoi", "1,2,3,4", "--start", "2023-13-01"], capsys)
    assert code == 2 and "is not a date; use YYYY-MM-DD" in err
    code, _, err = run(["export", "--aoi", "1,2,3,4", "--start", "2023-09-01", "--end", "2023-06-01"], capsys)
    assert code == 1 and "must be before --end" in err  # checked by rsgee.api, for Python users too
    code, _, err = run(["export"], capsys)
    assert code == 2 and "Missing option '--aoi'" in err


def test_debug_shows_the_traceback():
    with pytest.raises(Exception, match="Self-intersection"):
        main(["--debug", "export", "--aoi", "POLYGON((0 0, 1 1, 1 0, 0 1, 0 0))"])


def test_catalog_command_lists_sources(capsys):
    code, out, _ = run(["catalog"], capsys)
    assert code == 0
    assert "s2     COPERNICUS/S2_SR_HARMONIZED  [B2, B3, B4, B8]  uint16" in out
    assert "dem    COPERNICUS/DEM/GLO30  [dem←DEM]" in out


def test_dry_run_prints_the_grid_and_writes_nothing(capsys, tmp_path):
    code, out, _ = run(["export", "--aoi", "valley=10.60,46.60,10.63,46.62", "--out", str(tmp_path), "--dry-run"], capsys)
    assert code == 0 and "valley: 5.1 km², EPSG:32632 2×2 tiles from 32632_243_2016, 512×512 px" in out
    assert not any(tmp_path.iterdir())


def test_export_end_to_end_through_the_console_script(tmp_path):
    """The installed `rsgee` entry point runs an export and a re-run skips it."""
    args = [sys.executable, "-m", "rsgee.cli", "export", "--source", "synthetic", "--aoi", "v=10.60,46.60,10.63,46.62", "--out", str(tmp_path),
            "--no-progress"]
    first = subprocess.run(args, capture_output=True, text=True, check=True)
    assert "v: written (4 tiles)" in first.stdout
    with rasterio.open(tmp_path / "v" / "s2.tif") as src:
        assert src.count == 4 and src.crs.to_epsg() == 32632
    second = subprocess.run(args, capture_output=True, text=True, check=True)
    assert "v: up to date (4 tiles)" in second.stdout


def test_json_output_for_scripts(capsys, tmp_path):
    code, out, _ = run(["export", "--aoi", "valley=10.60,46.60,10.63,46.62", "--out", str(tmp_path / "e"),
                        "--dry-run", "--json"], capsys)
    plan = json.loads(out)
    assert code == 0 and plan["aois"][0]["name"] == "valley" and plan["total"]["tiles"] == 4
    assert plan["total"]["requests"] == plan["aois"][0]["requests"] > 0 and plan["endpoint"].startswith("https:")
    assert plan["aois"][0]["epsg"] == 32632 and not (tmp_path / "e").exists()
    code, out, _ = run(["export", "--aoi", "valley=10.60,46.60,10.63,46.62", "--out", str(tmp_path / "e"),
                        "--source", "synthetic", "--json", "--no-progress"], capsys)
    (result,) = json.loads(out)
    assert code == 0 and result["status"] == "written" and result["ok"] and result["tiles"] == 4
    code, out, _ = run(["tile", str(tmp_path / "e"), "--out", str(tmp_path / "a"), "--split-block", "1",
                        "--no-progress"], capsys)
    code, out, _ = run(["check", str(tmp_path / "a"), "--json", "--no-progress"], capsys)
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["tiles"] == 4 and report["problems"] == []
    (tmp_path / "a" / "stats.json").write_text("{")
    code, out, err = run(["check", str(tmp_path / "a"), "--json", "--no-progress"], capsys)
    assert code == 1 and not json.loads(out)["ok"] and err.count("\n") == 1


def test_quiet_and_verbose_set_the_log_level(capsys, tmp_path):
    import logging

    for args, level in ((["-q"], logging.WARNING), (["-qq"], logging.ERROR), (["-v"], logging.DEBUG), ([], logging.INFO)):
        assert run([*args, "catalog"], capsys)[0] == 0
        assert logging.getLogger("rsgee").level == level


def test_shell_completion_completes_commands_and_options():
    env = dict(os.environ, _RSGEE_COMPLETE="bash_complete", COMP_WORDS="rsgee tr", COMP_CWORD="1")
    done = subprocess.run([sys.executable, "-m", "rsgee"], env=env, capture_output=True, text=True, timeout=60)
    assert "plain,train" in done.stdout.splitlines()
    env.update(COMP_WORDS="rsgee train fusion --mo", COMP_CWORD="3")
    done = subprocess.run([sys.executable, "-m", "rsgee"], env=env, capture_output=True, text=True, timeout=60)
    assert "plain,--model" in done.stdout.splitlines()
