"""Each numpy reference of an MNN op (parity.mnn.ops) against ONNX Runtime.

The cases of tests/op_cases.py are converted to .mnn by parity's converter (once, all side by
side in one model), the .mnn is dumped to JSON as check_op does, and each case's subgraph is
evaluated with ``mnn_ops.evaluate`` op by op from the model's inputs and the file's constants.
The result must be ONNX Runtime's output of the same model on the same inputs, to a scaled
1e-5. Ops of the converter's making that have no reference (Shape, Rank, Select, ...: index
arithmetic around the op) take MNN's own values; every case must evaluate the op it is about.

MNN op types the converter never emits for these ONNX models (Eltwise, TanH, Sigmoid,
InnerProduct, Transpose, Gather, PReLU, Pooling isGlobal: MNN 3.6 emits Pooling3D), and operations of UnaryOp, BinaryOp
and Reduction it never chooses (EXPM1, FLOORDIV, ASUM...), are checked on op JSON written here
in the dump's own format, against ONNX Runtime on an ONNX model computing the same.

Then every reference, and every operation of the table-driven ones, is made to return zeros in
turn: each must fail at least one case.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import op_cases
from helpers import ort_run
from parity.mnn import ops as mnn_ops

TOLERANCE = 1e-5  # of max|ONNX Runtime output|


def _scaled(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return np.inf
    if not got.size:
        return 0.0
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


class Converted:
    """The combined model converted, dumped, run by ONNX Runtime and (for what no reference
    covers) captured from MNN."""

    def __init__(self, directory):
        from parity.mnn.converter import convert
        from parity.mnn.graph import dump_json

        self.feeds, self.ort, self.producer, self.mnn_values, self.names = {}, {}, {}, {}, {}
        for opset in sorted({case.opset for case in op_cases.CASES}):
            cases = [case for case in op_cases.CASES if case.opset == opset]
            onnx_path = directory / f"op_cases_{opset}.onnx"
            onnx.save(op_cases.combined(cases, opset), str(onnx_path))
            mnn_path = directory / f"op_cases_{opset}.mnn"
            convert(onnx_path, mnn_path)
            dump = mnn_ops.load_dump(dump_json(mnn_path, directory / f"op_cases_{opset}.json"))
            feeds = op_cases.feeds(cases)
            self.feeds.update(feeds)
            self.ort.update(ort_run(onnx_path, feeds))
            names = dump["tensorName"]
            for entry in dump["oplists"]:
                for index in entry.get("outputIndexes", []):
                    self.producer[names[index]] = entry
                    self.names[id(entry)] = names
            self.mnn_values.update(self._capture_unreferenced(mnn_path, dump, feeds))

    def _inputs_of(self, entry) -> list[str]:
        return [self.names[id(entry)][i] for i in entry.get("inputIndexes", [])]

    @staticmethod
    def _capture_unreferenced(mnn_path, dump, feeds) -> dict:
        """MNN's values of the tensors made by ops without a reference (or with several
        outputs): the index arithmetic the converter adds around some ops."""
        from parity.backends.mnn import MnnBackend

        wanted = []
        for entry in dump["oplists"]:
            outs = entry.get("outputIndexes", [])
            if entry["type"] not in ("Input", "Const") and (entry["type"] not in mnn_ops.supported() or len(outs) != 1):
                wanted += [dump["tensorName"][i] for i in outs]
        if not wanted:
            return {}
        with MnnBackend(mnn_path, threads=1) as mnn:
            return dict(mnn.capture(feeds, wanted, cache=False).outputs)

    def evaluate(self, case) -> tuple[np.ndarray, list[str]]:
        """The case's output by the numpy references, and the op types they evaluated."""
        memo, evaluated = {}, []

        def value(name):
            if name in memo:
                return memo[name]
            if name in self.feeds:
                array = np.asarray(self.feeds[name])
                result = array.astype(np.int32) if array.dtype == np.int64 else array  # as MNN takes it
            else:
                entry = self.producer[name]
                if entry["type"] == "Const":
                    result = mnn_ops._const_value(entry)
                elif name in self.mnn_values:
                    result = np.asarray(self.mnn_values[name])
                else:
                    result = mnn_ops.evaluate(entry, [value(i) for i in self._inputs_of(entry)])
                    evaluated.append(entry["type"])
            memo[name] = result
            return result

        return value(case.output), evaluated


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    return Converted(tmp_path_factory.mktemp("op_references"))


def _compare(got, want, what, shape=None):
    want = np.asarray(want)
    if shape is not None:  # MNN's op keeps another shape of the same values (the case says which)
        assert got.shape == tuple(shape), (what, got.shape, shape)
        got = got.reshape(want.shape)
    if want.dtype == bool or want.dtype.kind in "iu":  # MNN keeps bool as int32, int64 as int32
        assert got.shape == want.shape and np.array_equal(got.astype(np.int64), want.astype(np.int64)), (
            what, got, want)
        return
    error = _scaled(got, want)
    assert error <= TOLERANCE, (what, error, got.shape, want.shape)


@pytest.mark.parametrize("case", op_cases.CASES, ids=lambda c: c.id)
def test_numpy_reference_matches_onnxruntime(converted, case):
    got, evaluated = converted.evaluate(case)
    assert case.mnn in evaluated, (f"{case.id}: the converted subgraph evaluated {evaluated}, not the MNN "
                                   f"{case.mnn} op this case is for")
    _compare(got, converted.ort[case.output], case.id, case.shape)


@pytest.fixture(scope="session")
def hand_outputs(tmp_path_factory):
    """ONNX Runtime's outputs of the ONNX side of every hand-written MNN op."""
    path = tmp_path_factory.mktemp("op_references_hand") / "hand.onnx"
    cases = [h.case for h in op_cases.HAND_CASES]
    onnx.save(op_cases.combined(cases, op_cases.OPSET), str(path))
    return ort_run(path, op_cases.feeds(cases))


def _hand_inputs(hand) -> list:
    return [hand.case.inputs[k] for k in sorted(hand.case.inputs)] + list(hand.extra)


@pytest.mark.parametrize("hand", op_cases.HAND_CASES, ids=lambda h: h.id)
def test_numpy_reference_of_an_op_written_by_hand_matches_onnxruntime(hand_outputs, hand):
    got = mnn_ops.evaluate(hand.op, _hand_inputs(hand))
    _compare(got, hand_outputs[hand.case.output], hand.id)


# -- the tests above would notice a wrong reference --------------------------------------------
# operations with no ONNX equivalent that ONNX Runtime could check
_UNCHECKED = {("BinaryOp", "ATAN2"): "ONNX has no two-argument arctangent"}


def _failing_cases(converted, hand_outputs) -> list[str]:
    failed = []
    for case in op_cases.CASES:
        try:
            got, _ = converted.evaluate(case)
            _compare(got, converted.ort[case.output], case.id, case.shape)
        except Exception:
            failed.append(case.id)
    for hand in op_cases.HAND_CASES:
        try:
            _compare(mnn_ops.evaluate(hand.op, _hand_inputs(hand)), hand_outputs[hand.case.output], hand.id)
        except Exception:
            failed.append(hand.id)
    return failed


def _zeros(fn):
    def wrong(*args, **kwargs):
        return np.zeros_like(np.asarray(fn(*args, **kwargs)))
    return wrong


def _mutants():
    """Every reference, and every operation of the table-driven ones, made to return zeros of
    the right shape and dtype (the subtlest way for a reference to be wrong)."""
    for name in mnn_ops.supported():
        yield f"{name} reference", mnn_ops._OPS, name
    for op_type, table in (("UnaryOp", mnn_ops._UNARY), ("BinaryOp", mnn_ops._BINARY),
                           ("Reduction", mnn_ops._REDUCE)):
        for name in table:
            if (op_type, name) not in _UNCHECKED:
                yield f"{op_type} {name}", table, name


def test_a_reference_returning_zeros_fails_a_case(converted, hand_outputs, monkeypatch):
    assert _failing_cases(converted, hand_outputs) == []
    survivors = []
    for label, table, key in _mutants():
        with monkeypatch.context() as patch, np.errstate(all="ignore"):  # zeros fed on: log(0)
            patch.setitem(table, key, _zeros(table[key]))
            if not _failing_cases(converted, hand_outputs):
                survivors.append(label)
    assert survivors == [], f"no case notices these references returning zeros: {survivors}"
