"""Progress on stderr for long work: a spinner with the current step and the elapsed time, and a
bar when the amount of work is known (sweeps). Silent when stderr is not a terminal or with
--quiet, so logs and CI output stay clean. Messages carry file and model names: they are shown
through ``parity.core.escape.markup`` (no raw ESC or newline, no rich markup applied)."""

from __future__ import annotations

import sys

from parity.core.escape import markup


class Progress:
    def __init__(self, enabled: bool | None = None, total: int | None = None, label: str = "parity"):
        self.enabled = bool(sys.stderr and sys.stderr.isatty()) if enabled is None else enabled
        self.total = total
        self.label = label
        self._progress = None
        self._task = None

    def __enter__(self) -> "Progress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       SpinnerColumn, TextColumn, TimeElapsedColumn)

            # the bar pulses while a step's amount of work is unknown (a conversion, a run) and
            # fills when it is known (sweep pairs, layers compared)
            columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
            if self.total is not None:
                columns.append(MofNCompleteColumn())
            columns.append(TimeElapsedColumn())
            console = Console(stderr=True, emoji=False, highlight=False)
            self._progress = RichProgress(*columns, console=console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task(markup(self.label), total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __call__(self, message: str, done: int | None = None, total: int | None = None) -> None:
        """Show the current step; with ``done`` of ``total`` its bar fills, without it pulses
        (a sweep's bar keeps counting pairs)."""
        if self._progress is None:
            return
        if self.total is not None:
            self._progress.update(self._task, description=markup(f"{self.label}: {message}"))
        elif total is None and self._progress.tasks[-1].total is not None:
            # rich keeps a task's total once set: a new task pulses again
            self._progress.remove_task(self._task)
            self._task = self._progress.add_task(markup(f"{self.label}: {message}"), total=None)
        else:
            self._progress.update(self._task, description=markup(f"{self.label}: {message}"),
                                  total=total, completed=done or 0)

    def advance(self, amount: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, amount)
