"""The sweep figure of the benchmark (issue 25): ``parity sweep -j 2`` over 200 small model pairs
against a hand-written loop over the same pairs in a pool of 2 processes started once.

The pairs are made here (onnx.helper, converted with parity's converter): small convolution and
matrix-product stacks of varied depth, width and input size, about as costly to run as the
shipped models. Both sides are measured as a user runs them, from a fresh interpreter: the
sweep's command against ``python -c HAND_LOOP DIR`` (which imports numpy, ONNX Runtime and MNN
in each of its 2 processes once, then per pair opens both models, runs them on random inputs and
compares; ONNX Runtime on one thread per process, as a pool of 2 on 2 cores wants: with its
default of a thread per core the loop is 1.6x slower here, which would flatter parity).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = 200

HAND_LOOP = """
import sys, glob, numpy as np
from multiprocessing import Pool

def init():
    global ort, MNN
    import onnxruntime as ort, MNN

def pair(onnx_path):
    mnn_path = onnx_path[:-5] + ".mnn"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one thread per process: the pool is the parallelism
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
             for i in session.get_inputs()}
    reference = session.run(None, feeds)
    module = MNN.nn.load_module_from_file(mnn_path, [i.name for i in session.get_inputs()],
                                          [o.name for o in session.get_outputs()])
    variables = []
    for i in session.get_inputs():
        v = MNN.expr.placeholder(list(feeds[i.name].shape), MNN.expr.NCHW, MNN.expr.float)
        v.write(feeds[i.name])
        variables.append(v)
    results = []
    for r, out in zip(reference, module.onForward(variables)):
        if out.data_format == MNN.expr.NC4HW4:
            out = MNN.expr.convert(out, MNN.expr.NCHW)
        results.append(bool(np.allclose(out.read(), r, atol=1e-3, rtol=1e-3)))
    return all(results)

if __name__ == "__main__":
    with Pool(2, initializer=init) as pool:
        ok = pool.map(pair, sorted(glob.glob(sys.argv[1] + "/*.onnx")), chunksize=1)
    print(sum(ok), len(ok))
"""


def make_pairs(directory: Path, count: int = PAIRS) -> Path:
    """``count`` small model pairs in ``directory`` (built once: kept when all are there)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from parity.mnn.converter import convert

    directory.mkdir(parents=True, exist_ok=True)
    if len(list(directory.glob("*.mnn"))) == count:
        return directory
    started = time.perf_counter()
    for k in range(count):
        rng = np.random.default_rng(k)
        channels, size, depth = int(rng.choice([4, 8, 16])), int(rng.choice([8, 16, 32])), int(rng.integers(2, 7))
        nodes, inits, previous = [], [], "x"
        for i in range(depth):
            w = (0.3 * rng.standard_normal((channels, channels, 3, 3))).astype(np.float32)
            inits += [numpy_helper.from_array(w, f"w{i}"),
                      numpy_helper.from_array((0.1 * rng.standard_normal(channels)).astype(np.float32), f"b{i}")]
            nodes += [helper.make_node("Conv", [previous, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                      helper.make_node("Relu" if i % 2 else "Tanh", [f"c{i}"], [f"a{i}"])]
            previous = f"a{i}"
        inits.append(numpy_helper.from_array((0.1 * rng.standard_normal((channels, 10))).astype(np.float32), "fc"))
        nodes += [helper.make_node("GlobalAveragePool", [previous], ["pooled"]),
                  helper.make_node("Flatten", ["pooled"], ["flat"]),
                  helper.make_node("MatMul", ["flat", "fc"], ["logits"])]
        graph = helper.make_graph(
            nodes, f"pair{k}", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, channels, size, size])],
            [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 10])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        path = directory / f"pair{k:03d}.onnx"
        onnx.save(model, str(path))
        convert(path, path.with_suffix(".mnn"))
    print(f"(made {count} model pairs in {time.perf_counter() - started:.0f} s)", flush=True)
    return directory


def figure(repeat: int, cache: Path) -> dict:
    directory = make_pairs(cache / f"sweep-{PAIRS}-pairs")
    hand_argv = [sys.executable, "-c", HAND_LOOP, str(directory)]
    sweep_argv = [sys.executable, "-m", "parity", "sweep", str(directory), "-j", "2", "-q",
                  "--json", str(cache / "sweep-report.json")]

    def seconds(argv, expect=(0,)):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        took = time.perf_counter() - start
        if proc.returncode not in expect:
            raise SystemExit(f"bench: {' '.join(argv[:4])} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
        return took, proc.stdout

    _, out = seconds(hand_argv)  # warm the file cache; the hand loop must find every pair equal
    if out.split()[-2:] != [str(PAIRS), str(PAIRS)]:  # MNN prints the CPU's features first
        raise SystemExit(f"bench: the hand-written loop found {out.strip()} pairs equal, expected {PAIRS}")
    hand, ours = [], []
    for _ in range(max(3, repeat)):
        hand.append(seconds(hand_argv)[0])
        ours.append(seconds(sweep_argv)[0])
    ratio = min(ours) / min(hand)
    return {"id": "h", "name": f"parity sweep -j 2 over {PAIRS} small pairs vs a hand-written loop in a pool of 2 "
                               f"(wall time, min of {len(hand)})",
            "baseline_s": min(hand), "measured_s": min(ours), "ratio": ratio, "target": "<= 1.3",
            "ok": ratio <= 1.3, "per_pair_ms": 1000 * min(ours) / PAIRS}
