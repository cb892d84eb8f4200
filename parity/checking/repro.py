"""``--repro DIR``: the smallest case that shows a conversion or runtime bug, ready to attach to
an MNN issue: the ONNX subgraph from the first divergence's paired inputs to its output, its
MNN conversion, the inputs (the reference's values there) and a README.txt with the numbers
and the command that shows the bug. parity checks the reproduction itself and says whether it
reproduces.

When the diagnosis found the given .mnn file itself wrong (a fresh conversion of the same ONNX
matches ONNX Runtime where the given file does not), a conversion made here cannot show the
difference: the reproduction then carries the given file and the ONNX model, whole, with the
check's inputs, and says so.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from parity.core.errors import ParityError
from parity.core.metrics import fmt


def check_repro_dir(path) -> Path:
    """Refuse a --repro path that is not an empty or new directory whose parent exists
    (``parity.core.paths.check_output_dir``)."""
    from parity.core.paths import check_output_dir

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


def given_file_is_wrong(verdict) -> bool:
    """True when the diagnosis decided that the given .mnn itself shows the error (diagnose's
    "fresh conversion" experiment flagged ``given_file_is_wrong``: a fresh conversion of the same
    ONNX passes, or is decisively closer to ONNX Runtime, where the given file fails). A
    conversion made here would not show it. The flag, not the figures: the verdict also
    stands on outputs passing while the layer fails, or on a tenfold improvement."""
    return any(isinstance(e, dict) and e.get("experiment") == "fresh conversion"
               and e.get("given_file_is_wrong") is True for e in verdict.evidence)


def _copy_given(directory: Path, reference, candidate, feeds) -> tuple[Path, Path, Path, list[str]]:
    """The ONNX model (and its external data) and the given .mnn (and its weights file) copied
    whole into ``directory``, the check's inputs beside them."""
    import shutil

    from parity.mnn.converter import weights_path
    from parity.core.paths import external_data, write_atomic

    onnx_path, mnn_path, npz_path = directory / "model.onnx", directory / "given.mnn", directory / "inputs.npz"
    shutil.copyfile(reference.path, onnx_path)
    for location, file in external_data(reference.path):  # checked to stay in the model's directory
        (directory / location).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, directory / location)
    shutil.copyfile(candidate.path, mnn_path)
    if weights_path(candidate.path).is_file():  # MNN loads MODEL.mnn.weight from beside the model
        shutil.copyfile(weights_path(candidate.path), weights_path(mnn_path))
    buffer = io.BytesIO()
    np.savez(buffer, **feeds)
    write_atomic(npz_path, buffer.getvalue(), "--repro inputs")
    return onnx_path, mnn_path, npz_path, list(feeds)


def _write(directory, *, reference, candidate, graph, comparison, verdict, feeds, tolerance,
           timeout, check_pair, converter_options) -> dict:
    from parity.mnn.converter import convert
    from parity.core.paths import write_atomic

    directory = check_repro_dir(directory)
    directory.mkdir(exist_ok=True)
    divergence = comparison.first_divergence
    given = given_file_is_wrong(verdict)
    if given:
        onnx_path, mnn_path, npz_path, inputs = _copy_given(directory, reference, candidate, feeds)
        scope = (f"the given file {candidate.path.name} (as given.mnn) and the ONNX model it was checked "
                 f"against, {reference.path.name} (as model.onnx), whole")
    elif divergence is not None:
        inputs = list(divergence.inputs)
        outputs = [divergence.name]
        from parity.checking.onnx_graph import extract_subgraph

        model = extract_subgraph(reference.model_proto(), inputs, outputs)
        scope = f"the ONNX nodes {' -> '.join(divergence.nodes)} ({divergence.op_type})"
    else:
        inputs = list(graph.inputs)
        outputs = list(graph.outputs)
        model = reference.model_proto()
        scope = "the whole model (no single layer diverges first)"
    if not given:
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
    command = (f"parity check {onnx_path.name} {mnn_path.name} --inputs inputs.npz {' '.join(tol_args)} "
               f"{' '.join(mnn_args)}")
    try:
        report = check_pair(onnx_path, mnn_path, npz_path)
        outputs = report.comparisons[0].outputs
        output = next((o for o in outputs if not o.passed), outputs[0])  # the whole model may have several
        reproduces = not report.passed
        figures = (f"max_abs_diff {fmt(output.max_abs_diff)}, max_rel_diff {fmt(output.max_rel_diff)}, "
                   f"{output.mismatch_fraction:.2%} of elements out of tolerance")
    except ParityError as exc:
        reproduces, figures = None, f"the reproduction could not be checked: {exc}"
    from parity.render.text import readable_lines

    if given:
        what = [
            f"What is here: {scope}, with the inputs of the check (inputs.npz: {', '.join(inputs)}).",
            "The given file is what is wrong: a fresh conversion of this ONNX model matches ONNX Runtime,",
            "or comes far closer to it, where the given file does not (see the evidence below), so a model",
            "converted here would not show the difference. Attach both files; say how the given file was",
            "made (converter version and options, the ONNX it came from) if you know.",
        ]
    else:
        what = [
            f"What is here: {scope}, cut from {reference.path.name} and converted with MNN's converter",
            f"(options: {' '.join(converter_options) or 'defaults'}); inputs.npz holds ONNX Runtime's values",
            f"of its inputs ({', '.join(inputs)}) on the original model's inputs.",
        ]
    lines = [
        f"parity reproduction: {verdict.kind}",
        "",
        verdict.summary,
        "",
        *what,
        "",
        f"Versions: MNN {candidate.version}, onnxruntime {reference.version}.",
        "MNN settings:",
        *readable_lines(settings, indent="  "),
        "",
        "Command:",
        f"  {command}",
        "",
        "Result here: " + ("it reproduces: " if reproduces else
                           "it does NOT reproduce in isolation: " if reproduces is False else "") + figures,
    ]
    if reproduces is False and not given:
        lines.append("(the difference needs the rest of the model, or the original .mnn file; "
                     "attach both models instead)")
    lines += ["", "Evidence:"]
    for entry in verdict.evidence:
        shown = readable_lines(entry, indent="    ")
        lines += ["  - " + shown[0][4:], *shown[1:]] if shown else []
    write_atomic(directory / "README.txt", ("\n".join(lines) + "\n").encode(), "--repro README")
    return {"directory": str(directory), "reproduces": reproduces, "figures": figures, "command": command,
            "given_file": given}
