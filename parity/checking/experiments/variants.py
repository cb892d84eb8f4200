"""Experiments 4 and 5: the same .mnn under other MNN runtime settings (1 thread, Winograd off,
precision modes, memory mode, rearrange), then reconversions with the converter options that
change numbers. The layer is re-run in isolation, on the reference's inputs, when it can be;
the model is re-run otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from parity.checking.experiments.measure import Measurement, decisive, fmt, open_variant
from parity.core.errors import ParityError
from parity.core.paths import argument
from parity.core.report import Verdict

if TYPE_CHECKING:
    from parity.checking.diagnose import Context, Probe


RUNTIME_VARIANTS = (
    ("threads=1", {"threads": 1}),
    ("Winograd off (hint WINOGRAD_MEMORY_LEVEL=0)", {"hints": ((3, 0),)}),
    ("precision=high", {"precision": "high"}),
    ("precision=low", {"precision": "low"}),
    ("memory mode 2 (low)", {"memory": 2}),
    ("rearrange=True", {"rearrange": True}),
)
CONVERTER_VARIANTS = (
    ("--useGeluApproximation 0 (exact GELU instead of MNN's tanh approximation)",
     ["--useGeluApproximation", "0"]),
    ("--optimizeLevel 0 (no graph optimisation passes)", ["--optimizeLevel", "0"]),
    ("--useGeluApproximation 0 --optimizeLevel 0", ["--useGeluApproximation", "0", "--optimizeLevel", "0"]),
)


def runtime_variants(ctx: Context, probe: Probe, base: Measurement, where: str, evidence: list) -> Verdict | None:
    """Experiment a: the same file under other MNN settings, measured like the baseline."""
    for name, change in RUNTIME_VARIANTS:
        ctx.progress(f"diagnosing: MNN runtime variant {name}")
        try:
            with open_variant(ctx, ctx.mnn_path, **change) as mnn:
                m = probe.measure(mnn)
        except ParityError as exc:  # a crash under one setting is evidence, not the end
            evidence.append({"experiment": "runtime variant", "setting": name, "error": str(exc)})
            continue
        evidence.append({"experiment": "runtime variant", "setting": name, **m.to_dict()})
        if decisive(base, m):
            return Verdict(
                "runtime", where,
                f"{_runtime_phrase(probe, name)} at {probe.where}: error {fmt(base.scaled)} as run, "
                f"{fmt(m.scaled)} with {name} ({m.how}); the converted graph is right, an MNN "
                f"kernel or setting gives other numbers",
                evidence=tuple(evidence),
                next_steps=(f"run MNN with {name} where accuracy matters, or accept the difference "
                            f"with a looser --atol/--rtol",
                            "attach --repro DIR's output to an MNN issue if the kernel is wrong"),
            )
    return None


def converter_variants(ctx: Context, probe: Probe, where: str, workdir: Path, evidence: list) -> Verdict | None:
    """Experiment b: reconversions with the options that change numbers, each measured
    against the given file in one way."""
    from parity.mnn.converter import convert

    for name, options in CONVERTER_VARIANTS:
        ctx.progress(f"diagnosing: conversion with {' '.join(options)}")
        target = workdir / f"variant{len(evidence)}.mnn"
        try:
            convert(ctx.onnx_path, target, options=options, timeout=ctx.timeout)
            with open_variant(ctx, target) as mnn:
                given, m = probe.measure_pair(mnn)
        except ParityError as exc:
            evidence.append({"experiment": "converter variant", "setting": name, "error": str(exc)})
            continue
        evidence.append({"experiment": "converter variant", "setting": name, **m.to_dict(),
                         "given_file": given.to_dict()})
        if decisive(given, m):
            return Verdict(
                "conversion", where,
                f"the converter's default {name.split(' (')[0].split()[0]} "
                f"changes the numbers at {probe.where}: error {fmt(given.scaled)} as converted, "
                f"{fmt(m.scaled)} converted with {' '.join(options)} (both measured {m.how})",
                evidence=tuple(evidence),
                next_steps=(f"convert with {' '.join(options)}: parity convert {argument(ctx.onnx_path)} "
                            f"-o {argument(ctx.mnn_path)} {' '.join(options)}",),
            )
    return None


def _runtime_phrase(probe: Probe, variant: str) -> str:
    if probe.divergence is None:
        return f"the model under {variant}"
    ops = probe.divergence.op_type
    if "Winograd" in variant and "Conv" in ops:
        return f"{ops} computed via Winograd"
    return f"{ops} under the MNN setting {variant.split(' (')[0]}"
