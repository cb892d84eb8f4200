"""The realistic tier of the benchmark (issue 16): a BERT-base-sized encoder and a ResNet-50,
built with torch from code (random weights, nothing downloaded), exported with torch.onnx and
converted with MNN's converter once, cached between runs.

    python scripts/bench.py --tier realistic [--repeat 3] [--cache DIR]

Per model, measured side by side in one run (min and median of the repetitions):
  R1  parity check against a minimal hand-written ORT + MNN script doing the same work
  R2  --layers against plain check
  R3  time to a located verdict on a planted conversion bug (BERT-base) against the bisection
      MNN's testMNNFromOnnx.py DEBUG mode does (cut, convert, run, compare, halve), re-created
      here: MNN 3.6.1's script itself never ends on this model (its dominator path starts at
      the graph's first node, an Identity of a weight, which does not dominate the failing
      one, and __get_dom_path loops for ever); also the location alone (--no-diagnose), which
      is what the bisection gives
  R4  peak RSS of parity and its children (sampled over the process tree) against the model's
      size on disk
  R5  a 1.2e9-parameter stack (written with onnx.helper, weights as external data) checked
      with --layers --max-memory 4G: finishes; peak RSS against 2 x weights + 4 GB + 1 GB
Every model is built once and cached (--cache; about 7 GB with the 1B stack).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_common import HAND_WRITTEN  # the minimal script of bench.py's figure (a)

ROOT = Path(__file__).resolve().parents[1]


# -- models, written out (no transformers, no torchvision) ----------------------------------------
def bert_base():
    import torch
    from torch import nn

    class Encoder(nn.Module):
        """BERT-base's shape: 12 post-LN layers, width 768, 12 heads, MLP 3072, GELU."""

        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(30522, 768)
            self.position = nn.Parameter(torch.randn(1, 128, 768) * 0.02)
            layer = nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0, activation="gelu", batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 12, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(768)

        def forward(self, input_ids):
            return self.norm(self.encoder(self.embed(input_ids) + self.position))

    torch.manual_seed(0)
    model = Encoder().eval()
    with torch.no_grad():  # nn.TransformerEncoder clones one layer: give each its own weights,
        for name, parameter in model.encoder.named_parameters():  # or the export shares them
            if parameter.dim() > 1:
                parameter.normal_(0, 0.02)
    return model, (torch.randint(0, 30522, (1, 128)),), ["input_ids"]


def resnet50():
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, stride):
            super().__init__()
            cout = mid * 4
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
            cin = 64
            for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                for b in range(blocks):
                    layers.append(Bottleneck(cin, mid, stride if b == 0 else 1))
                    cin = mid * 4
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(2048, 1000)

        def forward(self, x):
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))

    torch.manual_seed(0)
    model = ResNet50().eval()
    with torch.no_grad():  # give BatchNorm real statistics, as a trained model has
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model, (torch.randn(1, 3, 224, 224),), ["x"]


def write_llm_1b(directory: Path, blocks: int = 24, width: int = 2048, heads: int = 16, seq: int = 32,
                 vocab: int = 4096) -> Path:
    """A decoder-like stack of a billion parameters (24 pre-LN blocks of width 2048, MLP 8192:
    1.2e9 weights, 4.8 GB in float32), written as ONNX with onnx.helper, its weights generated
    block by block into one external-data file (torch would hold the model and its export in
    memory at once). No mask: every block is attention + MLP with residuals."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    directory.mkdir(parents=True, exist_ok=True)
    onnx_path, data_name = directory / "llm-1b.onnx", "llm-1b.weights"
    rng = np.random.default_rng(0)
    initializers, nodes, offset = [], [], 0
    hd = width // heads
    with open(directory / data_name, "wb") as data:
        def weight(name, shape, scale=0.02, value=None):
            nonlocal offset
            array = (value if value is not None else rng.standard_normal(shape, dtype=np.float32) * scale)
            raw = np.ascontiguousarray(array, np.float32).tobytes()
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
            tensor.data_location = TensorProto.EXTERNAL
            for key, val in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, val
            data.write(raw)
            offset += len(raw)
            initializers.append(tensor)
            return name

        def const(name, values):
            initializers.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
            return name

        split_heads = const("split_heads", [1, seq, heads, hd])
        merge_heads = const("merge_heads", [1, seq, width])
        nodes.append(helper.make_node("Gather", [weight("embed", (vocab, width)), "input_ids"], ["h0"]))
        h = "h0"
        ones, zeros = np.ones(width, np.float32), np.zeros(width, np.float32)
        for b in range(blocks):
            p = f"b{b}"
            nodes.append(helper.make_node("LayerNormalization", [h, weight(f"{p}.ln1.w", (width,), value=ones),
                                                                 weight(f"{p}.ln1.b", (width,), value=zeros)],
                                          [f"{p}.ln1"], axis=-1, epsilon=1e-5, name=f"/{p}/ln1"))
            for proj in "qkv":
                nodes += [
                    helper.make_node("MatMul", [f"{p}.ln1", weight(f"{p}.{proj}.w", (width, width))],
                                     [f"{p}.{proj}"], name=f"/{p}/attn/{proj}_proj/MatMul"),
                    helper.make_node("Reshape", [f"{p}.{proj}", split_heads], [f"{p}.{proj}.r"]),
                    helper.make_node("Transpose", [f"{p}.{proj}.r"], [f"{p}.{proj}.t"],
                                     perm=[0, 2, 3, 1] if proj == "k" else [0, 2, 1, 3]),
                ]
            nodes += [
                helper.make_node("MatMul", [f"{p}.q.t", f"{p}.k.t"], [f"{p}.scores"], name=f"/{p}/attn/scores"),
                helper.make_node("Mul", [f"{p}.scores", weight(f"{p}.scale", (1,), value=np.array([hd ** -0.5]))],
                                 [f"{p}.scaled"]),
                helper.make_node("Softmax", [f"{p}.scaled"], [f"{p}.probs"], axis=-1),
                helper.make_node("MatMul", [f"{p}.probs", f"{p}.v.t"], [f"{p}.ctx"]),
                helper.make_node("Transpose", [f"{p}.ctx"], [f"{p}.ctx.t"], perm=[0, 2, 1, 3]),
                helper.make_node("Reshape", [f"{p}.ctx.t", merge_heads], [f"{p}.ctx.m"]),
                helper.make_node("MatMul", [f"{p}.ctx.m", weight(f"{p}.o.w", (width, width))], [f"{p}.attn"],
                                 name=f"/{p}/attn/o_proj/MatMul"),
                helper.make_node("Add", [h, f"{p}.attn"], [f"{p}.res1"]),
                helper.make_node("LayerNormalization", [f"{p}.res1", weight(f"{p}.ln2.w", (width,), value=ones),
                                                        weight(f"{p}.ln2.b", (width,), value=zeros)],
                                 [f"{p}.ln2"], axis=-1, epsilon=1e-5),
                helper.make_node("MatMul", [f"{p}.ln2", weight(f"{p}.up.w", (width, 4 * width))], [f"{p}.up"],
                                 name=f"/{p}/mlp/up_proj/MatMul"),
                helper.make_node("Sigmoid", [f"{p}.up"], [f"{p}.gate"]),
                helper.make_node("Mul", [f"{p}.up", f"{p}.gate"], [f"{p}.act"]),
                helper.make_node("MatMul", [f"{p}.act", weight(f"{p}.down.w", (4 * width, width))], [f"{p}.down"],
                                 name=f"/{p}/mlp/down_proj/MatMul"),
                helper.make_node("Add", [f"{p}.res1", f"{p}.down"], [f"{p}.out"]),
            ]
            h = f"{p}.out"
        nodes.append(helper.make_node("LayerNormalization", [h, weight("lnf.w", (width,), value=ones),
                                                             weight("lnf.b", (width,), value=zeros)],
                                      ["out"], axis=-1, epsilon=1e-5))
    graph = helper.make_graph(nodes, "llm_1b", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, seq, width])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, onnx_path)  # the weights are already in llm-1b.weights
    return onnx_path


MODELS = {"bert-base": bert_base, "resnet50": resnet50}


def build(name: str, cache: Path) -> tuple[Path, Path]:
    """The model's .onnx and .mnn in ``cache``, made once."""
    onnx_path, mnn_path = cache / f"{name}.onnx", cache / f"{name}.mnn"
    if not onnx_path.exists() or not (cache / f"{name}.version").exists():  # built by an older builder
        for old in (onnx_path, mnn_path):
            old.unlink(missing_ok=True)
    if not onnx_path.exists():
        import torch

        model, args, inputs = MODELS[name]()
        cache.mkdir(parents=True, exist_ok=True)
        print(f"  building {name}: exporting to ONNX", flush=True)
        torch.onnx.export(model, args, str(onnx_path), input_names=inputs, output_names=["out"],
                          opset_version=17, dynamo=False)
        (cache / f"{name}.version").write_text("2\n")
    if not mnn_path.exists():
        from parity.mnn.converter import convert

        print(f"  building {name}: converting to MNN", flush=True)
        convert(onnx_path, mnn_path, timeout=1800)
    return onnx_path, mnn_path


# -- measuring ----------------------------------------------------------------------------------
def _tree_rss(pid: int) -> int:
    """Bytes resident in ``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack.extend(children.get(current, []))
    return total


def run_measured(argv: list[str], ok=(0, 1)) -> tuple[float, int]:
    """(seconds, peak bytes of the whole process tree) of one command, whose exit code must be
    one of ``ok`` (a check may find a difference; the hand-written script must succeed)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if proc.returncode not in ok:
        raise SystemExit(f"bench: {' '.join(argv[-6:])} exited {proc.returncode}: {err.strip()[-500:]}")
    return seconds, peak[0]


def _stats(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def figures(repeat: int, cache: Path) -> list[dict]:
    results = []
    for name in MODELS:
        onnx_path, mnn_path = build(name, cache)
        size = onnx_path.stat().st_size + sum(f.stat().st_size for f in cache.glob(f"{name}.onnx*") if f != onnx_path)
        hand_argv = [sys.executable, "-c", HAND_WRITTEN, str(onnx_path), str(mnn_path)]
        check_argv = [sys.executable, "-m", "parity", "check", str(onnx_path), str(mnn_path), "--json", "-", "-q"]
        hand, plain, layers, peaks = [], [], [], {"plain": 0, "layers": 0}
        for _ in range(repeat):
            hand.append(run_measured(hand_argv, ok=(0,))[0])
            seconds, peak = run_measured(check_argv)
            plain.append(seconds)
            peaks["plain"] = max(peaks["plain"], peak)
            seconds, peak = run_measured(check_argv + ["--layers"])
            layers.append(seconds)
            peaks["layers"] = max(peaks["layers"], peak)
        (hand_min, hand_med), (plain_min, plain_med), (layers_min, layers_med) = map(_stats, (hand, plain, layers))
        limit = 2.0 if name == "bert-base" else 1.5  # issue 25's limits; the README's goal is 1.5 for both
        results += [
            {"id": f"R1 {name}", "name": f"parity check vs a minimal hand-written script ({name})",
             "measured_s": plain_min, "baseline_s": hand_min, "ratio": plain_min / hand_min,
             "median_ratio": plain_med / hand_med, "target": "<= 1.1", "ok": plain_min / hand_min <= 1.1},
            {"id": f"R2 {name}", "name": f"--layers vs plain check ({name})",
             "measured_s": layers_min, "baseline_s": plain_min, "ratio": layers_min / plain_min,
             "median_ratio": layers_med / plain_med, "target": f"<= {limit:g}" + (" (goal 1.5)" if limit > 1.5 else ""),
             "ok": layers_min / plain_min <= limit},
            {"id": f"R4 {name}", "name": f"peak RSS of parity and its children ({name}, {size / 2**20:.0f} MiB on disk)",
             "value": peaks["layers"] / 2**20, "unit": "MiB", "plain_mib": peaks["plain"] / 2**20,
             "model_mib": size / 2**20, "target": "reported", "ok": None},
        ]
    results.extend(figure_verdict_vs_bisection(cache, repeat=repeat))
    results.append(figure_billion(cache))
    return results


def figure_billion(cache: Path) -> dict:
    """R5: the 1B-parameter stack checked with --layers --max-memory 4G: it finishes, and the
    peak RSS of parity and its children against 2 x the weights + 4 GB + 1 GB."""
    directory = cache / "llm-1b"
    onnx_path, mnn_path = directory / "llm-1b.onnx", directory / "llm-1b.mnn"
    if not (directory / "version").exists() or (directory / "version").read_text() != "1\n":
        for old in directory.glob("llm-1b*"):
            old.unlink()
    if not onnx_path.exists():
        print("  building llm-1b: writing 1.2e9 weights", flush=True)
        write_llm_1b(directory)
        (directory / "version").write_text("1\n")
    if not mnn_path.exists():
        from parity.mnn.converter import convert

        print("  building llm-1b: converting to MNN", flush=True)
        convert(onnx_path, mnn_path, timeout=3600)
    weights = sum(f.stat().st_size for f in directory.glob("llm-1b.onnx*")) + (directory / "llm-1b.weights").stat().st_size
    report = directory / "check.json"
    seconds, peak = run_measured([sys.executable, "-m", "parity", "check", str(onnx_path), str(mnn_path), "--layers",
                                  "--max-memory", "4G", "--json", str(report), "-q"])
    import json

    data = json.loads(report.read_text())
    layers = len(data["comparisons"][0]["layers"] or [])
    limit = 2 * weights + 5 * 2**30
    return {"id": "R5 llm-1b", "name": f"1.2e9-parameter stack, --layers --max-memory 4G ({weights / 2**30:.2f} GiB of "
            f"weights; {layers} layers compared, verdict {data['verdict']['kind']}, {seconds:.0f} s)",
            "value": peak / 2**30, "limit": limit / 2**30, "ok": peak <= limit}


def _planted(cache: Path, name: str, node_part: str, factor: float) -> tuple[Path, Path, str]:
    """A conversion bug planted for R3: the .mnn converted from a copy of the ONNX whose weight
    feeding the MatMul named like ``node_part`` is scaled by ``factor`` (the reference stays the
    unchanged ONNX). Returns (the bad ONNX, its .mnn, the MatMul's output)."""
    import onnx
    from onnx import numpy_helper

    from parity.mnn.converter import convert

    bad_onnx, bad_mnn = cache / f"{name}-planted.onnx", cache / f"{name}-planted.mnn"
    model = onnx.load(str(cache / f"{name}.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "MatMul" and node_part in n.name)
    for i, init in enumerate(model.graph.initializer):
        if init.name in node.input:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, init.name))
    if not bad_mnn.exists():
        onnx.save(model, str(bad_onnx))
        convert(bad_onnx, bad_mnn, timeout=1800)
    return bad_onnx, bad_mnn, node.output[0]


def figure_verdict_vs_bisection(cache: Path, name: str = "bert-base", node_part: str = "layers.6/linear1",
                                factor: float = 1.1, repeat: int = 1) -> list[dict]:
    """R3: parity check --layers (with its verdict experiments) on a planted conversion bug,
    against the bisection MNN's testMNNFromOnnx.py DEBUG mode does: cut the ONNX at a tensor,
    convert the cut, run it in MNN and ONNX Runtime, compare, halve the range, repeat."""
    import tempfile

    import numpy as np
    import onnx
    import onnxruntime as ort

    from parity.core import onnx_skeleton
    from parity.backends.mnn import MnnBackend
    from parity.mnn.converter import convert
    from parity.core.inputs import integer_input_bounds
    from parity.checking.onnx_graph import extract_subgraph

    good = cache / f"{name}.onnx"
    bad_onnx, bad_mnn, planted = _planted(cache, name, node_part, factor)
    graph = onnx_skeleton.load(good).graph
    values = [o for n in graph.node if n.op_type not in ("Constant",) for o in n.output if o]
    session = ort.InferenceSession(str(good), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        bound = integer_input_bounds(good).get(i.name, 64)
        feeds[i.name] = (np.random.default_rng(0).integers(0, bound, shape) if "int" in i.type
                         else np.random.default_rng(0).standard_normal(shape).astype(np.float32))

    def bisect():
        probes, lo, hi = 0, 0, len(values) - 1
        model = onnx.load(str(bad_onnx))
        with tempfile.TemporaryDirectory(prefix="parity-bisect-") as tmp:
            while lo < hi:
                mid = (lo + hi) // 2
                probes += 1
                cut, cut_mnn = Path(tmp) / "cut.onnx", Path(tmp) / "cut.mnn"
                onnx.save(extract_subgraph(model, list(feeds), [values[mid]]), str(cut))
                convert(cut, cut_mnn, timeout=1800)
                probe = ort.InferenceSession(onnx_skeleton.with_outputs(good, [values[mid]]),
                                             providers=["CPUExecutionProvider"])
                ref = probe.run(None, feeds)[0]
                with MnnBackend(cut_mnn) as mnn:
                    got = next(iter(mnn.run(feeds).outputs.values()))
                ok = got.size == ref.size and np.allclose(got.reshape(ref.shape), ref, atol=1e-3, rtol=1e-3)
                lo, hi = (mid + 1, hi) if ok else (lo, mid)
        return values[lo], probes

    start = time.perf_counter()
    found, probes = bisect()
    base = time.perf_counter() - start
    import json

    report_path = cache / "r3.json"
    check = [sys.executable, "-m", "parity", "check", str(good), str(bad_mnn), "--layers", "--json",
             str(report_path), "-q"]
    runs = [run_measured(check)[0] for _ in range(max(1, repeat))]
    seconds, median = _stats(runs)
    report = json.loads(report_path.read_text())
    where, kind = report["verdict"].get("where") or "", report["verdict"]["kind"]
    # like for like: the bisection locates and says nothing of the cause; so does --no-diagnose
    located = [run_measured(check + ["--no-diagnose"])[0] for _ in range(max(1, repeat))]
    located_s, located_median = _stats(located)
    divergence = json.loads(report_path.read_text())["comparisons"][0].get("first_divergence") or {}
    found_here = divergence.get("name") or ""
    bisection = f"bisection: {probes} cuts converted and run, found {found}"
    return [
        {"id": f"R3 {name}", "name": f"located verdict vs MNN-style bisection ({name}, bug planted in "
         f"{planted}; {bisection}; parity: {kind} at {where})",
         "measured_s": seconds, "baseline_s": base, "ratio": base / seconds, "median_ratio": base / median,
         "target": ">= 20 (times faster)", "ok": base / seconds >= 20 and node_part in where},
        {"id": f"R3 {name}, location only", "name": f"--layers --no-diagnose (the location, no cause, as the "
         f"bisection gives) vs the same bisection ({bisection}; parity: first divergence {found_here})",
         "measured_s": located_s, "baseline_s": base, "ratio": base / located_s,
         "median_ratio": base / located_median,
         "target": "reported", "ok": None if node_part in found_here else False},
    ]


def print_figure(f: dict) -> None:
    if f["id"].startswith("R5"):
        mark = "ok" if f["ok"] else "MISSED"
        print(f"({f['id']}) {f['name']}: peak RSS {f['value']:.2f} GiB, limit 2 x weights + 4 GB + 1 GB = "
              f"{f['limit']:.2f} GiB: {mark}", flush=True)
    elif f["id"].startswith("R3"):
        mark = {True: "ok", False: "MISSED", None: "reported"}[f["ok"]]
        print(f"({f['id']}) {f['name']}: {f['measured_s']:.1f} s vs {f['baseline_s']:.1f} s = "
              f"{f['ratio']:.1f}x faster (median {f['median_ratio']:.1f}x); target {f['target']}: {mark}",
              flush=True)
    elif "ratio" in f:
        mark = "ok" if f["ok"] else "MISSED"
        print(f"({f['id']}) {f['name']}: {f['measured_s']:.2f} s vs {f['baseline_s']:.2f} s = {f['ratio']:.2f}x "
              f"(median {f['median_ratio']:.2f}x); target {f['target']}: {mark}", flush=True)
    else:
        print(f"({f['id']}) {f['name']}: --layers {f['value']:.0f} MiB, plain check {f['plain_mib']:.0f} MiB "
              f"(model {f['model_mib']:.0f} MiB)", flush=True)
