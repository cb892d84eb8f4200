"""``--repro DIR``: the smallest case that shows a conversion or runtime bug, ready to attach to
an MNN issue: the ONNX subgraph from the first divergence's paired inputs to its output, its
MNN conversion, the inputs (the reference's values there) and a README.txt with the numbers
and the command that shows the bug. parity checks the reproduction itself and says whether it
reproduces.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from parity.errors import ParityError
from parity.metrics import fmt


def check_repro_dir(path) -> Path:
    """Refuse a --repro path that is not an empty or new directory whose parent exists
    (``parity.paths.check_output_dir``)."""
    from parity.paths import check_output_dir

    check_output_dir(path, "--repro")
    return Path(path)


def write_repro(directory, *, reference, candidate, graph, comparison, verdict, feeds, tolerance,
                timeout: float, check_pair, converter_options=()) -> dict:
    """Write the reproduction; return what it showed (``reproduces``, the figures).

    ``check_pair(onnx_path, mnn_path, inputs_npz) -> Report`` checks the reproduction with
    the caller's settings (the pipeline passes its own check, so this module needs no
    pipeline import).

    On failure nothing is left behind: a directory this call created is removed."""
    import shutil

    created = not Path(directory).exists()
    try:
        return _write(directory, reference=reference, candidate=candidate, graph=graph,
                      comparison=comparison, verdict=verdict, feeds=feeds, tolerance=tolerance,
                      timeout=timeout, check_pair=check_pair, converter_options=converter_options)
    except BaseException:
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise


def _write(directory, *, reference, candidate, graph, comparison, verdict, feeds, tolerance,
           timeout, check_pair, converter_options) -> dict:
    from parity.converter import convert
    from parity.paths import write_atomic

    directory = check_repro_dir(directory)
    directory.mkdir(exist_ok=True)
    divergence = comparison.first_divergence
    if divergence is not None:
        inputs = list(divergence.inputs)
        outputs = [divergence.name]
        from parity.layers import extract_subgraph

        model = extract_subgraph(reference.model_proto(), inputs, outputs)
        scope = f"the ONNX nodes {' -> '.join(divergence.nodes)} ({divergence.op_type})"
    else:
        inputs = list(graph.inputs)
        outputs = list(graph.outputs)
        model = reference.model_proto()
        scope = "the whole model (no single layer diverges first)"
    graph_inputs = set(graph.inputs)
    captured = [n for n in inputs if n not in graph_inputs]
    values = dict(reference.capture(feeds, captured, cache=False).outputs) if captured else {}
    values.update({n: feeds[n] for n in inputs if n in graph_inputs})
    onnx_path = directory / "repro.onnx"
    mnn_path = directory / "repro.mnn"
    npz_path = directory / "inputs.npz"
    write_atomic(onnx_path, model.SerializeToString(), "--repro model")
    buffer = io.BytesIO()
    np.savez(buffer, **{n: values[n] for n in inputs})
    write_atomic(npz_path, buffer.getvalue(), "--repro inputs")
    convert(onnx_path, mnn_path, options=list(converter_options), timeout=timeout)
    tol_args = []
    if tolerance.atol is not None:
        tol_args += ["--atol", f"{tolerance.atol:g}"]
    tol_args += ["--rtol", f"{tolerance.rtol:g}"]
    settings = candidate.settings()
    mnn_args = [f"--mnn-threads {settings['threads']}", f"--mnn-precision {settings['precision']}"]
    if settings.get("target", "local") != "local":
        import shlex

        mnn_args.append(f"--mnn-target {shlex.quote(settings['target'])}")
    command = (f"parity check repro.onnx repro.mnn --inputs inputs.npz {' '.join(tol_args)} "
               f"{' '.join(mnn_args)}")
    try:
        report = check_pair(onnx_path, mnn_path, npz_path)
        output = report.comparisons[0].outputs[0]
        reproduces = not report.passed
        figures = (f"max_abs_diff {fmt(output.max_abs_diff)}, max_rel_diff {fmt(output.max_rel_diff)}, "
                   f"{output.mismatch_fraction:.2%} of elements out of tolerance")
    except ParityError as exc:
        reproduces, figures = None, f"the reproduction could not be checked: {exc}"
    lines = [
        f"parity reproduction: {verdict.kind}",
        "",
        verdict.summary,
        "",
        f"What is here: {scope}, cut from {reference.path.name} and converted with MNN's converter",
        f"(options: {' '.join(converter_options) or 'defaults'}); inputs.npz holds ONNX Runtime's values",
        f"of its inputs {inputs} on the original model's inputs.",
        "",
        f"Versions: MNN {candidate.version}, onnxruntime {reference.version}; MNN settings {settings}.",
        "",
        "Command:",
        f"  {command}",
        "",
        "Result here: " + ("it reproduces: " if reproduces else
                           "it does NOT reproduce in isolation: " if reproduces is False else "") + figures,
    ]
    if reproduces is False:
        lines.append("(the difference needs the rest of the model, or the original .mnn file; "
                     "attach both models instead)")
    lines += ["", "Evidence:"] + [f"  {e}" for e in verdict.evidence]
    write_atomic(directory / "README.txt", ("\n".join(lines) + "\n").encode(), "--repro README")
    return {"directory": str(directory), "reproduces": reproduces, "figures": figures, "command": command}
