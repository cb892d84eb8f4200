#!/usr/bin/env python
"""parity's performance figures, each measured beside its baseline in the same run.

    tox run -e bench            (the benchmark's environment: parity + polygraphy)
    python scripts/bench.py [--repeat 5] [--json bench.json]

Every figure is a ratio or a number printed with its target; nothing here is a unit test.
polygraphy is needed only for figure (c) and is installed in the bench environment only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TRANSFORMER = ROOT / "models" / "transformer.onnx"


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cli(*args, expect: int = 0) -> None:
    proc = subprocess.run([sys.executable, "-m", "parity", *map(str, args)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != expect:  # a failing run is fast and would flatter every figure
        raise SystemExit(f"bench: parity {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr.strip()}")


def figure_layers_vs_plain(repeat: int) -> dict:
    mnn = TRANSFORMER.with_suffix(".mnn")
    plain = median_seconds(lambda: cli("check", TRANSFORMER, mnn, "--json", "-"), repeat)
    layers = median_seconds(lambda: cli("check", TRANSFORMER, mnn, "--layers", "--json", "-"), repeat)
    return {
        "id": "b", "name": "--layers vs plain check (CLI wall time, shipped transformer)",
        "baseline_s": plain, "measured_s": layers, "ratio": layers / plain, "target": "<= 2.0",
        "ok": layers / plain <= 2.0,
    }


def figure_capture_vs_polygraphy(repeat: int) -> dict:
    import numpy as np

    from parity.backends.onnxruntime import OnnxRuntimeBackend
    from parity.layers import OnnxGraph

    feeds = {"src": np.random.default_rng(0).standard_normal((1, 64, 32)).astype(np.float32),
             "src_mask": np.ones((1, 64), np.float32)}
    try:
        from polygraphy import constants
        from polygraphy.backend.onnx import BytesFromOnnx, ModifyOutputs, OnnxFromPath
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    except ImportError:
        return {"id": "c", "name": "parity ORT capture vs polygraphy mark all", "skipped":
                "polygraphy is not installed (tox run -e bench installs it)", "ok": None}

    def polygraphy_capture():
        build = SessionFromOnnx(BytesFromOnnx(ModifyOutputs(OnnxFromPath(str(TRANSFORMER)), outputs=constants.MARK_ALL)))
        with OnnxrtRunner(build) as runner:
            runner.infer(feeds)

    backend = OnnxRuntimeBackend(TRANSFORMER)
    backend.open()

    def parity_capture():
        backend._proto = None  # from the file each time, as polygraphy does
        backend._sessions = {}
        graph = OnnxGraph(backend.model_proto())
        backend.capture(feeds, [v.name for v in graph.values])

    polygraphy_capture()  # warm both (imports, first-session costs)
    parity_capture()
    base = median_seconds(polygraphy_capture, repeat)
    ours = median_seconds(parity_capture, repeat)
    backend.close()
    return {
        "id": "c", "name": "parity ORT capture vs polygraphy mark all (in-process: load, mark, session, run)",
        "baseline_s": base, "measured_s": ours, "ratio": ours / base, "target": "<= 1.0",
        "ok": ours / base <= 1.0,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = [figure_layers_vs_plain(args.repeat), figure_capture_vs_polygraphy(args.repeat)]
    for f in figures:
        if f.get("skipped"):
            print(f"({f['id']}) {f['name']}: skipped, {f['skipped']}")
            continue
        mark = "ok" if f["ok"] else "MISSED"
        print(f"({f['id']}) {f['name']}: {f['measured_s']:.3f} s vs {f['baseline_s']:.3f} s "
              f"= {f['ratio']:.2f}x, target {f['target']}: {mark}")
    if args.json:
        args.json.write_text(json.dumps({"figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
