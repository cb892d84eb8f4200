"""An ONNX model's graph without its weights, read in a fraction of ``onnx.load``'s time.

Walking a graph (its inputs, nodes, initializer names and shapes) needs none of the weights'
bytes, but ``onnx.load`` parses and copies all of them: 1.8 s for a BERT-base whose weights
are inside the .onnx. ``load`` walks the protobuf wire format of the memory-mapped file
instead, copies every field but the data of the graph's initializers (their name, dims,
type and external-data entries stay), and parses what is left: a few MB at most.

Subgraphs (If/Loop bodies) and Constant nodes are copied whole: they are small in practice.
Anything unexpected in the encoding falls back to ``onnx.load(load_external_data=False)``.

``external_tensors`` lists the tensors kept in external files by the same walk, without
importing ``onnx`` at all: every check asks it, and ``import onnx`` costs 0.7-1.2 s (most of
it ``ml_dtypes``' extension), several times the frameworks' own start.
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
        if number == 0:  # no field is numbered 0: not protobuf (a zero-filled file stops here)
            raise _Malformed("field number 0")
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
            if number == _GRAPH_INITIALIZER and wire == 2 and keep_below is not None and stop - payload > keep_below:
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


# Where TensorProto messages sit (ModelProto -> GraphProto / FunctionProto -> NodeProto ->
# AttributeProto -> TensorProto, SparseTensorProto or a subgraph), as onnx.proto numbers them.
_MODEL_FUNCTIONS = 25
_GRAPH_NODE, _GRAPH_SPARSE_INITIALIZER = 1, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTRIBUTE_TENSOR, _ATTRIBUTE_GRAPH, _ATTRIBUTE_TENSORS, _ATTRIBUTE_GRAPHS = 5, 6, 10, 11
_ATTRIBUTE_SPARSE_TENSOR, _ATTRIBUTE_SPARSE_TENSORS = 22, 23
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def _messages(buffer, start: int, end: int, numbers):
    """(number, payload start, end) of the length-delimited fields ``numbers`` of a message."""
    for number, wire, _, payload, stop in _fields(buffer, start, end):
        if number in numbers:
            if wire != 2:
                raise _Malformed(f"field {number} is not a message")
            yield number, payload, stop


def _text(buffer, start: int, end: int) -> str:
    try:
        return bytes(buffer[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("a string that is not UTF-8") from None


def _external_tensor(buffer, start: int, end: int):
    """(name, {key: value}) of a TensorProto stored externally, else None."""
    name, entries, external = "", {}, False
    for number, wire, key, payload, stop in _fields(buffer, start, end):
        if number == _TENSOR_DATA_LOCATION:
            if wire != 0:
                raise _Malformed("data_location is not a varint")
            external = _varint(buffer, _varint(buffer, key)[1])[0] == _EXTERNAL
        elif number == _TENSOR_NAME and wire == 2:
            name = _text(buffer, payload, stop)
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            key = value = ""
            for field, item_start, item_end in _messages(buffer, payload, stop, (1, 2)):
                if field == 1:
                    key = _text(buffer, item_start, item_end)
                else:
                    value = _text(buffer, item_start, item_end)
            entries[key] = value
    return (name, entries) if external else None


def _sparse_tensors(buffer, start: int, end: int):
    for _, payload, stop in _messages(buffer, start, end, (1, 2)):  # values, indices
        yield payload, stop


def _graph_tensor_spans(buffer, start: int, end: int):
    """(start, end) of every TensorProto in a GraphProto, its nodes and their subgraphs."""
    wanted = (_GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER, _GRAPH_NODE)
    for number, payload, stop in _messages(buffer, start, end, wanted):
        if number == _GRAPH_INITIALIZER:
            yield payload, stop
        elif number == _GRAPH_SPARSE_INITIALIZER:
            yield from _sparse_tensors(buffer, payload, stop)
        else:
            yield from _node_tensor_spans(buffer, payload, stop)


def _node_tensor_spans(buffer, start: int, end: int):
    wanted = (_ATTRIBUTE_TENSOR, _ATTRIBUTE_GRAPH, _ATTRIBUTE_TENSORS, _ATTRIBUTE_GRAPHS,
              _ATTRIBUTE_SPARSE_TENSOR, _ATTRIBUTE_SPARSE_TENSORS)
    for _, attribute, attribute_end in _messages(buffer, start, end, (_NODE_ATTRIBUTE,)):
        for number, payload, stop in _messages(buffer, attribute, attribute_end, wanted):
            if number in (_ATTRIBUTE_TENSOR, _ATTRIBUTE_TENSORS):
                yield payload, stop
            elif number in (_ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS):
                yield from _graph_tensor_spans(buffer, payload, stop)
            else:
                yield from _sparse_tensors(buffer, payload, stop)


def _external_in(buffer) -> list[tuple[str, dict[str, str]]]:
    found = []
    for number, payload, stop in _messages(buffer, 0, len(buffer), (_MODEL_GRAPH, _MODEL_FUNCTIONS)):
        if number == _MODEL_GRAPH:
            spans = _graph_tensor_spans(buffer, payload, stop)
        else:
            spans = (span for _, node, node_end in _messages(buffer, payload, stop, (_FUNCTION_NODE,))
                     for span in _node_tensor_spans(buffer, node, node_end))
        for tensor_start, tensor_end in spans:
            tensor = _external_tensor(buffer, tensor_start, tensor_end)
            if tensor is not None:
                found.append(tensor)
    return found


def external_tensors(path: str | os.PathLike) -> list[tuple[str, dict[str, str]]]:
    """(name, external_data entries) of every tensor of the model at ``path`` whose data is in an
    external file: initializers, sparse ones and tensor attributes (Constant values), in the
    graph, its subgraphs and functions. Read from the wire format without importing ``onnx``;
    an encoding this walk does not expect is read by ``onnx`` instead. Raises what
    ``onnx.load`` raises for what is not a model."""
    found = _mapped(path, _external_in)
    if found is not None:
        return found
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    return [(tensor.name, {e.key: e.value for e in tensor.external_data}) for tensor in _tensors(model)
            if tensor.data_location == onnx.TensorProto.EXTERNAL]


def _tensors(proto):
    """Every TensorProto of a parsed model: initializers, sparse ones, Constant values and tensor
    attributes, in the main graph, in subgraphs and in functions."""
    def graph_tensors(graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            yield from node_tensors(node)

    def node_tensors(node):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            if attr.HasField("g"):
                yield from graph_tensors(attr.g)
            for g in attr.graphs:
                yield from graph_tensors(g)
            for sparse in attr.sparse_tensors:
                yield sparse.values
                yield sparse.indices

    yield from graph_tensors(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield from node_tensors(node)


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
    return _spliced(path, names, None, added=False)[0]


# TensorProto data types numpy holds as they are (bfloat16, the float8s, strings: left inline)
_NUMPY_TYPES = {1: "<f4", 2: "u1", 3: "i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 9: "?", 10: "<f2",
                11: "<f8", 12: "<u4", 13: "<u8"}
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_SEGMENT, _TENSOR_RAW_DATA = 1, 2, 3, 9
# what marks an initializer as one the session is handed (SessionOptions.add_external_initializers)
_IN_MEMORY = (_length_delimited(_TENSOR_EXTERNAL_DATA, _length_delimited(1, b"location")
                                + _length_delimited(2, b"parity-in-memory"))
              + _encode_varint(_TENSOR_DATA_LOCATION << 3) + _encode_varint(_EXTERNAL))


def _raw_tensor(buffer, start: int, end: int):
    """(name, numpy type, dims, raw_data span) of a TensorProto whose values are raw bytes of a
    type numpy holds and agree with its shape, else None."""
    dims, dtype, name, raw = [], None, None, None
    for number, wire, key, payload, stop in _fields(buffer, start, end):
        if number == _TENSOR_DIMS:
            if wire == 0:
                dims.append(_varint(buffer, _varint(buffer, key)[1])[0])
            else:
                position = payload
                while position < stop:
                    dim, position = _varint(buffer, position)
                    dims.append(dim)
        elif number == _TENSOR_DATA_TYPE and wire == 0:
            dtype = _NUMPY_TYPES.get(_varint(buffer, _varint(buffer, key)[1])[0])
        elif number == _TENSOR_NAME and wire == 2:
            name = bytes(buffer[payload:stop]).decode("utf-8", "replace")
        elif number == _TENSOR_RAW_DATA and wire == 2:
            raw = (payload, stop)
        elif number in _TENSOR_DATA or number in (_TENSOR_SEGMENT, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION):
            return None  # typed values, segments or external data: left as they are
    if not name or "\ufffd" in name or dtype is None or raw is None:  # a name not UTF-8: left inline
        return None
    count = 1
    for dim in dims:
        count *= dim
    itemsize = 1 if dtype in ("u1", "i1", "?") else int(dtype[2])
    return (name, dtype, dims, raw) if count * itemsize == raw[1] - raw[0] else None


def with_outputs_in_memory(path: str | os.PathLike, names, keep_below: int = 1 << 16, *, added: bool = False):
    """``with_outputs``, with the raw data of the graph's initializers above ``keep_below`` bytes
    taken out as arrays: (model bytes of a few hundred KB, {name: array}). ONNX Runtime takes the
    arrays as they are (``SessionOptions.add_external_initializers``) and parses only the rest;
    on a BERT-base the capture session is built in 0.5 s instead of 1.2 s, with the same values
    bit for bit. The arrays are copies (aligned, and nothing depends on the file after this).
    With ``added`` the graph keeps its own outputs (declared types and shapes) and ``names``
    come after them."""
    return _spliced(path, names, keep_below, added=added)


def _spliced(path, names, keep_below: int | None, *, added: bool):
    """(the model's bytes with ``names`` as outputs, {name: array} of the raw initializers above
    ``keep_below`` bytes taken out: none with None); the file's bytes are copied once."""
    import numpy as np

    outputs = [_length_delimited(_GRAPH_OUTPUT, _length_delimited(1, name.encode())) for name in names]
    arrays = {}

    def edit(buffer, start, end):
        for number, wire, key, payload, stop in _fields(buffer, start, end):
            if number == _GRAPH_OUTPUT and not added:
                continue
            tensor = None
            if number == _GRAPH_INITIALIZER and wire == 2 and keep_below is not None and stop - payload > keep_below:
                tensor = _raw_tensor(buffer, payload, stop)
            if tensor is None or tensor[0] in arrays:
                yield buffer[key:stop]
                continue
            name, dtype, dims, (first, last) = tensor
            arrays[name] = np.frombuffer(buffer[first:last], dtype=dtype).reshape(dims).copy()
            yield _length_delimited(number, _strip_tensor(buffer, payload, stop) + _IN_MEMORY)
        yield from outputs

    data = _mapped(path, lambda view: b"".join(_graph_parts(view, edit)))
    if data is None:
        raise ValueError(f"{os.fspath(path)!r} is not an ONNX model")
    return data, arrays
