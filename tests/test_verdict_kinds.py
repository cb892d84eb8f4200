"""The verdict kinds: one definition (parity.VerdictKind), the README's list checked against
it, and plain strings wherever a report is read or written."""

import json
import re

import pytest

import parity
from helpers import ROOT
from parity.core.report import Report, Verdict, VerdictKind


def test_readme_lists_exactly_the_verdict_kinds():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    sentence = re.search(r"`verdict\.kind` is (.+?)(?:\.|;)\s", text, re.S)
    assert sentence, "the README's JSON section names the verdict kinds"
    listed = re.findall(r"`([a-z]+)`", sentence.group(1))
    assert sorted(listed) == sorted(k.value for k in VerdictKind)


def test_a_kind_is_its_string_in_code_and_json():
    verdict = Verdict("numerics", "t3 on onnxruntime -> mnn", "amplified rounding")
    assert verdict.kind is VerdictKind.NUMERICS and verdict.kind == "numerics"
    assert f"{verdict.kind}" == str(verdict.kind) == "numerics"
    report = Report(passed=False, backends=(), inputs=(), comparisons=(), verdict=verdict)
    data = json.loads(report.to_json())
    assert data["verdict"]["kind"] == "numerics"
    assert Report.from_dict(data).verdict.kind is VerdictKind.NUMERICS


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="VerdictKind"):
        Verdict("converter", None, "a misspelt kind")


def test_public_api_exports_the_kinds():
    assert parity.VerdictKind is VerdictKind
    assert [k for k in VerdictKind if not k.failing] == [VerdictKind.PASS]


def test_a_report_with_a_kind_from_a_newer_parity_is_read():
    verdict = Verdict("pass", None, "ok")
    data = json.loads(Report(passed=False, backends=(), inputs=(), comparisons=(), verdict=verdict).to_json())
    data["verdict"]["kind"] = "calibration"
    read = Report.from_dict(data).verdict
    assert read.kind is VerdictKind.MISMATCH and "'calibration'" in read.summary
