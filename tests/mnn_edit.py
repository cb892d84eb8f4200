"""Change one value of one constant inside an .mnn file (a test helper).

    alter_mnn_constant(src_mnn, dst_mnn, tensor_name=None, index=0, delta=1.0) -> tensor name

The edit goes through MNN's JSON round trip: dump the graph as JSON, edit it, convert the JSON
back (``MNNConvert -f JSON``). That runs in a child process (this file run as a script), in a
private temporary directory, so a converter crash cannot take pytest down and the converter's
scratch files stay out of the way.

A constant is a Const op's blob (float32s) or a float weight an op holds (a Convolution's
``weight``), named by the first tensor its op produces, as parity.mnn.graph names them. With no
``tensor_name``, the first float constant of at least 16 values is changed.

The JSON dump prints floats with six decimals, so every other float of the file is rounded
there too (by at most 5e-7): the altered file is not bit-identical elsewhere, only equal at
the JSON dump's precision.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

_MIN_VALUES = 16
_MARKER = "@mnn-edit-altered "


def alter_mnn_constant(src_mnn, dst_mnn, tensor_name: str | None = None, index: int = 0,
                       delta: float = 1.0) -> str:
    """Copy ``src_mnn`` to ``dst_mnn`` with value ``index`` of one float constant moved by
    ``delta``; return the name of the tensor changed."""
    args = [sys.executable, os.path.abspath(__file__), os.path.abspath(src_mnn),
            os.path.abspath(dst_mnn), str(index), repr(float(delta))]
    if tensor_name is not None:
        args.append(tensor_name)
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    with tempfile.TemporaryDirectory(prefix="mnn-edit-") as scratch:
        proc = subprocess.run(args, cwd=scratch, env=env, capture_output=True, text=True, timeout=300)
    # MNN's own prints reach the pipe whenever its C buffer flushes: look for the marker
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARKER)]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"alter_mnn_constant failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return json.loads(found[-1][len(_MARKER):])


# -- child side (run as a script) -----------------------------------------------------------
def _candidates(graph: dict):
    """(tensor name, list of values) for every float constant, in graph order."""
    names = graph["tensorName"]
    for op in graph["oplists"]:
        outs = op.get("outputIndexes") or []
        if not outs:
            continue
        main = op.get("main")
        if not isinstance(main, dict):
            continue
        tensor = names[outs[0]]
        if op.get("type") == "Const" and main.get("dataType") == "DT_FLOAT" and "float32s" in main:
            yield tensor, main["float32s"]
        elif isinstance(main.get("weight"), list) and main["weight"]:
            yield tensor, main["weight"]


def _write_dump(graph: dict, path: str) -> None:
    text = json.dumps(graph)
    # MNN prints and reads bare inf / nan, not JSON's Infinity / NaN
    text = re.sub(r"(?<=[\s\[,:])(-?)Infinity(?=[\s,\]}])", r"\1inf", text)
    text = re.sub(r"(?<=[\s\[,:])NaN(?=[\s,\]}])", "nan", text)
    Path(path).write_text(text)


def _main(src: str, dst: str, index: int, delta: float, tensor_name: str | None) -> None:
    import _tools  # MNN's converter binding (never the telemetry-sending mnnconvert wrapper)

    from parity.mnn.ops import load_dump

    dumped = os.path.abspath("graph.json")
    if not _tools.mnnconvert(["MNNConvert", "-f", "MNN", "--modelFile", src, "--JsonFile", dumped]) \
            or not os.path.exists(dumped):
        sys.exit(f"MNN's converter could not dump {src} as JSON")
    graph = load_dump(dumped)
    chosen = None
    for tensor, values in _candidates(graph):
        if tensor_name is None and len(values) >= _MIN_VALUES or tensor == tensor_name:
            chosen = tensor, values
            break
    if chosen is None:
        names = [t for t, _ in _candidates(graph)]
        sys.exit(f"no float constant {tensor_name or f'of >= {_MIN_VALUES} values'} in {src}; "
                 f"float constants: {names[:20]}")
    tensor, values = chosen
    if not -len(values) <= index < len(values):
        sys.exit(f"index {index} out of range for {tensor!r} ({len(values)} values)")
    values[index] = float(values[index]) + delta
    edited = os.path.abspath("edited.json")
    _write_dump(graph, edited)
    out = os.path.abspath("edited.mnn")
    _tools.mnnconvert(["MNNConvert", "-f", "JSON", "--modelFile", edited, "--MNNModel", out,
                       "--bizCode", graph.get("bizCode") or "parity"])
    if not os.path.exists(out) or os.path.getsize(out) == 0:
        sys.exit("MNN's converter could not turn the edited JSON back into an .mnn")
    _copy(out, dst)
    print(_MARKER + json.dumps(tensor), flush=True)


def _copy(src: str, dst: str) -> None:
    import shutil

    tmp = f"{dst}.tmp-{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


if __name__ == "__main__":
    _src, _dst, _index, _delta = sys.argv[1:5]
    _main(_src, _dst, int(_index), float(_delta), sys.argv[5] if len(sys.argv) > 5 else None)
