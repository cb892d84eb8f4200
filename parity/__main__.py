"""``python -m parity``, and the entry of the parity children that sweep starts."""

import os
import sys


def _forget_working_directory() -> None:
    """``python -m`` puts the working directory first on sys.path, so a click.py, numpy.py or
    rich.py where the user stands would replace the real module. parity itself is imported
    already (by absolute path); nothing else may come from there."""
    if sys.flags.safe_path or not sys.path:
        return
    try:
        here = os.getcwd()
    except OSError:
        return
    if os.path.abspath(sys.path[0] or os.curdir) == here:
        del sys.path[0]


def main() -> None:
    from parity.backends.worker import install_process_guards, interruption

    install_process_guards()
    try:
        from parity.cli import cli
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM while parity is still starting
        cause, code = interruption(exc)
        sys.stderr.write(f"{cause}; child processes stopped, nothing was written.\n")
        raise SystemExit(code) from None
    cli(prog_name="parity")


if __name__ == "__main__":
    _forget_working_directory()
    main()
