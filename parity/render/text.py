"""Terminal rendering with rich: one table per link, then the verdict.

Every name and message goes through ``parity.core.escape.markup``: names come from models and
users and may hold ESC sequences, newlines or rich markup (see escape.py). Consoles come from
``console()``: no emoji codes, no highlighting, and a closed stdout raises BrokenPipeError for
the CLI to turn into its exit code (rich's own handler would exit 1, the mismatch code).
"""

from __future__ import annotations

import errno
import os
import re
from typing import IO, Sequence

from parity.core.escape import markup as escape
from parity.core.escape import terminal
from parity.core.report import Comparison, OutputComparison, Report
from parity.core.specs import format_shape


def console(file: IO[str] | None, *, encoding: str | None = None, **options):
    """A rich Console for parity's output: ``emoji=False`` (a name holding ``:smile:`` stays
    text), ``highlight=False``, and a reader that went away raises BrokenPipeError. ``encoding``:
    that of the stream the text finally goes to, when ``file`` is a buffer in between; on a
    stream that is not UTF-8 (``PYTHONIOENCODING=ascii``, ``LC_ALL=C``) rich draws tables with
    ASCII characters, not box-drawing ones that would come out as escapes."""
    from rich.console import Console

    class _Console(Console):
        @property
        def encoding(self) -> str:
            return (encoding or getattr(self.file, "encoding", None) or "utf-8").lower()

        def on_broken_pipe(self) -> None:
            self.quiet = True  # drop what is still buffered; the CLI decides the exit
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    return _Console(file=file, emoji=False, highlight=False, **options)


def _num(value, spec: str = ".3g") -> str:
    from parity.core.metrics import fmt

    return "-" if value is None else fmt(value, spec)


def readable_value(value) -> str:
    """One scalar for a person: yes/no for booleans, - for None, figures to 4 digits."""
    from parity.core.metrics import fmt

    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    if isinstance(value, float):
        return fmt(value, ".4g")
    return str(value)


def readable_lines(value, indent: str = "", limit: int = 60) -> list[str]:
    """A nested value (a verdict's evidence entry, a backend's settings: dicts, lists, scalars)
    as "key: value" lines, nested ones indented, instead of a Python repr; a list of scalars on
    one line. At most ``limit`` lines, the rest counted."""
    lines: list[str] = []

    def scalar_list(items) -> bool:
        return all(not isinstance(x, (dict, list, tuple)) for x in items)

    def walk(v, pad: str, head: str) -> None:
        if isinstance(v, dict) and v:
            if head:
                lines.append(f"{pad}{head}:")
                pad += "  "
            for key, item in v.items():
                if isinstance(item, (dict, list, tuple)) and not item:
                    continue  # an empty list or table says nothing
                walk(item, pad, str(key))
        elif isinstance(v, (list, tuple)) and v and not scalar_list(v):
            if head:
                lines.append(f"{pad}{head}:")
                pad += "  "
            for item in v:
                start = len(lines)
                walk(item, pad + "  ", "")
                if len(lines) > start:  # the item's first line carries the bullet
                    lines[start] = pad + "- " + lines[start][len(pad) + 2:]
        else:
            if isinstance(v, (list, tuple)):
                text = ", ".join(readable_value(x) for x in v) or "none"
            elif isinstance(v, dict):
                text = "none"
            else:
                text = readable_value(v)
            lines.append(f"{pad}{head}: {text}" if head else f"{pad}{text}")

    walk(value, indent, "")
    if len(lines) > limit:
        lines = lines[:limit - 1] + [f"{indent}... {len(lines) - limit + 1} more lines in the JSON report"]
    return lines


def _shape(shape) -> str:
    return "-" if shape is None else escape(format_shape(shape))  # symbolic dims are names


def _row(o: OutputComparison) -> list[str]:
    status = "[green]pass[/]" if o.passed else "[bold red]FAIL[/]"
    shapes = _shape(o.reference_shape)
    if o.candidate_shape is not None and tuple(o.candidate_shape) != tuple(o.reference_shape or ()):
        shapes += f" <- {_shape(o.candidate_shape)}"
    from parity.core.metrics import OUTPUT_COLUMNS

    exact = o.kind in ("integer", "bool")
    figures = [_cell(getattr(o, c.field), c.spec, exact) if c.integer or not exact else "-" for c in OUTPUT_COLUMNS]
    detail = "; ".join(list(o.alignment) + ([o.error] if o.error else []) + list(o.notes))
    return [escape(o.name), shapes, *figures, status, escape(detail)]


def _cell(value, spec: str, exact: bool) -> str:
    if spec != "%":
        return _num(value, spec)
    return "-" if value is None else f"{value:.2%}" + (" unequal" if exact else "")


def _table(comparison: Comparison):
    from rich.table import Table

    title = escape(comparison.link + ": ") + (
        "[green]pass[/]" if comparison.passed else "[bold red]FAIL[/]"
    )
    table = Table(title=title, title_justify="left", expand=False)
    from parity.core.metrics import OUTPUT_COLUMNS

    for header, justify in [
        ("output", "left"), ("shape", "left"), *((c.header, "right") for c in OUTPUT_COLUMNS), ("", "left"),
    ]:
        table.add_column(header, justify=justify, no_wrap=header != "output")
    table.add_column("alignment / notes", overflow="fold", min_width=20)
    for output in comparison.outputs:
        table.add_row(*_row(output))
    return table


def _side_by_side(comparisons):
    """One row per output, one column per link: the first broken link is plain to see."""
    from rich.table import Table

    table = Table(title="links side by side", title_justify="left")
    table.add_column("output", overflow="fold")
    numbered = sum(len(c.link) for c in comparisons) > 110  # long labels: numbered columns and a legend
    for i, c in enumerate(comparisons, 1):
        table.add_column(f"link {i}" if numbered else escape(c.link), justify="right", no_wrap=True)
    if numbered:
        table.caption = escape("; ".join(f"link {i}: {c.link}" for i, c in enumerate(comparisons, 1)))
        table.caption_justify = "left"
    names: list[str] = []
    for c in comparisons:
        names.extend(o.name for o in c.outputs if o.name not in names)
    for name in names:
        cells = []
        for c in comparisons:
            o = next((o for o in c.outputs if o.name == name), None)
            if o is None:
                cells.append("-")
            elif o.error:
                cells.append("[bold red]FAIL[/] (see below)")
            else:
                mark = "[green]pass[/]" if o.passed else "[bold red]FAIL[/]"
                if o.budget and o.budget.get("cosine") is not None:  # a compressed link: its budget's figure
                    cells.append(f"{mark} cos {o.budget['cosine']:.6f}")
                else:
                    cells.append(f"{mark} {_num(o.max_abs_diff)}")
        table.add_row(escape(name), *cells)
    return table


_STATUS = {
    "pass": "[green]pass[/]",
    "fail": "[red]fail[/]",
    "introduced": "[bold red]introduced here[/]",
    "carried": "[yellow]carried[/]",
}


def unpaired_lines(comparison: Comparison, names: int = 5, reasons: int = 5) -> list[str]:
    """The values of one graph with no counterpart in the other, grouped by reason: at most
    ``names`` names for each of at most ``reasons`` reasons, and how to get them all."""
    by_reason: dict[str, list[str]] = {}
    for entry in comparison.unpaired:
        by_reason.setdefault(entry.reason, []).append(entry.name)
    lines, cut = [], False
    for reason, group in list(by_reason.items())[:reasons]:
        more = f" and {len(group) - names} more" if len(group) > names else ""
        cut = cut or bool(more)
        lines.append(f"  unpaired ({len(group)}), {reason}: {', '.join(group[:names])}{more}")
    if len(by_reason) > reasons:
        rest = sum(len(g) for g in list(by_reason.values())[reasons:])
        lines.append(f"  unpaired: {rest} more for {len(by_reason) - reasons} other reasons")
        cut = True
    if cut:
        lines.append("  (--json FILE or --html FILE lists every unpaired value with its reason)")
    return lines


def _layers(comparison: Comparison, out, around: int = 5, listing: Sequence[str] = ()) -> None:
    """The layers around the first divergence (never thousands of rows), or a summary; the
    unpaired values, when no report written lists them (``listing``)."""
    from rich.table import Table
    from rich.text import Text

    layers = list(comparison.layers or ())
    failing = sum(not layer.passed for layer in layers)
    link = comparison.link
    unpaired = len(comparison.unpaired)
    out.print(escape(
        f"{link}: {len(layers)} layers paired, {len(layers) - failing} pass, {failing} fail"
        + (f"; {unpaired} unpaired" if unpaired else "")
        + (f" (listed with their reasons in {', '.join(listing)})" if unpaired and listing else "")
    ))
    if unpaired and not listing:
        for line in unpaired_lines(comparison):
            out.print(escape(line), soft_wrap=True)
    divergence = comparison.first_divergence
    if not layers:
        return
    if divergence is None:
        if failing and comparison.passed:
            out.print(f"  [bold yellow]layer-only finding[/]: {failing} layers differ while every output matches")
        elif failing:
            out.print("  no first divergence: every failing layer has a failing paired input")
        worst = max(layers, key=lambda layer: layer.scaled_error or 0.0)
        out.print(escape(f"  largest scaled error: {worst.name} ({worst.op_type}) {_num(worst.scaled_error)}"))
        return
    at = next(i for i, layer in enumerate(layers) if layer.name == divergence.name)
    table = Table(title=f"{escape(link)}: layers around the first divergence", title_justify="left")
    for header in ("#", "tensor", "op", "module", "shape", "max_abs", "scaled", "local", "status"):
        table.add_column(header, overflow="fold", no_wrap=header in ("#", "max_abs", "scaled", "local"))
    for i in range(max(0, at - around), min(len(layers), at + around + 1)):
        layer = layers[i]
        op = layer.op_type + (f" / {layer.candidate_op_type}" if layer.candidate_op_type
                              and layer.candidate_op_type != layer.op_type else "")
        name = escape(layer.name)
        if i == at:  # a Text, not "[bold]...[/]": a name ending in a backslash would escape the tag
            name = Text.from_markup(name, style="bold", emoji=False)
        table.add_row(str(layer.index), name, escape(op), escape(layer.module or ""), _shape(layer.reference_shape),
                      _num(layer.max_abs_diff), _num(layer.scaled_error), _num(layer.local_max_abs_diff),
                      _STATUS.get(layer.status, escape(layer.status)))
    out.print(table)
    nodes = " -> ".join(divergence.nodes)
    out.print(escape(f"  first divergence: {divergence.name} = {divergence.op_type} (ONNX nodes "
                     f"{nodes}); its paired inputs: {list(divergence.inputs)}"))
    out.print(f"  {escape(divergence.summary)}")


def render(report: Report, file: IO[str], *, color: bool | None = None, width: int | None = None,
           reports: Sequence[str] = (), listing: Sequence[str] = ()) -> None:
    """The report for a person: first what they need (``first_screen``: pass or FAIL, the
    verdict, where, the evidence, what to do next, where the full report is), then the tables,
    the per-layer view and the notes, then the verdict again as the last line (for logs read
    from the end). Lines carry no trailing spaces. ``reports``: the files written beside;
    ``listing``: those of them that list the unpaired values with their reasons (JSON, HTML):
    without one, the unpaired values are listed here, a few per reason."""
    import io
    import shutil

    tty = getattr(file, "isatty", lambda: False)()
    if width is None:
        given = os.environ.get("PARITY_WIDTH", "")
        if given.isdigit() and int(given) >= 40:
            width = int(given)
        elif tty:
            width = shutil.get_terminal_size((100, 24)).columns
        else:
            width = 160  # logs and CI: wide enough that figures never wrap
    buffer = io.StringIO()
    out = console(buffer, encoding=getattr(file, "encoding", None), force_terminal=tty if color is None else color,
                  no_color=color is False, width=width, soft_wrap=False)
    _render(report, out, reports, listing)
    file.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))
    file.flush()


def first_screen(report: Report, reports: Sequence[str] = (), listing: Sequence[str] = ()) -> list[str]:
    """What a person reads first: PASS or FAIL with the verdict, where, the evidence, the next
    steps, unpaired values, and where the full report is (markup-free lines, escaped later)."""
    verdict = report.verdict
    links = len(report.comparisons)
    if report.passed:
        lines = [f"parity: PASS ({links} link{'s' * (links != 1)}; exit 0)"]
    else:
        lines = [f"parity: FAIL, {verdict.kind} (exit {int(report.exit_code)})"]
    lines.append(f"verdict: {verdict.kind}: {verdict.summary}")
    if verdict.where:
        lines.append(f"where: {verdict.where}")
    evidence = [_evidence_line(e) for e in verdict.evidence]
    evidence = [e for e in evidence if e]
    if evidence:
        lines.append("evidence:")
        lines += [f"  - {e}" for e in evidence[:8]]
        if len(evidence) > 8:
            lines.append(f"  - ... {len(evidence) - 8} more in the JSON or HTML report")
    if verdict.next_steps:
        lines.append("next:")
        lines += [f"  - {step}" for step in verdict.next_steps]
    unpaired = sum(len(c.unpaired) for c in report.comparisons if c.layers is not None)
    if unpaired:
        where = (f"listed with their reasons in {', '.join(listing)}" if listing else
                 "a few of each reason below, under the layers")
        lines.append(f"unpaired: {unpaired} values of one graph have no counterpart in the other ({where})")
    for finding in report.findings:
        lines.append(f"finding: {finding}")
    full = [r for r in reports if r in listing]  # JSON, HTML; JUnit and Model Explorer hold less
    others = [r for r in reports if r not in listing]
    if full:
        lines.append(f"full report: {', '.join(full)}")
    if others:
        lines.append(f"{'also written' if full else 'written'}: {', '.join(others)}")
    return lines


_EVIDENCE_KEYS = (("setting", "{}"), ("scaled_error", "error {:.3g}"), ("max_abs_diff", "max_abs_diff {:.3g}"),
                  ("cosine", "cosine {:.6g}"), ("measured", "measured {}"), ("layer", "{}"),
                  ("detail", "{}"), ("summary", "{}"), ("error", "error: {}"))


def _evidence_line(entry) -> str:
    """One evidence entry (a dict of the verdict's experiments) as one short line."""
    if not isinstance(entry, dict):
        return str(entry)
    head = entry.get("experiment") or entry.get("link") or entry.get("ranking") or ""
    parts = []
    for key, template in _EVIDENCE_KEYS:
        value = entry.get(key)
        if value is None or value == "" or (key == "error" and not isinstance(value, str)):
            continue
        try:
            parts.append(template.format(value))
        except (ValueError, TypeError):
            parts.append(f"{key} {value}")
    if "passed" in entry and isinstance(entry["passed"], bool):
        parts.append("passes" if entry["passed"] else "fails")
    text = f"{head}: {', '.join(parts)}" if head and parts else head or ", ".join(parts)
    return text if len(text) <= 300 else text[:297] + "..."


def _render(report: Report, out, reports: Sequence[str], listing: Sequence[str] = ()) -> None:
    style = "green" if report.passed else "bold red"
    lines = first_screen(report, reports, listing)
    out.print(f"[{style}]{escape(lines[0])}[/]", soft_wrap=True)
    for line in lines[1:]:
        out.print(escape(line))
    out.print("")
    several = len(report.comparisons) > 1
    if several:
        out.print(_side_by_side(report.comparisons))
    for comparison in report.comparisons:
        if several and comparison.passed:
            # a passing link in a chain: one line, plus the alignment it needed
            steps = [f"{o.name}: {'; '.join(o.alignment)}" for o in comparison.outputs if o.alignment]
            line = f"{comparison.link}: pass"
            out.print(escape(line + (f" (alignment: {' | '.join(steps)})" if steps else "")))
        else:
            out.print(_table(comparison))
        for note in comparison.notes:
            out.print(f"  note: {escape(note)}")
    for comparison in report.comparisons:
        if comparison.layers is not None:
            _layers(comparison, out, listing=listing)
    for note in report.notes:
        out.print(f"note: {escape(note)}")
    for line in target_lines(report):
        out.print(escape(line), soft_wrap=True)  # one line each, however long, for grep
    if report.compression:
        out.print(escape(f"compression: {report.compression.get('summary')}"), soft_wrap=True)
    if report.ranking:
        for line in ranking_lines(report.ranking):
            out.print(escape(line), soft_wrap=True)
    for comparison in report.comparisons:
        if comparison.tolerance:
            out.print(escape(f"tolerance of {comparison.link}: {comparison.tolerance.get('rule')}"))
    rule = report.tolerance.get("rule") or f"|c - r| <= {report.tolerance.get('atol')} + {report.tolerance.get('rtol')} * |r|"
    exact = sorted({o.kind for c in report.comparisons for o in c.outputs if o.kind in ("integer", "bool")})
    if exact:
        rule += f" (floats); {' and '.join(k + 's' for k in exact)} are compared exactly"
    out.print(f"tolerance: {escape(rule)}")
    for finding in report.findings:
        out.print(f"[bold yellow]FINDING[/]: {escape(finding)}")
    style = "green" if report.verdict.kind == "pass" else "bold red"
    out.print(f"[{style}]{report.verdict.kind.upper()}[/]: {escape(report.verdict.summary)}")
    for step in report.verdict.next_steps:
        out.print(f"  next: {escape(step)}")


def ranking_lines(ranking: dict, top: int = 10) -> list[str]:
    """The compressed layers by their cost, and the fix (ranking.Ranking.lines, from the JSON)."""
    from parity.mnn.ranking import LayerCost, Ranking

    fields = {"name", "op_type", "compression", "cosine", "error", "rank"}
    layers = tuple(LayerCost(**{k: v for k, v in x.items() if k in fields}) for x in ranking.get("layers", []))
    return Ranking(layers, ranking.get("budget", ""), ranking.get("all_compressed", {}), ranking.get("fix"),
                   tuple(ranking.get("notes", ()))).lines(top)


def target_lines(report: Report) -> list[str]:
    """Where each MNN run happened, for runs off this machine or in another precision: the
    target's platform and versions, the CPU features MNN reported, the backend that ran. A run
    that records no target in its settings ran here, as its framework always does."""
    lines = []
    for backend in report.backends:
        settings = backend.settings or {}
        target = settings.get("target", "local")
        if "target" not in settings or (target == "local" and settings.get("precision") in (None, "normal")):
            continue
        facts = settings.get("platform") or {}
        reported = settings.get("cpu_features") or {}
        features = ("CPU features " + (" ".join(k for k, v in reported.items() if v) or
                                       "none of " + " ".join(reported))) if reported else ""
        parts = [f"MNN {facts.get('mnn') or backend.version} on {target}"]
        if facts:
            parts.append(f"{facts.get('machine', '?')}, Python {facts.get('python', '?')}, numpy {facts.get('numpy', '?')}")
        if features:
            parts.append(features)
        arithmetic = "float16 arithmetic" if settings.get("float16_arithmetic") else "float32 arithmetic"
        parts.append(f"precision {settings.get('precision')} ({arithmetic})")
        parts.append(f"backend {settings.get('backend_ran') or settings.get('backend')}")
        lines.append("target: " + "; ".join(parts))
    return lines


def render_inspect(framework: str, path: str, version: str, inputs, outputs, file: IO[str],
                   compression=None) -> None:
    """A model's inputs and outputs; for an .mnn, also what compression it carries, per layer."""
    from rich.table import Table

    out = console(file)
    out.print(escape(f"{path} ({framework} {version})"), soft_wrap=True)
    table = Table()
    table.add_column("kind")
    table.add_column("name", overflow="fold")
    table.add_column("dtype")
    table.add_column("shape")
    for kind, specs in (("input", inputs), ("output", outputs)):
        for spec in specs:
            table.add_row(kind, escape(spec.name), escape(spec.dtype), _shape(spec.shape))
    out.print(table)
    if compression is not None:
        out.print(escape(f"compression: {compression.summary()}"), soft_wrap=True)
        for layer in compression.compressed:
            detail = ("float16" if layer.kind == "fp16" else "int8 op" if layer.kind == "int8-op" else
                      f"{layer.bits}-bit, {'asymmetric' if layer.asymmetric else 'symmetric'}, "
                      f"{'block ' + str(layer.block) if layer.block else 'per channel'}")
            out.print(escape(f"  {layer.name} ({layer.op_type}): {detail}"), soft_wrap=True)


def render_sweep(report, file: IO[str]) -> None:
    """The summary table of a ``parity sweep`` (a ``sweep.SweepReport``): one row per pair, the
    failures one line each, and the counts with the sweep's wall-clock time. Lines carry no
    trailing spaces. Drawn directly where rich would draw the same (plain_sweep_table), else
    by rich (rich_sweep_table)."""
    tty = getattr(file, "isatty", lambda: False)()
    title = f"parity sweep {report.target}" + (f" (shard {report.shard})" if report.shard else "")
    rows = []
    for r in report.results:
        verdict = r["verdict"] or {}
        rows.append((r["name"], str(r["exit_code"]), verdict.get("kind", "error"),
                     r["error"] or verdict.get("where") or "", f"{r['seconds']:.1f}"))
    failures = []
    for r in report.results:  # as pytest's short summary: every failure, one line each
        if not r["passed"]:
            verdict = r["verdict"] or {}
            reason = r["error"] or f"{verdict.get('kind')}: {verdict.get('summary', '')}"
            failures.append(f"FAILED {r['name']} (exit {r['exit_code']}) - {reason}")
    passed = sum(r["passed"] for r in report.results)
    failed = len(report.results) - passed
    pairs = sum(r["seconds"] for r in report.results)
    elapsed = pairs if getattr(report, "elapsed", None) is None else report.elapsed
    words = ", ".join(w for w in (f"{failed} failed" if failed else "", f"{passed} passed" if passed else "") if w)
    # the time is the sweep's own (wall clock); with -j N the pairs' times add up to more
    summed = f"; the pairs' own times add up to {pairs:.1f}s" if len(report.results) > 1 else ""
    summary = f"=== {words or 'nothing run'} in {elapsed:.1f}s{summed} (exit {report.exit_code}) ==="
    plain = None
    if not tty and (getattr(file, "encoding", None) or "utf-8").lower().replace("-", "") == "utf8":
        plain = plain_sweep_table(title, rows, failures, summary, width=_SWEEP_WIDTH)
    if plain is None:
        passing = [r["passed"] for r in report.results]
        plain = rich_sweep_table(title, rows, passing, failures, summary, file, tty)
    file.write("".join(line.rstrip() + "\n" for line in plain))
    file.flush()


_SWEEP_WIDTH = 160  # the width of render_sweep's text when it does not go to a terminal
_SWEEP_HEADERS = ("model", "exit", "verdict", "where / error", "s")


def rich_sweep_table(title, rows, passing, failures, summary, file, tty) -> list[str]:
    """render_sweep's lines as rich draws them: ``rows`` of five texts (model, exit, verdict,
    where / error, seconds), whether each pair passed (its colour), the failures' lines and
    the summary, for ``file`` (its encoding; coloured when ``tty``)."""
    import io

    from rich.table import Table
    from rich.text import Text

    buffer = io.StringIO()
    out = console(buffer, encoding=getattr(file, "encoding", None), force_terminal=tty,
                  width=None if tty else _SWEEP_WIDTH)
    # the title on a line of its own, never wrapped: a long target's path stays one piece
    out.print(escape(title), soft_wrap=True)
    table = Table()
    for header in _SWEEP_HEADERS:
        table.add_column(header, overflow="fold")
    for (name, code, kind, where, seconds), passed in zip(rows, passing):
        style = "green" if passed else "bold red"
        table.add_row(escape(name), code, Text(terminal(kind), style=style), escape(where), seconds)
    out.print(table)
    for line in failures:
        out.print(escape(line[:400]), soft_wrap=True)  # cut before escaping: never inside an escape
    out.print(f"[{'green' if all(passing) else 'bold red'}]{escape(summary)}[/]")
    return buffer.getvalue().splitlines()


def plain_sweep_table(title: str, rows, failures, summary: str, width: int) -> list[str] | None:
    """The lines rich draws for render_sweep, drawn here when nothing in them needs rich: for
    a stream that is not a terminal (no colour) and is UTF-8 (box-drawing characters), every
    text printable ASCII without rich's markup characters, the table and the summary within
    ``width`` (the title is a line of its own, however long). None otherwise. Line for line
    what rich draws (tests/test_sweep_table.py) at 2 us a row instead of rich's 0.4 ms: 0.1 s
    of a sweep of 200 small pairs, and rich's import."""
    texts = [title, *failures, summary, *(text for row in rows for text in row)]
    if not rows or not all(_PLAIN_TEXT.match(text) for text in texts):
        return None
    widths = [max(len(header), *(len(row[i]) for row in rows)) for i, header in enumerate(_SWEEP_HEADERS)]
    table = sum(widths) + 3 * len(widths) + 1
    if table > width or len(summary) > width:
        return None

    def rule(left, fill, middle, right):
        return left + middle.join(fill * (w + 2) for w in widths) + right

    def cells(values, bar):
        return bar + bar.join(f" {value.ljust(w)} " for value, w in zip(values, widths)) + bar

    return [title, rule("┏", "━", "┳", "┓"), cells(_SWEEP_HEADERS, "┃"), rule("┡", "━", "╇", "┩"),
            *(cells(row, "│") for row in rows), rule("└", "─", "┴", "┘"), *(f[:400] for f in failures), summary]


# text that rich shows as it is: printable ASCII without markup's brackets and backslash
_PLAIN_TEXT = re.compile(r"[ -Z^-~]*\Z")
