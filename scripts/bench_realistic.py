"""The realistic tier of the benchmark (issue 16): a BERT-base-sized encoder and a ResNet-50,
built with torch from code (random weights, nothing downloaded), exported with torch.onnx and
converted with MNN's converter once, cached between runs.

    python scripts/bench.py --tier realistic [--repeat 3] [--cache DIR]

Per model, measured side by side in one run (min and median of the repetitions):
  R1  parity check against a minimal hand-written ORT + MNN script doing the same work
  R2  --layers against plain check
  R4  peak RSS of parity and its children (sampled over the process tree) against the model's
      size on disk
This file measures; making the ratios hold is the work of issue 16.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

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
        from parity.converter import convert

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
    from bench import HAND_WRITTEN  # the minimal script of figure (a)
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
        results += [
            {"id": f"R1 {name}", "name": f"parity check vs a minimal hand-written script ({name})",
             "measured_s": plain_min, "baseline_s": hand_min, "ratio": plain_min / hand_min,
             "median_ratio": plain_med / hand_med, "target": "<= 1.1", "ok": plain_min / hand_min <= 1.1},
            {"id": f"R2 {name}", "name": f"--layers vs plain check ({name})",
             "measured_s": layers_min, "baseline_s": plain_min, "ratio": layers_min / plain_min,
             "median_ratio": layers_med / plain_med, "target": "<= 1.5", "ok": layers_min / plain_min <= 1.5},
            {"id": f"R4 {name}", "name": f"peak RSS of parity and its children ({name}, {size / 2**20:.0f} MiB on disk)",
             "value": peaks["layers"] / 2**20, "unit": "MiB", "plain_mib": peaks["plain"] / 2**20,
             "model_mib": size / 2**20, "target": "reported", "ok": None},
        ]
    return results


def print_figure(f: dict) -> None:
    if "ratio" in f:
        mark = "ok" if f["ok"] else "MISSED"
        print(f"({f['id']}) {f['name']}: {f['measured_s']:.2f} s vs {f['baseline_s']:.2f} s = {f['ratio']:.2f}x "
              f"(median {f['median_ratio']:.2f}x); target {f['target']}: {mark}", flush=True)
    else:
        print(f"({f['id']}) {f['name']}: --layers {f['value']:.0f} MiB, plain check {f['plain_mib']:.0f} MiB "
              f"(model {f['model_mib']:.0f} MiB)", flush=True)
