"""The README's exit-code table is the contract: it lists exactly parity's ExitCode members."""

from __future__ import annotations

import re

from helpers import ROOT
from parity.errors import ExitCode


def readme_exit_codes() -> dict[int, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \| (.+) \|$", section, re.M)}


def test_the_readme_table_lists_every_exit_code_and_no_other():
    assert sorted(readme_exit_codes()) == sorted(int(code) for code in ExitCode)


def test_signal_codes_follow_the_shell_convention():
    assert ExitCode.HANGUP == 128 + 1 and ExitCode.INTERRUPTED == 128 + 2
    assert ExitCode.BROKEN_PIPE == 128 + 13 and ExitCode.TERMINATED == 128 + 15
