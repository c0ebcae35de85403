"""The command line's options: their types, where their defaults come from, and config files.

Every option's default is read, when its command is declared, from the Python function or config that
takes the value — :mod:`rsgee.api` signatures and the :mod:`rsgee.configs` dataclasses — matched by the
option's destination name (``--workers`` of ``rsgee train`` is ``FusionConfig.num_workers``); an option
that finds none is an error at import, so the command line cannot drift from Python again. Options shared
by several commands are declared once here, as rasterio's ``rio/options.py`` does.

Every :class:`Command` also reads ``--config FILE.yaml`` (a mapping of option names to values, as
``--print-config`` writes them; a run's ``run.json`` repeats that run's training) into click's
``default_map``: options given on the command line override the file, and an unknown key or a value of
the wrong type is one line naming the file and the key. The types here accept both the command line's
text (``lulc,s1``, ``0.5,0.999``, ``1:1``) and the YAML/JSON values a file holds (lists, numbers, dates).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import yaml

from rsgee.errors import RsgeeError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
#: Options of the command line that no Python function takes (what a config file cannot set).
COMMAND_ONLY = ("config", "print_config", "as_json")


# -- types -------------------------------------------------------------------------------------

class Names(click.ParamType):
    """Comma-separated names (or a list of them in a config file) → a tuple of names."""

    name = "names"

    def convert(self, value, param, ctx):
        items = value.split(",") if isinstance(value, str) else value
        try:
            names = tuple(str(v).strip() for v in items if str(v).strip())
        except TypeError:
            self.fail(f"{value!r} is not names separated by commas", param, ctx)
        if not names:
            self.fail("give at least one name, comma-separated", param, ctx)
        return names


class NameSets(click.ParamType):
    """Sets of names, ';' between sets and ',' within one (or a list of lists) → a tuple of tuples."""

    name = "sets"

    def convert(self, value, param, ctx):
        sets = [s.split(",") for s in value.split(";")] if isinstance(value, str) else value
        try:
            chosen = tuple(tuple(n.strip() for n in names if n.strip()) for names in sets)
        except (TypeError, AttributeError):
            self.fail(f"{value!r} is not sets of names like lulc;lulc,s1", param, ctx)
        return tuple(s for s in chosen if s)


class Numbers(click.ParamType):
    """``count`` numbers joined by ``sep`` (or a list of them) → a tuple; ``whole`` for integers; ``count`` None:
    any number of them, none included."""

    def __init__(self, count: int | None, sep: str, whole: bool, example: str):
        self.count, self.sep, self.whole, self.example = count, sep, whole, example
        self.name = example

    def convert(self, value, param, ctx):
        parts = [p for p in value.split(self.sep) if p.strip()] if isinstance(value, str) else value
        try:
            numbers = tuple((int if self.whole else float)(p) for p in parts)
            if self.whole and not isinstance(value, str) and any(n != p for n, p in zip(numbers, parts)):
                raise ValueError  # 1.5 in a config file is not a whole number
        except (TypeError, ValueError):
            numbers = None
        if numbers is None or (self.count is not None and len(numbers) != self.count):
            self.fail(f"{value!r} is not {'whole ' if self.whole else ''}numbers like {self.example}", param, ctx)
        return numbers


class Date(click.ParamType):
    """YYYY-MM-DD (or a date, as YAML reads one) → :class:`datetime.date`."""

    name = "date"

    def convert(self, value, param, ctx):
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            self.fail(f"'{value}' is not a date; use YYYY-MM-DD", param, ctx)


class Count(click.ParamType):
    """A whole number or ``auto`` (devices, nodes)."""

    name = "count"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(value)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not a whole number or auto", param, ctx)


NAMES, NAME_SETS, DATE, COUNT = Names(), NameSets(), Date(), Count()
BETAS = Numbers(2, ",", False, "0.5,0.999")
MIX = Numbers(2, ":", True, "1:1")
RATIOS = Numbers(3, ":", False, "7:2:1")
WHOLE_NUMBERS = Numbers(None, ",", True, "4,8")


# -- defaults ----------------------------------------------------------------------------------

def default_of(name: str, homes: Sequence[Callable | type]) -> Any:
    """The default of ``name`` in the first of ``homes`` (a function's keyword or a dataclass field) that has
    one, else :data:`inspect.Parameter.empty`."""
    for home in homes:
        if dataclasses.is_dataclass(home):
            fields = {f.name: f for f in dataclasses.fields(home)}
            if name in fields:
                f = fields[name]
                if f.default is not dataclasses.MISSING:
                    return f.default
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
        else:
            parameter = inspect.signature(home).parameters.get(name)
            if parameter is not None and parameter.default is not inspect.Parameter.empty:
                return parameter.default
    return inspect.Parameter.empty


def _as_text(value: Any, kind: click.ParamType) -> Any:
    """A tuple or date default as the command line writes it (what --help shows; the type reads it back)."""
    if isinstance(value, (tuple, list)) and all(isinstance(v, (tuple, list)) for v in value):
        return ";".join(",".join(map(str, v)) for v in value)
    if isinstance(value, (tuple, list)):
        return getattr(kind, "sep", ",").join(format(v, "g") if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


class Command(click.Command):
    """A command whose options take their defaults from ``homes`` and that reads ``--config`` files.

    Args:
        homes: the API function(s) and config dataclass(es) the command calls, searched in order.
        run_kind: ``fusion`` or ``segmentation`` for ``rsgee train``: a run.json of that kind may be
            passed to ``--config``.
    """

    def __init__(self, *args, homes: Sequence[Callable | type] = (), run_kind: str | None = None, **kwargs):
        kwargs.setdefault("context_settings", CONTEXT)
        super().__init__(*args, **kwargs)
        self.homes, self.run_kind = tuple(homes), run_kind
        for param in self.params:
            if param.required or param.name in COMMAND_ONLY or param.expose_value is False:
                continue
            default = default_of(param.name, self.homes)
            if default is inspect.Parameter.empty:
                raise TypeError(f"rsgee {self.name}: option '{param.name}' has no default in "
                                f"{', '.join(getattr(h, '__qualname__', str(h)) for h in self.homes)}")
            param.default = default if param.multiple or param.nargs != 1 else _as_text(default, param.type)
            if isinstance(param, click.Option) and (param.secondary_opts or not param.is_flag and default is not None):
                param.show_default = True
        self.params += [
            click.Option(["--config", "config"], type=click.Path(dir_okay=False, exists=True, path_type=Path),
                         metavar="FILE.yaml", is_eager=True, expose_value=False, callback=_read_config,
                         help="Take options from a YAML (or JSON) file, as --print-config writes it"
                              + (" or a run's run.json (the run's training settings)" if run_kind else "")
                              + "; options given here override it."),
            click.Option(["--print-config", "print_config"], is_flag=True,
                         help="Print the effective configuration as YAML (for --config) and exit."),
        ]

    def invoke(self, ctx: click.Context):
        if ctx.params.pop("print_config", False):
            ordered = {p.name: ctx.params[p.name] for p in self.params  # in --help's order
                       if p.name in ctx.params and p.name not in COMMAND_ONLY}
            click.echo(yaml.safe_dump(_plain(ordered), sort_keys=False, allow_unicode=True), nl=False)
            return None
        return super().invoke(ctx)


def _plain(value: Any) -> Any:
    """Values as YAML writes them and the option types read them back."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


# -- config files ------------------------------------------------------------------------------

def _read_config(ctx: click.Context, param: click.Parameter, path: Path | None) -> None:
    if path is None:
        return
    command: Command = ctx.command
    values = read_config(path, command)
    checked = {}
    for key, value in values.items():
        target = _param_for(command, key)
        if target is None:
            raise RsgeeError(f"{path}: unknown key '{key}' for rsgee {ctx.command_path.removeprefix('rsgee ')}; "
                             "its keys are what --print-config prints")
        if target.multiple or target.nargs == -1:
            value = [f"{k}={v}" for k, v in value.items()] if isinstance(value, dict) else \
                value if isinstance(value, list) else [value]
        try:
            checked[target.name] = target.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise RsgeeError(f"{path}: key '{key}': {exc.message}") from None
    ctx.default_map = {**(ctx.default_map or {}), **checked}


def read_config(path: Path, command: Command) -> dict:
    """The mapping a config file holds (a run.json: its archive and training config), or a one-line error."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = getattr(exc, "problem", None) or getattr(exc, "strerror", None) or exc
        raise RsgeeError(f"{path}: not a readable YAML or JSON file ({reason}); write it as --print-config "
                         "does") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RsgeeError(f"{path}: expected a mapping of option names to values, found {type(data).__name__}")
    if {"kind", "config"} <= data.keys():
        return _run_config(path, data, command)
    return data


#: run.json config entries that no option sets, dropped when they hold the default.
_INTERNAL = {"start_at_band_means": True, "overrides": {}}


def _run_config(path: Path, info: dict, command: Command) -> dict:
    if info["kind"] != command.run_kind:
        raise RsgeeError(f"{path} is a {info['kind']} run's run.json: pass it to rsgee train "
                         f"{'seg' if info['kind'] == 'segmentation' else 'fusion'} --config")
    config = dict(info["config"]) if isinstance(info["config"], dict) else {}
    for key, default in _INTERNAL.items():
        if key in config and config[key] == default:
            del config[key]
    return {"archive": info.get("archive"), **config}


def _param_for(command: click.Command, key: str) -> click.Parameter | None:
    """The parameter a config key names: its destination (``num_workers``) or an option name (``workers``)."""
    key = str(key).replace("-", "_")
    for param in command.params:
        if param.name in COMMAND_ONLY:
            continue
        names = {param.name} | {o.lstrip("-").replace("-", "_") for o in getattr(param, "opts", [])
                                if o.startswith("--")}
        if key in names:
            return param
    return None


# -- options shared by several commands --------------------------------------------------------

catalog_option = click.option(
    "--catalog", type=click.Path(dir_okay=False, path_type=Path),
    help="Source catalog YAML.  [default: the catalog.yaml shipped with rsgee]")
progress_option = click.option("--progress/--no-progress", help="Show progress bars on stderr.")
json_option = click.option("--json", "as_json", is_flag=True, default=False,
                           help="Print the result as JSON on stdout (for scripts) instead of text.")


def with_options(options: Sequence[Callable]) -> Callable:
    """Apply a list of click options in the order they are listed."""
    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function
    return decorate

