"""What compression a .mnn carries, read from the model itself (MNN's JSON dump, mnn_graph.py).

MNN's converter compresses the weights of Convolution ops (ONNX MatMul/Gemm with constant
weights become 1x1 Convolutions) and records how in each op's ``quanParameter``:

- ``type`` 3: float16 storage (``--fp16``);
- ``type`` 1 (or 2): integer weights of ``aMaxOrBits`` bits (``--weightQuantBits 8`` or 4),
  dequantized with ``alpha``: per output channel and block, a scale (symmetric) or a (min,
  scale) pair (asymmetric, when the integer range starts at ``aMin`` < 0). Blocks
  (``--weightQuantBlock``) are ``inputCount * kernel / entries``.

A full-int8 model (MNN's offline quantization tool, ``mnnquant``) computes in int8: its
Convolutions carry ``symmetricQuan`` and the activation scales ``scaleIn``/``scaleOut`` (older
models: op types ending in ``Int8``, with ``FloatToInt8``/``Int8ToFloat`` around them).
"""

from __future__ import annotations

import os
import struct
from dataclasses import asdict, dataclass, field

WEIGHT_OPS = ("Convolution", "ConvolutionDepthwise", "Deconvolution", "DeconvolutionDepthwise")


@dataclass(frozen=True)
class LayerCompression:
    name: str  # the op's name, as MNN takes it from the ONNX value it computes (layer_name)
    op_type: str
    kind: str  # "float", "fp16", "int" (weight-only integers), "int8-op" (full int8)
    bits: int | None = None
    block: int | None = None  # input elements per scale; None: one scale per output channel
    asymmetric: bool | None = None


@dataclass(frozen=True)
class Compression:
    layers: tuple = ()  # LayerCompression of every weight op and int8 op
    int8_ops: tuple = field(default=())  # names of full-int8 ops

    @property
    def compressed(self) -> tuple:
        return tuple(x for x in self.layers if x.kind != "float")

    @property
    def kind(self) -> str | None:
        """"int4", "int8", "fp16", "int8-full", a mix like "int4+fp16", or None (float)."""
        if self.int8_ops:
            return "int8-full"
        kinds = []
        for layer in self.compressed:
            label = "fp16" if layer.kind == "fp16" else f"int{layer.bits}"
            if label not in kinds:
                kinds.append(label)
        return "+".join(sorted(kinds)) or None

    def converter_options(self) -> list[str] | None:
        """The converter options that compress a float model this way, when every compressed
        layer shares them (MNN -> MNN reconversion takes them); None for a mix or full int8.
        MNN 3.6's --weightQuantAsymmetric, given at all, makes weights symmetric (measured)."""
        if self.int8_ops or not self.compressed:
            return None
        settings = {(x.kind, x.bits, x.block, x.asymmetric) for x in self.compressed}
        if len(settings) != 1:
            return None
        kind, bits, block, asymmetric = settings.pop()
        if kind == "fp16":
            return ["--fp16"]
        options = ["--weightQuantBits", str(bits)]
        if block:
            options += ["--weightQuantBlock", str(block)]
        if asymmetric is False:
            options.append("--weightQuantAsymmetric")
        return options

    def kind_label(self) -> str:
        """A few words for a link's label: "4-bit weights", "float16 weights", "full int8"."""
        words = []
        for kind in (self.kind or "").split("+"):
            words.append({"fp16": "float16 weights", "int8-full": "full int8"}.get(kind, f"{kind[3:]}-bit weights"))
        return " + ".join(words)

    def summary(self) -> str:
        """"4-bit weights (asymmetric, block 32) on 10 of 10 Convolution layers"."""
        weight_ops = [x for x in self.layers if x.kind != "int8-op"]
        if self.int8_ops:
            return (f"full int8 (int8 weights and activations) on {len(self.int8_ops)} of "
                    f"{len(self.layers)} {'/'.join(sorted({x.op_type for x in self.layers}))} layers")
        if not self.compressed:
            return f"float weights ({len(weight_ops)} weight layers)"
        parts = []
        for kind in self.kind.split("+"):
            group = [x for x in self.compressed if (x.kind == "fp16") == (kind == "fp16")
                     and (kind == "fp16" or f"int{x.bits}" == kind)]
            if kind == "fp16":
                what = "float16 weights"
            else:
                blocks = sorted({x.block for x in group if x.block})
                sym = {x.asymmetric for x in group}
                details = ["asymmetric" if sym == {True} else "symmetric" if sym == {False} else "mixed symmetry"]
                details.append(f"block {', '.join(map(str, blocks))}" if blocks else "per channel")
                what = f"{kind[3:]}-bit weights ({', '.join(details)})"
            types = "/".join(sorted({x.op_type for x in weight_ops}))
            parts.append(f"{what} on {len(group)} of {len(weight_ops)} {types} layers")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "summary": self.summary(),
                "layers": [asdict(x) for x in self.compressed],
                "weight_layers": sum(1 for x in self.layers if x.kind != "int8-op")}


def _length(value) -> int:
    try:
        return len(value)
    except TypeError:
        return 0


# What MNN's converter appends to the name of an ONNX MatMul it turned into a Convolution.
_MATMUL_SUFFIX = "__matmul_converted"


def layer_name(op: dict, names: list) -> str:
    """A weight op's name as a user knows it: the op's name, which MNN takes from the ONNX
    value it computes ("hidden2__matmul_converted" -> "hidden2"), else its output tensor."""
    name = op.get("name") or ""
    if name:
        return name[: -len(_MATMUL_SUFFIX)] if name.endswith(_MATMUL_SUFFIX) else name
    outputs = op.get("outputIndexes") or []
    return names[outputs[0]] if outputs and 0 <= outputs[0] < len(names) else ""


def read(graph: dict) -> Compression:
    """The compression of a graph as mnn_graph.load_graph returns it."""
    names = graph.get("tensorName") or []
    layers, int8 = [], []
    for op in graph.get("oplists", []):
        op_type = op.get("type", "")
        name = layer_name(op, names)
        if op_type.endswith("Int8") and op_type not in ("FloatToInt8", "Int8ToFloat"):
            layers.append(LayerCompression(name, op_type, "int8-op", bits=8))
            int8.append(name)
            continue
        if op_type not in WEIGHT_OPS:
            continue
        main = op.get("main") if isinstance(op.get("main"), dict) else {}
        quant = main.get("quanParameter")
        if isinstance(main.get("symmetricQuan"), dict) or (isinstance(quant, dict) and (quant.get("scaleIn") or quant.get("scaleOut"))):
            # MNN's offline quantization tool: int8 weights and int8 activations (scaleIn/Out)
            layers.append(LayerCompression(name, op_type, "int8-op", bits=8))
            int8.append(name)
            continue
        if not isinstance(quant, dict):
            layers.append(LayerCompression(name, op_type, "float"))
            continue
        if quant.get("type") == 3:
            layers.append(LayerCompression(name, op_type, "fp16", bits=16))
            continue
        common = main.get("common") or {}
        bits = int(quant.get("aMaxOrBits") or 8)
        outputs_count = int(common.get("outputCount") or 0)
        entries = _length(quant.get("alpha")) / outputs_count if outputs_count else 0
        asymmetric = bool(entries and int(entries) % 2 == 0 and int(quant.get("aMin") or 0) != 0)
        blocks = entries / (2 if asymmetric else 1) if entries else 1
        per_channel = int(common.get("inputCount") or 0) * int(common.get("kernelX") or 1) * int(common.get("kernelY") or 1)
        if common.get("group") and int(common["group"]) > 1:
            per_channel //= int(common["group"])
        block = int(per_channel // blocks) if blocks and blocks > 1 and per_channel else None
        layers.append(LayerCompression(name, op_type, "int", bits=bits, block=block, asymmetric=asymmetric))
    return Compression(tuple(layers), tuple(int8))


def recompress(float_path, target, options: list[str], *, timeout: float = 300.0):
    """Compress the float model at ``float_path`` into ``target`` with the converter's
    ``options`` (MNN -> MNN reconversion), in a child process."""
    from parity.run.worker import Worker

    with Worker("MNN converter", timeout=timeout) as worker:
        worker.call("parity.mnn.compression:_recompress_in_child", step=f"compressing {os.path.basename(str(float_path))}",
                    source=os.path.abspath(float_path), target=os.path.abspath(target), options=list(options))
    return target


def _recompress_in_child(source: str, target: str, options: list) -> bool:
    import _tools

    from parity.run.worker import ChildFailure

    ok = _tools.mnnconvert(["MNNConvert", "-f", "MNN", "--modelFile", source, "--MNNModel", target,
                            "--bizCode", "parity", *options])
    if not ok or not os.path.exists(target) or os.path.getsize(target) == 0:
        raise ChildFailure("backend", f"MNN's converter could not compress {os.path.basename(source)}")
    return True


def of_model(path, *, timeout: float = 300.0) -> Compression:
    """Read ``path``'s compression: from the flatbuffer's few fields (mnn_flatbuffer.py, in
    milliseconds), or, should that fail, from MNN's JSON dump (a child process; slow on big
    models)."""
    from parity.mnn import flatbuffer as mnn_flatbuffer
    from parity.backends.base import check_model_file

    check_model_file(path, "MNN")
    try:
        return read({"oplists": mnn_flatbuffer.read_ops(path), "tensorName": []})
    except (ValueError, OSError, struct.error, IndexError):
        from parity.mnn import graph as mnn_graph

        return read(mnn_graph.read_graph(path, timeout=timeout))
