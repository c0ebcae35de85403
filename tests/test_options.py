"""The command line's defaults come from rsgee.api and rsgee.configs, and every command reads --config files."""

from __future__ import annotations

import dataclasses
import inspect
import json

import click
import pytest
import yaml

from rsgee import api
from rsgee.cli import cli, main
from rsgee.configs import FusionConfig, SegmentationConfig
from rsgee.options import COMMAND_ONLY, Command, default_of


def commands(group: click.Group = cli, path: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, path + (name,))
        else:
            yield path + (name,), command


#: What each required parameter is given when a command is parsed without anything else.
REQUIRED = {"aois": ["--aoi", "1,2,3,4"], "out": ["--out", "somewhere"]}


def parse(path: tuple[str, ...], command: Command, extra: list[str] = ()) -> dict:
    args = []
    for param in command.params:
        if param.required and isinstance(param, click.Argument):
            args.append(".")  # a folder that exists
        elif param.required:
            args += REQUIRED[param.name]
    ctx = command.make_context(" ".join(("rsgee",) + path), args + list(extra))
    return ctx.params


def test_every_command_is_a_parser_for_one_api_function():
    seen = [path for path, _ in commands()]
    assert len(seen) == 18 and all(isinstance(c, Command) for _, c in commands())
    for path, command in commands():
        function = command.homes[0]
        assert getattr(api, function.__name__) is function, path  # the command calls rsgee.api
        params = {k: v for k, v in parse(path, command).items() if k not in COMMAND_ONLY}
        signature = inspect.signature(function)
        takes_more = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        named = {k for k in params if k in signature.parameters}
        rest = set(params) - named
        if rest:  # the **options of train_* (config fields) and predict_* (rsgee.api.export's keywords)
            assert takes_more, (path, rest)
            others = set().union(*({f.name for f in dataclasses.fields(h)} if isinstance(h, type)
                                   else set(inspect.signature(h).parameters) for h in command.homes[1:]))
            assert rest <= others, (path, rest - others)
        signature.bind_partial(**{k: params[k] for k in named})


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in commands()])
def test_each_option_defaults_to_its_api_or_config_default(path, monkeypatch):
    """Parsed with nothing but the required values, a command hands rsgee.api exactly the API's and the
    configs' defaults (converted by the option's type: "7:2:1" is (7.0, 2.0, 1.0))."""
    for variable in ("EE_PROJECT", "RSGEE_EE_URL"):
        monkeypatch.delenv(variable, raising=False)
    command = dict((" ".join(p), c) for p, c in commands())[path]
    params = parse(tuple(path.split()), command)
    ctx = click.Context(command)
    checked = 0
    for param in command.params:
        if param.required or param.name in COMMAND_ONLY:
            continue
        home_default = default_of(param.name, command.homes)
        assert home_default is not inspect.Parameter.empty, (path, param.name)
        assert params[param.name] == param.type_cast_value(ctx, home_default), (path, param.name)
        checked += 1
    assert checked >= 1


def test_the_defaults_that_disagreed_now_agree():
    """Seg batch size, devices and the Earth Engine window: one value each, wherever it is read."""
    seg = dict((" ".join(p), c) for p, c in commands())["train seg"]
    assert parse(("train", "seg"), seg)["batch_size"] == SegmentationConfig().batch_size == 4
    for path in ("evaluate fusion", "evaluate seg", "generate"):
        command = dict((" ".join(p), c) for p, c in commands())[path]
        assert parse(tuple(path.split()), command)["devices"] == "auto"
        assert default_of("devices", [getattr(api, command.homes[0].__name__)]) == "auto"
    for path in ("export", "predict fusion", "predict seg"):
        command = dict((" ".join(p), c) for p, c in commands())[path]
        assert str(parse(tuple(path.split()), command)["start"]) == "2023-06-01"
    fusion = dict((" ".join(p), c) for p, c in commands())["train fusion"]
    assert parse(("train", "fusion"), fusion)["sources"] == ("lulc", "s1", "terrain") == FusionConfig().sources


def test_print_config_writes_what_config_reads_and_the_command_line_wins(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model: pix2pix\nsources: [lulc, s1]\nsteps: 5\nbetas: [0.5, 0.9]\nworkers: 2\n"
                      "archive: the-archive\nout: the-run\n")
    assert main(["train", "fusion", "--config", str(config), "--steps", "7", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"] == "pix2pix" and printed["sources"] == ["lulc", "s1"] and printed["steps"] == 7
    assert printed["betas"] == [0.5, 0.9] and printed["num_workers"] == 2  # an option's name or its keyword
    assert printed["archive"] == "the-archive" and printed["out"] == "the-run" and printed["batch_size"] == 4
    assert "config" not in printed and "print_config" not in printed
    again = tmp_path / "printed.yaml"
    again.write_text(yaml.safe_dump(printed))
    assert main(["train", "fusion", "--config", str(again), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == printed  # a printed config repeats itself
    export = tmp_path / "export.yaml"
    export.write_text("aoi: ['valley=10.60,46.60,10.63,46.62']\nstart: 2023-05-01\nsplit_aoi_is_not_here: 1\n")
    code = main(["export", "--config", str(export), "--print-config"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert f"{export}: unknown key 'split_aoi_is_not_here' for rsgee export" in err
    export.write_text("aoi: valley=10.60,46.60,10.63,46.62\nstart: 2023-05-01\nwindow: {s1: 2023-05-01/2023-10-01}\n")
    assert main(["export", "--config", str(export), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["aois"] == ["valley=10.60,46.60,10.63,46.62"] and printed["start"] == "2023-05-01"
    assert printed["windows"] == ["s1=2023-05-01/2023-10-01"] and printed["end"] == "2023-09-01"


@pytest.mark.parametrize("text, message", [
    ("steps: many\n", "key 'steps': 'many' is not a valid integer"),
    ("steps: 0\n", "key 'steps': 0 is not in the range x>=1"),
    ("sources: 5\n", "key 'sources': 5 is not names separated by commas"),
    ("betas: [0.5]\n", "key 'betas': [0.5] is not numbers like 0.5,0.999"),
    ("model: cyclegan\n", "key 'model': 'cyclegan' is not one of 'rs-spade', 'pix2pix', 'spade-decoder'"),
    ("- steps\n", "expected a mapping of option names to values, found list"),
    ("steps: [1\n", "not a readable YAML or JSON file"),
])
def test_a_bad_config_file_is_one_line_naming_the_file_and_the_key(tmp_path, capsys, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    code = main(["train", "fusion", "archive", "--out", "run", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and str(config) in err and message in err, err


def test_a_run_json_is_only_for_the_training_of_its_kind(tmp_path, capsys):
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"kind": "segmentation", "archive": "a", "config": {"mix": [1, 1]}}))
    assert main(["train", "seg", "--config", str(run), "--out", "again", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["mix"] == [1, 1] and printed["archive"] == "a" and printed["out"] == "again"
    for command in (["train", "fusion", "--out", "x"], ["tile", "e", "--out", "x"]):
        assert main([*command, "--config", str(run)]) == 1
        assert "is a segmentation run's run.json: pass it to rsgee train seg --config" in capsys.readouterr().err


def test_help_shows_the_defaults_as_the_command_line_writes_them(capsys):
    assert main(["train", "seg", "--help"]) == 0
    out = capsys.readouterr().out
    assert "[default: 1:0]" in out and "[default: 4; x>=1]" in out
    assert main(["experiment", "fusion", "--help"]) == 0
    assert "lulc;lulc,s1;lulc,terrain;lulc,s1,terrain" in capsys.readouterr().out.replace("\n", "").replace(" ", "")
