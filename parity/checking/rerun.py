"""``parity rerun REPORT.json``: the command line a report records, without the flags that
wrote files, and what a report records for it (``rerun_info``)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from parity.core.errors import InputError, ParityError

# the flags of a recorded command that write files: a rerun drops them (nothing is overwritten);
# give new ones to the rerun itself
REPORT_FLAGS = ("--json", "--html", "--junit", "--model-explorer")
FILE_FLAGS = ("--save-inputs", "--save-outputs", "--write-fixed")
WRITING_FLAGS = {*REPORT_FLAGS, *FILE_FLAGS, "--repro", "--write-quant-config", "-o", "--output"}
_MAX_REPORT_BYTES = 256 << 20


@dataclass(frozen=True)
class Recorded:
    args: list  # the command line to run, after "parity", without the flags that wrote files
    cwd: str | None  # where it ran
    versions: dict = field(default_factory=dict)  # what ran it


def read_recorded(report_path: str) -> Recorded:
    """The check or compare command ``report_path`` records; InputError for anything else."""
    from parity.core.paths import check_input

    check_input(report_path, "the report")
    if os.path.getsize(report_path) > _MAX_REPORT_BYTES:
        raise InputError(f"{report_path!r} is too large to be a parity report")
    try:
        data = json.loads(Path(report_path).read_text(encoding="utf-8"))
        recorded = data["rerun"]
        if not isinstance(recorded["command"], list) or not isinstance(recorded.get("cwd"), (str, type(None))):
            raise TypeError("a command line is a list of words, its directory a string")
        command = [str(word) for word in recorded["command"]]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InputError(f"{report_path!r} is not a parity JSON report with a recorded command "
                         f"(reports from parity check or convert on the command line have one)") from None
    if any("\0" in word for word in [*command, recorded.get("cwd") or ""]):
        raise InputError(f"{report_path!r} records a command or directory holding a NUL byte, which no "
                         f"command line can: the report is damaged")
    if len(command) < 2 or command[1] not in ("check", "compare"):
        raise InputError(f"{report_path!r} records {' '.join(command[:2])!r}: only check and compare runs can be rerun"
                         + (" (a convert would convert again)" if command[1:2] == ["convert"] else ""))
    return Recorded(_without_writing_flags(command[1:]), recorded.get("cwd"), recorded.get("versions") or {})


def _values_of(flag: str, words) -> list[str]:
    """The values ``flag`` takes in the command line ``words`` (``--flag V`` or ``--flag=V``)."""
    values = []
    for i, word in enumerate(words):
        if word == flag and i + 1 < len(words):
            values.append(words[i + 1])
        elif word.startswith(flag + "="):
            values.append(word.split("=", 1)[1])
    return values


def refuse_recorded_commands(recorded: Recorded, extra, report_path: str) -> None:
    """What a report records that would run code or a command is refused unless the user names
    it: as a sweep's manifest, a report is a file that may come from anyone. A --mnn-target that
    runs a command (exec:..., ssh ...?python= with a command), --torch and --data-loader code,
    unless the rerun's own command line gives that flag (the last one given wins); a model
    argument naming Python code (package.module:factory), always."""
    from parity.run.targets import runs_a_command

    extra = list(extra)
    for flag, spec in _recorded_code(recorded.args):
        if flag and _values_of(flag, extra):
            continue
        how = (f"add {flag} {shlex.quote(spec)} after the report to rerun it as recorded" if flag else
               f"run the check itself: parity {shlex.join(recorded.args)}")
        raise InputError(f"{report_path!r} records {flag or 'the model'} {spec!r}, which runs Python code; "
                         f"parity runs code only when you name it: {how}")
    if "--trust-remote-code" in recorded.args and "--trust-remote-code" not in extra:
        raise InputError(f"{report_path!r} records --trust-remote-code, which runs the model folder's own "
                         f"Python; parity runs code only when you name it: add --trust-remote-code after the "
                         f"report to rerun it as recorded")
    if _values_of("--mnn-target", extra):
        return
    for target in _values_of("--mnn-target", recorded.args):
        try:
            commands = runs_a_command(target)
        except ParityError:  # a target the check itself will refuse, in its own words
            continue
        if commands:
            raise InputError(f"{report_path!r} records --mnn-target {target!r}, which runs a command; parity runs "
                             f"one only when you give it: add --mnn-target {shlex.quote(target)} after the "
                             f"report to rerun it as recorded")


def _recorded_code(args: list) -> list[tuple[str | None, str]]:
    """(flag, spec) of what the command line ``args`` (the command's name first) would run as
    Python code: its --torch and --data-loader, and (None, spec) for a model argument that names
    code (package.module:factory or file.py:factory: a ':' and no model file's suffix)."""
    from parity.backends.registry import suffixes
    from parity.option_groups import OPTIONS

    takes_value = {f for o in OPTIONS.values() if o.type != "flag" for f in (o.flags or (o.flag,))}
    found, skip = [], False
    for i, word in enumerate(args[1:], start=1):
        if skip:
            skip = False
            continue
        flag, eq, value = word.partition("=")
        if flag in ("--torch", "--data-loader"):
            found.append((flag, value if eq else (args[i + 1] if i + 1 < len(args) else "")))
            skip = not eq
        elif word.startswith("-"):
            skip = flag in takes_value and not eq
        elif ":" in word and Path(word).suffix.lower() not in suffixes() and not Path(word).exists():
            found.append((None, word))
    return found


# flags given once per name (NAME=..., NAME:...): one the rerun gives again replaces the recorded one
_PER_NAME = {"--tol": "=", "--shape": "=", "--val-range": ":"}


def _named(flag: str, value: str):
    name, sep, _ = value.rpartition(_PER_NAME[flag])
    return name if sep else None


def overridden(args: list, extra) -> list:
    """The recorded ``args`` without each --tol, --shape and --val-range whose name the rerun's
    own flags (``extra``) give again: the new one replaces it (giving a name twice is refused)."""
    extra = list(extra)
    again = {(flag, _named(flag, value)) for flag in _PER_NAME for value in _values_of(flag, extra)}
    return _without(args, lambda flag, value: flag in _PER_NAME and (flag, _named(flag, value)) in again)


def _without_writing_flags(words) -> list:
    return _without(words, lambda flag, value: flag in WRITING_FLAGS)


def _without(words, dropped) -> list:
    """``words`` without each flag, and its value (``--flag V`` or ``--flag=V``), for which
    ``dropped(flag, value)`` is true."""
    kept, skip = [], False
    for i, word in enumerate(words):
        if skip:
            skip = False
            continue
        flag, eq, value = word.partition("=")
        if dropped(flag, value if eq else (words[i + 1] if i + 1 < len(words) else "")):
            skip = not eq
            continue
        kept.append(word)
    return kept


def outputs_given(extra) -> tuple[dict, dict]:
    """The reports and files the rerun's own flags (``extra``) write: ({"--json": path}, {...})."""
    given = {flag: values[-1] for flag in REPORT_FLAGS + FILE_FLAGS if (values := _values_of(flag, list(extra)))}
    return ({k: v for k, v in given.items() if k in REPORT_FLAGS},
            {k: v for k, v in given.items() if k in FILE_FLAGS})


def rerun_info(report) -> dict:
    """What a later ``parity rerun REPORT.json`` needs: this command line (as parity received
    it), where it ran, and the versions that ran it."""
    import platform

    versions = {"parity": report.parity_version, "python": platform.python_version(),
                "platform": platform.platform()}
    for backend in report.backends:
        versions.setdefault(backend.name, backend.version)
    for module in ("numpy",):
        mod = sys.modules.get(module)
        if mod is not None:
            versions[module] = getattr(mod, "__version__", "?")
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    return {"command": ["parity", *sys.argv[1:]], "cwd": cwd, "versions": versions}
