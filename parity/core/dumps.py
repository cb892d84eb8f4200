"""``parity.compare``: outputs dumped by hand (on a device, through MNN's Session API) against
reference outputs, with the usage mistakes people make when reading them recognised.

Files: ``.npy`` (one output), ``.npz`` (several, by name), or raw binary (``--dtype``, and
``--shape`` when known). A flat or raw buffer is brought to the reference's shape by trying
the layouts MNN hands out, plain (NCHW), NC4HW4 (channels in zero-padded blocks of 4) and
NHWC, and keeping the one that matches; the one chosen is reported as the alignment.

Usage mistakes are checked before any figure is trusted: a buffer that is all zeros,
constant or NaN, that equals the model's input (read before the run: the session shares
memory), or whose length is wrong in a recognisable way (float16 read as float32, an NC4HW4
buffer, a batch). Each gives verdict ``usage`` with the fix in one sentence.

A wrong length is explained by the evidence first: the bytes reread as another dtype match the
reference, the values match a part of the reference (a truncated copy, one item of a batch), or
the length is a model input's (a host tensor made with the input's shape). A dtype misread is
suggested only when the candidate's dtype can be wrong: a raw dump (its dtype is --dtype's
guess) or a declared dtype other than the reference's. A .npy that says float32 holds float32.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from parity.core.align import AlignmentError, explain_size, fits, pair_outputs
from parity.core.errors import InputError, UsageError
from parity.core.inputs import read_npy, read_npz, read_raw
from parity.core.judge import diff_tensors, output_detail
from parity.core.metrics import TensorDiff, Tolerance
from parity.core.paths import check_input
from parity.core.report import BackendInfo, Comparison, OutputComparison, Report, Verdict
from parity.core.specs import format_shape

RAW_DTYPES = ("float32", "float16", "float64", "int32", "int64", "int8", "uint8", "bool")


def load_dump(path: str | os.PathLike, *, dtype: str | None = None,
              shape: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """name -> array for a .npy, .npz or raw file (raw needs ``dtype``). Only regular files are
    read, and no array larger than memory is allocated (``parity.core.inputs.read_*``)."""
    path = Path(path)
    check_input(path, "dump")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_npz(path, "dump")
    if suffix == ".npy":
        return {path.stem: read_npy(path, "dump")}
    if dtype is None:
        raise UsageError(f"{path.name} is raw binary: give its element type with --dtype "
                         f"({', '.join(RAW_DTYPES)})")
    data = read_raw(path, "dump", dtype)
    if shape:
        need = math.prod(int(d) for d in shape)
        if need != data.size:
            raise InputError(f"{path.name} holds {data.size} {dtype} values, --shape "
                             f"{'x'.join(map(str, shape))} needs {need}")
        data = data.reshape(shape)
    return {path.stem: data}


def _within(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance) -> bool:
    """Whether the candidate, element for element in order, meets the tolerance (as many numbers)."""
    if reference.size != candidate.size or reference.dtype.kind not in "biuf" or candidate.dtype.kind not in "biuf":
        return False
    reference, candidate = reference.reshape(-1), candidate.reshape(-1)  # a raw dump is flat
    r, c = reference.astype(np.float64), candidate.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        bound = tolerance.atol_for(float(np.abs(r[np.isfinite(r)]).max(initial=0.0))) + tolerance.rtol * np.abs(r)
        return bool(np.all(np.abs(c - r) <= bound))


def _usage_problem(reference: np.ndarray, candidate: np.ndarray, model_inputs: Mapping[str, np.ndarray],
                   tolerance: Tolerance = Tolerance()) -> str | None:
    """One sentence naming the mistake and its fix, or None. A candidate that equals the
    model's input, or is all zeros or constant, is a reading mistake only when the reference
    is not that too (an identity or pass-through output; a near-zero output within tolerance)."""
    flat = candidate.reshape(-1)
    ref = reference.reshape(-1)
    if flat.size == 0:
        return "the candidate is empty: the output was never written; run the session before reading it"
    if flat.dtype.kind == "f" and np.isnan(flat).all():
        return ("the candidate is all NaN: it was read from uninitialised memory or with the wrong "
                "dtype; run the session first and read the output's declared type")
    if flat.dtype.kind == "f" and np.isnan(flat).any() and not np.isnan(ref).any():
        return (f"the candidate has {int(np.isnan(flat).sum())} NaN values where the reference has none: "
                f"read with the wrong dtype, or from memory the run did not write")
    for name, array in model_inputs.items():
        a = np.asarray(array).reshape(-1)
        n = min(a.size, flat.size)
        if (n >= 8 and a.dtype.kind == flat.dtype.kind and np.array_equal(a[:n], flat[:n])
                and not (ref.size >= n and np.array_equal(a[:n], ref[:n]))):
            return (f"the candidate holds the model's input {name!r}: it was read before the run "
                    f"(input and output share memory until the session runs); call runSession / "
                    f"onForward before reading the output")
    # a tiny output can be legitimately zero or constant: only a real buffer says 'unwritten'
    if flat.size < 8 or _within(reference, candidate, tolerance):
        return None
    if not np.any(flat) and np.any(ref):
        return ("the candidate is all zeros: the output was read before the session ran (or from "
                "another tensor); run the session, then copy the output to the host and read it")
    if np.all(flat == flat[0]) and not np.all(ref == ref[0]):
        return (f"the candidate is constant ({flat[0]!r}): the output was read before the run or "
                f"from the wrong tensor")
    return None


def _explain_length(reference: np.ndarray, candidate: np.ndarray, *, tolerance: Tolerance,
                    model_inputs: Mapping[str, np.ndarray], raw: bool) -> str:
    """Why the candidate's element count does not fit the reference, in one sentence, from the
    evidence (see the module docstring). ``raw``: the candidate's dtype is --dtype's guess."""
    n, ref = candidate.size, reference.size
    dtype_known = not raw and candidate.dtype == reference.dtype  # then a misread is ruled out
    reread = _reread_match(reference, candidate, tolerance)
    if reread is not None:  # proven by the values, whatever the file declares
        fix = f"use --dtype {reread}" if raw else f"read the output as {reread} when dumping it"
        return (f"the candidate's bytes are {reread} values read as {candidate.dtype.name}: read as "
                f"{reread} they match the reference ({fix})")
    sized = next(((name, np.asarray(a)) for name, a in model_inputs.items() if np.asarray(a).size == n), None)
    as_input = (f", as many as the model's input {sized[0]!r} {format_shape(sized[1].shape)}"
                if sized is not None else "")
    part = _matching_part(reference, candidate, tolerance)
    if part is not None:
        whole = format_shape(reference.shape)
        if part > 0:
            return (f"the candidate is elements {part * n}..{(part + 1) * n - 1} of the reference's {ref} "
                    f"(the values match there): one item of a batch; copy the whole output {whole}")
        if sized is not None:
            return (f"the candidate is the first {n} of the reference's {ref} elements{as_input}: a "
                    f"truncated copy into a host tensor made with the input's shape; make it with the "
                    f"output's shape {whole}")
        return (f"the candidate is the first {n} of the reference's {ref} elements (the values match "
                f"there): one item of a batch, or a truncated copy (copyFrom / copyToHostTensor into a "
                f"smaller host tensor); copy the whole output {whole}")
    if sized is not None:
        return (f"the candidate has {n} elements{as_input}, not the reference's {ref}: it was read "
                f"through a host tensor of the input's shape, or it is another tensor; read the output "
                f"into a host tensor of its own shape {format_shape(reference.shape)}")
    if not dtype_known and _plausible_reread(reference, candidate):
        return explain_size(reference, candidate)
    return _size_phrase(reference, candidate, dtype_known)


def _rereads(reference: np.ndarray, candidate: np.ndarray):
    """(dtype name, the candidate's bytes read as it) for float16, float32 and the reference's
    dtype, when that reading has the reference's element count."""
    nbytes = candidate.size * candidate.dtype.itemsize
    for name in dict.fromkeys([reference.dtype.name, "float16", "float32"]):
        dtype = np.dtype(name)
        if dtype != candidate.dtype and dtype.kind in "biuf" and nbytes == reference.size * dtype.itemsize:
            yield name, np.ascontiguousarray(candidate).reshape(-1).view(dtype)


def _reread_match(reference, candidate, tolerance) -> str | None:
    """The dtype whose reading of the candidate's bytes matches the reference, or None."""
    if candidate.dtype.kind not in "biuf" or reference.dtype.kind not in "biuf":
        return None
    for name, values in _rereads(reference, candidate):
        if _matches(reference.reshape(-1), values, tolerance):
            return name
    return None


def _plausible_reread(reference, candidate) -> bool:
    """Whether some dtype reads the candidate's bytes as numbers like the reference's (finite,
    of its magnitude): then a misread is possible though those numbers differ (a wrong output
    dumped with the wrong dtype). With no such reading the dtype is not the problem."""
    if candidate.dtype.kind not in "biuf" or reference.dtype.kind not in "biuf":
        return False
    scale = max(float(np.max(np.abs(reference.astype(np.float64)), initial=0.0)), 1.0)
    for _, values in _rereads(reference, candidate):
        if values.dtype.kind != "f":
            return True
        with np.errstate(all="ignore"):
            wide = values.astype(np.float64)
            if np.isfinite(wide).all() and float(np.max(np.abs(wide), initial=0.0)) <= 1e3 * scale:
                return True
    return False


def _matching_part(reference, candidate, tolerance) -> int | None:
    """i when the candidate matches the reference's i-th flat part of its size, else None."""
    n, ref = candidate.size, reference.size
    if not n or n >= ref or ref % n or candidate.dtype.kind not in "biuf" or reference.dtype.kind not in "biuf":
        return None
    count = ref // n
    parts = reference.reshape(count, n)
    for index in range(min(count, 64)):  # a batch item or a copy cut short: the first parts say it
        if _matches(parts[index], candidate.reshape(-1), tolerance):
            return index
    return None


def _matches(reference: np.ndarray, values: np.ndarray, tolerance: Tolerance) -> bool:
    """Same values within tolerance, or the same direction (cosine): evidence, not a verdict."""
    if values.size != reference.size or values.size < 2:
        return False
    with np.errstate(all="ignore"):
        diff = TensorDiff.from_arrays("evidence", reference, values.reshape(reference.shape), tolerance)
    return diff.passed or (diff.cosine is not None and diff.cosine > 0.999)


def _size_phrase(reference: np.ndarray, candidate: np.ndarray, dtype_known: bool) -> str:
    """explain_size's reasons other than a dtype misread, which ``dtype_known`` rules out."""
    n, ref = candidate.size, reference.size
    declared = (f" (it declares {candidate.dtype.name}, the reference's dtype, so this is not a dtype "
                f"misread)" if dtype_known and (n * 2 == ref or n == ref * 2) else "")
    return explain_size(reference, candidate, dtype_known=True, aside=declared)


def _usage_row(r, c, problem, steps, tolerance, common) -> OutputComparison:
    """A usage mistake, with the figures as read when the buffer aligns at all."""
    try:
        judged, diff = diff_tensors(common["name"], r, c, tolerance, reread_same_shape=True)
    except (AlignmentError, ValueError):
        return OutputComparison(passed=False, alignment=tuple(steps), error=f"usage: {problem}", **common)
    row = OutputComparison.from_diff(diff, alignment=tuple(steps) + judged.alignment.steps, **common)
    return dataclasses.replace(row, passed=False, notes=(f"usage: {problem}",) + tuple(row.notes))


def compare(
    reference: str | os.PathLike | Mapping[str, np.ndarray],
    candidate: str | os.PathLike | Mapping[str, np.ndarray],
    *,
    tolerance: Tolerance = Tolerance(),
    dtype: str | None = None,
    shape: Sequence[int] | None = None,
    model_inputs: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
) -> Report:
    """Compare dumped outputs; see the module docstring."""
    if not isinstance(tolerance, Tolerance):
        from parity.core.errors import UsageError

        raise UsageError(f"tolerance= takes parity.Tolerance(atol, rtol), not {type(tolerance).__name__} "
                         f"{tolerance!r}")

    def load(side):
        if isinstance(side, Mapping):
            return {k: np.asarray(v) for k, v in side.items()}, "given"
        return load_dump(side, dtype=dtype, shape=shape), str(side)

    refs, ref_label = load(reference)
    cands, cand_label = load(candidate)
    # a raw file's dtype is --dtype's guess; a .npy/.npz header or an array declares its own
    cand_raw = not isinstance(candidate, Mapping) and Path(candidate).suffix.lower() not in (".npy", ".npz")
    if isinstance(model_inputs, (str, os.PathLike)):
        model_inputs = load_dump(model_inputs, dtype=dtype)
    model_inputs = dict(model_inputs or {})

    missing, extra = (), ()
    if len(refs) == 1 and len(cands) == 1:
        (rname, r), (cname, c) = next(iter(refs.items())), next(iter(cands.items()))
        pairs = [(rname, cname, "single")]
    else:
        pairing = pair_outputs(list(refs), list(cands))
        pairs = [(p.reference_name, p.candidate_name, p.how) for p in pairing.pairs]
        missing, extra = pairing.missing_in_candidate, pairing.extra_in_candidate
    outputs, usage = [], []
    for rname, cname, how in pairs:
        r, c = refs[rname], cands[cname]
        steps = [] if how in ("name", "single") else [f"paired by order: {rname!r} <-> {cname!r}"]
        common = dict(name=rname, reference_name=rname, candidate_name=cname,
                      reference_shape=tuple(r.shape), candidate_shape=tuple(c.shape),
                      reference_dtype=r.dtype.name, candidate_dtype=c.dtype.name)
        problem = _usage_problem(r, c, model_inputs, tolerance)
        if problem is None and not fits(r, c):
            problem = _explain_length(r, c, tolerance=tolerance, model_inputs=model_inputs, raw=cand_raw)
        if problem is not None:
            usage.append((rname, problem))
            outputs.append(_usage_row(r, c, problem, steps, tolerance, common))
            continue
        try:  # every layout align.py knows; the first that passes, else the closest
            judged, diff = diff_tensors(rname, r, c, tolerance, reread_same_shape=True)
        except AlignmentError as exc:
            outputs.append(OutputComparison(passed=False, alignment=tuple(steps), error=str(exc), **common))
            continue
        outputs.append(OutputComparison.from_diff(diff, alignment=tuple(steps) + judged.alignment.steps, **common))
    for name in missing:
        outputs.append(OutputComparison(
            name=name, reference_name=name, candidate_name=None, passed=False,
            reference_shape=tuple(refs[name].shape), reference_dtype=refs[name].dtype.name,
            error=f"no candidate output pairs with it; the candidate has {list(cands)}"))
    notes = tuple(f"candidate output {n!r} has no reference partner and was not compared" for n in extra)
    comparison = Comparison("reference", "candidate", all(o.passed for o in outputs) and bool(outputs),
                            tuple(outputs), notes)
    if usage:
        name, problem = usage[0]
        verdict = Verdict("usage", f"output {name!r}", problem,
                          next_steps=("fix how the output is read, dump it again and rerun parity compare",))
    elif comparison.passed:
        verdict = Verdict("pass", None, f"all {len(outputs)} outputs match within tolerance")
    else:
        first = next(o for o in outputs if not o.passed)
        summary = (f"output {first.name!r}: {first.error}" if first.error else
                   f"output {first.name!r} differs: {output_detail(first)}, with every layout tried")
        verdict = Verdict("mismatch", f"output {first.name!r}", summary)
    from parity import __version__

    return Report(
        passed=comparison.passed and not usage,
        backends=(BackendInfo("file", ref_label, ""), BackendInfo("file", cand_label, "")),
        inputs=(), comparisons=(comparison,), verdict=verdict, tolerance=tolerance.to_dict(),
        parity_version=__version__,
    )
