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

# OpType values (MNN.fbs, enum OpType) of the ops whose weights MNN's converter compresses
WEIGHT_OP_TYPES = {12: "Convolution", 13: "ConvolutionDepthwise", 17: "Deconvolution",
                   18: "DeconvolutionDepthwise"}


class _Buffer:
    def __init__(self, data):
        self.data = data
        self.size = len(data)

    def u8(self, at: int) -> int:
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


def read_ops(path) -> list[dict]:
    """The weight ops of an .mnn file: name, op type, and what compression.read looks at, in
    the JSON dump's shape ({"type", "name", "main": {"common", "quanParameter", ...}})."""
    with open(os.fspath(path), "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < 8:
            raise ValueError("too small to be an MNN model")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            buf = _Buffer(data)
            net = _Table(buf, buf.u32(0))
            ops = net.vector(3)
            if ops is None:
                raise ValueError("no op list")
            start, count = ops
            buf._check(start, 4 * count)  # a corrupt count cannot make this loop run for ever
            found = []
            for i in range(count):
                at = start + 4 * i
                op = _Table(buf, at + buf.u32(at))
                op_type = op.i32(5)
                if op_type not in WEIGHT_OP_TYPES:
                    continue
                main = op.table(2)
                entry = {"type": WEIGHT_OP_TYPES[op_type], "name": op.string(3), "main": {}}
                if main is not None:
                    entry["main"] = _convolution(main)
                found.append(entry)
            return found


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
