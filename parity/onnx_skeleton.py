"""An ONNX model's graph without its weights, read in a fraction of ``onnx.load``'s time.

Walking a graph (its inputs, nodes, initializer names and shapes) needs none of the weights'
bytes, but ``onnx.load`` parses and copies all of them: 1.8 s for a BERT-base whose weights
are inside the .onnx. ``load`` walks the protobuf wire format of the memory-mapped file
instead, copies every field but the data of the graph's initializers (their name, dims,
type and external-data entries stay), and parses what is left: a few MB at most.

Subgraphs (If/Loop bodies) and Constant nodes are copied whole: they are small in practice.
Anything unexpected in the encoding falls back to ``onnx.load(load_external_data=False)``.
"""

from __future__ import annotations

import mmap
import os

# TensorProto fields that hold values; everything else (dims 1, data_type 2, segment 3,
# name 8, doc_string 12, external_data 13, data_location 14) is kept.
_TENSOR_DATA = frozenset({4, 5, 6, 7, 9, 10, 11})
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5


class _Malformed(ValueError):
    pass


def _varint(buffer, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(buffer) or shift > 63:
            raise _Malformed("truncated varint")
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buffer, start: int, end: int):
    """(field number, wire type, start of the field's key, start of its payload, end) each."""
    position = start
    while position < end:
        key_start = position
        key, position = _varint(buffer, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, position = _varint(buffer, position)
            payload = position
        elif wire == 1:
            payload, position = position, position + 8
        elif wire == 2:
            length, payload = _varint(buffer, position)
            position = payload + length
        elif wire == 5:
            payload, position = position, position + 4
        else:
            raise _Malformed(f"wire type {wire}")
        if position > end:
            raise _Malformed("field runs past its message")
        yield number, wire, key_start, payload, position


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _strip_tensor(buffer, start: int, end: int) -> bytes:
    return b"".join(bytes(buffer[key:stop]) for number, _, key, _, stop in _fields(buffer, start, end)
                    if number not in _TENSOR_DATA)


def _strip_graph(buffer, start: int, end: int) -> bytes:
    parts = []
    for number, wire, key, payload, stop in _fields(buffer, start, end):
        if number == _GRAPH_INITIALIZER and wire == 2:
            parts.append(_length_delimited(number, _strip_tensor(buffer, payload, stop)))
        else:
            parts.append(bytes(buffer[key:stop]))
    return b"".join(parts)


def stripped_bytes(buffer) -> bytes:
    """The serialized ModelProto in ``buffer`` without its graph initializers' data."""
    parts = []
    for number, wire, key, payload, stop in _fields(buffer, 0, len(buffer)):
        if number == _MODEL_GRAPH and wire == 2:
            parts.append(_length_delimited(number, _strip_graph(buffer, payload, stop)))
        else:
            parts.append(bytes(buffer[key:stop]))
    return b"".join(parts)


def load(path: str | os.PathLike):
    """The model at ``path`` as an ``onnx.ModelProto`` whose graph initializers carry names,
    shapes and types but no values. Raises what ``onnx.load`` raises for what is not a model."""
    import onnx

    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return onnx.load(handle, load_external_data=False)  # onnx's own error or empty model
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            try:
                data = stripped_bytes(memoryview(mapped))
            except _Malformed:
                data = None
    if data is None:
        return onnx.load(os.fspath(path), load_external_data=False)
    model = onnx.ModelProto()
    model.ParseFromString(data)
    return model
