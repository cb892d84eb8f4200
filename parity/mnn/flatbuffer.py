"""The few fields of an .mnn file that say how it is compressed, read straight from the
flatbuffer (memory-mapped: only the bytes of those fields are touched), in milliseconds
whatever the model's size. MNN's JSON dump (mnn_graph.py) prints every weight and takes ~18 s
per 100 MB; parity reads every ONNX -> MNN check's compression this way instead.

Only what compression.py needs, from MNN's schema (schema/default/MNN.fbs, CaffeOp.fbs):

    Net:    oplists = field 3
    Op:     main = field 2 (a union: its type is field 1), name = field 3, type = field 5
    Convolution2D:       common = 0, quanParameter = 3, symmetricQuan = 4
    Convolution2DCommon: kernelX = 2, kernelY = 3, group = 9, outputCount = 10, inputCount = 11
    IDSTQuan:            alpha = 1, type = 2, scaleIn = 5, scaleOut = 6, aMaxOrBits = 7, aMin = 8

Anything that does not parse as expected raises ValueError; the caller then reads the JSON dump.
"""

from __future__ import annotations

import mmap
import os
import struct

import numpy as np

# OpType values (MNN.fbs, enum OpType) of the ops whose weights MNN's converter compresses
WEIGHT_OP_TYPES = {12: "Convolution", 13: "ConvolutionDepthwise", 17: "Deconvolution",
                   18: "DeconvolutionDepthwise"}


# MNN 3.6.1's schema/default/MNN.fbs enum OpType, value -> name (the names MNN's Python API
# gives as op_type). Values were renamed between MNN versions: read_graph is used only with the
# MNN these tables come from (SCHEMA_MNN); an unknown value makes it refuse.
SCHEMA_MNN = "3.6"
OP_TYPE_NAMES = {
    0: "AbsVal", 1: "QuantizedAdd", 2: "ArgMax", 3: "AsString", 4: "InstanceNorm",
    5: "BatchToSpaceND", 6: "Copy", 7: "BinaryOp", 8: "Bnll", 9: "Cast", 10: "Concat", 11: "Const",
    12: "Convolution", 13: "ConvolutionDepthwise", 14: "Crop", 15: "CropAndResize",
    16: "ImageProcess", 17: "Deconvolution", 18: "DeconvolutionDepthwise", 19: "Dequantize",
    20: "DetectionOutput", 21: "Dropout", 22: "Eltwise", 23: "ELU", 24: "Unique", 25: "Exp",
    26: "ExpandDims", 27: "Fill", 28: "Flatten", 29: "Im2Col", 30: "Gather", 31: "GatherV2",
    32: "Im2Seq", 33: "InnerProduct", 34: "Input", 35: "Interp", 36: "Log", 37: "LRN", 38: "LSTM",
    39: "MatMul", 40: "MoE", 41: "NonMaxSuppression", 42: "NonMaxSuppressionV2", 43: "Normalize",
    44: "Pack", 45: "Padding", 46: "Permute", 47: "Pooling", 48: "Power", 49: "PReLU",
    50: "PriorBox", 51: "Proposal", 52: "QuantizedAvgPool", 53: "QuantizedBiasAdd",
    54: "QuantizedConcat", 55: "QuantizedDepthwiseConv2D", 56: "QuantizedLogistic",
    57: "RasterAndInterpolate", 58: "QuantizedMaxPool", 59: "Texture", 60: "RasterDiff",
    61: "QuantizedReshape", 62: "QuantizedSoftmax", 63: "QuantizeMaxMin", 64: "QuantizeV2",
    65: "Range", 66: "Rank", 67: "ReduceJoin", 68: "Reduction", 69: "ReLU", 70: "ReLU6",
    71: "RequantizationRange", 72: "Requantize", 73: "Reshape", 74: "Resize", 75: "RNN",
    76: "ROIPooling", 77: "Scale", 78: "Selu", 79: "Seq2Out", 80: "Shape", 81: "Sigmoid",
    82: "Size", 83: "Slice", 84: "SliceTf", 85: "Softmax", 86: "SpaceToBatchND",
    87: "SpatialProduct", 88: "Col2Im", 89: "Segment", 90: "Squeeze", 91: "StridedSlice",
    92: "CastLike", 93: "StringSplit", 94: "StringToNumber", 95: "TanH", 96: "TfQuantizedConv2D",
    97: "Threshold", 98: "Tile", 99: "TopKV2", 100: "Transpose", 101: "UnaryOp", 102: "Unpack",
    103: "Where", 104: "Moments", 105: "RNNSequenceGRU", 106: "BatchMatMul", 107: "Unsqueeze",
    108: "CosineSimilarity", 109: "DepthToSpace", 110: "SpaceToDepth", 111: "ReverseSequence",
    112: "Pooling3D", 113: "Convolution3D", 114: "MatrixBandPart", 115: "GatherND",
    116: "DetectionPostProcess", 117: "UnravelIndex", 118: "ScatterNd", 119: "OneHot",
    120: "BroadcastTo", 121: "Dilation2D", 122: "Interp3D", 128: "Raster", 129: "ConvertTensor",
    130: "ArgMin", 131: "LinSpace", 132: "RandomUniform", 133: "TensorArray",
    134: "TensorArraySize", 135: "TensorArrayRead", 136: "TensorArrayWrite",
    137: "TensorArrayGather", 138: "TensorArrayScatter", 139: "TensorArraySplit",
    140: "TensorArrayConcat", 141: "LSTMBlockCell", 142: "Reverse", 143: "ROIAlign",
    144: "RandomNormal", 145: "TensorArrayInsert", 146: "TensorArrayErase", 147: "EyeLike",
    148: "CumSum", 149: "Det", 150: "CumProd", 151: "ScatterElements", 152: "GatherElements",
    153: "Svd", 154: "Histogram", 155: "DynamicQuant", 156: "Stft", 256: "Plugin", 257: "Select",
    258: "ZerosLike", 259: "Broastcast", 260: "SetDiff1D", 261: "ReluGrad", 262: "Identity",
    263: "PoolGrad", 264: "SoftmaxGrad", 265: "Conv2DBackPropFilter", 266: "TrainableParam",
    267: "BatchNorm", 268: "ConvTranspose3D", 269: "ZeroGrad", 299: "Attention", 300: "FmhaV2",
    301: "Fmhca", 302: "SeqLen2Spatial", 303: "SplitGeLU", 304: "GroupNorm", 305: "LinearAttention",
    306: "RoPE", 512: "Extra", 513: "ConvInt8", 514: "Int8ToFloat", 515: "DepthwiseConvInt8",
    517: "FloatToInt8", 518: "EltwiseInt8", 600: "While", 601: "If", 603: "LayerNorm",
    604: "GridSample",
}

# What MNN's Python API calls a BinaryOp or UnaryOp (3.6.1's TensorflowOp.fbs): its operation's name
BINARY_OPERATIONS = {
    0: "ADD", 1: "SUB", 2: "MUL", 3: "DIV", 4: "MAX_TEMP", 5: "MIN_TEMP", 6: "POW", 7: "REALDIV",
    8: "MINIMUM", 9: "MAXIMUM", 10: "GREATER", 11: "GREATER_EQUAL", 12: "LESS", 13: "FLOORDIV",
    14: "SquaredDifference", 15: "EQUAL", 16: "LESS_EQUAL", 17: "FLOORMOD", 19: "MOD", 20: "ATAN2",
    21: "LOGICALOR", 22: "NOTEQUAL", 23: "BITWISE_AND", 24: "BITWISE_OR", 25: "BITWISE_XOR",
    26: "LOGICALXOR", 27: "LEFTSHIFT", 28: "RIGHTSHIFT", 29: "MUL_SILU",
}
UNARY_OPERATIONS = {
    0: "ABS", 1: "NEG", 2: "FLOOR", 3: "CEIL", 4: "SQUARE", 5: "SQRT", 6: "RSQRT", 7: "EXP",
    8: "LOG", 9: "SIN", 10: "COS", 11: "TAN", 12: "ASIN", 13: "ACOS", 14: "ATAN", 15: "RECIPROCAL",
    16: "LOG1P", 17: "BNLL", 18: "ACOSH", 19: "SINH", 20: "ASINH", 21: "ATANH", 22: "SIGN",
    23: "ROUND", 24: "COSH", 25: "ERF", 26: "ERFC", 27: "ERFINV", 28: "EXPM1", 29: "SIGMOID",
    30: "TANH", 31: "HARDSWISH", 32: "GELU", 33: "GELU_STANDARD", 34: "SILU",
}
_OPERATIONS = {7: BINARY_OPERATIONS, 101: UNARY_OPERATIONS}


class _Buffer:
    def __init__(self, data):
        self.data = data
        self.size = len(data)

    def u8(self, at: int) -> int:
        self._check(at, 1)
        return self.data[at]

    def i32(self, at: int) -> int:
        self._check(at, 4)
        return struct.unpack_from("<i", self.data, at)[0]

    def u32(self, at: int) -> int:
        self._check(at, 4)
        return struct.unpack_from("<I", self.data, at)[0]

    def u16(self, at: int) -> int:
        self._check(at, 2)
        return struct.unpack_from("<H", self.data, at)[0]

    def f32(self, at: int) -> float:
        self._check(at, 4)
        return struct.unpack_from("<f", self.data, at)[0]

    def _check(self, at: int, n: int) -> None:
        if at < 0 or at + n > self.size:
            raise ValueError("offset outside the file")


class _Table:
    def __init__(self, buf: _Buffer, pos: int):
        self.buf, self.pos = buf, pos
        self.vtable = pos - buf.i32(pos)
        self.vsize = buf.u16(self.vtable)

    def _offset(self, slot: int) -> int:
        entry = 4 + 2 * slot
        return self.buf.u16(self.vtable + entry) if entry < self.vsize else 0

    def has(self, slot: int) -> bool:
        return self._offset(slot) != 0

    def i32(self, slot: int, default: int = 0) -> int:
        off = self._offset(slot)
        return self.buf.i32(self.pos + off) if off else default

    def f32(self, slot: int, default: float = 0.0) -> float:
        off = self._offset(slot)
        return self.buf.f32(self.pos + off) if off else default

    def table(self, slot: int) -> "_Table | None":
        off = self._offset(slot)
        if not off:
            return None
        at = self.pos + off
        return _Table(self.buf, at + self.buf.u32(at))

    def vector(self, slot: int) -> tuple[int, int] | None:
        """(start of the elements, length) of a vector field."""
        off = self._offset(slot)
        if not off:
            return None
        at = self.pos + off
        start = at + self.buf.u32(at)
        return start + 4, self.buf.u32(start)

    def string(self, slot: int) -> str:
        vec = self.vector(slot)
        if vec is None:
            return ""
        start, length = vec
        self.buf._check(start, length)
        return bytes(self.buf.data[start:start + length]).decode("utf-8", errors="replace")


def _mapped(path, read):
    """``read(the file's bytes, memory-mapped)``; ValueError for a file too small to be a model."""
    with open(os.fspath(path), "rb") as handle:
        if os.fstat(handle.fileno()).st_size < 8:
            raise ValueError("too small to be an MNN model")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return read(data)


def _ops(buf: _Buffer, net: _Table):
    """The Net's op tables (oplists, field 3), in order."""
    ops = net.vector(3)
    if ops is None:
        raise ValueError("no op list")
    yield from _ops_at(buf, ops)  # a corrupt count cannot make it run for ever: it is checked first


def read_ops(path) -> list[dict]:
    """The weight ops of an .mnn file: name, op type, and what compression.read looks at, in
    the JSON dump's shape ({"type", "name", "main": {"common", "quanParameter", ...}})."""
    def read(data):
        buf = _Buffer(data)
        found = []
        for op in _ops(buf, _Table(buf, buf.u32(0))):
            op_type = op.i32(5)
            if op_type not in WEIGHT_OP_TYPES:
                continue
            main = op.table(2)
            entry = {"type": WEIGHT_OP_TYPES[op_type], "name": op.string(3), "main": {}}
            if main is not None:
                entry["main"] = _convolution(main)
            found.append(entry)
        return found

    return _mapped(path, read)


def _ints(buf: _Buffer, vec: tuple[int, int] | None) -> list[int]:
    if vec is None:
        return []
    start, count = vec
    buf._check(start, 4 * count)
    return list(struct.unpack_from(f"<{count}i", buf.data, start))


def _strings(buf: _Buffer, vec: tuple[int, int] | None) -> list[str]:
    if vec is None:
        return []
    start, count = vec
    buf._check(start, 4 * count)
    out = []
    for i in range(count):
        at = start + 4 * i
        at += buf.u32(at)
        length = buf.u32(at)
        buf._check(at + 4, length)
        out.append(bytes(buf.data[at + 4:at + 4 + length]).decode("utf-8", errors="replace"))
    return out


def _python_op_type(op: _Table) -> str:
    """The op type as MNN's Python API names it (pymnn's Var.op_type): a BinaryOp or UnaryOp
    by its operation (ADD, TANH...), anything else by its OpType."""
    op_type = op.i32(5)
    if op_type not in OP_TYPE_NAMES or OP_TYPE_NAMES[op_type] == "TrainableParam":
        raise ValueError(f"op type {op_type} is not in this table")
    operations = _OPERATIONS.get(op_type)
    if operations is None:
        return OP_TYPE_NAMES[op_type]
    main = op.table(2)
    operation = main.i32(0) if main is not None else 0
    if operation not in operations:
        raise ValueError(f"{OP_TYPE_NAMES[op_type]} operation {operation} is not in this table")
    return operations[operation]


def read_graph(path) -> list[dict]:
    """Every tensor of an .mnn file as MNN's expressions name it: ``{"name", "op_type",
    "inputs"}`` per op output (what ``MNN.expr.load_as_dict`` gives, without loading a weight).
    Net: oplists 3, tensorName 7, subgraphs 10; Op: inputIndexes 0, outputIndexes 4, type 5.
    Raises ValueError for what does not parse, control flow (subgraphs), or an op type this
    table does not know: MNN then reads the graph itself."""
    def read(data):
        buf = _Buffer(data)
        net = _Table(buf, buf.u32(0))
        subgraphs = net.vector(10)
        if subgraphs is not None and subgraphs[1]:
            raise ValueError("subgraphs (control flow) are read by MNN itself")
        tensors = _strings(buf, net.vector(7))
        found = []
        for op in _ops(buf, net):
            name = _python_op_type(op)
            inputs, outputs = _ints(buf, op.vector(0)), _ints(buf, op.vector(4))
            if any(not 0 <= k < len(tensors) for k in inputs + outputs):
                raise ValueError("a tensor index outside the tensor names")
            inputs = [tensors[k] for k in inputs]
            found += [{"name": tensors[k], "op_type": name, "inputs": inputs} for k in outputs]
        return found

    return _mapped(path, read)


_OP_INPUT = 34  # OpType_Input


def module_io(path) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of an .mnn file as ``Module::load`` picks them when given none (MNN
    3.6.1, express/module/Module.cpp): the outputs of its Input ops in op order; the Net's
    outputName (field 4) when the file has one, else every tensor an op writes and none reads,
    in tensor order. Raises ValueError for what does not parse or declares no output."""
    def read(data):
        buf = _Buffer(data)
        net = _Table(buf, buf.u32(0))
        tensors = _strings(buf, net.vector(7))
        written, read_, inputs = set(), set(), []
        for op in _ops(buf, net):
            outputs = _ints(buf, op.vector(4))
            written.update(outputs)
            read_.update(_ints(buf, op.vector(0)))
            if op.i32(5) == _OP_INPUT:
                inputs += outputs
        if any(not 0 <= k < len(tensors) for k in written | read_):
            raise ValueError("a tensor index outside the tensor names")
        declared = net.vector(4)
        outputs = (_strings(buf, declared) if declared is not None
                   else [tensors[k] for k in sorted(written - read_)])
        if not outputs:
            raise ValueError("no outputs")
        return [tensors[k] for k in inputs], outputs

    return _mapped(path, read)


def _convolution(conv: _Table) -> dict:
    main: dict = {}
    common = conv.table(0)
    if common is not None:
        main["common"] = {"kernelX": common.i32(2, 1), "kernelY": common.i32(3, 1), "group": common.i32(9, 1),
                          "outputCount": common.i32(10, 0), "inputCount": common.i32(11, 0)}
    quant = conv.table(3)
    if quant is not None:
        alpha = quant.vector(1)
        main["quanParameter"] = {
            "alpha": range(alpha[1] if alpha else 0),  # only its length is used: nothing is read
            "type": quant.i32(2), "scaleIn": quant.f32(5), "scaleOut": quant.f32(6),
            "aMaxOrBits": quant.i32(7), "aMin": quant.i32(8),
        }
    if conv.has(4):
        main["symmetricQuan"] = {}
    return main


# -- the values an .mnn holds, by where they lie in the file ------------------------------------
# Blob (Const ops): dims 0, dataType 2, uint8s 3, int8s 4, int32s 5, int64s 6, float32s 7
_BLOB_VECTORS = {3: "uint8", 4: "int8", 5: "int32", 6: "int64", 7: "float32"}
_DT_UINT8 = 4  # Type.fbs DataType: uint8s hold uint8 values only for this type (else float16 bits...)
_CONST = 11


def data_vectors(data) -> tuple[list[dict], tuple[int, int] | None]:
    """The value vectors of an .mnn in ``data`` (bytes or a memory map): Const ops' blobs and
    convolutions' weight and bias, each ``{"start", "end", "dtype", "tensor", "op_type",
    "field", "dims"}`` (bytes [start, end) of the file), and the span of the model's uuid string
    (Net field 11, different in every conversion). Raises ValueError for what it cannot read:
    an op whose values it does not know how to find is simply not listed."""
    buf = _Buffer(data)
    net = _Table(buf, buf.u32(0))
    tensors = _strings(buf, net.vector(7))
    found = []
    for op in _ops(buf, net):
        op_type = op.i32(5)
        outputs = _ints(buf, op.vector(4))
        if not outputs or not 0 <= outputs[0] < len(tensors):
            continue
        tensor = tensors[outputs[0]]
        if op.has(7):
            raise ValueError("an op keeps its data in an external file")
        main = op.table(2)
        if main is None:
            continue
        if op_type in WEIGHT_OP_TYPES or op_type == _CONST:
            external = main.vector(6 if op_type in WEIGHT_OP_TYPES else 9)
            if external is not None and external[1]:
                raise ValueError("values kept in an external file")
        if op_type == _CONST:
            for slot, dtype in _BLOB_VECTORS.items():
                vec = main.vector(slot)
                if vec is None or not vec[1]:
                    continue
                if dtype == "uint8" and main.i32(2) != _DT_UINT8:
                    raise ValueError("a blob of packed bytes (float16, bfloat16...)")
                size = int(np.dtype(dtype).itemsize)
                found.append({"start": vec[0], "end": vec[0] + size * vec[1], "dtype": dtype, "tensor": tensor,
                              "op_type": "Const", "field": None, "dims": tuple(_ints(buf, main.vector(0)))})
        elif op_type in WEIGHT_OP_TYPES:
            for slot, field in ((1, "main.weight"), (2, "main.bias")):
                vec = main.vector(slot)
                if vec is not None and vec[1]:
                    found.append({"start": vec[0], "end": vec[0] + 4 * vec[1], "dtype": "float32",
                                  "tensor": tensor, "op_type": WEIGHT_OP_TYPES[op_type], "field": field,
                                  "dims": (vec[1],)})
    uuid = net.vector(11)
    return found, ((uuid[0], uuid[0] + uuid[1]) if uuid is not None else None)


# OpParameter union members whose values the converter's --saveExternalData (and llmexport)
# moves to the .weight file, and the slot of their ``external:[int64]`` field: [offset, size,
# size...], the sizes of consecutive arrays (MNN 3.6.1, converter RemoveParams.cpp)
_EXTERNAL_SLOTS = {7: 9, 9: 6, 58: 3, 88: 5}  # Blob, Convolution2D, Scale, LayerNorm


def _nodes(buf: _Buffer, net: _Table):
    """The ops of the Net and of its subgraphs (field 10; SubGraphProto.nodes = field 4)."""
    yield from _ops(buf, net)
    for subgraph in _ops_at(buf, net.vector(10)):  # a vector of tables, as the op list is
        yield from _ops_at(buf, subgraph.vector(4))


def _ops_at(buf: _Buffer, ops: tuple[int, int] | None):
    """The tables of a vector field ((start, length) or None: none)."""
    if ops is None:
        return
    start, count = ops
    buf._check(start, 4 * count)
    for i in range(count):
        at = start + 4 * i
        yield _Table(buf, at + buf.u32(at))


def external_extent(path) -> int:
    """How many bytes of its ``.weight`` file an .mnn reads (``--saveExternalData``): the end of
    the furthest span its ops name there, 0 when it keeps every value inside. Ops that name a
    file of their own (Op.externalPath, field 7) do not count. ValueError for what does not
    parse: not an MNN model, or truncated."""
    def read(data):
        buf = _Buffer(data)
        end = 0
        for op in _nodes(buf, _Table(buf, buf.u32(0))):
            kind = op._offset(1)
            slot = _EXTERNAL_SLOTS.get(buf.u8(op.pos + kind) if kind else 0)
            main = op.table(2) if slot is not None and not op.has(7) else None
            external = main.vector(slot) if main is not None else None
            if external is None or external[1] < 2:
                continue
            buf._check(external[0], 8 * external[1])
            spans = struct.unpack_from(f"<{external[1]}q", data, external[0])
            if min(spans) < 0:
                raise ValueError("a negative offset or size in an external span")
            end = max(end, sum(spans))
        return end

    return _mapped(path, read)


# MNN_DATA_FORMAT (Tensor.fbs): NCHW 0, NHWC 1, NC4HW4 2, NHWC4 3, UNKNOWN 4
_PLAIN_FORMATS = {0, 2}
# OpParameter union members (MNN.fbs) that declare a layout: member -> (slot, default) fields
_LAYOUT_FIELDS = {
    7: ((1, 0),),  # Blob.dataFormat (Const)
    21: ((2, 2),),  # Input.dformat
    55: ((1, 0),),  # Reshape.dimType
    66: ((0, 0), (1, 0)),  # TensorConvertInfo.source, .dest (ConvertTensor)
}


def _u8(table: _Table, slot: int, default: int) -> int:
    off = table._offset(slot)
    if not off:
        return default
    table.buf._check(table.pos + off, 1)
    return table.buf.u8(table.pos + off)


def plain_layout(path) -> bool:
    """True when nothing in the .mnn file declares a layout other than NCHW or NC4HW4: no
    NHWC input, constant, reshape or layout conversion (Op.defaultDimentionFormat, NHWC in
    nearly every file, is not a declaration). Then MNN holds every tensor of rank 2 and up
    as NCHW or NC4HW4 (checked against MNN's own reading of 692 converted models: only
    scalars and vectors, where layout means nothing, came out NHWC), so a cut can be fed
    without asking MNN for each tensor's layout, which loads every weight again. False for
    anything unread: subgraphs, an unknown encoding, a file that is not a model."""
    def read(data):
        buf = _Buffer(data)
        net = _Table(buf, buf.u32(0))
        subgraphs = net.vector(10)
        if subgraphs is not None and subgraphs[1]:
            return False
        for op in _ops(buf, net):
            fields = _LAYOUT_FIELDS.get(_u8(op, 1, 0))
            if fields is None:
                continue
            main = op.table(2)
            if main is None:
                continue
            if any(_u8(main, slot, default) not in _PLAIN_FORMATS for slot, default in fields):
                return False
        described = net.vector(1)  # extraTensorDescribe: each one's blob (field 0) has a layout
        if described is not None:
            start, count = described
            buf._check(start, 4 * count)
            for i in range(count):
                at = start + 4 * i
                blob = _Table(buf, at + buf.u32(at)).table(0)
                if blob is not None and _u8(blob, 1, 0) not in _PLAIN_FORMATS:
                    return False
        return True

    try:
        return _mapped(path, read)
    except (OSError, ValueError, struct.error):
        return False


_LAYOUT_NAMES = {0: "NCHW", 2: "NC4HW4"}
# ops whose output MNN lays out by their own rule (a shape or a count), never by their input's
_OWN_LAYOUT_OPS = {"Shape", "Rank", "Size"}


def tensor_layouts(path) -> dict[str, str] | None:
    """Each tensor's layout as MNN holds it in the graph, NCHW or NC4HW4 (channels packed by
    4), for a file of plain layout (plain_layout); None otherwise (MNN must be asked).

    MNN's shape inference gives an Input its ``dformat``, a Const its blob's ``dataFormat``, a
    ConvertTensor its ``dest``, Shape, Rank and Size a plain layout, and every other op its
    first input's layout. A cut must feed a tensor in that layout: ``Pooling3D`` (MNN's
    GlobalAveragePool) reads its input as NC4HW4 whatever the fed var says, and gave errors of
    the order of its values when fed NCHW. Checked against MNN's own reading
    (test_isolation_property.py) on every tensor of rank 2 and up."""
    if not plain_layout(path):
        return None

    def read(data):
        buf = _Buffer(data)
        net = _Table(buf, buf.u32(0))
        tensors = _strings(buf, net.vector(7))
        layout: dict[int, int] = {}
        for op in _ops(buf, net):
            inputs, outputs = _ints(buf, op.vector(0)), _ints(buf, op.vector(4))
            member, main = _u8(op, 1, 0), op.table(2)
            if member == 21:  # Input.dformat
                value = _u8(main, 2, 2) if main is not None else 2
            elif member == 7:  # Blob.dataFormat (Const)
                value = _u8(main, 1, 0) if main is not None else 0
            elif member == 66:  # TensorConvertInfo.dest (ConvertTensor)
                value = _u8(main, 1, 0) if main is not None else 0
            elif _python_op_type(op) in _OWN_LAYOUT_OPS:
                value = 0
            else:
                value = layout.get(inputs[0], 0) if inputs else 0
            for k in outputs:
                if not 0 <= k < len(tensors):
                    raise ValueError("a tensor index outside the tensor names")
                layout[k] = value
        return {tensors[k]: _LAYOUT_NAMES.get(v, "NCHW") for k, v in layout.items()}

    try:
        return _mapped(path, read)
    except (OSError, ValueError, struct.error):
        return None
