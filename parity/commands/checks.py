"""``parity check``, ``compare``, ``convert`` and ``inspect``: parse, call the library, render."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

import click

from parity.commands.params import CONTEXT, FloatRange, traceback_option
from parity.commands.params import (check_options, check_report_paths, declared, group, progress, report_flags,
                               spec_file)
from parity.core.escape import terminal

# the options of each command, in the order its --help lists them
CHECK = group("comparison", "reports", "mnn", "torch", "layers", "compression", "llm", "display")
CONVERT = ("output", "atol", "rtol", "seed", "shape", "inputs", "layers", "mnn_precision", "int8_calibration",
           "int8_method", "mnn_target", *group("compression", "reports"), "timeout", "quiet", "no_color")
COMPARE = ("atol", "rtol", *group("reports"), "no_color")


@click.command(context_settings=CONTEXT)
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@declared("check", *CHECK)
@traceback_option
def check(models, torch, quiet, no_color, **values):
    """Run MODELS on the same inputs and compare them link by link.

    The framework comes from the suffix: .onnx runs in ONNX Runtime, .mnn in MNN, .pt2
    (torch.export) and .pt/.ts/.torchscript (TorchScript) in PyTorch. Give two or three models
    in chain order (torch, ONNX, MNN); the first is the reference. Each model is compared with
    the one before it, and with three, the first with the last as well. Examples:

    \b
        parity check model.onnx model.mnn --json report.json
        parity check model.pt2 model.onnx model.mnn
        parity check --torch net.py:build model.onnx model.mnn
        parity check HF_MODEL_DIR MNN_LLM_EXPORT_DIR --prompt "The capital of France is"
    """
    from parity.commands import llm

    if llm.is_llm_pair(models):  # a Hugging Face folder and its MNN-LLM export
        report, output = llm.check(models, quiet, values)
        emit(report, output, no_color)
    llm.refuse_llm_options(values)
    read = [*models, values["inputs"], values["float_mnn"], values["load_outputs"], spec_file(values["data_loader"]),
            spec_file(torch)]
    written = {"--save-inputs": values["save_inputs"], "--write-fixed": values["write_fixed"],
               "--save-outputs": values["save_outputs"]}
    check_report_paths(report_flags(values), inputs=read, others=written)
    _refuse_outputs_in_the_repro(values.get("repro"), {**report_flags(values), **written})
    if values["mnn_target"] == "local" and any(str(m).lower().endswith(".mnn") for m in models):
        # MNN's child process starts importing MNN now, while parity imports the rest
        from parity.run.worker import prestart

        prestart("mnn", "parity.backends.mnn_child")
    from parity.checking import pipeline

    options = check_options(values)
    with progress(quiet) as say:
        report = pipeline.check((torch, *models) if torch else models, options, progress=say)
    emit(report, options.output, no_color)


# who takes each check's Report in this process instead of its rendering (reports_to)
_TAKERS: list[Callable] = []


@contextlib.contextmanager
def reports_to(take: Callable):
    """Within: a check command run in this process hands its Report to ``take`` and shows
    nothing (the files its options name are written as always), then exits with the report's
    code. For a caller that runs many checks and keeps what it needs of each (a sweep's
    runner keeps the verdict), without rendering and parsing each report's JSON."""
    _TAKERS.append(take)
    try:
        yield
    finally:
        _TAKERS.pop()


def emit(report, output, no_color) -> None:
    """Write the reports ``output`` asks for, show the report (on stderr when one report goes
    to stdout) and exit with the report's code; the paths were checked before the run."""
    import dataclasses

    from parity.checking.rerun import rerun_info
    from parity.core.paths import STDOUT

    if report.rerun is None:
        report = dataclasses.replace(report, rerun=rerun_info(report))
    paths = {flag: path for flag, path in output.reports().items() if path}
    if _TAKERS:
        paths = {flag: path for flag, path in paths.items() if path != STDOUT}
    reports = [(flag, paths[flag], _rendered(flag, report)) for flag in ("--html", "--junit", "--model-explorer",
                                                                         "--json") if flag in paths]
    if _TAKERS:
        write_reports(reports)
        _TAKERS[-1](report)
        raise SystemExit(int(report.exit_code))
    on_stdout = write_reports(reports)
    if on_stdout:
        if not report.passed:
            click.echo(f"{report.verdict.kind}: {terminal(report.verdict.summary)}", err=True)
    else:
        from parity.render import text

        text.render(report, sys.stdout, color=False if no_color else None,
                    reports=[str(path) for _, path, _ in reports if path != STDOUT],
                    listing=[str(path) for flag, path, _ in reports if flag in ("--json", "--html")])
    sys.stdout.flush()
    raise SystemExit(int(report.exit_code))


def _rendered(flag: str, report) -> bytes:
    if flag == "--html":
        from parity.render import html

        return html.render(report).encode()
    if flag == "--junit":
        from parity.render import junit

        return junit.render(report)
    if flag == "--model-explorer":
        from parity.render import model_explorer

        return model_explorer.render(report).encode()
    return report.to_json().encode()


def _refuse_outputs_in_the_repro(repro, outputs: dict) -> None:
    """--repro DIR is made by the run: a report or file written at DIR, or inside it, would
    fail after the whole diagnosis (or land in the reproduction), so it is refused first."""
    if not repro:
        return
    from parity.core.errors import UsageError

    where = os.path.realpath(repro)
    for flag, path in outputs.items():
        if path and path != "-" and os.path.commonpath([where, os.path.realpath(path)]) == where:
            raise UsageError(f"{flag} {path} is the --repro directory {repro} or inside it; give it a path of its own")


def write_reports(reports) -> bool:
    """Write each (flag, path, bytes), the one whose path is '-' last, to stdout; whether one did."""
    from parity.core.paths import STDOUT, write_atomic

    on_stdout = None
    for flag, path, data in reports:
        if path == STDOUT:
            on_stdout = data
        else:
            write_atomic(path, data, flag)
    if on_stdout is not None:
        sys.stdout.flush()
        sys.stdout.buffer.write(on_stdout if on_stdout.endswith(b"\n") else on_stdout + b"\n")
        sys.stdout.flush()
    return on_stdout is not None


@click.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("--timeout", type=FloatRange(min=0, min_open=True), default=300.0,
              show_default=True, help="Seconds MNN may take to load the model.")
@traceback_option
def inspect(model, timeout):
    """Print MODEL's inputs and outputs (names, dtypes, shapes; symbolic dims by name); for an
    .mnn, also its compression per layer (weight bits, block, symmetry, float16, int8 ops). For
    a folder, an MNN-LLM export or a Hugging Face model: what it holds and how it runs."""
    from pathlib import Path

    if not model.strip():  # Path("") is the working directory
        from parity.core.errors import UsageError

        raise UsageError("MODEL is empty: give a model file or folder")
    if Path(model).is_dir():
        from parity.llm.describe import describe

        click.echo("\n".join(terminal(line) for line in describe(model)))
        return
    from parity.checking.inspection import inspect_model
    from parity.render.text import render_inspect

    found = inspect_model(model, timeout=timeout)
    render_inspect(found.framework, model, found.version, found.inputs, found.outputs, sys.stdout,
                   compression=found.compression)
    if found.note:
        click.echo(terminal(found.note))


@click.command(context_settings=CONTEXT)
@click.argument("reference", type=click.Path(dir_okay=True, path_type=str))
@click.argument("candidate", type=click.Path(dir_okay=True, path_type=str))
@click.option("--dtype", type=click.Choice(["float32", "float16", "float64", "int32", "int64", "int8", "uint8", "bool"]),
              help="Element type of raw binary dumps (.bin or any suffix other than .npy/.npz).")
@click.option("--shape", "shape_text", metavar="1x64x512",
              help="Shape of raw binary dumps, when known (else they are aligned to the reference).")
@click.option("--model-input", type=click.Path(dir_okay=True, path_type=str), metavar="FILE",
              help="The model's input (.npy/.npz), to recognise an output read before the run.")
@declared("compare", *COMPARE)
@traceback_option
def compare(reference, candidate, dtype, shape_text, model_input, atol, rtol, no_color, **reports):
    """Compare outputs dumped by hand: REFERENCE against CANDIDATE.

    Each is .npy (one output), .npz (outputs by name) or raw binary (--dtype). Flat buffers are
    aligned to the reference's shape, and NC4HW4 and NHWC layouts are recognised; the alignment
    used is reported. Reading mistakes (all zeros, constant, NaN, the model's input, a wrong
    length) give verdict 'usage' with the fix. Example:

    \b
        parity compare ort_out.npy device_out.bin --dtype float32
    """
    from parity.core import dumps
    from parity.core.specs import parse_shape
    from parity.option_groups import check_keywords
    from parity.options import OutputOptions

    check_report_paths(report_flags(reports), inputs=[reference, candidate, model_input])
    shape = None
    if shape_text:
        try:
            shape = parse_shape(shape_text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--shape") from None
    report = dumps.compare(reference, candidate, dtype=dtype, shape=shape, model_inputs=model_input,
                           **check_keywords({"atol": atol, "rtol": rtol}))
    emit(report, OutputOptions(**reports), no_color)


@click.command(context_settings=dict(CONTEXT, ignore_unknown_options=True))
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@declared("convert", *CONVERT)
@click.argument("converter_options", nargs=-1, type=click.UNPROCESSED)
@traceback_option
def convert(model, output, quiet, no_color, converter_options, **values):
    """Convert MODEL (.onnx) to MNN, then check the pair: validation in one step.

    Options parity does not know are passed to MNN's converter (for example --fp16,
    --weightQuantBits 8, --useGeluApproximation 0). The converter runs in a private
    temporary directory, in a child process, without MNN's telemetry wrapper; only the output
    model is written. Example:

    \b
        parity convert model.onnx -o model.mnn --useGeluApproximation 0
    """
    import dataclasses
    import tempfile
    from pathlib import Path

    from parity.checking import pipeline
    from parity.checking.conversion import convert_onnx
    from parity.checking.preflight import refuse_bad_options

    options = check_options(values)
    refuse_bad_options(options)  # a bad target or budget is refused before converting
    source, target = _convert_paths(model, output)
    check_report_paths(report_flags(values), inputs=[source, values["inputs"]],
                       others={"-o": str(target), **({"--write-fixed": options.write_fixed} if options.write_fixed
                                                     else {})})
    with progress(quiet) as say, tempfile.TemporaryDirectory(prefix="parity-convert-") as scratch:
        float_mnn = convert_onnx(source, target, Path(scratch), converter_options=converter_options,
                                 calibration=options.calibration, method=options.calibration_method,
                                 timeout=options.timeout, progress=say)
        if float_mnn is not None:  # full int8: attributed against its float conversion, on its samples
            options = dataclasses.replace(options, float_mnn=str(float_mnn),
                                          inputs=options.inputs or options.calibration)
        report = pipeline.check([source, target], options, progress=say)
    if converter_options:
        report = dataclasses.replace(report, notes=report.notes + (
            f"converted with {' '.join(converter_options)}",))
    emit(report, options.output, no_color)


def _convert_paths(model, output):
    from pathlib import Path

    source = Path(model)
    if source.suffix.lower() != ".onnx":
        raise click.UsageError(f"parity convert takes an .onnx model, not {source.name}")
    target = Path(output) if output else source.with_suffix(".mnn")
    if target.suffix.lower() != ".mnn":
        raise click.UsageError(f"the output should end in .mnn: {target}")
    return source, target
