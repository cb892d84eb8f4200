"""The click shell: parse -> call the library -> render -> exit code. No logic lives here.

The ``parity`` group gathers the commands of parity.commands, whose options are made from the
declarations in parity.option_groups. The one place exceptions become exit codes is
``ParityGroup.invoke``: a ParityError prints ``Error: ...`` and exits with its code; anything
else is an internal error (123) shown as one line unless --traceback (or PARITY_TRACEBACK=1)
asks for the whole story. Light to import (no numpy or frameworks): ``parity --help`` is fast.
"""

from __future__ import annotations

import os

import click

from parity.core.errors import ExitCode, ParityError
from parity.commands import checks, sweeps, targets
from parity.commands.params import CONTEXT, traceback_option
from parity.core.escape import terminal

def _want_traceback(ctx: click.Context) -> bool:
    return bool(ctx.meta.get("parity.traceback")) or os.environ.get("PARITY_TRACEBACK") == "1"


class ParityGroup(click.Group):
    @staticmethod
    def _interrupted(ctx: click.Context, exc: KeyboardInterrupt):
        from parity.run.process import interruption
        from parity.core.paths import published

        cause, code = interruption(exc)
        written = published()
        done = (f"written before it: {', '.join(map(repr, written))}" if written
                else "nothing was written")
        click.echo(f"{cause}; child processes stopped, {terminal(done)}.", err=True)
        ctx.exit(code)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.exceptions.UsageError as exc:
            # one line, like every other error; the help stays one flag away
            command = exc.ctx.command_path if exc.ctx is not None else "parity"
            click.echo(f"Error: {terminal(exc.format_message())} (see '{command} --help')", err=True)
            ctx.exit(int(ExitCode.USAGE))
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except ParityError as exc:
            from parity.run.process import signalled

            interrupted = signalled()
            if interrupted is not None:  # an error caused by the signal: report the signal
                return self._interrupted(ctx, interrupted)
            if _want_traceback(ctx):
                import traceback

                traceback.print_exc()
            click.echo(f"Error: {terminal(exc)}", err=True)
            ctx.exit(int(exc.exit_code))
        except KeyboardInterrupt as exc:  # Ctrl-C, and SIGTERM or SIGHUP (process.Terminated)
            return self._interrupted(ctx, exc)
        except BrokenPipeError:  # stdout's reader went away (`parity check ... | head`)
            from parity.run.process import silence_stdout

            ctx.exit(silence_stdout())
        except Exception as exc:  # the one catch-all: one line, not a traceback
            from parity.run.process import signalled

            if signalled() is not None:  # a consequence of the signal being handled
                return self._interrupted(ctx, signalled())
            if _want_traceback(ctx):
                import traceback

                traceback.print_exc()
                ctx.exit(int(ExitCode.INTERNAL))
            first = terminal((str(exc).strip().splitlines() or [""])[0])
            click.echo(
                f"Internal error: {type(exc).__name__}: {first} (rerun with --traceback for details)",
                err=True,
            )
            ctx.exit(int(ExitCode.INTERNAL))


@click.group(cls=ParityGroup, context_settings=CONTEXT)
@click.version_option(package_name="parity", prog_name="parity")
@traceback_option
def cli():
    """parity: does the converted model compute the same thing?

    Runs one model in PyTorch, ONNX Runtime and MNN on the same inputs, aligns the outputs and
    reports per-output differences. Exit codes: 0 pass, 1 mismatch, 2 command-line error, 3 model or
    input error, 4 backend failure (crash, timeout, framework missing), 123 internal error; stopped
    by a signal, 128 + its number: 129 SIGHUP, 130 Ctrl-C, 141 stdout's reader gone, 143 SIGTERM.
    """
    from parity.run.process import install_process_guards

    install_process_guards()  # SIGTERM/SIGHUP like Ctrl-C, one private temp dir, no ORT telemetry


for command in (checks.check, checks.compare, checks.convert, checks.inspect, sweeps.sweep, sweeps.rerun,
                targets.target):
    cli.add_command(command)


def main() -> None:  # pragma: no cover - console script indirection for python -m
    cli(prog_name="parity")
