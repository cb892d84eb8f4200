#!/usr/bin/env python
"""Build the small models shipped in models/: deterministic, a few hundred KB in all.

    python scripts/make_models.py [--out models]

Each model is defined in torch, exported to ONNX with the TorchScript-based exporter (its node
names carry module scopes such as /blocks.0/attn/MatMul, which per-layer pairing uses), and
converted to MNN with parity's converter (private temp dir, child process, no telemetry).
Needs the torch extra: pip install -e '.[torch]'.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from parity.mnn.converter import convert  # noqa: E402

OPSET = 17


class TinyCNN(nn.Module):
    """conv-bn-relu x2, max pool, a third 3x3 conv (MNN runs these via Winograd), global
    average pool, fully connected."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.relu(self.conv3(x))
        x = x.mean(dim=(2, 3))
        return self.head(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU; MNN's converter approximates it by default
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyTransformer(nn.Module):
    """Shaped like the classic MNN bug report: src 1x64x32, src_mask 1x64 -> 1x64x512."""

    def __init__(self, dim: int = 64, heads: int = 4, hidden: int = 128, depth: int = 2):
        super().__init__()
        self.embed = nn.Linear(32, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, 512)

    def forward(self, src, src_mask):
        x = self.embed(src) * src_mask.unsqueeze(-1)
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))


def _randomize_norms(model: nn.Module, seed: int) -> None:
    """Give batch/layer norms non-trivial statistics so they are not identities."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=g) + 0.5)
        if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            module.weight.data.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=g))
            module.bias.data.copy_(0.1 * torch.randn(module.bias.shape, generator=g))


def build(name: str):
    torch.manual_seed(0)
    if name == "cnn":
        model = TinyCNN()
        args = (torch.randn(1, 3, 32, 32),)
        names = (["x"], ["logits"])
    elif name == "transformer":
        model = TinyTransformer()
        args = (torch.randn(1, 64, 32), torch.ones(1, 64))
        names = (["src", "src_mask"], ["out"])
    else:
        raise ValueError(name)
    _randomize_norms(model, seed=1)
    return model.eval(), args, names


MODELS = ("cnn", "transformer")


def cnn() -> nn.Module:
    """Factory for ``--torch scripts/make_models.py:cnn``: the shipped CNN's torch model."""
    return build("cnn")[0]


def transformer() -> nn.Module:
    """Factory for ``--torch scripts/make_models.py:transformer``."""
    return build("transformer")[0]


def export_onnx(model: nn.Module, args, names, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, str(path), input_names=names[0], output_names=names[1],
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "models")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        model, example, names = build(name)
        onnx_path = args.out / f"{name}.onnx"
        mnn_path = args.out / f"{name}.mnn"
        export_onnx(model, example, names, onnx_path)
        convert(onnx_path, mnn_path)
        for path in (onnx_path, mnn_path):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            print(f"{path}  {path.stat().st_size:>8} bytes  sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
