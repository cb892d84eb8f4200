#!/usr/bin/env python
"""Run parity over the ONNX backend node tests: a real test suite nobody here wrote.

    python scripts/onnx_node_sweep.py [--out sweep] [-j 2] [--limit N] [--filter conv]

The onnx wheel ships the generators of its backend node tests; this regenerates them (model +
inputs + expected outputs), keeps those ONNX Runtime passes, converts each to MNN and runs
``parity check`` on the expected inputs (one child process per test, with a time limit).
Ground truth is the test's own expected output: MNN is wrong when it differs from it beyond
ONNX's test tolerance (rtol 1e-3, atol 1e-7; exact for integers). The summary counts:

- detected: MNN wrong and parity reports a mismatch (by verdict: conversion, runtime, ...);
- missed: MNN wrong and parity passes it;
- false alarm: MNN right and parity reports a mismatch;
- not comparable: conversion failed, MNN crashed, inputs parity cannot feed, ...

Writes OUT/summary.json (every test) and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def generate(directory: Path) -> list[Path]:
    """Write every node test the onnx wheel can generate: DIR/node/<test>/model.onnx and
    test_data_set_N/{input,output}_K.pb (tensor inputs only; the rest is skipped)."""
    from onnx import numpy_helper
    from onnx.backend.test.case import node

    for case in node.collect_testcases():
        if not case.model or not case.data_sets:
            continue
        out = directory / "node" / case.name
        graph_inputs = case.model.graph.input
        if not all(i.type.HasField("tensor_type") for i in graph_inputs):
            continue
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.onnx").write_bytes(case.model.SerializeToString())
        for i, (inputs, outputs) in enumerate(case.data_sets):
            data = out / f"test_data_set_{i}"
            data.mkdir(exist_ok=True)
            try:
                for j, array in enumerate(inputs):
                    (data / f"input_{j}.pb").write_bytes(numpy_helper.from_array(array, graph_inputs[j].name).SerializeToString())
                for j, array in enumerate(outputs):
                    name = case.model.graph.output[j].name
                    (data / f"output_{j}.pb").write_bytes(numpy_helper.from_array(array, name).SerializeToString())
            except Exception:  # sequences, maps, optionals: not tensors parity compares
                (out / "model.onnx").unlink(missing_ok=True)
                break
    return sorted(p for p in (directory / "node").iterdir() if (p / "model.onnx").exists())


def _read_set(test: Path):
    import onnx
    from onnx import numpy_helper

    data = test / "test_data_set_0"
    model = onnx.load(str(test / "model.onnx"))
    initializers = {i.name for i in model.graph.initializer}
    input_names = [i.name for i in model.graph.input if i.name not in initializers]
    output_names = [o.name for o in model.graph.output]

    def load(prefix, names):
        arrays = {}
        for i, name in enumerate(names):
            path = data / f"{prefix}_{i}.pb"
            if not path.exists():
                return None
            proto = onnx.TensorProto()
            proto.ParseFromString(path.read_bytes())
            arrays[name] = numpy_helper.to_array(proto)
        return arrays

    return load("input", input_names), load("output", output_names)


def _close(actual, expected) -> bool:
    import numpy as np

    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.size != expected.size:
        return False
    actual = actual.reshape(expected.shape)
    if expected.dtype.kind in "iub":
        return bool(np.array_equal(actual.astype(np.int64), expected.astype(np.int64)))
    return bool(np.allclose(actual.astype(np.float64), expected.astype(np.float64), rtol=1e-3, atol=1e-7,
                            equal_nan=True))


def run_one(test: Path, workdir: Path, strict: bool = False) -> dict:
    """Everything about one node test; runs inside a child process."""
    from parity import ParityError
    from parity.backends.mnn import MnnBackend
    from parity.backends.onnxruntime import OnnxRuntimeBackend
    from parity.mnn.converter import convert
    from parity.checking.pipeline import check

    record = {"test": test.name}
    feeds, expected = _read_set(test)
    if feeds is None or expected is None or not feeds:
        return dict(record, status="no data")
    try:
        with OnnxRuntimeBackend(test / "model.onnx") as ort:
            got = ort.run(feeds).outputs
    except ParityError as exc:
        return dict(record, status="ort fails", detail=str(exc)[:200])
    if not all(_close(got[n], expected[n]) for n in expected):
        return dict(record, status="ort wrong")
    mnn_path = workdir / f"{test.name}.mnn"
    try:
        convert(test / "model.onnx", mnn_path, timeout=60)
    except ParityError as exc:
        return dict(record, status="convert fails", detail=str(exc)[:200])
    try:
        with MnnBackend(mnn_path, timeout=60) as mnn:
            mnn_out = mnn.run(feeds).outputs
    except ParityError as exc:
        return dict(record, status="mnn fails", detail=str(exc)[:200])
    names = list(expected)
    mnn_names = list(mnn_out)
    pairs = list(zip(names, mnn_names)) if len(names) == len(mnn_names) else []
    mnn_right = bool(pairs) and all(_close(mnn_out[m], expected[n]) for n, m in pairs)
    try:
        from parity.core.metrics import Tolerance

        tolerance = Tolerance(atol=1e-7, rtol=1e-3) if strict else Tolerance()
        report = check([test / "model.onnx", mnn_path], inputs=feeds, timeout=60, allow_nonfinite=True,
                       tolerance=tolerance)
    except ParityError as exc:
        return dict(record, status="parity error", mnn_right=mnn_right, detail=str(exc)[:300])
    flagged = not report.passed
    outcome = ("detected" if flagged and not mnn_right else "missed" if not mnn_right else
               "false alarm" if flagged else "agree")
    first = report.comparisons[0].first_divergence
    return dict(record, status="compared", mnn_right=mnn_right, parity_passed=report.passed,
                outcome=outcome, verdict=report.verdict.kind, where=report.verdict.where,
                summary=report.verdict.summary[:400], op=first.op_type if first else None,
                mnn_op=next((e.get("op") for e in report.verdict.evidence
                             if e.get("experiment") == "numpy reference of the MNN op"), None))


def _child(test: str, strict: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="parity-sweep-") as d:
        result = run_one(Path(test), Path(d), strict=strict)
    print("SWEEP-RESULT " + json.dumps(result))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("sweep"))
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="only the first N tests")
    parser.add_argument("--filter", default="", help="only tests whose name contains this")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per test")
    parser.add_argument("--strict", action="store_true",
                        help="check at the ground truth's own tolerance (--atol 1e-7 --rtol 1e-3) instead "
                             "of parity's defaults, which tolerate MNN's tanh-GELU and Winograd differences")
    parser.add_argument("--rerun", type=Path, metavar="SUMMARY.json",
                        help="only the tests a previous run found MNN wrong in (or flagged)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        _child(args.one, strict=args.strict)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "data"
    if not (data / "node").exists():
        print(f"generating the ONNX node tests into {data} ...", file=sys.stderr)
        tests = generate(data)
    else:
        tests = sorted(p for p in (data / "node").iterdir() if (p / "model.onnx").exists())
    tests = [t for t in tests if args.filter in t.name]
    if args.rerun:
        previous = json.loads(args.rerun.read_text())["results"]
        keep = {r["test"] for r in previous if r.get("status") == "compared" and
                (not r.get("mnn_right") or not r.get("parity_passed"))}
        tests = [t for t in tests if t.name in keep]
    if args.limit:
        tests = tests[: args.limit]
    started = time.time()
    done = Counter()

    def one(test: Path) -> dict:
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", str(test)] + (["--strict"] if args.strict else []),
                                  capture_output=True,
                                  text=True, timeout=args.timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        except subprocess.TimeoutExpired:
            return {"test": test.name, "status": "timeout"}
        for line in proc.stdout.splitlines():
            if line.startswith("SWEEP-RESULT "):
                return json.loads(line[len("SWEEP-RESULT "):])
        return {"test": test.name, "status": f"sweep child died (code {proc.returncode})",
                "detail": proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else ""}

    results = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(one, tests):
            results.append(result)
            done[result.get("outcome") or result["status"]] += 1
            if len(results) % 50 == 0:
                print(f"  {len(results)}/{len(tests)} tests, {time.time() - started:.0f} s: {dict(done)}",
                      file=sys.stderr)
    compared = [r for r in results if r["status"] == "compared"]
    wrong = [r for r in compared if not r["mnn_right"]]
    detected = [r for r in wrong if not r["parity_passed"]]
    verdicts = Counter(r["verdict"] for r in detected)
    summary = {
        "tests": len(results),
        "statuses": dict(Counter(r["status"] for r in results)),
        "compared": len(compared),
        "mnn_wrong": len(wrong),
        "detected": len(detected),
        "missed": [r["test"] for r in wrong if r["parity_passed"]],
        "false_alarms": [r["test"] for r in compared if r["mnn_right"] and not r["parity_passed"]],
        "verdicts": dict(verdicts),
        "undetermined_fraction": (verdicts.get("undetermined", 0) / len(detected)) if detected else 0.0,
        "seconds": round(time.time() - started, 1),
    }
    (args.out / "summary.json").write_text(json.dumps({"summary": summary, "results": results}, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
