"""``parity sweep`` (every model pair of a directory or manifest) and ``parity rerun`` (the
check a report records, again)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import click

from parity.commands.checks import write_reports
from parity.commands.params import CONTEXT, FloatRange, traceback_option
from parity.commands.params import READ_BY_THE_COMMAND, check_report_paths, declared
from parity.core.escape import terminal


@click.command(context_settings=CONTEXT)
@click.argument("target", type=click.Path(dir_okay=True, path_type=str))
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Pairs checked at once, each in its own process.")
@click.option("--shard", metavar="K/N", help="Check only shard K of N (pairs K, K+N, ... of the sorted list).")
@click.option("--pair-timeout", type=FloatRange(min=0, min_open=True), default=3600.0,
              show_default=True, metavar="SECONDS",
              help="Kill a pair's check, and every process it started, after SECONDS; the pair "
                   "then counts as a backend failure (exit 4).")
@click.option("--json", "json_path", type=click.Path(path_type=str), metavar="PATH",
              help="Write the results (schema parity.sweep/1) to PATH; '-' for stdout.")
@click.option("--junit", "junit_path", type=click.Path(path_type=str), metavar="PATH",
              help="Write JUnit XML (one testcase per model pair) to PATH.")
@click.option("--html", "html_path", type=click.Path(path_type=str), metavar="PATH",
              help="Write a one-page HTML summary (one row per model pair) to PATH.")
@click.option("--mnn-precision", default=None, metavar="MODE[,MODE]",
              help="MNN precision mode(s) for every pair (a manifest's mnn_precision wins).")
@declared("sweep", "mnn_target")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@traceback_option
def sweep(target, jobs, shard, pair_timeout, json_path, junit_path, html_path, mnn_precision, mnn_target, quiet):
    """Check every model pair in TARGET: a directory (*.onnx with matching *.mnn) or a TOML/JSON
    manifest with per-model options. Exit code: the worst of the pairs.

    \b
        parity sweep models/ -j 2
        parity sweep zoo.toml --shard 1/4 --json shard1.json
    """
    from parity.checking import sweep as sweep_mod
    from parity.checking.preflight import refuse_bad_mnn
    from parity.options import MnnOptions
    from parity.render.progress import Progress

    refuse_bad_mnn(MnnOptions(precision=mnn_precision or "normal", target=mnn_target))  # before any pair runs
    chosen = sweep_mod.parse_shard(shard)
    discovered = sweep_mod.with_defaults(sweep_mod.discover(target), mnn_precision=mnn_precision,
                                         mnn_target=None if mnn_target == "local" else mnn_target)
    named = [target, *(m for item in discovered for m in item.models),
             *(item.options["inputs"] for item in discovered if item.options.get("inputs"))]
    # never onto the manifest or any model it names; one stdout at most
    check_report_paths({"--json": json_path, "--junit": junit_path, "--html": html_path}, inputs=named)
    items = sweep_mod.select_shard(discovered, chosen)
    started = time.monotonic()
    runners = sweep_mod.Runners()
    try:
        if hasattr(os, "fork"):  # before the progress display's thread: see Runners.fork
            runners.fork(min(jobs, len(items)))
        with Progress(enabled=False if quiet else None, total=len(items), label="sweep") as progress:
            results = sweep_mod.run(items, jobs=jobs, progress=progress, pair_timeout=pair_timeout, runners=runners)
    finally:
        runners.stop()
    report = sweep_mod.SweepReport(target, shard, results, elapsed=time.monotonic() - started)
    _emit_sweep(report, json_path, junit_path, html_path)


def _emit_sweep(report, json_path, junit_path, html_path) -> None:
    from parity.render.text import render_sweep

    render_sweep(report, sys.stderr if "-" in (json_path, junit_path, html_path) else sys.stdout)
    written = []
    if junit_path:
        from parity.render import junit

        written.append(("--junit", junit_path, junit.render_sweep(report)))
    if html_path:
        from parity.render import html

        written.append(("--html", html_path, html.render_sweep(report).encode()))
    if json_path:
        written.append(("--json", json_path, json.dumps(report.to_dict(), indent=2).encode()))
    write_reports(written)
    raise SystemExit(report.exit_code)


@click.command(context_settings=dict(CONTEXT, ignore_unknown_options=True))
@click.argument("report_path", metavar="REPORT.json", type=click.Path(dir_okay=False, path_type=str))
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
@traceback_option
def rerun(report_path, extra):
    """Run the check a JSON report records again: its command line, in its directory, without
    the flags that wrote files (give new ones after REPORT.json, e.g. --json again.json). The
    inputs are generated from the recorded seed, or read from the recorded --inputs file.

    \b
        parity rerun report.json
        parity rerun report.json --json again.json --html again.html
    """
    from parity.checking.rerun import read_recorded, refuse_recorded_commands

    recorded = read_recorded(report_path)
    refuse_recorded_commands(recorded, extra, report_path)
    report_file = os.path.abspath(report_path)
    if recorded.cwd and os.path.isdir(recorded.cwd):
        os.chdir(recorded.cwd)  # where the recorded command ran: its relative paths, and the new ones
    elif recorded.cwd:  # another machine's (a CI job's report): the relative paths are taken from here
        recorded = dataclasses.replace(recorded, cwd=f"{os.getcwd()}, as {recorded.cwd} does not exist here")
    READ_BY_THE_COMMAND.append(report_file)  # --json REPORT.json must not replace it
    try:
        _rerun(recorded, extra)
    finally:
        READ_BY_THE_COMMAND.remove(report_file)


def _rerun(recorded, extra):
    from parity.checking.rerun import outputs_given, overridden

    reports, files = outputs_given(extra)  # refused before saying anything: the error is then the one line
    if reports or files:
        check_report_paths(reports, others=files)
    cwd = recorded.cwd
    args = [*overridden(recorded.args, extra), *extra]  # later flags win; a per-name flag given again replaces
    click.echo(terminal(f"rerunning: parity {' '.join(args)}" + (f" (in {cwd})" if cwd else "")), err=True)
    if recorded.versions:
        click.echo(terminal("recorded with " + ", ".join(f"{k} {v}" for k, v in recorded.versions.items()
                                                          if k != "platform")), err=True)
    parity = click.get_current_context().find_root().command  # the group this command runs in
    code = parity.main(args=args, prog_name="parity", standalone_mode=False)
    raise SystemExit(code if isinstance(code, int) else 0)
