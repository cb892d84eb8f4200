"""The click shell: parse -> call the library -> render -> exit code. No logic lives here.

The one place exceptions become exit codes is ``ParityGroup.invoke``: a ParityError prints
``Error: ...`` and exits with its code; anything else is an internal error (123) shown as one
line unless --traceback (or PARITY_TRACEBACK=1) asks for the whole story.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import click

from parity.core.errors import BackendCrash, ExitCode, ParityError
from parity.core.escape import terminal

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _want_traceback(ctx: click.Context) -> bool:
    return bool(ctx.meta.get("parity.traceback")) or os.environ.get("PARITY_TRACEBACK") == "1"


class ParityGroup(click.Group):
    @staticmethod
    def _interrupted(ctx: click.Context, exc: KeyboardInterrupt):
        from parity.run.process import interruption
        from parity.core.paths import published

        cause, code = interruption(exc)
        written = published()
        done = (f"written before it: {', '.join(map(repr, written))}" if written
                else "nothing was written")
        click.echo(f"{cause}; child processes stopped, {terminal(done)}.", err=True)
        ctx.exit(code)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.exceptions.UsageError as exc:
            # one line, like every other error; the help stays one flag away
            command = exc.ctx.command_path if exc.ctx is not None else "parity"
            click.echo(f"Error: {terminal(exc.format_message())} (see '{command} --help')", err=True)
            ctx.exit(int(ExitCode.USAGE))
        except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except ParityError as exc:
            from parity.run.process import signalled

            interrupted = signalled()
            if interrupted is not None:  # an error caused by the signal: report the signal
                return self._interrupted(ctx, interrupted)
            if _want_traceback(ctx):
                traceback.print_exc()
            click.echo(f"Error: {terminal(exc)}", err=True)
            ctx.exit(int(exc.exit_code))
        except KeyboardInterrupt as exc:  # Ctrl-C, and SIGTERM or SIGHUP (process.Terminated)
            return self._interrupted(ctx, exc)
        except BrokenPipeError:  # stdout's reader went away (`parity check ... | head`)
            from parity.run.process import silence_stdout

            ctx.exit(silence_stdout())
        except Exception as exc:  # the one catch-all: one line, not a traceback
            from parity.run.process import signalled

            if signalled() is not None:  # a consequence of the signal being handled
                return self._interrupted(ctx, signalled())
            if _want_traceback(ctx):
                traceback.print_exc()
                ctx.exit(int(ExitCode.INTERNAL))
            first = terminal((str(exc).strip().splitlines() or [""])[0])
            click.echo(
                f"Internal error: {type(exc).__name__}: {first} (rerun with --traceback for details)",
                err=True,
            )
            ctx.exit(int(ExitCode.INTERNAL))


def _traceback_option(f):
    def remember(ctx, _param, value):
        if value:
            ctx.meta["parity.traceback"] = True
        return value

    return click.option(
        "--traceback", is_flag=True, expose_value=False, callback=remember, is_eager=True,
        help="Show the full Python traceback when something fails.",
    )(f)


@click.group(cls=ParityGroup, context_settings=_CONTEXT)
@click.version_option(package_name="parity", prog_name="parity")
@_traceback_option
def cli():
    """parity: does the converted model compute the same thing?

    Runs one model in PyTorch, ONNX Runtime and MNN on the same inputs, aligns the outputs and
    reports per-output differences. Exit codes: 0 pass, 1 mismatch, 2 command-line error, 3 model or
    input error, 4 backend failure (crash, timeout, framework missing), 123 internal error.
    """
    from parity.run.process import install_process_guards

    install_process_guards()  # SIGTERM/SIGHUP like Ctrl-C, one private temp dir, no ORT telemetry


def _parse_shapes(values) -> dict:
    from parity.core.specs import parse_shape

    shapes = {}
    for value in values:
        name, sep, dims = value.rpartition("=")
        if not sep or not name:
            raise click.BadParameter(f"{value!r} is not NAME=1x64x32", param_hint="--shape")
        try:
            shapes[name] = parse_shape(dims)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--shape") from None
    return shapes


def _progress(quiet: bool):
    from parity.render.progress import Progress

    return Progress(enabled=False if quiet else None)


def _stacked(f, options):
    """Apply click options so they show in ``--help`` in the order listed."""
    for option in reversed(options):
        f = option(f)
    return f


def _report_options(f):
    """--json, --html, --junit, --model-explorer: where the report goes."""
    options = [
        click.option("--json", "json_path", type=click.Path(path_type=str), metavar="PATH",
                     help="Write the JSON report (schema parity.report/1) to PATH; '-' for stdout."),
        click.option("--html", "html_path", type=click.Path(path_type=str), metavar="PATH",
                     help="Write a self-contained HTML report (verdict, tables, per-layer chart)."),
        click.option("--junit", "junit_path", type=click.Path(path_type=str), metavar="PATH",
                     help="Write JUnit XML: one testcase per output per link (and per failing layer)."),
        click.option("--model-explorer", "explorer_path", type=click.Path(path_type=str), metavar="PATH",
                     help="Write a Google Model Explorer node-data overlay of the per-layer error, "
                          "keyed by ONNX tensor names."),
    ]
    return _stacked(f, options)


def _compression_options(f):
    """--budget, --float-mnn, --no-attribution, --rank-layers: compressed models (budget.py)."""
    options = [
        click.option("--budget", metavar="RULE[,RULE]", default=None,
                     help="What compression may cost, judged on float MNN -> compressed MNN: "
                          "cosine>=X, top1>=X, snr_db>=X, error<=X, comma-separated [default: by "
                          "compression: fp16 cosine>=0.9999, int8 cosine>=0.999, int4 cosine>=0.98]."),
        click.option("--float-mnn", type=click.Path(dir_okay=False, path_type=str), metavar="FLOAT.mnn",
                     help="The float conversion of the same ONNX, to attribute a compressed model's "
                          "loss against [default: parity converts the ONNX without compression]."),
        click.option("--no-attribution", is_flag=True,
                     help="Check a compressed .mnn directly against ONNX, by the element tolerance, "
                          "without the float conversion in between."),
        click.option("--rank-layers", is_flag=True,
                     help="Rank the compressed layers by what each costs (one layer compressed at a "
                          "time), also when the budget holds; a compression verdict ranks them anyway."),
        click.option("--write-fixed", type=click.Path(dir_okay=False, path_type=str), metavar="FILE.mnn",
                     help="Write the compressed model with its most costly layers kept in float (the "
                          "ranking's fix, built by MNN's converter from its JSON dump) to FILE.mnn."),
    ]
    return _stacked(f, options)


def _target_option(f):
    """--mnn-target: where MNN runs (targets.py)."""
    return click.option(
        "--mnn-target", default="local", show_default=True, metavar="TARGET",
        help="Where MNN runs: local; arm64 (emulated, made by `parity target setup arm64`); "
             "ssh://[user@]host[:port] (a Linux device with python3, numpy and MNN; ssh from "
             "$PARITY_SSH, never prompting); exec:COMMAND (COMMAND starts such a Python with its "
             "stdin/stdout connected to parity, e.g. exec:docker run -i IMAGE python3). The "
             "report records the target's platform, MNN version and CPU features.")(f)


def _check_report_paths(paths: dict, inputs=(), others: dict | None = None) -> None:
    """Refuse, before any work, an output path that is one of the inputs, a device, FIFO or
    directory, too long, in a missing directory, or named by two flags. Reports may be '-'
    (stdout), one at most; ``others`` (-o, --save-inputs) may not."""
    from parity.core.paths import check_outputs

    inputs = [i for i in inputs if i] + _READ_BY_THE_COMMAND
    check_outputs({**(others or {}), **paths}, inputs=inputs, stdout=tuple(paths))


# files a command reads besides its arguments (the report `parity rerun` runs): outputs refuse them too
_READ_BY_THE_COMMAND: list[str] = []


def _spec_file(spec: str | None) -> str | None:
    """The Python file of a FILE.py:NAME spec (--torch, --data-loader), which no output may replace."""
    if not spec:
        return None
    path, sep, _ = spec.rpartition(":")
    return path if sep and path.endswith(".py") else spec


@cli.command(context_settings=_CONTEXT)
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@click.option("--atol", type=click.FloatRange(min=0), default=None,
              show_default="2e-3 x max(1, max|reference|)",
              help="Absolute tolerance of the element rule |c - r| <= atol + rtol * |r|. By "
                   "default it scales with each output's largest magnitude; a value given here is "
                   "absolute.")
@click.option("--rtol", type=click.FloatRange(min=0), default=None, show_default="1e-3",
              help="Relative tolerance of the element rule.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the generated inputs (ignored with --inputs).")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=1x64x32",
              help="Concrete shape for an input with dynamic dims (repeatable). Dynamic dims "
                   "default to 1.")
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=True, path_type=str),
              help="Use the arrays in this .npz (one per input name) instead of generated inputs; "
                   "a directory or a quoted glob ('data/*.npz') of .npz files runs each as a sample, "
                   "with figures aggregated (worst sample, mean cosine, top-1 agreement).")
@click.option("--save-inputs", type=click.Path(path_type=str), metavar="FILE.npz",
              help="Write the inputs used to this .npz, to rerun or share the exact case.")
@click.option("--val-range", "val_ranges", multiple=True, metavar="[NAME:]LOW,HIGH",
              help="Generated inputs in [LOW, HIGH]: floats uniform, integers LOW..HIGH (repeatable; "
                   "without NAME, every input), e.g. input_ids:0,30521.")
@click.option("--data-loader", metavar="FILE.py:FUNCTION",
              help="Inputs from your code: FUNCTION yields (or returns) dicts of input name -> array, "
                   "each a sample (runs FILE.py, as --torch does).")
@click.option("--tol", "output_tols", multiple=True, metavar="NAME=ATOL,RTOL",
              help="The tolerance of one output (repeatable), e.g. logits=1e-3,1e-2.")
@click.option("--check-stat", type=click.Choice(["elementwise", "max", "mean", "median", "cosine"]),
              default="elementwise", show_default=True,
              help="What decides a float output: every element within atol + rtol |r| (elementwise), "
                   "or max/mean/median |c - r| within atol + rtol * the same of |r|, or cosine >= 1 - rtol.")
@click.option("--save-outputs", type=click.Path(path_type=str), metavar="FILE.npz",
              help="Write the reference model's outputs to this .npz, to compare later runs with them.")
@click.option("--load-outputs", type=click.Path(dir_okay=False, path_type=str), metavar="FILE.npz",
              help="Use the outputs saved in this .npz (--save-outputs, or a device's dumps named as "
                   "the model's outputs) as the reference: then give one model, e.g. model.mnn.")
@click.option("--samples-axis", type=int, default=None, metavar="AXIS",
              help="The --inputs .npz holds many samples along AXIS of every array: each is run "
                   "and compared on its own, and the figures are aggregated (as for a directory "
                   "of .npz files).")
@click.option("--allow-nonfinite", is_flag=True,
              help="Accept NaN/Inf in --inputs instead of refusing them.")
@_report_options
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300.0,
              show_default=True, help="Seconds each MNN step (load, run) may take.")
@click.option("--mnn-backend", default="CPU", show_default=True,
              help="MNN backend type (CPU, OPENCL, VULKAN, METAL, ...). One not compiled into "
                   "MNN falls back to CPU; the report then says so (a note, and settings.backend_ran "
                   "in the JSON).")
@click.option("--mnn-threads", type=click.IntRange(min=1), default=4, show_default=True,
              help="MNN CPU threads (through its runtime manager).")
@click.option("--mnn-precision", default="normal", show_default=True, metavar="MODE[,MODE]",
              help="MNN precision mode: normal, high, low (float16 arithmetic where the CPU has "
                   "it, as on ARMv8.2) or low_bf16. Several, comma-separated (high,low), run "
                   "the MNN model once each, each its own link. Without --atol/--rtol, a link "
                   "that ran in float16 gets float16's default tolerance.")
@_target_option
@click.option("--mnn-memory", default=None, metavar="MODE[,MODE]",
              help="MNN memory mode: normal, high or low; low runs weight-quantized models with "
                   "dynamic int8 activations. Several, comma-separated (normal,low), run the MNN "
                   "model once each, each its own link [default: MNN's own].")
@click.option("--mnn-static-shapes", is_flag=True,
              help="Load the MNN model for fixed input shapes (shape_mutable=False), as apps with "
                   "fixed inputs do; MNN then plans the graph at load time.")
@click.option("--torch", "torch_spec", metavar="FILE.py:FACTORY",
              help="A PyTorch model from Python code, put first in the chain: path/to/file.py:factory "
                   "or package.module:factory, returning an nn.Module (or an nn.Module class "
                   "taking no arguments).")
@click.option("--torch-inputs", metavar="A,B",
              help="Names of the torch model's positional inputs, in order (default: the ONNX "
                   "model's inputs).")
@click.option("--layers", is_flag=True,
              help="Also compare every intermediate tensor (one capture run per framework) and "
                   "find the first layer that diverges.")
@click.option("--layer-rtol", type=click.FloatRange(min=0), default=None, show_default="10 x rtol",
              help="Layer rule: max_abs_diff <= atol + layer_rtol * max|reference| of that tensor.")
@click.option("--no-diagnose", is_flag=True,
              help="On a mismatch, skip the experiments that decide between a conversion and a "
                   "runtime cause (they rerun MNN and its converter a few times).")
@click.option("--repro", "repro_dir", type=click.Path(path_type=str), metavar="DIR",
              help="On a conversion or runtime verdict, write the smallest reproduction (ONNX "
                   "subgraph, its MNN conversion, inputs, README.txt with the numbers) to DIR.")
@click.option("--isolate", type=click.Choice(["first", "all", "none"]), default="first",
              show_default=True,
              help="Which failing layers to re-run alone on the reference's inputs, to separate "
                   "error introduced there from error carried from upstream.")
@click.option("--max-memory", metavar="SIZE", default=None,
              help="Cap on captured tensors held at once with --layers, e.g. 512M or 2G "
                   "[default: a quarter of RAM].")
@click.option("--fail-on-layers", is_flag=True,
              help="Exit 1 when a layer differs beyond the layer rule even though every output "
                   "matches (a layer-only finding; by default it is reported and the outputs "
                   "decide the exit code). Implies --layers.")
@_compression_options
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
@click.option("--no-color", is_flag=True, help="Plain terminal output.")
@_traceback_option
def check(models, atol, rtol, seed, shapes, inputs_path, save_inputs, val_ranges, data_loader, output_tols,
          check_stat, save_outputs, load_outputs, samples_axis, allow_nonfinite,
          json_path, html_path, junit_path, explorer_path, timeout, mnn_backend, mnn_threads, mnn_precision,
          mnn_target, mnn_memory, mnn_static_shapes, torch_spec, torch_inputs,
          layers, layer_rtol, no_diagnose, repro_dir, isolate, max_memory, fail_on_layers, budget, float_mnn,
          no_attribution, rank_layers, write_fixed, quiet, no_color):
    """Run MODELS on the same inputs and compare them link by link.

    The framework comes from the suffix: .onnx runs in ONNX Runtime, .mnn in MNN, .pt2
    (torch.export) and .pt/.ts/.torchscript (TorchScript) in PyTorch. Give two or three models
    in chain order (torch, ONNX, MNN); the first is the reference. Each model is compared with
    the one before it, and with three, the first with the last as well. Examples:

    \b
        parity check model.onnx model.mnn --json report.json
        parity check model.pt2 model.onnx model.mnn
        parity check --torch net.py:build model.onnx model.mnn
    """
    _check_report_paths({"--json": json_path, "--html": html_path, "--junit": junit_path,
                         "--model-explorer": explorer_path}, inputs=[*models, inputs_path, float_mnn, load_outputs,
                                                                  _spec_file(data_loader), _spec_file(torch_spec)],
                        others={"--save-inputs": save_inputs, "--write-fixed": write_fixed,
                                "--save-outputs": save_outputs})
    if mnn_target == "local" and any(str(m).lower().endswith(".mnn") for m in models):
        # MNN's child process starts importing MNN now, while parity imports the rest
        from parity.run.worker import prestart

        prestart("mnn", "parity.backends.mnn_child")
    if torch_spec:
        models = (torch_spec, *models)
    from parity.checking import pipeline
    from parity.options import CheckOptions, LayerOptions, MnnOptions
    cap = None
    if max_memory is not None:
        from parity.checking.capture import parse_size

        try:
            cap = parse_size(max_memory)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--max-memory") from None
    options = CheckOptions(
        tolerance=_tolerance(atol, rtol),
        tolerance_given=atol is not None or rtol is not None,
        seed=seed,
        shapes=_parse_shapes(shapes),
        inputs=inputs_path,
        save_inputs=save_inputs,
        save_outputs=save_outputs,
        load_outputs=load_outputs,
        val_ranges=tuple(_parse_val_range(v) for v in val_ranges),
        data_loader=data_loader,
        tolerances=_parse_output_tols(output_tols),
        check_stat=check_stat,
        samples_axis=samples_axis,
        allow_nonfinite=allow_nonfinite,
        timeout=timeout,
        mnn=MnnOptions(backend=mnn_backend, threads=mnn_threads, precision=mnn_precision,
                       shape_mutable=not mnn_static_shapes, target=mnn_target, memory=mnn_memory),
        torch_inputs=tuple(n.strip() for n in torch_inputs.split(",") if n.strip()) if torch_inputs else None,
        layers=LayerOptions(enabled=layers or fail_on_layers, layer_rtol=layer_rtol, isolate=isolate,
                            max_memory=cap, fail_on_layers=fail_on_layers),
        diagnose=not no_diagnose,
        repro=repro_dir,
        budget=budget,
        float_mnn=float_mnn,
        attribute=not no_attribution,
        rank_layers=rank_layers,
        write_fixed=write_fixed,
    )
    with _progress(quiet) as progress:
        report = pipeline.check(models, options, progress=progress)
    _emit(report, json_path, no_color, html_path, junit_path, explorer_path)


def _parse_val_range(text):
    from parity.core.inputs import parse_val_range

    return parse_val_range(text)


def _parse_output_tols(values) -> dict:
    """``--tol NAME=ATOL,RTOL`` (repeatable) -> name -> Tolerance."""
    from parity.core.metrics import Tolerance

    tolerances = {}
    for value in values:
        name, sep, numbers = value.rpartition("=")
        try:
            atol, rtol = (float(x) for x in numbers.split(","))
            if not sep or not name:
                raise ValueError
            tolerances[name] = Tolerance(atol, rtol)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not NAME=ATOL,RTOL with numbers >= 0 (e.g. logits=1e-3,1e-2)",
                                     param_hint="--tol") from None
    return tolerances


def _tolerance(atol, rtol):
    from parity.core.metrics import DEFAULT_RTOL, Tolerance

    return Tolerance(atol, DEFAULT_RTOL if rtol is None else rtol)


def rerun_info(report) -> dict:
    """What a later ``parity rerun REPORT.json`` needs: this command line (as parity received
    it), where it ran, and the versions that ran it."""
    import platform

    versions = {"parity": report.parity_version, "python": platform.python_version(),
                "platform": platform.platform()}
    for backend in report.backends:
        versions.setdefault(backend.name, backend.version)
    for module in ("numpy",):
        mod = sys.modules.get(module)
        if mod is not None:
            versions[module] = getattr(mod, "__version__", "?")
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    return {"command": ["parity", *sys.argv[1:]], "cwd": cwd, "versions": versions}


def _emit(report, json_path, no_color, html_path=None, junit_path=None, explorer_path=None) -> None:
    import dataclasses

    from parity.core.paths import STDOUT, write_atomic

    if report.rerun is None:
        report = dataclasses.replace(report, rerun=rerun_info(report))

    reports = []  # (flag, path, bytes); the paths were checked before the run
    if html_path:
        from parity.render import html

        reports.append(("--html", html_path, html.render(report).encode()))
    if junit_path:
        from parity.render import junit

        reports.append(("--junit", junit_path, junit.render(report)))
    if explorer_path:
        from parity.render import model_explorer

        reports.append(("--model-explorer", explorer_path, model_explorer.render(report).encode()))
    if json_path:
        reports.append(("--json", json_path, report.to_json().encode()))
    on_stdout = None
    for flag, path, data in reports:
        if path == STDOUT:
            on_stdout = data
        else:
            write_atomic(path, data, flag)
    if on_stdout is not None:
        sys.stdout.flush()
        sys.stdout.buffer.write(on_stdout if on_stdout.endswith(b"\n") else on_stdout + b"\n")
        if not report.passed:
            click.echo(f"{report.verdict.kind}: {terminal(report.verdict.summary)}", err=True)
    else:
        from parity.render import text

        text.render(report, sys.stdout, color=False if no_color else None,
                    reports=[str(path) for _, path, _ in reports if path != STDOUT],
                    listing=[str(path) for flag, path, _ in reports if flag in ("--json", "--html")])
    sys.stdout.flush()
    raise SystemExit(int(report.exit_code))


@cli.command(context_settings=_CONTEXT)
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300.0,
              show_default=True, help="Seconds MNN may take to load the model.")
@_traceback_option
def inspect(model, timeout):
    """Print MODEL's inputs and outputs (names, dtypes, shapes; symbolic dims by name); for an
    .mnn, also its compression per layer (weight bits, block, symmetry, float16, int8 ops)."""
    from parity.backends.registry import backend_class, open_backend
    from parity.checking.pipeline import resolve_models
    from parity.render.text import render_inspect

    framework = resolve_models([model, model])[0][0]
    options = {"timeout": timeout} if backend_class(framework).runs_in_child else {}
    with open_backend(framework, model, **options) as backend:
        found, outputs, note = None, backend.output_specs, None
        if backend.compressible:
            from parity.mnn.compression import of_model

            found = of_model(model, timeout=timeout)
        if not backend.declares_outputs:
            outputs, note = _outputs_by_running(backend)
        render_inspect(framework, model, backend.version, backend.input_specs,
                       outputs, sys.stdout, compression=found)
        if note:
            click.echo(terminal(note))


def _outputs_by_running(backend):
    """An .mnn declares no output dtypes or shapes: run it once on generated inputs (dynamic
    dims at 1) and report what comes out, saying so; a model that cannot run keeps "?"."""
    from parity.core import inputs as inputs_mod
    from parity.core.errors import ParityError
    from parity.core.specs import TensorSpec

    try:
        feeds, _ = inputs_mod.generate(backend.input_specs, seed=0)
        produced = backend.run(feeds).outputs
    except ParityError as exc:
        return backend.output_specs, f"outputs not run: {exc}"
    specs = [TensorSpec(s.name, tuple(produced[s.name].shape), produced[s.name].dtype.name)
             if s.name in produced else s for s in backend.output_specs]
    return specs, "output dtypes and shapes: from one run on generated inputs (dynamic dims at 1)"


@cli.command(context_settings=_CONTEXT)
@click.argument("reference", type=click.Path(dir_okay=True, path_type=str))
@click.argument("candidate", type=click.Path(dir_okay=True, path_type=str))
@click.option("--dtype", type=click.Choice(["float32", "float16", "float64", "int32", "int64", "int8", "uint8", "bool"]),
              help="Element type of raw binary dumps (.bin or any suffix other than .npy/.npz).")
@click.option("--shape", "shape_text", metavar="1x64x512",
              help="Shape of raw binary dumps, when known (else they are aligned to the reference).")
@click.option("--model-input", type=click.Path(dir_okay=True, path_type=str), metavar="FILE",
              help="The model's input (.npy/.npz), to recognise an output read before the run.")
@click.option("--atol", type=click.FloatRange(min=0), default=None,
              show_default="2e-3 x max(1, max|reference|)", help="Absolute tolerance (see check).")
@click.option("--rtol", type=click.FloatRange(min=0), default=None, show_default="1e-3",
              help="Relative tolerance (see check).")
@_report_options
@click.option("--no-color", is_flag=True, help="Plain terminal output.")
@_traceback_option
def compare(reference, candidate, dtype, shape_text, model_input, atol, rtol, json_path, html_path,
            junit_path, explorer_path, no_color):
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

    _check_report_paths({"--json": json_path, "--html": html_path, "--junit": junit_path,
                         "--model-explorer": explorer_path}, inputs=[reference, candidate, model_input])
    shape = None
    if shape_text:
        try:
            shape = parse_shape(shape_text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--shape") from None
    report = dumps.compare(reference, candidate, tolerance=_tolerance(atol, rtol),
                           dtype=dtype, shape=shape, model_inputs=model_input)
    _emit(report, json_path, no_color, html_path, junit_path, explorer_path)


@cli.command(context_settings=dict(_CONTEXT, ignore_unknown_options=True))
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), metavar="MODEL.mnn",
              help="Where to write the MNN model [default: MODEL with the suffix .mnn].")
@click.option("--atol", type=click.FloatRange(min=0), default=None,
              show_default="2e-3 x max(1, max|reference|)", help="Absolute tolerance of the check.")
@click.option("--rtol", type=click.FloatRange(min=0), default=None, show_default="1e-3",
              help="Relative tolerance of the check.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the generated inputs.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=1x64x32",
              help="Concrete shape for an input with dynamic dims (repeatable).")
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=True, path_type=str),
              help="Check on the arrays in this .npz instead of generated inputs.")
@click.option("--layers", is_flag=True, help="Also compare every intermediate tensor.")
@click.option("--mnn-precision", default="normal", show_default=True, metavar="MODE[,MODE]",
              help="MNN precision mode(s) of the check, as in parity check.")
@click.option("--int8-calibration", type=click.Path(dir_okay=True, path_type=str), metavar="DIR",
              help="Make a full int8 model (int8 weights and activations) with MNN's quantization "
                   "tool, calibrated on the .npz samples in DIR (or a quoted glob); the check runs "
                   "on the same samples unless --inputs is given.")
@click.option("--int8-method", type=click.Choice(["ADMM", "EMA", "KL"]), default="ADMM", show_default=True,
              help="How the quantization tool calibrates activations. MNN 3.6.1 measured here: KL "
                   "crashed, EMA ignores the layers to keep in float (no ranking or fix).")
@_target_option
@_compression_options
@_report_options
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300.0,
              show_default=True, help="Seconds the conversion and each MNN step may take.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
@click.option("--no-color", is_flag=True, help="Plain terminal output.")
@click.argument("converter_options", nargs=-1, type=click.UNPROCESSED)
@_traceback_option
def convert(model, output, atol, rtol, seed, shapes, inputs_path, layers, mnn_precision, int8_calibration,
            int8_method, mnn_target, budget,
            float_mnn, no_attribution, rank_layers, write_fixed, json_path, html_path, junit_path, explorer_path, timeout, quiet,
            no_color, converter_options):
    """Convert MODEL (.onnx) to MNN, then check the pair: validation in one step.

    Options parity does not know are passed to MNN's converter (for example --fp16,
    --weightQuantBits 8, --useGeluApproximation 0). The converter runs in a private
    temporary directory, in a child process, without MNN's telemetry wrapper; only the output
    model is written. Example:

    \b
        parity convert model.onnx -o model.mnn --useGeluApproximation 0
    """
    from pathlib import Path

    from parity.checking import pipeline
    from parity.mnn.converter import convert as convert_model
    from parity.options import CheckOptions, LayerOptions, MnnOptions

    mnn_options = MnnOptions(precision=mnn_precision, target=mnn_target)  # refused before converting
    if budget is not None:
        from parity.checking.budget import Budget

        Budget.parse(budget)
    source = Path(model)
    if source.suffix.lower() != ".onnx":
        raise click.UsageError(f"parity convert takes an .onnx model, not {source.name}")
    target = Path(output) if output else source.with_suffix(".mnn")
    if target.suffix.lower() != ".mnn":
        raise click.UsageError(f"the output should end in .mnn: {target}")
    _check_report_paths({"--json": json_path, "--html": html_path, "--junit": junit_path,
                         "--model-explorer": explorer_path}, inputs=[source, inputs_path],
                        others={"-o": str(target), **({"--write-fixed": write_fixed} if write_fixed else {})})
    import tempfile

    with _progress(quiet) as progress, tempfile.TemporaryDirectory(prefix="parity-convert-") as scratch:
        if int8_calibration:
            float_mnn, inputs_path = _full_int8(source, target, Path(scratch), int8_calibration, int8_method,
                                                list(converter_options), inputs_path, timeout, progress)
        else:
            _before_converting(source, target)
            progress(f"converting {source.name} -> {target}")
            try:
                convert_model(source, target, options=list(converter_options), timeout=timeout)
            except BackendCrash:  # the converter crashed: on a model that is not valid, say so
                _refused_by_onnxruntime(source)
                raise
        options = CheckOptions(tolerance=_tolerance(atol, rtol), tolerance_given=atol is not None or rtol is not None,
                               seed=seed, shapes=_parse_shapes(shapes),
                               inputs=inputs_path, timeout=timeout, layers=LayerOptions(enabled=layers),
                               mnn=mnn_options, budget=budget, float_mnn=float_mnn, attribute=not no_attribution,
                               rank_layers=rank_layers, write_fixed=write_fixed, calibration=int8_calibration,
                               calibration_method=int8_method)
        report = pipeline.check([source, target], options, progress=progress)
    if converter_options:
        import dataclasses

        report = dataclasses.replace(report, notes=report.notes + (
            f"converted with {' '.join(converter_options)}",))
    _emit(report, json_path, no_color, html_path, junit_path, explorer_path)


def _before_converting(source, target) -> None:
    """What makes a conversion useless, refused before it writes anything: an output name MNN
    cannot open, an ONNX graph without outputs (nothing to check)."""
    from parity.core import onnx_skeleton
    from parity.backends.base import check_model_file
    from parity.core.errors import ModelError
    from parity.core.paths import is_utf8, show

    from pathlib import Path

    check_model_file(Path(source), "onnx")  # a FIFO would block the read below for ever
    if not is_utf8(str(target)):
        raise ModelError(f"-o {show(target)} has a name that is not valid UTF-8, which MNN cannot open; "
                         f"choose another name")
    try:
        outputs = onnx_skeleton.load(source).graph.output
    except Exception:
        return  # not readable as ONNX: the converter and ONNX Runtime say so
    if not outputs:
        raise ModelError(f"{show(source)} declares no graph outputs: there is nothing to convert and compare")


def _refused_by_onnxruntime(source) -> None:
    """Raise ONNX Runtime's refusal of ``source`` (exit 3: the model is not valid) if it has one."""
    from parity.backends.registry import open_backend
    from parity.core.errors import ModelError

    try:
        with open_backend("onnxruntime", source):
            pass
    except ModelError:
        raise
    except Exception:
        pass


def _onnx_input_names(source) -> list[str]:
    """The ONNX model's real inputs (graph inputs that are not initializers)."""
    from parity.core import onnx_skeleton

    from parity.core.errors import ModelError

    try:
        graph = onnx_skeleton.load(source).graph
    except Exception as exc:
        raise ModelError(f"{str(source)!r} is not a readable ONNX model ({type(exc).__name__})") from None
    constants = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in constants]


def _full_int8(source, target, scratch, calibration, method, converter_options, inputs_path, timeout, progress):
    """convert --int8-calibration: the float conversion (kept as the check's float reference),
    quantized to full int8 by MNN's tool on the calibration samples, which the check then
    runs on too unless --inputs says otherwise. Returns (float model, inputs)."""
    from parity.core import inputs as inputs_mod
    from parity.mnn.converter import convert as convert_model
    from parity.core.paths import copy_atomic
    from parity.mnn.quantize import full_int8

    files = inputs_mod.sample_files(calibration)
    samples = [inputs_mod.read_npz(f, "--int8-calibration file", not_a="an .npz file") for f in files]
    expected = _onnx_input_names(source)
    for file, sample in zip(files, samples):
        if sorted(sample) != sorted(expected):
            from parity.core.errors import InputError

            raise InputError(f"--int8-calibration {file.name} does not fit the model's inputs {expected}: it holds "
                             f"{sorted(sample)}")
    float_path = scratch / f"{target.stem}.float.mnn"
    progress(f"converting {source.name} to float (the model to quantize)")
    convert_model(source, float_path, options=converter_options, timeout=timeout)
    progress(f"quantizing to full int8 ({method}) on {len(samples)} calibration samples")
    built = full_int8(float_path, scratch / "int8.mnn", samples, method=method, timeout=timeout)
    copy_atomic(built, target, "-o", inputs=[source, *files])
    return str(float_path), inputs_path or calibration


@cli.command(context_settings=_CONTEXT)
@click.argument("target", type=click.Path(dir_okay=True, path_type=str))
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Pairs checked at once, each in its own process.")
@click.option("--shard", metavar="K/N", help="Check only shard K of N (pairs K, K+N, ... of the sorted list).")
@click.option("--pair-timeout", type=click.FloatRange(min=0, min_open=True), default=3600.0,
              show_default=True, metavar="SECONDS",
              help="Kill a pair's check, and every process it started, after SECONDS; the pair "
                   "then counts as a backend failure (exit 4).")
@click.option("--json", "json_path", type=click.Path(path_type=str), metavar="PATH",
              help="Write the results (schema parity.sweep/1) to PATH; '-' for stdout.")
@click.option("--junit", "junit_path", type=click.Path(path_type=str), metavar="PATH",
              help="Write JUnit XML (one testcase per model pair) to PATH.")
@click.option("--html", "html_path", type=click.Path(path_type=str), metavar="PATH",
              help="Write a one-page HTML summary (one row per model pair) to PATH.")
@click.option("--mnn-precision", default=None, metavar="MODE[,MODE]",
              help="MNN precision mode(s) for every pair (a manifest's mnn_precision wins).")
@_target_option
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@_traceback_option
def sweep(target, jobs, shard, pair_timeout, json_path, junit_path, html_path, mnn_precision, mnn_target, quiet):
    """Check every model pair in TARGET: a directory (*.onnx with matching *.mnn) or a TOML/JSON
    manifest with per-model options. Exit code: the worst of the pairs.

    \b
        parity sweep models/ -j 2
        parity sweep zoo.toml --shard 1/4 --json shard1.json
    """
    from parity.checking import sweep as sweep_mod
    from parity.core.paths import write_atomic
    from parity.render.progress import Progress

    from parity.options import MnnOptions

    MnnOptions(precision=mnn_precision or "normal", target=mnn_target)  # refused before any pair runs
    chosen = sweep_mod.parse_shard(shard)
    discovered = sweep_mod.with_defaults(sweep_mod.discover(target), mnn_precision=mnn_precision,
                                         mnn_target=None if mnn_target == "local" else mnn_target)
    named = [target, *(m for item in discovered for m in item.models),
             *(item.options["inputs"] for item in discovered if item.options.get("inputs"))]
    # never onto the manifest or any model it names; one stdout at most
    _check_report_paths({"--json": json_path, "--junit": junit_path, "--html": html_path}, inputs=named)
    items = sweep_mod.select_shard(discovered, chosen)
    started = time.monotonic()
    with Progress(enabled=False if quiet else None, total=len(items), label="sweep") as progress:
        results = sweep_mod.run(items, jobs=jobs, progress=progress, pair_timeout=pair_timeout)
    report = sweep_mod.SweepReport(target, shard, results, elapsed=time.monotonic() - started)
    data = report.to_dict()
    from parity.render.text import render_sweep

    render_sweep(report, sys.stderr if "-" in (json_path, junit_path, html_path) else sys.stdout)
    written = []
    if junit_path:
        from parity.render import junit

        written.append(("--junit", junit_path, junit.render_sweep(report)))
    if html_path:
        from parity.render import html

        written.append(("--html", html_path, html.render_sweep(report).encode()))
    if json_path:
        written.append(("--json", json_path, json.dumps(data, indent=2).encode()))
    for flag, path, content in written:
        if path == "-":
            sys.stdout.buffer.write(content if content.endswith(b"\n") else content + b"\n")
            sys.stdout.flush()
        else:
            write_atomic(path, content, flag)
    raise SystemExit(report.exit_code)


# the flags of a recorded command that write files: a rerun drops them (nothing is overwritten);
# give new ones to the rerun itself
_REPORT_FLAGS = ("--json", "--html", "--junit", "--model-explorer")
_FILE_FLAGS = ("--save-inputs", "--save-outputs", "--write-fixed")
_WRITING_FLAGS = {"--json", "--html", "--junit", "--model-explorer", "--save-inputs", "--repro", "--write-fixed",
                  "-o", "--output"}


@cli.command(context_settings=dict(_CONTEXT, ignore_unknown_options=True))
@click.argument("report_path", metavar="REPORT.json", type=click.Path(dir_okay=False, path_type=str))
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
@_traceback_option
def rerun(report_path, extra):
    """Run the check a JSON report records again: its command line, in its directory, without
    the flags that wrote files (give new ones after REPORT.json, e.g. --json again.json). The
    inputs are generated from the recorded seed, or read from the recorded --inputs file.

    \b
        parity rerun report.json
        parity rerun report.json --json again.json --html again.html
    """
    from parity.core.errors import InputError
    from parity.core.paths import check_input

    check_input(report_path, "the report")
    from pathlib import Path

    if os.path.getsize(report_path) > (256 << 20):
        raise InputError(f"{report_path!r} is too large to be a parity report")
    try:
        data = json.loads(Path(report_path).read_text(encoding="utf-8"))
        recorded = data["rerun"]
        command = [str(word) for word in recorded["command"]]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InputError(f"{report_path!r} is not a parity JSON report with a recorded command "
                         f"(reports from parity check or convert on the command line have one)") from None
    if len(command) < 2 or command[1] not in ("check", "compare"):
        raise InputError(f"{report_path!r} records {' '.join(command[:2])!r}: only check and compare runs can be rerun "
                         f"(a convert would convert again)")
    args, skip = [], False
    for word in command[1:]:
        if skip:
            skip = False
            continue
        flag = word.split("=", 1)[0]
        if flag in _WRITING_FLAGS:
            skip = "=" not in word
            continue
        args.append(word)
    report_file = os.path.abspath(report_path)
    cwd = recorded.get("cwd")
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # where the recorded command ran: its relative paths, and the new ones
    _READ_BY_THE_COMMAND.append(report_file)  # --json REPORT.json must not replace it
    try:
        _rerun(args, extra, cwd, recorded)
    finally:
        _READ_BY_THE_COMMAND.remove(report_file)


def _rerun(args, extra, cwd, recorded):
    given = {}  # refused before saying anything: the error is then the one line on stderr
    for i, word in enumerate(extra):
        flag, eq, value = word.partition("=")
        if flag in _REPORT_FLAGS + _FILE_FLAGS and (eq or i + 1 < len(extra)):
            given[flag] = value if eq else extra[i + 1]
    if given:
        _check_report_paths({k: v for k, v in given.items() if k in _REPORT_FLAGS},
                            others={k: v for k, v in given.items() if k in _FILE_FLAGS})
    ran = recorded.get("versions") or {}
    click.echo(terminal(f"rerunning: parity {' '.join(args + list(extra))}" + (f" (in {cwd})" if cwd else "")),
               err=True)
    if ran:
        click.echo(terminal("recorded with " + ", ".join(f"{k} {v}" for k, v in ran.items() if k != "platform")), err=True)
    code = cli.main(args=[*args, *extra], prog_name="parity", standalone_mode=False)
    raise SystemExit(code if isinstance(code, int) else 0)


@cli.group(context_settings=_CONTEXT)
def target():
    """Set up, list and check the places MNN runs (--mnn-target).

    \b
        parity target setup arm64      build the emulated arm64 Linux (once; root, about a minute)
        parity target list             the targets set up here
        parity target check arm64      what MNN has there: platform, versions, CPU features, backends
    """


@target.command("setup", context_settings=_CONTEXT)
@click.argument("name", type=click.Choice(["arm64"]))
@click.option("--mnn-version", default=None, metavar="X.Y.Z",
              help="MNN release to install in the target [default: the one installed here].")
@click.option("--mirror", default=None, metavar="URL", help="Debian mirror [default: the host's, else deb.debian.org].")
@_traceback_option
def target_setup(name, mnn_version, mirror):
    """Build the emulated arm64 Linux (Debian with python3, numpy and MNN's aarch64 wheel) in
    the cache ($PARITY_TARGETS_DIR, else ~/.cache/parity/targets). Idempotent: a ready
    target is kept. Needs root, qemu-user-static and debootstrap."""
    from parity.run.target_setup import setup_arm64

    def say(message):
        click.echo(terminal(message), err=True)

    root = setup_arm64(say, mnn_version=mnn_version, mirror=mirror)
    click.echo(f"arm64 target ready: {terminal(str(root))}")


@target.command("list", context_settings=_CONTEXT)
@_traceback_option
def target_list():
    """The targets set up on this machine, and the kinds that need no setup."""
    from parity.run.target_setup import installed_targets, targets_home

    found = installed_targets()
    click.echo(f"targets in {terminal(str(targets_home()))}:")
    for entry in found:
        facts = ", ".join(f"{k} {entry[k]}" for k in ("python", "numpy", "mnn") if entry.get(k))
        click.echo(f"  {terminal(str(entry.get('name', '?')))}  {terminal(str(entry.get('root', '')))}  {terminal(facts)}")
    if not found:
        click.echo("  none (parity target setup arm64 builds one)")
    click.echo("always available: local, ssh://[user@]host[:port], exec:COMMAND")


@target.command("check", context_settings=_CONTEXT)
@click.argument("name", metavar="TARGET")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
              help="Seconds the target may take to answer.")
@click.option("--json", "json_path", type=click.Path(path_type=str), metavar="PATH",
              help="Write the facts as JSON to PATH; '-' for stdout.")
@_traceback_option
def target_check(name, timeout, json_path):
    """What MNN has on TARGET: platform, Python, numpy and MNN versions, the CPU features MNN
    reports (fp16 means precision low runs float16 arithmetic) and its backends. Exit 4 when
    the target cannot run MNN, saying what is missing."""
    from parity.run.targets import describe_target

    if json_path and json_path != "-":
        _check_report_paths({"--json": json_path})
    facts = describe_target(name, timeout=timeout)
    data = json.dumps(facts, indent=2)
    if json_path == "-":
        click.echo(data)
        return
    if json_path:
        from parity.core.paths import write_atomic

        write_atomic(json_path, data.encode() + b"\n", "--json")
    features = ", ".join(f"{k}:{v}" for k, v in facts["cpu_features"].items()) or "none reported"
    lines = [
        f"target       {facts['target']}",
        f"platform     {facts['platform']} ({facts['machine']})",
        f"python       {facts['python']}",
        f"numpy        {facts['numpy']}",
        f"MNN          {facts['mnn']}",
        f"CPU features {features}",
        f"float16      {'yes: precision low runs float16 arithmetic' if facts['float16'] else 'no: precision low runs float32 here'}",
        f"backends     {', '.join(facts['backends'])} (others fall back to CPU)",
    ]
    for line in lines:
        click.echo(terminal(line))


def main() -> None:  # pragma: no cover - console script indirection for python -m
    cli(prog_name="parity")
