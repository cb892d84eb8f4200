"""Hostile names (issue 12): tensor, node, input, file and sweep manifest names that hold ESC
sequences, newlines, carriage returns, control characters, bidi overrides, noncharacters,
surrogates, rich markup or thousands of characters. They reach the terminal, JUnit, HTML and
progress only through ``parity.core.escape``: shown escaped (``\\x1b``, ``\\n``), never raw, on one
line, and every file still parses. JSON and the Model Explorer overlay keep names exact."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from onnx import helper, numpy_helper

from helpers import MODELS, alter_initializer, run_parity, save_model, tensor, to_mnn
from hostile import run_hostile
from parity.core import escape
from parity.core.errors import ExitCode

# Characters no medium may carry raw: C0 controls but newline, C1 controls, bidi overrides and
# isolates, zero-width and format characters, line/paragraph separators, noncharacters and
# surrogates. (Newlines are checked apart: a renderer's own line breaks are fine.)
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u2069"
                 "\ufeff\ufffe\uffff\ud800-\udfff]")

HOSTILE = {
    "csi-colour": "a\x1b[31mRED\x1b[0m",
    "csi-clear-screen": "b\x1b[2J\x1b[H",
    "osc-title": "c\x1b]0;pwned\x07",
    "newline-forged-line": "d\nFAIL: forged line",
    "carriage-return": "e\rOVERWRITTEN",
    "c0-controls": "f\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x1f\t",
    "del-and-c1": "g\x7f\x85\x9b31m",
    "bidi-override": "h\u202eevil.onnx\u202c\u2066\u2069\u200f",
    "zero-width-and-separators": "i\u200b\ufeff\u2028\u2029\u00ad",
    "noncharacters": "j\ufffe\uffff",
    "rich-markup-and-emoji": "k[bold red]big[/] [link=file:///etc]x[/link] :smile:",
    "trailing-backslash": "l\\",
    "very-long": "m" + "L" * 3000,
}
# Only in-process: ONNX names are protobuf strings (valid UTF-8, in practice no NUL).
IN_PROCESS_ONLY = {
    "nul": "n\x00o",
    "surrogates": "p\udcff\ud800q",  # a file name that is not UTF-8, decoded with surrogateescape
}


def _visible(text: str) -> str:
    """What rich shows for a markup string."""
    from rich.text import Text

    return Text.from_markup(text, emoji=False).plain


# -- the escaping functions ---------------------------------------------------------------------
@pytest.mark.parametrize("name", [*HOSTILE.values(), *IN_PROCESS_ONLY.values()],
                         ids=[*HOSTILE, *IN_PROCESS_ONLY])
def test_each_medium_shows_a_name_escaped_on_one_line(name):
    shown = escape.terminal(name)
    assert not RAW.search(shown) and "\n" not in shown
    assert escape.terminal(shown) == shown  # escaping twice changes nothing more
    assert _visible(escape.markup(name)) == shown  # rich markup shown, not applied
    element = ET.Element("testcase", name=escape.xml(name))
    element.text = escape.xml(name)
    parsed = ET.fromstring(ET.tostring(element, encoding="utf-8"))
    assert parsed.get("name") == parsed.text == shown
    assert not RAW.search(escape.html(name)) and "<" not in escape.html(name + "<script>")
    shown.encode("utf-8")  # a surrogate would make every writer fail


def test_plain_names_are_unchanged():
    for name in ("/blocks.3/blocks.3.0/Conv_output_0", "logits", "ünïcødé 名前 😀", "a\\b"):
        assert escape.terminal(name) == name and escape.xml(name) == name
    assert escape.terminal("\udcff") == "\\xff"  # the byte a non-UTF-8 file name held


# -- every renderer, on a real report whose names were replaced --------------------------------
@pytest.fixture(scope="module")
def marked_report(tmp_path_factory):
    """A real failing report (--layers, diagnosis) whose names all contain MARK."""
    d = tmp_path_factory.mktemp("marked")
    onnx_path, mnn_path = named_pair(d, "MARK")
    result = run_parity("check", onnx_path, mnn_path, "--layers", "--json", d / "r.json", cwd=d)
    assert result.code == ExitCode.MISMATCH, result.err
    data = json.loads((d / "r.json").read_text())
    assert "MARK" in data["comparisons"][0]["outputs"][0]["name"]
    return data


def _replace(value, old: str, new: str):
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_replace(v, old, new) for v in value]
    if isinstance(value, dict):
        return {_replace(k, old, new): _replace(v, old, new) for k, v in value.items()}
    return value


@pytest.mark.parametrize("name", [*HOSTILE.values(), *IN_PROCESS_ONLY.values()],
                         ids=[*HOSTILE, *IN_PROCESS_ONLY])
def test_renderers_escape_names_and_files_parse(marked_report, name):
    from parity.render import html, junit, model_explorer, text
    from parity.core.report import Report

    report = Report.from_dict(_replace(marked_report, "MARK", name))
    shown = escape.terminal(name)
    out = io.StringIO()
    text.render(report, out, color=False)
    terminal = out.getvalue()
    assert not RAW.search(terminal), repr(terminal[:500])
    assert not any(line.startswith(("FAIL: forged", "OVERWRITTEN")) for line in terminal.splitlines())
    if len(name) < 100:  # long names are folded over several lines
        assert f"out{shown}" in terminal
    assert "\U0001f604" not in terminal  # :smile: stays text

    root = ET.fromstring(junit.render(report))  # parses, whatever the names hold
    cases = [case.get("name") for case in root.iter("testcase")]
    assert f"output out{shown}" in cases and any(c.startswith("layer ") and shown in c for c in cases)
    for element in root.iter():
        for value in [element.text or "", *element.attrib.values()]:
            assert not RAW.search(value), repr(value[:200])
        assert "\n" not in element.get("name", "")

    page = html.render(report)
    assert not RAW.search(page)
    assert escape.html(f"out{name}") in page
    page.encode("utf-8")

    overlay = json.loads(model_explorer.render(report))  # names exact: Model Explorer matches them
    assert f"relu{name}" in overlay["results"] or f"mul{name}" in overlay["results"]
    model_explorer.render(report).encode("ascii")


def test_progress_shows_names_escaped():
    from parity.render.progress import Progress

    name = HOSTILE["rich-markup-and-emoji"] + HOSTILE["csi-colour"] + "\n"
    with Progress(enabled=True, label=f"sweep{name}") as progress:
        progress(f"converting {name}.onnx")
        description = progress._progress.tasks[0].description
    assert _visible(description) == escape.terminal(f"sweep{name}: converting {name}.onnx")


# -- the CLI, on models whose names are hostile ------------------------------------------------
def named_pair(d: Path, n: str, stem: str = "m") -> tuple[Path, Path]:
    """Mul -> Relu -> Add with every tensor, node, initializer and input name holding ``n``;
    the ONNX is altered after conversion, so the pair mismatches from the first layer on."""
    x, w, m, r, b, y = (f"{p}{n}" for p in ("in", "w", "mul", "relu", "b", "out"))
    nodes = [helper.make_node("Mul", [x, w], [m], name=f"Mul{n}"),
             helper.make_node("Relu", [m], [r], name=f"Relu{n}"),
             helper.make_node("Add", [r, b], [y], name=f"Add{n}")]
    inits = [numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8), w),
             numpy_helper.from_array(np.full((1, 8), 0.5, np.float32), b)]
    onnx_path = save_model(nodes, [tensor(x, shape=[1, 8])], [tensor(y, shape=[1, 8])], d / f"{stem}.onnx",
                           initializers=inits)
    mnn_path = to_mnn(onnx_path, d / f"{stem}.mnn")
    alter_initializer(onnx_path, onnx_path, w, index=6, delta=1.0)
    return onnx_path, mnn_path


CLI_NAMES = ["csi-clear-screen", "osc-title", "newline-forged-line", "carriage-return", "c0-controls",
             "del-and-c1", "bidi-override", "rich-markup-and-emoji", "very-long"]


@pytest.mark.parametrize("key", CLI_NAMES)
def test_check_with_hostile_tensor_node_and_input_names(tmp_path, key):
    name = HOSTILE[key]
    work = tmp_path / "work"
    work.mkdir()
    named_pair(work, name)
    outputs = ["r.json", "r.xml", "r.html", "me.json"]
    outcome = run_hostile("check", "m.onnx", "m.mnn", "--layers", "--json", "r.json", "--junit", "r.xml",
                          "--html", "r.html", "--model-explorer", "me.json", cwd=work, outputs=outputs)
    outcome.assert_clean(ExitCode.MISMATCH, error_line=False, limit=60)
    assert outcome.err == ""
    assert not RAW.search(outcome.out), repr(outcome.out[:500])
    lines = outcome.out.splitlines()
    assert not any(line.startswith(("FAIL: forged", "OVERWRITTEN")) for line in lines)
    assert "\U0001f604" not in outcome.out
    if len(name) < 100:
        assert escape.terminal(f"out{name}") in outcome.out
    data = json.loads((work / "r.json").read_text())  # JSON keeps names exact
    assert data["comparisons"][0]["outputs"][0]["name"] == f"out{name}"
    assert list(data["inputs"]) == [f"in{name}"]
    root = ET.parse(work / "r.xml").getroot()
    assert root.get("failures") != "0"
    assert f"output {escape.terminal('out' + name)}" in [c.get("name") for c in root.iter("testcase")]
    page = (work / "r.html").read_text(encoding="utf-8")
    assert not RAW.search(page) and escape.html(f"in{name}") in page
    overlay = json.loads((work / "me.json").read_text())
    assert set(overlay["results"]) <= {f"mul{name}", f"relu{name}", f"out{name}"} and overlay["results"]


FILE_NAMES = {
    "esc": "m\x1b[31mred\x1b[0m",
    "newline": "m\nError: forged",
    "markup": "m[bold]x[red] :smile:",
    "bidi": "m\u202egnp",
}


@pytest.mark.parametrize("key", list(FILE_NAMES))
def test_inspect_shows_a_hostile_file_name_escaped(tmp_path, key):
    stem = FILE_NAMES[key]
    work = tmp_path / "work"
    work.mkdir()
    (work / f"{stem}.onnx").write_bytes((MODELS / "cnn.onnx").read_bytes())
    outcome = run_hostile("inspect", f"{stem}.onnx", cwd=work)
    outcome.assert_clean(ExitCode.PASS, error_line=False, limit=60)
    assert not RAW.search(outcome.out) and escape.terminal(f"{stem}.onnx") in outcome.out
    assert not any(line.startswith("Error: forged") for line in outcome.out.splitlines())


def test_error_line_escapes_a_hostile_file_name(tmp_path):
    """The `Error: ...` line carries file names (here the models' inputs differ)."""
    work = tmp_path / "work"
    work.mkdir()
    stem = FILE_NAMES["esc"] + "\nError: forged"
    (work / f"{stem}.onnx").write_bytes((MODELS / "cnn.onnx").read_bytes())
    (work / "t.mnn").write_bytes((MODELS / "transformer.mnn").read_bytes())
    outcome = run_hostile("check", f"{stem}.onnx", "t.mnn", cwd=work)
    outcome.assert_clean(ExitCode.MODEL_OR_INPUT, "inputs differ", escape.terminal(stem), limit=60)
    assert not RAW.search(outcome.err)


def test_html_report_escapes_hostile_model_file_names(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    stem = FILE_NAMES["esc"] + FILE_NAMES["bidi"]
    for suffix in (".onnx", ".mnn"):
        (work / f"{stem}{suffix}").write_bytes((MODELS / f"cnn{suffix}").read_bytes())
    outcome = run_hostile("check", f"{stem}.onnx", f"{stem}.mnn", "--html", "r.html", cwd=work, outputs=["r.html"])
    outcome.assert_clean(ExitCode.PASS, error_line=False, limit=60)
    page = (work / "r.html").read_text(encoding="utf-8")
    assert not RAW.search(page) and escape.html(f"{stem}.mnn") in page


def test_sweep_table_escapes_pair_and_manifest_names(tmp_path):
    """Names in sweep's table come from file stems (directory target) and from the manifest."""
    work = tmp_path / "work"
    work.mkdir()
    zoo = work / "zoo"
    zoo.mkdir()
    stem = FILE_NAMES["newline"]
    for suffix in (".onnx", ".mnn"):
        (zoo / f"{stem}{suffix}").write_bytes((MODELS / f"cnn{suffix}").read_bytes())
    manifest = work / "zoo.json"
    manifest_name = HOSTILE["csi-clear-screen"] + HOSTILE["rich-markup-and-emoji"] + "\nFAIL: forged"
    manifest.write_text(json.dumps({"model": [{"name": manifest_name, "onnx": "zoo/" + stem + ".onnx",
                                               "mnn": "zoo/" + stem + ".mnn"}]}))
    for target, shown, report in (("zoo", stem, "s1.json"), ("zoo.json", manifest_name, "s2.json")):
        outcome = run_hostile("sweep", target, "--json", report, cwd=work, outputs=[report])
        outcome.assert_clean(ExitCode.PASS, error_line=False, limit=60)
        assert not RAW.search(outcome.out) and "\U0001f604" not in outcome.out
        assert not any(line.startswith(("Error: forged", "FAIL: forged")) for line in outcome.out.splitlines())
        assert escape.terminal(shown) in outcome.out.replace("│\n│", "")  # a folded cell aside
        assert json.loads((work / report).read_text())["results"][0]["name"] == shown
