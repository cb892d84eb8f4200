"""Full int8 models through MNN's offline quantization tool (``mnnquant``), calibrated on the
user's samples: the same .npz files parity then checks the model on.

The tool ships in the MNN wheel as ``_tools.mnnquant(argv)`` (a list, like a command line; the
``mnnquant`` console script wraps it badly). It reads a JSON config and, for non-image models
(``"input_type": "sequence"``), one directory per sample holding ``<input name>.txt`` (the
values, whitespace-separated) and ``input.json`` (the shapes). It can abort or crash the
process (std::length_error, SIGSEGV with the KL method here), so it runs in a child process.
``skip_quant_op_names`` keeps the named ops in float: the fix for the layers that cost most.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from parity.core.errors import InputError, ModelError
from parity.option_groups import INT8_METHODS

METHODS = INT8_METHODS  # feature_quantize_method; MNN 3.6.1 here: KL crashed, EMA ignores skip_quant_op_names


def write_calibration(samples: Sequence[dict], directory: Path) -> list[dict]:
    """One sub-directory per sample, as the tool reads them; returns the input shapes."""
    shapes = []
    for k, feeds in enumerate(samples):
        sample = directory / f"sample{k:05d}"
        sample.mkdir(parents=True)
        shapes = []
        for name, array in feeds.items():
            if not re.fullmatch(r"[A-Za-z0-9_.:\-]+", name) or name in (".", ".."):
                raise InputError(f"input {name!r} cannot be given to MNN's quantization tool, which reads "
                                 f"each input from a file named after it")
            values = np.asarray(array, dtype=np.float64).reshape(-1)
            np.savetxt(sample / f"{name}.txt", values, fmt="%.9g")
            shapes.append({"name": name, "shape": [int(d) for d in np.shape(array)]})
        (sample / "input.json").write_text(json.dumps({"inputs": shapes}))
    return shapes


def full_int8(float_mnn, target, samples: Sequence[dict], *, method: str = "ADMM", skip: Sequence[str] = (),
              timeout: float = 300.0) -> Path:
    """Quantize ``float_mnn`` into ``target`` (int8 weights and activations), calibrated on
    ``samples`` (name -> array dicts), keeping the ops named in ``skip`` in float."""
    from parity.run.worker import Worker

    if not samples:
        raise InputError("full int8 needs calibration samples (.npz files with the model's inputs)")
    workdir = Path(tempfile.mkdtemp(prefix="parity-quantize-"))
    try:
        shapes = write_calibration(samples, workdir / "calibration")
        config = {"input_type": "sequence", "path": str(workdir / "calibration"), "inputs": shapes,
                  "feature_quantize_method": method, "weight_quantize_method": "MAX_ABS",
                  "used_sample_num": len(samples)}
        if skip:
            config["skip_quant_op_names"] = list(skip)
        (workdir / "config.json").write_text(json.dumps(config))
        scratch = workdir / "quantized.mnn"
        with Worker("MNN quantization tool", timeout=timeout) as worker:
            worker.call("parity.mnn.quantize:_quantize_in_child", step=f"quantizing {Path(float_mnn).name} to full int8",
                        source=os.path.abspath(float_mnn), target=str(scratch), config=str(workdir / "config.json"))
        shutil.copyfile(scratch, target)
        return Path(target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def full_int8_from_onnx(source: Path, target: Path, scratch: Path, calibration, *, method: str = "ADMM",
                        converter_options: Sequence[str] = (), timeout: float = 300.0, progress=None) -> Path:
    """``parity convert --int8-calibration``: ``source`` (.onnx) converted to float, then quantized
    to full int8 on the calibration samples (an .npz directory or glob) into ``target``.
    Returns the float conversion, in ``scratch``, which the check attributes the loss against."""
    from parity.core import inputs as inputs_mod
    from parity.core.paths import copy_atomic
    from parity.mnn.converter import convert

    files = inputs_mod.sample_files(calibration, "--int8-calibration")
    samples = [inputs_mod.read_npz(f, "--int8-calibration file", not_a="an .npz file") for f in files]
    declared = _onnx_inputs(source)
    for file, sample in zip(files, samples):  # before anything is converted or written
        _refuse_sample(file, sample, declared)
    say = progress or (lambda message: None)
    float_path = scratch / f"{target.stem}.float.mnn"
    say(f"converting {source.name} to float (the model to quantize)")
    convert(source, float_path, options=list(converter_options), timeout=timeout)
    say(f"quantizing to full int8 ({method}) on {len(samples)} calibration samples")
    built = full_int8(float_path, scratch / "int8.mnn", samples, method=method, timeout=timeout)
    copy_atomic(built, target, "-o", inputs=[source, *files])
    return float_path


def _onnx_inputs(source) -> dict[str, list]:
    """The ONNX model's real inputs (graph inputs that are not initializers): name -> declared
    dims (an int, or None where the dim is symbolic or not given)."""
    from parity.core import onnx_skeleton

    try:
        graph = onnx_skeleton.load(source).graph
    except Exception as exc:
        raise ModelError(f"{str(source)!r} is not a readable ONNX model ({type(exc).__name__})") from None
    constants = {i.name for i in graph.initializer}
    return {i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
            for i in graph.input if i.name not in constants}


def _refuse_sample(file: Path, sample: dict, declared: dict) -> None:
    """A calibration sample that does not fit the model's inputs (names, ranks, fixed dims) or
    holds NaN or infinity: InputError, before the model is converted."""
    from parity.core import inputs as inputs_mod

    expected = list(declared)
    if sorted(sample) != sorted(expected):
        raise InputError(f"--int8-calibration {file.name} does not fit the model's inputs {expected}: it holds "
                         f"{sorted(sample)}")
    for name, dims in declared.items():
        array = sample[name]
        if dims and (array.ndim != len(dims) or any(d is not None and d != n for d, n in zip(dims, array.shape))):
            shown = "x".join("?" if d is None else str(d) for d in dims)
            raise InputError(f"--int8-calibration {file.name}: input {name!r} has shape {tuple(array.shape)}, "
                             f"the model takes {shown}")
        inputs_mod.refuse_nonfinite(name, array, f"--int8-calibration {file.name}", allowable=False)


def _quantize_in_child(source: str, target: str, config: str) -> bool:
    import _tools

    from parity.run.worker import ChildFailure

    ok = _tools.mnnquant(["mnnquant", source, target, config])
    if not ok or not os.path.exists(target) or os.path.getsize(target) == 0:
        raise ChildFailure("backend", f"MNN's quantization tool could not quantize {os.path.basename(source)}")
    return True
