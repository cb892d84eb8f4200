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
_GRAPH_OUTPUT = 12


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


def _graph_parts(buffer, edit_graph):
    """The model's fields as byte strings or views of ``buffer``, the graph's payload rebuilt
    by ``edit_graph``: joined once by the caller, so the weights are copied once."""
    for number, wire, key, payload, stop in _fields(buffer, 0, len(buffer)):
        if number == _MODEL_GRAPH and wire == 2:
            parts = list(edit_graph(buffer, payload, stop))
            yield _encode_varint(number << 3 | 2) + _encode_varint(sum(len(part) for part in parts))
            yield from parts
        else:
            yield buffer[key:stop]


def stripped_bytes(buffer, keep_below: int = 0) -> bytes:
    """The serialized ModelProto in ``buffer`` without its graph initializers' data (those of
    at most ``keep_below`` bytes keep it)."""
    def edit(buffer, start, end):
        for number, wire, key, payload, stop in _fields(buffer, start, end):
            if number == _GRAPH_INITIALIZER and wire == 2 and stop - payload > keep_below:
                yield _length_delimited(number, _strip_tensor(buffer, payload, stop))
            else:
                yield buffer[key:stop]

    return b"".join(_graph_parts(buffer, edit))


def _mapped(path, read):
    """``read(memoryview of the file)``, or None when the file is empty or not protobuf."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return None
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return read(view)
            except _Malformed:
                return None
            finally:
                view.release()


def load(path: str | os.PathLike, keep_below: int = 0):
    """The model at ``path`` as an ``onnx.ModelProto`` whose graph initializers carry names,
    shapes and types but no values, except those of at most ``keep_below`` bytes (shape
    inference needs the small ones: Reshape's shapes). Raises what ``onnx.load`` raises for
    what is not a model."""
    import onnx

    data = _mapped(path, lambda view: stripped_bytes(view, keep_below))
    if data is None:
        return onnx.load(os.fspath(path), load_external_data=False)
    model = onnx.ModelProto()
    model.ParseFromString(data)
    return model


def with_outputs(path: str | os.PathLike, names) -> bytes:
    """The model file's bytes with its graph's outputs replaced by ``names`` (untyped), for
    ONNX Runtime to return intermediate values: one copy of the file, where parsing it,
    copying the message and serializing it again costs three (2 s and 1.3 GB on a BERT-base).
    External data stays where it is: the session is told the model's directory."""
    outputs = [_length_delimited(_GRAPH_OUTPUT, _length_delimited(1, name.encode())) for name in names]

    def edit(buffer, start, end):
        for number, _, key, _, stop in _fields(buffer, start, end):
            if number != _GRAPH_OUTPUT:
                yield buffer[key:stop]
        yield from outputs

    data = _mapped(path, lambda view: b"".join(_graph_parts(view, edit)))
    if data is None:
        raise ValueError(f"{os.fspath(path)!r} is not an ONNX model")
    return data
