"""The per-layer view of an LLM export: one prompt's prefill, decoder layer by decoder layer, in
transformers and in MNN, so a conversion (or float16) verdict names the layer and, where the
export lets it, the block inside it (attention or MLP).

MNN's side runs llm.mnn through the Module API (module_child.py, in a worker child here or on a
``--mnn-target``), which returns any tensor by name. Two figures per layer:

    cumulative  both fed the same token ids: what the layer's output carries, including the error
                of every layer before it and of the export's rounded (bfloat16) embeddings
    isolated    MNN's layer fed transformers' own input to that layer (the graph cut at each
                layer's input, all in one run): the layer's own error, so a faulty layer stands
                out from the error carried into it

Before a layer is blamed, the Module API's last-position logits must equal MNN.llm's for the same
prompt and settings (the failing link's first row): when they do not, the view is not MNN.llm's
and says so instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

_CHILD = "parity.llm.module_child"
# A layer's isolated error beyond this share of its output's magnitude (scaled as the links'
# error is, by max(1, max|reference|)) is the layer's own fault. Float16 weights give ~1e-3
# (measured 3e-4 to 2e-3 on tiny and 512-wide models); a changed projection gives ~1e-1 or more.
LAYER_FLOOR = 1e-2
# The Module API and MNN.llm run the same graph with the same kernels: measured 2e-6 to 1.6e-4
# apart (scaled, ~1e-5); beyond this, the Module API's view is not what MNN.llm computed.
MODULE_TOLERANCE = 1e-3


def scaled(diff: float | None, absmax: float) -> float | None:
    return None if diff is None else diff / max(1.0, absmax)


@dataclass(frozen=True)
class LayerFigure:
    """One decoder layer's figures: max|MNN - transformers| of its output, both fed the token ids
    (``max_abs_diff``) and fed transformers' input to this layer (``isolated``), and the isolated
    figures of its attention and MLP blocks' outputs where the graph has them."""

    layer: int
    name: str  # MNN's tensor of the layer's output: "/blocks.1/Add_1_output_0"
    max_abs_diff: float
    isolated: float
    reference_absmax: float
    attention: float | None = None
    attention_absmax: float = 0.0
    mlp: float | None = None
    mlp_absmax: float = 0.0
    tensors: dict = field(default_factory=dict)  # role -> MNN tensor name

    @property
    def isolated_scaled(self) -> float:
        return scaled(self.isolated, self.reference_absmax)

    def part(self) -> str | None:
        """Where the layer's own error jumps: "attention", "mlp", "layer" (its norms or residual
        adds), or None when the layer is within LAYER_FLOOR in isolation. The attention block
        comes first: an error there reaches the MLP's input too."""
        own = self.isolated_scaled
        if not (own > LAYER_FLOOR or np.isnan(own)):  # NaN (an overflow) counts as beyond
            return None
        for role, diff, absmax in (("attention", self.attention, self.attention_absmax),
                                   ("mlp", self.mlp, self.mlp_absmax)):
            value = scaled(diff, absmax)
            if value is not None and (value > LAYER_FLOOR or np.isnan(value)):
                return role
        return "layer"

    def place(self) -> str:
        part = self.part()
        if part in ("attention", "mlp"):
            return f"decoder layer {self.layer}, its {part} ({self.tensors[part]})"
        return f"decoder layer {self.layer} ({self.name})"

    def to_dict(self) -> dict:
        return {**asdict(self), "isolated_scaled": self.isolated_scaled, "part": self.part()}


@dataclass
class LayerView:
    """The per-layer figures of one prompt's prefill (``prompt`` counts from 1)."""

    prompt: int
    positions: int
    run: str
    module_vs_mnn_llm: float  # scaled max|Module API - MNN.llm| of the last position's logits
    figures: list = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return self.module_vs_mnn_llm <= MODULE_TOLERANCE

    def faulty(self) -> list:
        return [f for f in self.figures if f.part() is not None] if self.consistent else []

    def where(self) -> str | None:
        """The layer whose own (isolated) error is largest beyond the floor; None when none is."""
        faulty = self.faulty()
        if not faulty:
            return None
        worst = max(faulty, key=lambda f: np.nan_to_num(f.isolated_scaled, nan=np.inf))
        return f"{worst.place()}, prompt {self.prompt}'s prefill"

    def lines(self) -> tuple:
        head = (f"per layer, prompt {self.prompt}'s prefill ({self.positions} positions, {self.run}): "
                f"Module API logits vs MNN.llm's {self.module_vs_mnn_llm:.2g} (scaled)")
        rows = [f"decoder layer {f.layer}: max|diff| {f.max_abs_diff:.3g} with the token ids, "
                f"{f.isolated:.3g} in isolation (scaled {f.isolated_scaled:.3g}; max|transformers| "
                f"{f.reference_absmax:.3g})" + ("" if f.part() is None else f", beyond {LAYER_FLOOR:g}: {f.part()}")
                for f in self.figures]
        return (head, *rows)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "positions": self.positions, "run": self.run,
                "module_vs_mnn_llm": self.module_vs_mnn_llm, "module_tolerance": MODULE_TOLERANCE,
                "consistent": self.consistent, "layer_floor": LAYER_FLOOR,
                "layers": [f.to_dict() for f in self.figures]}


class ModulePrefill:
    """llm.mnn through the Module API in a worker child, here or on ``target``. A context manager."""

    def __init__(self, export, settings: dict, *, target: str | None = None, timeout: float = 600.0):
        self.export, self.settings, self.timeout = export, dict(settings), timeout
        self.target = target if target not in (None, "local") else None
        self._worker, self._folder = None, str(export.path)

    def __enter__(self) -> "ModulePrefill":
        from parity.llm.runtime import open_worker

        self._worker, self._folder = open_worker(self.export, "MNN (llm.mnn's Module API)", self.target,
                                                 self.timeout)
        return self

    def __exit__(self, *exc) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def layers(self) -> list:
        names = self._worker.call(f"{_CHILD}:tensor_names", step=f"reading {self.export.path.name}'s tensor names",
                                  folder=self._folder)
        from parity.llm.module_child import decoder_layers

        return decoder_layers(names)

    def prefill(self, ids, outputs, cuts=None) -> dict:
        return self._worker.call(f"{_CHILD}:prefill", step=f"a prefill of {self.export.path.name}'s llm.mnn",
                                 folder=self._folder, ids=list(map(int, ids)), outputs=list(outputs),
                                 settings=self.settings, cuts=cuts)


def view(reference, export, settings: dict, ids, mnn_llm_logits, *, prompt: int, run: str,
         target=None, timeout: float = 600.0) -> LayerView:
    """The per-layer view of a prefill of ``ids``: transformers (``reference``) against the
    export's llm.mnn at ``settings``; ``mnn_llm_logits`` is MNN.llm's last-position row for the
    same prompt and settings, which the Module API's must equal."""
    ref = reference.layer_states(ids)
    with ModulePrefill(export, settings, target=target, timeout=timeout) as mnn:
        tensors = mnn.layers()
        if len(tensors) != len(ref["layers"]):
            raise ValueError(f"llm.mnn has {len(tensors)} decoder layers with the names parity knows, "
                             f"transformers {len(ref['layers'])}")
        full = mnn.prefill(ids, ["logits"] + [t["output"] for t in tensors])
        asked = [t[r] for t in tensors for r in ("attention", "mlp", "output") if r in t]
        cuts = {t["input"]: ref["layers"][i]["input"] for i, t in enumerate(tensors)}
        alone = mnn.prefill(ids, asked, cuts=cuts)
    agree = agreement(full["logits"][-1], mnn_llm_logits)
    figures = [_figure(i, t, ref["layers"][i], full, alone) for i, t in enumerate(tensors)]
    return LayerView(prompt, len(ids), run, agree, figures)


def agreement(module_row, mnn_llm_row) -> float:
    """Scaled max|Module API - MNN.llm| of one position's logits. Non-finite entries agree when
    both sides have them in the same places (a float16 overflow gives NaN in both)."""
    a = np.asarray(module_row, np.float64).reshape(-1)
    b = np.asarray(mnn_llm_row, np.float64).reshape(-1)
    finite = np.isfinite(a)
    if (finite != np.isfinite(b)).any():
        return float("inf")
    if not finite.any():
        return 0.0
    return float(np.max(np.abs(a[finite] - b[finite]))) / max(1.0, float(np.max(np.abs(b[finite]))))


def _figure(index: int, tensors: dict, ref: dict, full: dict, alone: dict) -> LayerFigure:
    def diff(a, b):
        return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64).reshape(np.shape(a)))))

    def block(role):
        if role not in tensors or role not in ref:
            return None, 0.0
        return diff(ref[role], alone[tensors[role]]), float(np.max(np.abs(ref[role])))

    attention, attention_absmax = block("attention")
    mlp, mlp_absmax = block("mlp")
    return LayerFigure(index, tensors["output"], diff(ref["output"], full[tensors["output"]]),
                       diff(ref["output"], alone[tensors["output"]]), float(np.max(np.abs(ref["output"]))),
                       attention, attention_absmax, mlp, mlp_absmax, dict(tensors))


def place(case, export, settings: dict, link) -> tuple:
    """(the decoder layer to name, or None; evidence lines) for a failing ``link`` of ``case``
    (diagnose.Case) run on ``export`` at ``settings``: the per-layer view of its first failing
    prompt, recorded in ``case.layers``. A view that cannot be had leaves a note, not an error."""
    p = link.first_out[0] if link.first_out is not None else 0
    try:
        result = view(case.reference, export, settings, case.prompt_ids[p], link.logits[p][0], prompt=p + 1,
                      run=link.run, target=case.target, timeout=case.timeout)
    except Exception as exc:  # a graph or model the view does not fit: the verdict stands without it
        text = str(exc).strip().splitlines()
        case.notes.append(f"the per-layer view could not be made ({type(exc).__name__}: {text[0] if text else ''})")
        return None, ()
    case.layers = result.to_dict()
    if not result.consistent:
        case.notes.append(f"the per-layer view does not blame a layer: the Module API's logits differ from "
                          f"MNN.llm's by {result.module_vs_mnn_llm:.3g} (scaled, beyond {MODULE_TOLERANCE:g}) "
                          f"on prompt {result.prompt}, so its layers are not what MNN.llm computed")
    elif result.where() is None:
        case.notes.append(f"no decoder layer stands out in isolation (each within {LAYER_FLOOR:g} of its "
                          f"output's magnitude): the error builds up over the layers")
    return result.where(), result.lines()
