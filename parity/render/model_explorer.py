"""Per-node overlay for Google Model Explorer (its GraphNodeData "node data" JSON format).

Results are keyed by ONNX tensor names, which Model Explorer matches against each node's
output tensor names, so the error is painted on the user's ONNX graph. The value is the
layer's scaled error (max|c - r| / max|r|) on the first link that has per-layer data; the
thresholds colour within tolerance green, up to ten times it amber, beyond red, and the first
divergence is outlined in red whatever its value. Names stay exact, unlike in the other
renderers (see parity.core.escape): they are keys Model Explorer matches against the graph, and JSON
escapes them (the file is ASCII, control characters and all).
"""

from __future__ import annotations

import json

from parity.core.report import Report


def render(report: Report) -> str:
    comparison = next((c for c in report.comparisons if c.layers), None)
    results: dict = {}
    layer_rtol = report.tolerance.get("layer_rtol") or 1e-2
    if comparison is not None:
        for layer in comparison.layers:
            if layer.scaled_error is None:
                continue
            entry = {"value": layer.scaled_error}
            if comparison.first_divergence and layer.name == comparison.first_divergence.name:
                entry["bgColor"] = "#d32f2f"
                entry["textColor"] = "#ffffff"
            results[layer.name] = entry
    data = {
        "results": results,
        "thresholds": [
            {"value": layer_rtol, "bgColor": "#c8e6c9"},
            {"value": 10 * layer_rtol, "bgColor": "#ffe082"},
            {"value": 1e300, "bgColor": "#ef9a9a"},
        ],
    }
    return json.dumps(data, indent=2)
