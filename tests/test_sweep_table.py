"""The sweep's summary table drawn without rich (render.text.plain_sweep_table) is line for line
the table rich draws (rich_sweep_table), wherever the plain drawing takes the texts; where it
does not, render_sweep still shows everything through rich."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from parity.checking.sweep import SweepReport
from parity.render.text import plain_sweep_table, render_sweep, rich_sweep_table

WIDTH = 160  # render_sweep's width off a terminal (rich is given it: COLUMNS is not read)


def _utf8_stream():
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="\n")


def _both(title, rows, failures, summary):
    plain = plain_sweep_table(title, rows, failures, summary, width=WIDTH)
    drawn = rich_sweep_table(title, rows, [r[2] == "pass" for r in rows], failures, summary, _utf8_stream(), False)
    return plain, [line.rstrip() for line in drawn]


def _row(name, code="0", kind="pass", where="", seconds="0.1"):
    return (name, code, kind, where, seconds)


def test_a_sweep_of_passing_pairs_is_drawn_as_rich_draws_it():
    rows = [_row(f"pair{k:03d}") for k in range(12)]
    plain, drawn = _both("parity sweep zoo", rows, [], "=== 12 passed in 0.3s; the pairs' own times add up to 1.2s "
                                                       "(exit 0) ===")
    assert plain is not None
    assert [line.rstrip() for line in plain] == drawn
    assert plain[1].startswith("┏") and plain[-2].startswith("└")  # rich's heavy head, as before


def test_failures_errors_and_a_shard_title_are_drawn_as_rich_draws_them():
    rows = [_row("a-model-with-a-long-name_v2.1", "1", "conversion", "/encoder/layer.3/Add_1 (Add)", "12.5"),
            _row("b", "4", "error", "MNN crashed (SIGSEGV) while running b.mnn", "0.0"),
            _row("c")]
    failures = ["FAILED a-model-with-a-long-name_v2.1 (exit 1) - conversion: the .mnn is not what the ONNX means",
                "FAILED b (exit 4) - MNN crashed (SIGSEGV) while running b.mnn " + "x" * 500]
    plain, drawn = _both("parity sweep zoo.toml (shard 2/4)", rows, failures,
                         "=== 2 failed, 1 passed in 13.0s; the pairs' own times add up to 12.6s (exit 4) ===")
    assert plain is not None
    assert [line.rstrip() for line in plain] == drawn
    assert len(plain[-2]) == 400  # a failure's line is cut as rich's was


def test_texts_rich_would_change_are_left_to_rich():
    summary = "=== 1 passed in 0.1s (exit 0) ==="
    for name in ("[bold]x", "back\\slash", "naïve", "tab\there", "new\nline"):
        assert plain_sweep_table("parity sweep zoo", [_row(name)], [], summary, width=WIDTH) is None
    # a table wider than the width: rich wraps its cells
    assert plain_sweep_table("parity sweep zoo", [_row("x" * 200)], [], summary, width=WIDTH) is None
    assert plain_sweep_table("parity sweep zoo", [], [], summary, width=WIDTH) is None


def test_a_title_longer_than_the_table_or_the_width_is_one_line_as_rich_draws_it():
    summary = "=== 1 passed in 0.1s (exit 0) ==="
    for target in ("/root/.cache/parity/bench/sweep-200-pairs", "d/" * 100):
        plain, drawn = _both(f"parity sweep {target}", [_row("a")], [], summary)
        assert plain is not None
        assert [line.rstrip() for line in plain] == drawn
        assert drawn[0] == f"parity sweep {target}"  # not wrapped to the table, nor folded at the width


def _rendered(name, code, verdict, error) -> str:
    """render_sweep's text for a sweep of one failed pair, on a UTF-8 stream that is not a terminal."""
    result = {"name": name, "models": [], "exit_code": code, "passed": False, "verdict": verdict,
              "mnn_target": "local", "mnn_precision": "normal", "error": error, "seconds": 0.5}
    stream = _utf8_stream()
    render_sweep(SweepReport("zoo", None, [result], elapsed=0.6), stream)
    stream.seek(0)
    return stream.read()


def test_render_sweep_shows_a_hostile_name_through_rich():
    text = _rendered("evil\x1b[31m[bold]", 1, {"kind": "mismatch", "where": "y", "summary": "s"}, None)
    assert "evil\\x1b[31m[bold]" in text and "\x1b" not in text  # escaped, markup shown, not applied
    assert "FAILED evil\\x1b[31m[bold] (exit 1) - mismatch: s" in text


# printable ASCII but rich's markup characters (those are left to rich, above)
_PRINTABLE = st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="[]\\")
_TEXT = st.text(alphabet=_PRINTABLE, max_size=40)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_TEXT, st.sampled_from(["0", "1", "4"]), st.sampled_from(["pass", "runtime", "error"]),
                          _TEXT, st.sampled_from(["0.0", "1.5", "123.4"])), min_size=1, max_size=6),
       st.text(alphabet=_PRINTABLE, max_size=200), st.lists(_TEXT, max_size=2))
def test_any_plain_table_is_the_one_rich_draws(rows, target, failures):
    summary = f"=== {len(rows)} passed in 1.0s (exit 0) ==="
    plain, drawn = _both(f"parity sweep {target}", rows, [f"FAILED {f}" for f in failures], summary)
    # nothing here needs rich: the table is 46 to 126 wide; the title, up to 213, is a line of its own
    assert plain is not None
    assert [line.rstrip() for line in plain] == drawn


def test_a_long_failure_with_markup_is_cut_as_text_not_inside_an_escape():
    failed = [line for line in _rendered("x", 4, None, "[b]" * 200).splitlines() if line.startswith("FAILED")]
    assert failed == [("FAILED x (exit 4) - " + "[b]" * 200)[:400]]  # markup shown, 400 characters
