"""``parity inspect``: a model's inputs and outputs, and for an .mnn its compression per layer.
An .mnn declares no output dtypes or shapes, so it is run once to learn them."""

from __future__ import annotations

from pathlib import Path

from dataclasses import dataclass


@dataclass(frozen=True)
class Inspection:
    framework: str
    model: str
    version: str
    inputs: list
    outputs: list
    compression: object = None  # mnn.compression's finding, for an .mnn
    note: str | None = None  # how the outputs were found, when not declared by the model


def inspect_model(model: str, *, timeout: float = 300.0) -> Inspection:
    from parity.backends.registry import backend_class, open_backend
    from parity.checking.pipeline import resolve_models

    framework = resolve_models([model, model])[0][0]
    options = {"timeout": timeout} if backend_class(framework).runs_in_child else {}
    with open_backend(framework, model, **options) as backend:
        found, outputs, note = None, backend.output_specs, None
        if backend.compressible:
            from parity.mnn.compression import of_model

            found = of_model(model, timeout=timeout)
        if not backend.declares_outputs:
            outputs, note = outputs_by_running(backend)
        if note and (Path(model).parent / "llm_config.json").is_file():
            note += (f"; this is an MNN-LLM model, which MNN.llm runs with its KV cache: `parity inspect "
                     f"{Path(model).parent}` describes the export, `parity check HF_DIR {Path(model).parent}` checks it")
        return Inspection(framework, model, backend.version, backend.input_specs, outputs, found, note)


def outputs_by_running(backend):
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
