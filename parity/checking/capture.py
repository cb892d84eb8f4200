"""Capturing the paired tensors of both sides, chunk by chunk, within a memory budget.

Layers are captured in chunks whose tensors fit ``max_memory`` (both sides held at once),
compared as they arrive and dropped; only small samples are kept for later checks. A request
the candidate refuses is split to find the tensors it cannot return. Part of the layer
comparison (layers.py)."""

from __future__ import annotations

import os

import numpy as np

from parity.checking.divergence import judge_entry, take_sample
from parity.checking.pairing import Entry
from parity.core.errors import BackendCrash, BackendError, first_line
from parity.core.report import Unpaired


def default_max_memory() -> int:
    """A quarter of physical memory, at least 256 MiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return max(total // 4, 256 << 20)


def one_run_fits(onnx_path, shapes=None) -> list[str] | None:
    """Whether a --layers check may run each model once with every tensor returned (the
    models' runs then serve the layer capture): every value of the ONNX graph, sized from its
    declared input shapes (or ``shapes``, input name -> shape: --shapes), twice (both sides),
    fits what one capture chunk may hold under the default memory budget. An input shape
    left free, or a graph shape inference cannot size, says no: the capture then runs in
    chunks, as with --max-memory. Returns the graph's values (what the runs are to return,
    in order) when it fits, else None."""
    from parity.checking.onnx_graph import OnnxGraph
    from parity.core import onnx_skeleton

    try:
        model = onnx_skeleton.load(onnx_path, keep_below=1 << 16)
        initializers = {t.name for t in model.graph.initializer}
        feeds = {}
        for graph_input in model.graph.input:
            if graph_input.name in initializers:
                continue
            dims = list((shapes or {}).get(graph_input.name) or
                        [d.dim_value if d.HasField("dim_value") else None for d in graph_input.type.tensor_type.shape.dim])
            if any(not isinstance(d, int) or d < 0 for d in dims):
                return None
            feeds[graph_input.name] = np.broadcast_to(np.zeros((), np.uint8), dims)  # a shape, no memory
        sizes = OnnxGraph(model).value_bytes(feeds)
        values = list(dict.fromkeys(v for node in model.graph.node for v in node.output if v))
    except Exception:  # what does not load is the check's to report
        return None
    fits = len(sizes) >= 0.9 * len(values) and 2 * sum(sizes.values()) <= default_max_memory() // 4
    return values if fits else None


def plan_chunks(graph, feeds, entries, max_memory, report) -> list[list[Entry]]:
    """Entries in capture chunks whose tensors, both sides, fit a quarter of ``max_memory``
    (the rest is for the frameworks at work)."""
    sizes = graph.value_bytes(feeds)
    known = [s for s in sizes.values() if s]
    fallback = max(known) if known else 1 << 20
    budget = max_memory if max_memory is not None else default_max_memory()
    chunks, current, used = [], [], 0
    for entry in entries:
        cost = sizes.get(entry.value.name, fallback) * (1 + len(entry.candidate_names))
        if current and used + cost > budget // 4:
            chunks.append(current)
            current, used = [], 0
        current.append(entry)
        used += cost
    if current:
        chunks.append(current)
    report.chunks = len(chunks)
    if len(chunks) > 1:
        report.notes.append(f"captured in {len(chunks)} chunks to hold at most {budget / 4 / 2**20:.0f} MiB "
                            f"of tensors at once, within --max-memory {budget / 2**20:.0f} MiB")
    return chunks


def capture_chunks(graph, reference, candidate, feeds, tol, layer_rtol, chunks, plan, state, report, say):
    """Capture and judge ``chunks`` in turn, reporting progress through ``say``. Returns the
    tensors captured (reference's, candidate's) when there is one chunk, else None: chunk by
    chunk, each one's tensors are dropped once judged."""
    total, done, captured = len(plan.entries), 0, None
    for number, chunk in enumerate(chunks, 1):
        step = f"layers: capturing chunk {number}/{len(chunks)} ({len(chunk)} tensors)"
        say(step, done, total)

        def judged(count, step=step):
            say(step.replace("capturing", "comparing"), done + count, total)

        # one chunk: its tensors stay until the first divergence is known, which keeps its
        # own and its inputs' (isolation and the diagnosis need them: no second capture)
        captured = _capture_chunk(graph, reference, candidate, feeds, tol, layer_rtol, chunk, plan, state,
                                  report, cache=len(chunks) == 1, judged=judged)
        done += len(chunk)
        if len(chunks) > 1:
            captured = None
            _release_memory()
    return captured


def _capture_chunk(graph, reference, candidate, feeds, tol, layer_rtol, chunk, plan, state, report, *, cache,
                   judged=lambda count: None):
    """Capture one chunk on both sides, compare each entry, keep figures and small samples.
    A candidate that reads captures from its last run (MNN's module returning every tensor)
    hands its tensors over in batches: it writes the next while the parent compares one."""
    batches = _batches(chunk, 6 if candidate.captures_from_its_run and cache else 1)
    names = [list(dict.fromkeys(n for e in batch for n in e.candidate_names)) for batch in batches]
    ref_names = list(dict.fromkeys(e.reference_name for e in chunk))
    pending = _begin_capture(candidate, feeds, names[0], cache)  # MNN's child works meanwhile
    try:
        ref_run = reference.capture(feeds, ref_names, cache=cache)
    except Exception:
        _abandon(candidate, pending)
        raise
    skipped = dict(n.split(": ", 1) for n in ref_run.notes if ": " in n)
    cand_arrays, done = {}, 0
    for number, batch in enumerate(batches):
        arrays, errors = _finish_capture(candidate, pending, feeds, names[number], cache)
        pending = _begin_capture(candidate, feeds, names[number + 1], cache) if number + 1 < len(batches) else None
        try:
            for entry in batch:
                judged(done)
                done += 1
                _judge_captured(graph, entry, ref_run.outputs, arrays, errors, skipped, tol, layer_rtol, plan,
                                state, report)
        except BaseException:
            _abandon(candidate, pending)
            raise
        cand_arrays.update(arrays)
    return ref_run.outputs, cand_arrays


_GROWTH = 1.5  # each batch of a capture handed over in batches, against the last


def _batches(chunk: list, count: int) -> list[list]:
    """``chunk`` in ``count`` batches, each _GROWTH times the last (empty ones left out):
    the parent waits for the first, small, batch and then compares each batch while the child
    writes the next (BERT-base, 471 tensors: comparing one takes about 1.7x writing it; the
    parent's waits 0.08-0.11 s in 4 equal batches, 0.07 s in these)."""
    weights = [_GROWTH ** k for k in range(count)]
    ends = [round(len(chunk) * sum(weights[:k + 1]) / sum(weights)) for k in range(count)]
    return [chunk[a:b] for a, b in zip([0, *ends[:-1]], ends) if b > a] or [[]]


def _abandon(candidate, pending) -> None:
    """Collect a started capture's reply before anything else is asked (the child answers
    in order), its result dropped."""
    if pending is not None and not isinstance(pending, BackendError):
        try:
            candidate.finish_capture(pending)
        except Exception:
            pass


def _judge_captured(graph, entry, ref_arrays, cand_arrays, cand_errors, skipped, tol, layer_rtol, plan, state,
                    report) -> None:
    v = entry.value
    ref = ref_arrays.get(entry.reference_name)
    if ref is None:
        reason = skipped.get(entry.reference_name, "the reference returned no tensor")
        if "did not run" in reason:
            reason += "; the ONNX graph computes it (control flow frozen at export?)"
        report.unpaired.append(Unpaired(v.name, f"module {entry.reference_name!r}: {reason}"))
        return
    ref = np.asarray(ref)
    state.samples[v.name] = take_sample(ref)
    cands = {n: np.asarray(cand_arrays[n]) for n in entry.candidate_names if n in cand_arrays}
    if not cands:
        errors = [cand_errors[n] for n in entry.candidate_names if n in cand_errors]
        report.unpaired.append(Unpaired(v.name, errors[0] if errors else "the candidate returned no tensor"))
        return
    judge_entry(graph, entry, ref, cands, tol, layer_rtol, plan, state, report)


def keep_divergence_values(graph, reference, candidate, feeds, first, results, captured) -> None:
    """Hand the backends the captured tensors the first divergence's isolation, histogram and
    diagnosis ask for again: its inputs' and its own reference values, its candidate value
    (for the histogram alone)."""
    layer, frontier = first
    ref_arrays, cand_arrays = captured
    inputs = set(graph.inputs)
    ref_names = [results[f].reference_name for f in frontier if f not in inputs and f in results]
    ref_names.append(layer.reference_name)
    reference.keep_values(feeds, {n: ref_arrays[n] for n in ref_names if n in ref_arrays})
    if layer.candidate_name in cand_arrays:
        candidate.keep_values(feeds, {layer.candidate_name: cand_arrays[layer.candidate_name]})


def _release_memory() -> None:
    """Give freed heap pages back to the OS between chunks (glibc keeps them otherwise), so the
    process's resident size follows what is held, not what was ever held."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _begin_capture(candidate, feeds, names, cache):
    """The candidate's capture, started; a refusal to start is kept for ``_finish_capture``."""
    if not names:
        return None
    try:
        return candidate.begin_capture(feeds, names, cache=cache)
    except BackendCrash:
        raise
    except BackendError as exc:
        return exc


def _finish_capture(candidate, pending, feeds, names, cache) -> tuple[dict, dict]:
    """(arrays, reasons for the names the candidate could not return) of a started capture;
    a refused request is split at once to find the names it cannot return (asking for all of
    it again would repeat the refusal)."""
    if pending is None:
        return {}, {}
    try:
        if isinstance(pending, BackendError):
            raise pending
        result = candidate.finish_capture(pending)
    except BackendCrash:
        raise
    except BackendError as exc:
        if len(names) == 1:
            return {}, {names[0]: f"{candidate.framework} could not return this tensor: {first_line(exc)}"}
        half = len(names) // 2
        a, ea = _capture_robust(candidate, feeds, names[:half], False)
        b, eb = _capture_robust(candidate, feeds, names[half:], False)
        return {**a, **b}, {**ea, **eb}
    # tensors the framework could not return come back named, the others with them
    return dict(result.outputs), {name: f"{candidate.framework} could not return this tensor: {why}"
                                  for name, why in result.failed.items()}


def _capture_robust(candidate, feeds, names, cache) -> tuple[dict, dict]:
    """Capture ``names``; when the framework refuses the request, split it to find the names
    it cannot return (each then gets its own reason) instead of losing the whole chunk."""
    return _finish_capture(candidate, _begin_capture(candidate, feeds, names, cache), feeds, names, cache)
