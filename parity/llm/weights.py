"""An export's weights against a fresh export's, layer by layer.

llmexport writes deterministic weights (two exports of one model with the same settings give
the same llm.mnn.weight, byte for byte: measured), so a layer whose bytes differ from a fresh
export's was changed after export, or made from other weights or settings. The layers and their
byte ranges in llm.mnn.weight come from llm.mnn.json, which llmexport leaves next to llm.mnn
(each weighted op's ``external``: offset, then the sizes of its weight, scales and bias).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LayerDiff:
    name: str  # the op's name: "/layers.1/mlp/down_proj/Linear"
    op_type: str
    bytes_differing: int
    size: int


def layers(json_path: Path) -> list[tuple[str, str, int, int]]:
    """(op name, op type, offset, size) of every op whose data is in the weight file."""
    data = json.loads(Path(json_path).read_text(encoding="utf-8"))
    out = []
    for op in data.get("oplists", ()):
        main = op.get("main")
        if not isinstance(main, dict):
            continue
        external = main.get("external")
        if external is None:
            external = next((v.get("external") for v in main.values()
                             if isinstance(v, dict) and v.get("external")), None)
        if external and len(external) >= 2:
            out.append((op.get("name", "?"), op.get("type", "?"), int(external[0]), int(sum(external[1:]))))
    return out


def compare(given, fresh) -> list[LayerDiff] | None:
    """The layers whose bytes differ between two exports (``folders.MNNExport``), in file order;
    None when they cannot be compared by layer (no llm.mnn.json, other layouts)."""
    json_given = given.model_file.with_name(given.model_file.name + ".json")
    json_fresh = fresh.model_file.with_name(fresh.model_file.name + ".json")
    if not json_given.is_file() or not json_fresh.is_file():
        return None
    ranges = layers(json_given)
    if [r[2:] for r in ranges] != [r[2:] for r in layers(json_fresh)]:
        return None
    import numpy as np

    a = np.fromfile(given.weight_file, dtype=np.uint8)
    b = np.fromfile(fresh.weight_file, dtype=np.uint8)
    if a.size != b.size:
        return None
    out = []
    for name, op_type, offset, size in ranges:
        n = int(np.count_nonzero(a[offset:offset + size] != b[offset:offset + size]))
        if n:
            out.append(LayerDiff(name, op_type, n, size))
    return out
