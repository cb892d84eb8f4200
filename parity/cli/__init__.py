"""The click shell: parse -> call the library -> render -> exit code. No logic lives here.

The commands' options are made from the declarations in parity.option_groups (params.py); the
one place exceptions become exit codes is ``ParityGroup.invoke`` (group.py). Importing this
package registers every command on ``cli``; it stays light (no numpy or frameworks), so
``parity --help`` is fast.
"""

from parity.cli.group import cli
from parity.cli import checks, sweeps, targets  # noqa: F401  each registers its commands on cli

__all__ = ["cli", "main"]


def main() -> None:  # pragma: no cover - console script indirection for python -m
    cli(prog_name="parity")
