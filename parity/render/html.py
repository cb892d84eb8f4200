"""One self-contained HTML file: no scripts, no network, charts as inline SVG.

Sections: the verdict and its evidence, the per-output table of every link, the per-layer
error chart (scaled error against layer index, log scale, the layer tolerance, the first
divergence marked, one line per link), the histogram of differences at the first divergence,
the alignment steps, the inputs and the versions. Every name and message goes through
``parity.core.escape.html``: HTML-escaped, with control characters, newlines and bidi overrides
shown as escapes (``\\x1b``) so a name reads the same as in the terminal.
"""

from __future__ import annotations

import math

from parity.core.escape import html as escape
from parity.core.report import Report

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1b1b1b;max-width:1200px}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem} th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.pass{color:#1b7f1b;font-weight:600} .fail{color:#c62828;font-weight:600}
.verdict{padding:1rem;border-radius:6px;border:1px solid #ccc;background:#fafafa}
.verdict.kind-pass{border-color:#8bc34a;background:#f1f8e9} .verdict:not(.kind-pass){border-color:#e57373;background:#fff5f5}
code{font-size:.85rem;background:#f4f4f4;padding:0 .2rem} .muted{color:#666;font-size:.85rem}
svg text{font-family:system-ui,sans-serif;font-size:11px}
td .kv{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:.8rem;max-height:14em;overflow:auto;max-width:60rem;overflow-wrap:anywhere}
td.text{max-width:40rem;overflow-wrap:anywhere}
"""


def _num(x, spec=".3g") -> str:
    return "-" if x is None else format(x, spec)


def _status(passed: bool) -> str:
    return '<span class="pass">pass</span>' if passed else '<span class="fail">FAIL</span>'


def _layer_chart(report: Report) -> str:
    linked = [c for c in report.comparisons if c.layers]
    if not linked:
        return '<p class="muted">No per-layer data (run with <code>--layers</code>).</p>'
    legend = 16 * len(linked) + 8  # the legend sits under the plot, never over the data
    width, height, left, right, top, bottom = 900, 340 + legend, 60, 20, 20, 45 + legend
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [layer.scaled_error for c in linked for layer in c.layers if layer.scaled_error]
    layer_rtol = report.tolerance.get("layer_rtol")
    lo = math.floor(math.log10(max(min([v for v in values if v > 0] + [1e-9]), 1e-12)))
    hi = math.ceil(math.log10(max(values + [layer_rtol or 1e-3, 1e-6])))
    lo, hi = min(lo, -8), max(hi, lo + 1)
    # layers are placed and numbered by their index, the terminal's "#" column (the ONNX
    # topological position of the value's node), so both name a layer by the same number
    first = min(layer.index for c in linked for layer in c.layers)
    last = max(layer.index for c in linked for layer in c.layers)

    def x(i):
        return left + (plot_w * (i - first) / max(last - first, 1))

    def y(v):
        v = max(v or 10.0 ** lo, 10.0 ** lo)
        return top + plot_h * (hi - math.log10(v)) / (hi - lo)

    parts = [f'<svg id="layer-chart" role="img" aria-label="per-layer error" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#bbb"/>']
    for decade in range(lo, hi + 1):
        yy = y(10.0 ** decade)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">1e{decade}</text>')
    indices = sorted({layer.index for c in linked for layer in c.layers})
    step = max(1, len(indices) // 10)
    for i in indices[::step]:
        parts.append(f'<text class="tick" x="{x(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{i}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 34}" text-anchor="middle">layer # (as in the '
                 f'terminal: the ONNX node\'s topological position)</text>')
    parts.append(f'<text transform="translate(14,{top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
                 f'max|c - r| / max|r|</text>')
    if layer_rtol:
        yy = y(layer_rtol)
        parts.append(f'<line class="tolerance" x1="{left}" x2="{left + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" '
                     f'stroke="#555" stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{left + plot_w - 4}" y="{yy - 4:.1f}" text-anchor="end">layer tolerance {layer_rtol:g}</text>')
    for k, comparison in enumerate(linked):
        color = _COLORS[k % len(_COLORS)]
        points = " ".join(f"{x(layer.index):.1f},{y(layer.scaled_error):.1f}" for layer in comparison.layers)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>')
        for layer in comparison.layers:
            parts.append(f'<circle cx="{x(layer.index):.1f}" cy="{y(layer.scaled_error):.1f}" r="2.5" fill="{color}">'
                         f'<title>#{layer.index} {escape(layer.name)} ({escape(layer.op_type)}): '
                         f'{_num(layer.scaled_error)}</title></circle>')
        divergence = comparison.first_divergence
        if divergence is not None:
            at = next(layer for layer in comparison.layers if layer.name == divergence.name)
            cx, cy = x(at.index), y(at.scaled_error)
            parts.append(f'<circle class="first-divergence" cx="{cx:.1f}" cy="{cy:.1f}" r="7" fill="none" '
                         f'stroke="#c62828" stroke-width="2.5"/>')
            parts.append(f'<text x="{cx + 9:.1f}" y="{cy - 8:.1f}" fill="#c62828">first divergence: '
                         f'#{at.index} {escape(divergence.name)}</text>')
        below = top + plot_h + 48 + 16 * k
        parts.append(f'<rect x="{left + 10}" y="{below - 5}" width="12" height="3" fill="{color}"/>'
                     f'<text x="{left + 28}" y="{below}">{escape(comparison.link)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _histogram(report: Report) -> str:
    for comparison in report.comparisons:
        divergence = comparison.first_divergence
        if divergence is None or not divergence.histogram:
            continue
        h = divergence.histogram
        counts, edges = h["counts"], h["edges"]
        width, height, left, bottom, top = 640, 220, 50, 40, 15
        bar_w = (width - left - 10) / len(counts)
        peak = max(counts + [1])
        parts = [f'<svg id="diff-histogram" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
                 f'xmlns="http://www.w3.org/2000/svg">']
        for i, count in enumerate(counts):
            bh = (height - top - bottom) * count / peak
            bx = left + i * bar_w
            parts.append(f'<rect x="{bx:.1f}" y="{height - bottom - bh:.1f}" width="{bar_w - 2:.1f}" '
                         f'height="{bh:.1f}" fill="#5c6bc0"><title>1e{edges[i]} .. 1e{edges[i + 1]}: {count}</title></rect>')
            parts.append(f'<text x="{bx + bar_w / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle">{edges[i]}</text>')
        parts.append(f'<text x="{left + (width - left) / 2}" y="{height - 6}" text-anchor="middle">'
                     f'log10 |candidate - reference| at {escape(divergence.name)}</text>')
        parts.append("</svg>")
        extra = f'<p class="muted">exactly equal: {h.get("zeros", 0)}; non-finite: {h.get("non_finite", 0)}</p>'
        return "\n".join(parts) + extra
    return '<p class="muted">No first divergence, no histogram.</p>'


def _outputs(report: Report) -> str:
    from parity.core.metrics import OUTPUT_COLUMNS

    rows = []
    for c in report.comparisons:
        for o in c.outputs:
            figures = "".join(f"<td class=num>{_figure(getattr(o, col.field), col.spec)}</td>" for col in OUTPUT_COLUMNS)
            rows.append(
                f"<tr><td>{escape(c.link)}</td><td>{escape(o.name)}</td>"
                f"<td>{escape(str(list(o.reference_shape or ())))}</td>{figures}"
                f"<td>{_status(o.passed)}</td><td class=text>"
                f"{escape('; '.join(list(o.alignment) + ([o.error] if o.error else []) + list(o.notes)))}</td></tr>")
    headers = "".join(f"<th>{escape(col.header)}</th>" for col in OUTPUT_COLUMNS)
    return (f"<table><tr><th>link</th><th>output</th><th>shape</th>{headers}<th></th><th>alignment / notes</th></tr>"
            + "".join(rows) + "</table>")


def _figure(value, spec: str) -> str:
    if spec == "%":
        return "-" if value is None else f"{value:.2%}"
    return _num(value, spec)


def _evidence(report: Report) -> str:
    """One row per experiment: its name, then its figures as "key: value" lines (nested ones
    indented, yes/no for booleans) in a cell of bounded height, never a Python repr."""
    from parity.render.text import readable_lines

    if not report.verdict.evidence:
        return ""
    rows = []
    for entry in report.verdict.evidence:
        if isinstance(entry, dict):
            head_key = next((k for k in ("experiment", "link", "ranking") if k in entry), None)
            head = str(entry[head_key]) if head_key else ""
            rest = {k: v for k, v in entry.items() if k != head_key}
        else:
            head, rest = "", entry
        lines = "\n".join(escape(line) for line in readable_lines(rest))
        rows.append(f'<tr><td class=text>{escape(head)}</td><td><div class="kv">{lines}</div></td></tr>')
    return f"<h3>Evidence</h3><table><tr><th>experiment</th><th>what it measured</th></tr>{''.join(rows)}</table>"


def _unpaired(report: Report, limit: int = 500) -> str:
    """Each link's values with no counterpart in the other graph, with the reason."""
    parts = []
    for c in report.comparisons:
        if not c.unpaired:
            continue
        rows = "".join(f"<tr><td>{escape(u.name)}</td><td class=text>{escape(u.reason)}</td></tr>"
                       for u in c.unpaired[:limit])
        more = (f'<p class="muted">... and {len(c.unpaired) - limit} more in the JSON report</p>'
                if len(c.unpaired) > limit else "")
        parts.append(f"<h3>{escape(c.link)}: {len(c.unpaired)} unpaired</h3>"
                     f"<table><tr><th>value</th><th>why it has no counterpart</th></tr>{rows}</table>{more}")
    if not parts:
        return ""
    return ('<h2>Unpaired values</h2><p class="muted">Values of one graph with no counterpart in the other '
            "(fused, folded or renamed by the converter): not compared.</p>" + "".join(parts))


def _ranking(report: Report) -> str:
    """The compressed layers by their own cost (1 - cosine with only that layer compressed), as
    bars, and the fix; empty without a ranking."""
    ranking = report.ranking
    if not ranking:
        return ""
    layers = ranking.get("layers") or []
    notes = "".join(f"<li>{escape(n)}</li>" for n in ranking.get("notes") or [])
    if not layers:
        return f"<h2>Compressed layers by cost</h2><ul>{notes}</ul>"
    worst = max((x.get("cost") or 0.0 for x in layers), default=0.0) or 1.0
    rows, width, bar = [], 760, 420
    for k, layer in enumerate(layers[:40]):
        length = max(1.0, bar * (layer.get("cost") or 0.0) / worst)
        y = 10 + 20 * k
        cosine = layer.get("cosine")
        rows.append(f'<text x="0" y="{y + 11}" font-size="11">{escape(str(layer.get("rank")))}. '
                    f'{escape(str(layer.get("name")))[:48]}</text>'
                    f'<rect x="300" y="{y}" width="{length:.1f}" height="14" fill="#c0392b"/>'
                    f'<text x="{306 + length:.1f}" y="{y + 11}" font-size="11">cosine '
                    f'{"n/a" if cosine is None else f"{cosine:.6f}"}</text>')
    height = 20 + 20 * min(len(layers), 40)
    fix = ranking.get("fix") or {}
    fixed = ""
    if fix.get("kept"):
        fixed = (f"<p>Keeping {escape(', '.join(fix['kept']))} in float: cosine "
                 f"{escape(str(fix.get('before', {}).get('cosine')))} &rarr; {escape(str(fix.get('after', {}).get('cosine')))}, "
                 f"{'within' if fix.get('within_budget') else 'still over'} the budget {escape(str(ranking.get('budget')))}.</p>")
    return (f"<h2>Compressed layers by cost</h2><p class=\"muted\">Each bar: 1 - cosine of the outputs with only "
            f"that layer compressed (budget {escape(str(ranking.get('budget')))}).</p>"
            f'<svg width="{width}" height="{height}" role="img" aria-label="layer ranking">{"".join(rows)}</svg>'
            f"{fixed}{f'<ul>{notes}</ul>' if notes else ''}")


def _settings(settings) -> str:
    """A backend's settings as "key: value" lines (not a Python dict's repr)."""
    from parity.render.text import readable_lines

    if not settings:
        return ""
    return '<div class="kv">' + "\n".join(escape(line) for line in readable_lines(settings)) + "</div>"


def render(report: Report) -> str:
    v = report.verdict
    steps = "".join(f"<li>{escape(s)}</li>" for s in v.next_steps)
    backends = "".join(f"<tr><td>{escape(b.name)}</td><td>{escape(b.model)}</td><td>{escape(b.version)}</td>"
                       f"<td>{_settings(b.settings)}</td></tr>" for b in report.backends)
    inputs = "".join(f"<tr><td>{escape(i.name)}</td><td>{escape(str(list(i.shape)))}</td><td>{escape(i.dtype)}</td>"
                     f"<td>{escape(i.source)}</td><td>{escape('; '.join(i.notes))}</td></tr>" for i in report.inputs)
    alignment = "".join(f"<li>{escape(c.link)}, {escape(o.name)}: "
                        f"{escape('; '.join(o.alignment))}</li>"
                        for c in report.comparisons for o in c.outputs if o.alignment)
    notes = "".join(f"<li>{escape(n)}</li>" for n in report.notes + tuple(
        n for c in report.comparisons for n in c.notes))
    where = f"<p><b>Where:</b> {escape(v.where)}</p>" if v.where else ""
    from parity.render.text import target_lines

    targets = "".join(f"<li>{escape(line.removeprefix('target: '))}</li>" for line in target_lines(report))
    targets = f"<h2>Where MNN ran</h2><ul>{targets}</ul>" if targets else ""
    if report.compression:
        targets += f"<p><b>Compression:</b> {escape(str(report.compression.get('summary')))}</p>"
    findings = "".join(f"<li>{escape(f)}</li>" for f in report.findings)
    findings = f"<p><b>Findings:</b></p><ul>{findings}</ul>" if findings else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>parity report: {escape(v.kind)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>parity report</h1>
<p class="muted">schema {escape(report.schema)}, parity {escape(report.parity_version)}; tolerance
{escape(str(report.tolerance.get("rule", report.tolerance)))}</p>
<div class="verdict kind-{escape(v.kind)}"><h2 style="margin-top:0;border:0">Verdict: {escape(v.kind.upper())}</h2>
<p>{escape(v.summary)}</p>{where}{findings}{f"<p><b>Next steps:</b></p><ul>{steps}</ul>" if steps else ""}
{_evidence(report)}</div>
<h2>Outputs</h2>{_outputs(report)}
{_ranking(report)}
{_llm_chart(report)}<h2>Per-layer error</h2>{_layer_chart(report)}
{_unpaired(report)}
<h2>Differences at the first divergence</h2>{_histogram(report)}
<h2>Alignment</h2>{f"<ul>{alignment}</ul>" if alignment else '<p class="muted">No alignment was needed.</p>'}
<h2>Inputs</h2><table><tr><th>name</th><th>shape</th><th>dtype</th><th>source</th><th>notes</th></tr>{inputs}</table>
{targets}
<h2>Versions</h2><table><tr><th>framework</th><th>model</th><th>version</th><th>settings</th></tr>{backends}</table>
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""


def _llm_chart(report: Report) -> str:
    """An LLM check's per-step KL divergence and scaled logit error, one chart per link, a line
    per prompt (log scale: a quantized export sits decades above a float one)."""
    links = (report.llm or {}).get("links") or []
    charts = [_step_chart(link, figure) for link in links for figure in ("kl", "scaled_error")]
    if not charts:
        return ""
    return "<h2>Per step</h2>" + "".join(charts)


def _step_chart(link: dict, figure: str) -> str:
    prompts = [steps for steps in link.get("prompts") or [] if steps]
    values = [s.get(figure) for steps in prompts for s in steps]
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
    if not finite:
        return ""
    low, high = math.floor(math.log10(min(finite))), math.ceil(math.log10(max(finite)))
    high = max(high, low + 1)
    width, height, left, bottom = 640, 180, 48, 24
    longest = max(len(steps) for steps in prompts)
    colors = ("#5c6bc0", "#ef6c00", "#2e7d32", "#ad1457", "#00838f", "#6d4c41")

    def point(i, v):
        x = left + (width - left - 10) * (i / max(longest - 1, 1))
        y = 8 + (height - bottom - 8) * (high - math.log10(max(v, 10.0 ** low))) / (high - low)
        return f"{x:.1f},{y:.1f}"

    lines = []
    for n, steps in enumerate(prompts):
        points = " ".join(point(i, s[figure]) for i, s in enumerate(steps)
                          if isinstance(s.get(figure), (int, float)) and math.isfinite(s[figure]))
        lines.append(f'<polyline class="prompt" fill="none" stroke="{colors[n % len(colors)]}" stroke-width="2" '
                     f'points="{points}"><title>prompt {n + 1}</title></polyline>')
    label = {"kl": "KL(reference || export)", "scaled_error": "scaled logit error"}[figure]
    return (f'<figure><figcaption>{escape(str(link.get("link", "")))}: {label} per step (log scale, '
            f'1e{low} .. 1e{high}), one line per prompt</figcaption>'
            f'<svg class="steps" width="{width}" height="{height}" role="img">'
            f'<text x="2" y="14" font-size="11">1e{high}</text><text x="2" y="{height - bottom}" font-size="11">'
            f'1e{low}</text>{"".join(lines)}</svg></figure>')


def render_sweep(report) -> str:
    """A one-page HTML summary of a ``parity sweep``: pass/FAIL header, one row per pair with its
    exit code, verdict, where or error, and time."""
    results = report.results
    passed = sum(1 for r in results if r["passed"])
    rows = []
    for r in results:
        verdict = r["verdict"] or {}
        kind = verdict.get("kind", "error")
        rows.append(f"<tr class=\"{'pass' if r['passed'] else 'fail'}\"><td>{escape(r['name'])}</td>"
                    f"<td>{int(r['exit_code'])}</td><td>{escape(kind)}</td>"
                    f"<td>{escape(r.get('error') or verdict.get('summary') or '')}</td>"
                    f"<td>{escape(verdict.get('where') or '')}</td>"
                    f"<td>{escape(str(r.get('mnn_target', 'local')))}, {escape(str(r.get('mnn_precision', 'normal')))}</td>"
                    f"<td>{r['seconds']:.1f}</td></tr>")
    state = "PASS" if report.passed else "FAIL"
    elapsed = "" if getattr(report, "elapsed", None) is None else f"; {report.elapsed:.1f} s (wall clock)"
    title = f"parity sweep {report.target}" + (f" (shard {report.shard})" if report.shard else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}: {state}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}
tr.fail td {{ color: #b00020; }}</style></head>
<body>
<h1>{escape(title)}: {state}</h1>
<p>{passed} of {len(results)} pairs pass; exit code {int(report.exit_code)}{elapsed}; parity {escape(report.parity_version)}</p>
<table><tr><th>model</th><th>exit</th><th>verdict</th><th>summary or error</th><th>where</th><th>MNN run</th><th>s</th></tr>
{''.join(rows)}</table>
</body></html>
"""
