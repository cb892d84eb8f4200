"""``parity target``: set up, list and check the places MNN runs (--mnn-target)."""

from __future__ import annotations

import json

import click

from parity.commands.params import CONTEXT, FloatRange, traceback_option
from parity.commands.params import check_report_paths
from parity.core.escape import terminal


@click.group(context_settings=CONTEXT)
def target():
    """Set up, list and check the places MNN runs (--mnn-target).

    \b
        parity target setup arm64      build the emulated arm64 Linux (once; root, about a minute)
        parity target list             the targets set up here
        parity target check arm64      what MNN has there: platform, versions, CPU features, backends
    """


@target.command("setup", context_settings=CONTEXT)
@click.argument("name", type=click.Choice(["arm64"]))
@click.option("--mnn-version", default=None, metavar="X.Y.Z",
              help="MNN release to install in the target [default: the one installed here].")
@click.option("--mirror", default=None, metavar="URL", help="Debian mirror [default: the host's, else deb.debian.org].")
@traceback_option
def target_setup(name, mnn_version, mirror):
    """Build the emulated arm64 Linux (Debian with python3, numpy and MNN's aarch64 wheel) in
    the cache ($PARITY_TARGETS_DIR, else ~/.cache/parity/targets). Idempotent: a ready
    target is kept. Needs root, qemu-user-static and debootstrap."""
    from parity.run.target_setup import setup_arm64

    def say(message):
        click.echo(terminal(message), err=True)

    root = setup_arm64(say, mnn_version=mnn_version, mirror=mirror)
    click.echo(f"arm64 target ready: {terminal(str(root))}")


@target.command("list", context_settings=CONTEXT)
@traceback_option
def target_list():
    """The targets set up on this machine, and the kinds that need no setup."""
    from parity.run.target_setup import installed_targets, targets_home

    found = installed_targets()
    click.echo(f"targets in {terminal(str(targets_home()))}:")
    for entry in found:
        facts = ", ".join(f"{k} {entry[k]}" for k in ("python", "numpy", "mnn") if entry.get(k))
        click.echo(f"  {terminal(str(entry.get('name', '?')))}  {terminal(str(entry.get('root', '')))}  {terminal(facts)}")
    if not found:
        click.echo("  none (parity target setup arm64 builds one)")
    click.echo("always available: local, ssh://[user@]host[:port], exec:COMMAND")


@target.command("check", context_settings=CONTEXT)
@click.argument("name", metavar="TARGET")
@click.option("--timeout", type=FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Seconds the target may take to answer.")
@click.option("--json", "json_path", type=click.Path(path_type=str), metavar="PATH",
              help="Write the facts as JSON to PATH; '-' for stdout.")
@traceback_option
def target_check(name, timeout, json_path):
    """What MNN has on TARGET: platform, Python, numpy and MNN versions, the CPU features MNN
    reports (fp16 means precision low runs float16 arithmetic) and its backends. Exit 4 when
    the target cannot run MNN, saying what is missing."""
    from parity.run.targets import describe_target

    if json_path and json_path != "-":
        check_report_paths({"--json": json_path})
    facts = describe_target(name, timeout=timeout)
    data = json.dumps(facts, indent=2)
    if json_path == "-":
        click.echo(data)
        return
    if json_path:
        from parity.core.paths import write_atomic

        write_atomic(json_path, data.encode() + b"\n", "--json")
    features = ", ".join(f"{k}:{v}" for k, v in facts["cpu_features"].items()) or "none reported"
    lines = [
        f"target       {facts['target']}",
        f"platform     {facts['platform']} ({facts['machine']})",
        f"python       {facts['python']}",
        f"numpy        {facts['numpy']}",
        f"MNN          {facts['mnn']}",
        f"CPU features {features}",
        f"float16      {'yes: precision low runs float16 arithmetic' if facts['float16'] else 'no: precision low runs float32 here'}",
        f"backends     {', '.join(facts['backends'])} (others fall back to CPU)",
    ]
    for line in lines:
        click.echo(terminal(line))
