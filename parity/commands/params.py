"""What every command shares: click options made from the declarations in parity.option_groups,
the CheckOptions their values build, --traceback, and the checks of output paths made before
any work."""

from __future__ import annotations

import dataclasses
import math

import click

from parity.option_groups import GROUPS, OPTIONS, BadOptionValue, check_keywords

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def traceback_option(f):
    def remember(ctx, _param, value):
        if value:
            ctx.meta["parity.traceback"] = True
        return value

    return click.option(
        "--traceback", is_flag=True, expose_value=False, callback=remember, is_eager=True,
        help="Show the full Python traceback when something fails.",
    )(f)


class FloatRange(click.FloatRange):
    """click's FloatRange, refusing nan: every comparison with it is false, so a range lets it
    through (``--atol nan`` was an internal error, ``--timeout nan`` a timeout that never comes)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


# the declared types, as click takes them
_TYPES = {
    "text": None,
    "flag": None,
    "int": int,
    "path": click.Path(path_type=str),
    "file": click.Path(dir_okay=False, path_type=str),
    "float>=0": FloatRange(min=0),
    "float>0": FloatRange(min=0, min_open=True),
    "int>=0": click.IntRange(min=0),
    "int>=1": click.IntRange(min=1),
}


def group(*names: str) -> tuple[str, ...]:
    """The options of the named groups (option_groups.GROUPS), in order."""
    return tuple(option.name for name in names for option in GROUPS[name])


def declared(command: str, *names: str):
    """A decorator adding the declared options ``names`` to ``command``, listed in ``--help`` in
    the order given, each with the help ``command`` gives it."""
    def decorate(f):
        for name in reversed(names):
            f = _click_option(OPTIONS[name], command)(f)
        return f

    return decorate


def _click_option(option, command: str):
    settings = {"help": option.help_for.get(command, option.help)}
    if option.type == "flag":
        settings["is_flag"] = True
    elif isinstance(option.type, tuple):
        settings["type"] = click.Choice(list(option.type))
    elif _TYPES[option.type] is not None:
        settings["type"] = _TYPES[option.type]
    for key in ("default", "metavar"):
        if getattr(option, key) is not None:
            settings[key] = getattr(option, key)
    if option.show_default:
        settings["show_default"] = option.show_default
    if option.multiple:
        settings["multiple"] = True
    return click.option(*(option.flags or (option.flag,)), option.name, **settings)


def check_options(values: dict, **keywords):
    """The CheckOptions of a command's declared option values (and ``parity.check`` keywords
    the command sets itself); the reports asked for go to its ``output``."""
    from parity.options import REPORT_FIELDS, CheckOptions

    try:
        made = check_keywords(values)
    except BadOptionValue as exc:  # shown as click shows a value its own types refuse
        raise click.BadParameter(str(exc), param_hint=exc.flag) from None
    options = CheckOptions.from_keywords(**made, **keywords)
    reports = {name: values.get(name) for name in REPORT_FIELDS}
    return dataclasses.replace(options, output=dataclasses.replace(options.output, **reports))


def report_flags(values: dict) -> dict:
    """The report paths among a command's values, by flag: {"--json": path, ...}."""
    return {OPTIONS[name].flag: values.get(name) for name in group("reports")}


def check_report_paths(paths: dict, inputs=(), others: dict | None = None) -> None:
    """Refuse, before any work, an output path that is one of the inputs, a device, FIFO or
    directory, too long, in a missing directory, or named by two flags. Reports may be '-'
    (stdout), one at most; ``others`` (-o, --save-inputs) may not."""
    from parity.core.paths import check_outputs

    inputs = [i for i in inputs if i] + READ_BY_THE_COMMAND
    check_outputs({**(others or {}), **paths}, inputs=inputs, stdout=tuple(paths))


# files a command reads besides its arguments (the report `parity rerun` runs): outputs refuse them too
READ_BY_THE_COMMAND: list[str] = []


def spec_file(spec: str | None) -> str | None:
    """The Python file of a FILE.py:NAME spec (--torch, --data-loader), which no output may replace."""
    if not spec:
        return None
    path, sep, _ = spec.rpartition(":")
    return path if sep and path.endswith(".py") else spec


def progress(quiet: bool):
    from parity.render.progress import Progress

    return Progress(enabled=False if quiet else None)
