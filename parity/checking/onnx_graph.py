"""The ONNX graph as the layer comparison sees it: its values in topological order (the layers),
who produces and who consumes each, and subgraphs cut out of it (isolation, repro files).
Part of the layer comparison (layers.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from parity.core.specs import TensorMap

_DOWNSTREAM_HOPS = 3


@dataclass(frozen=True)
class Value:
    name: str
    op_type: str
    node_name: str
    inputs: tuple[str, ...]  # produced values and graph inputs only (no constants)
    index: int

    @property
    def label(self) -> str:
        """The node's name, or what it is when the exporter left it unnamed."""
        return self.node_name or f"{self.op_type} -> {self.name}"


class OnnxGraph:
    def __init__(self, model):
        graph = model.graph
        constants = {i.name for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                constants.update(node.output)
        self.model = model
        self.inputs = [i.name for i in graph.input if i.name not in constants]
        self.outputs = [o.name for o in graph.output]
        self.values: list[Value] = []
        for node in graph.node:
            if node.op_type == "Constant":
                continue
            inputs = tuple(i for i in node.input if i and i not in constants)
            for out in node.output:
                if out:
                    self.values.append(Value(out, node.op_type, node.name, inputs, len(self.values)))
        self.producer = {v.name: v for v in self.values}
        self.consumers: dict[str, list[Value]] = {}
        for v in self.values:
            for i in v.inputs:
                self.consumers.setdefault(i, []).append(v)

    def frontier(self, name: str, paired: set[str]) -> list[str]:
        """The nearest ancestors of ``name`` that are paired tensors or graph inputs."""
        found, seen = set(), set()
        stack = list(self.producer[name].inputs)
        inputs = set(self.inputs)
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in paired or v in inputs:
                found.add(v)
            elif v in self.producer:
                stack.extend(self.producer[v].inputs)
        order = {v.name: v.index for v in self.values}
        return sorted(found, key=lambda n: order.get(n, -1))

    def span(self, name: str, frontier: set[str]) -> list[str]:
        """The values computed between ``frontier`` (exclusive) and ``name`` (inclusive): the
        ops a fused candidate tensor stands for, e.g. Conv then Relu."""
        found, stack = set(), [name]
        while stack:
            v = stack.pop()
            if v in found or v in frontier or v not in self.producer:
                continue
            found.add(v)
            stack.extend(self.producer[v].inputs)
        return sorted(found, key=lambda n: self.producer[n].index)

    def downstream(self, name: str, hops: int = _DOWNSTREAM_HOPS) -> list[str]:
        """Values reached from ``name`` through single-consumer chains (where fusion happens)."""
        out, current = [], name
        for _ in range(hops):
            consumers = self.consumers.get(current, [])
            if len(consumers) != 1:
                break
            current = consumers[0].name
            out.append(current)
        return out

    def value_bytes(self, feeds: TensorMap) -> dict[str, int]:
        """Sizes from ONNX shape inference with the actual input shapes (unknown: absent)."""
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        for graph_input in model.graph.input:
            if graph_input.name in feeds:
                dims = graph_input.type.tensor_type.shape.dim
                shape = feeds[graph_input.name].shape
                if len(dims) == len(shape):
                    for dim, size in zip(dims, shape):
                        dim.Clear()
                        dim.dim_value = int(size)
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:
            return {}
        sizes = {}
        for info in list(inferred.graph.value_info) + list(inferred.graph.output):
            t = info.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if None in dims or not t.elem_type:
                continue
            try:
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
            except Exception:
                itemsize = 4
            sizes[info.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
        return sizes


def extract_subgraph(model, inputs: Sequence[str], outputs: Sequence[str], *, shapes_from=None):
    """The ONNX subgraph from ``inputs`` to ``outputs`` (onnx.utils.Extractor needs value infos
    for the cut points; shape inference provides them, empty ones fill the gaps). With
    ``shapes_from`` (the same graph without its large weights, onnx_skeleton) the shapes are
    inferred there: shape inference on a BERT-base with its weights takes 4 s."""
    import onnx
    import onnx.utils

    try:
        if shapes_from is None:
            inferred = onnx.shape_inference.infer_shapes(model)
        else:
            known = onnx.shape_inference.infer_shapes(shapes_from).graph.value_info
            inferred = onnx.ModelProto()
            inferred.CopyFrom(model)
            have = {vi.name for vi in inferred.graph.value_info}
            inferred.graph.value_info.extend(vi for vi in known if vi.name not in have)
    except Exception:
        inferred = onnx.ModelProto()
        inferred.CopyFrom(model)
    known = {vi.name for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
             + list(inferred.graph.output)}
    for name in list(inputs) + list(outputs):
        if name not in known:
            inferred.graph.value_info.append(onnx.helper.make_empty_tensor_value_info(name))
    return onnx.utils.Extractor(inferred).extract_model(list(inputs), list(outputs))
