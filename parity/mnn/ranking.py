"""Which compressed layers cost the accuracy, and what keeping them in float buys back.

Both .mnn files come from the same ONNX, so their op lists line up op for op (checked by
name). MNN's converter reads its own JSON dump back (``-f JSON``), which makes models that mix
the two exact: the float model with one layer taken from the compressed model ("one layer
compressed at a time") measures that layer's own cost at the outputs, on the real inputs, with
everything else float; the compressed model with its worst layers taken from the float model
shows the fix. The dump prints floats with 6 significant decimals, so every mixed model is
compared with the float model as it comes back from JSON (not with the original file): the
printing's own error (~1e-5 here) cancels out.

Costs: one conversion and one run per compressed layer (a few seconds each on small models),
run where the compressed model runs (its target and precision).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from parity.checking.budget import Budget, measure
from parity.core.errors import BackendCrash, BackendError, ParityError

MAX_KEPT = 5  # the fix keeps at most this many layers in float


@dataclass(frozen=True)
class LayerCost:
    name: str
    op_type: str
    compression: str  # "4-bit", "float16", ...
    cosine: float | None  # the outputs' worst cosine with only this layer compressed
    error: float | None  # the outputs' worst max|c - r| / max(1, max|r|), the same way
    rank: int = 0

    @property
    def cost(self) -> float:
        return 1.0 - (self.cosine if self.cosine is not None else 0.0)


@dataclass(frozen=True)
class Ranking:
    layers: tuple  # LayerCost, most costly first
    budget: str
    all_compressed: dict  # figures of the whole compressed model, measured the same way
    fix: dict | None  # {"kept": [names], "before": figures, "after": figures, "within_budget": bool}
    notes: tuple = ()

    def to_dict(self) -> dict:
        return {"budget": self.budget, "layers": [dict(asdict(x), cost=x.cost) for x in self.layers],
                "all_compressed": self.all_compressed, "fix": self.fix, "notes": list(self.notes)}

    def lines(self, top: int = 10) -> list[str]:
        """The terminal's view: the ranking, then the fix."""
        if not self.layers:
            return list(self.notes)
        out = [f"compressed layers by their own cost (only that layer compressed; budget {self.budget}):"]
        for layer in self.layers[:top]:
            out.append(f"  {layer.rank:>2}. {layer.name} ({layer.op_type}, {layer.compression}): cosine "
                       f"{_fig(layer.cosine)}, error {_fig(layer.error)}")
        if len(self.layers) > top:
            out.append(f"  ... {len(self.layers) - top} more in the JSON report")
        if self.fix and not self.fix["kept"]:
            out.append(f"with every layer compressed the model is within the budget {self.budget}: nothing to keep in float")
        elif self.fix:
            kept = self.fix["kept"]
            out.append(f"keeping {len(kept)} layer{'s' * (len(kept) != 1)} in float ({', '.join(kept)}): cosine "
                       f"{_fig(self.fix['before'].get('cosine'))} -> {_fig(self.fix['after'].get('cosine'))}, "
                       f"{'within' if self.fix['within_budget'] else 'still over'} the budget {self.budget}")
        out.extend(self.notes)
        return out


def _fig(value) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _read_json(path: Path) -> dict:
    from parity.mnn.graph import parse_dump_text

    return parse_dump_text(path.read_text(encoding="utf-8"))  # MNN writes UTF-8, whatever the locale


def _from_json(graph: dict, workdir: Path, stem: str, timeout: float) -> Path:
    """Write ``graph`` as MNN JSON and have MNN's converter build the .mnn from it (a child)."""
    from parity.run.worker import Worker

    source = workdir / f"{stem}.json"
    target = workdir / f"{stem}.mnn"
    source.write_text(json.dumps(graph), encoding="utf-8")
    with Worker("MNN converter", timeout=timeout) as worker:
        worker.call("parity.mnn.ranking:_json_to_mnn_in_child", step=f"building {stem}.mnn from JSON",
                    source=str(source), target=str(target))
    source.unlink()
    return target


def _json_to_mnn_in_child(source: str, target: str) -> bool:
    import _tools

    from parity.run.worker import ChildFailure

    ok = _tools.mnnconvert(["MNNConvert", "-f", "JSON", "--modelFile", source, "--MNNModel", target,
                            "--bizCode", "parity"])
    if not ok or not os.path.exists(target) or os.path.getsize(target) == 0:
        raise ChildFailure("backend", f"MNN's converter could not build a model from {os.path.basename(source)}")
    return True


def worst_figures(reference: dict, outputs: dict) -> dict:
    """The worst cosine and error over the outputs (budget.measure on each)."""
    cosines, errors, figures = [], [], {}
    for name, ref in reference.items():
        cand = outputs.get(name)
        if cand is None or np.asarray(cand).size != np.asarray(ref).size:
            return {"cosine": None, "error": None}
        f = measure(np.asarray(ref), np.asarray(cand).reshape(np.shape(ref)))
        cosines.append(f["cosine"])
        errors.append(f["error"])
        if "top1" in f:
            figures["top1"] = min(figures.get("top1", 1.0), f["top1"])
    return {"cosine": min(cosines) if cosines else None, "error": max(errors) if errors else None, **figures}


def rank(float_path, compressed_path, feeds: dict, budget: Budget, open_mnn: Callable, *,
         timeout: float = 300.0, progress: Callable[[str], None] | None = None, write_fixed=None,
         protected=()) -> Ranking:
    """Rank the compressed layers of ``compressed_path`` by their own cost; then keep the worst
    in float until the budget holds (at most MAX_KEPT). ``open_mnn(path)`` opens a backend
    the way the compressed model runs (target, precision). With ``write_fixed``, the model
    with those layers kept in float is written there (never onto one of ``protected``)."""
    from parity.mnn import compression as compression_mod
    from parity.mnn import graph as mnn_graph

    say = progress or (lambda message: None)
    workdir = Path(tempfile.mkdtemp(prefix="parity-rank-"))
    try:
        say("ranking the compressed layers: reading both graphs")
        mnn_graph.dump_json(float_path, workdir / "float.json", timeout=timeout)
        mnn_graph.dump_json(compressed_path, workdir / "compressed.json", timeout=timeout)
        float_graph, compressed_graph = _read_json(workdir / "float.json"), _read_json(workdir / "compressed.json")
        float_ops, compressed_ops = float_graph.get("oplists", []), compressed_graph.get("oplists", [])
        if [op.get("name") for op in float_ops] != [op.get("name") for op in compressed_ops]:
            return Ranking((), budget.text, {}, None, notes=(
                "no layer ranking: the float and compressed models' op lists differ (converted from "
                "different ONNX files, or with options that change the graph)",))
        info = {x.name: x for x in compression_mod.read(compressed_graph).compressed}
        names = compressed_graph.get("tensorName") or []

        def layer_name(op):
            return compression_mod.layer_name(op, names)

        compressed_at = [i for i, op in enumerate(compressed_ops)
                         if layer_name(op) in info and info[layer_name(op)].op_type == op.get("type")]

        def run(graph, stem) -> dict:
            path = _from_json(graph, workdir, stem, timeout)
            try:
                with open_mnn(path) as mnn:
                    return {k: np.asarray(v) for k, v in mnn.run(feeds).outputs.items()}
            finally:
                path.unlink(missing_ok=True)

        say("ranking the compressed layers: the float model as MNN reads it back from JSON")
        reference = run(float_graph, "float-roundtrip")
        whole = worst_figures(reference, run(compressed_graph, "compressed-roundtrip"))
        costs = []
        for count, index in enumerate(compressed_at, 1):
            op = compressed_ops[index]
            name = layer_name(op)
            say(f"ranking the compressed layers: {count}/{len(compressed_at)} {name}")
            mixed = dict(float_graph, oplists=[*float_ops[:index], op, *float_ops[index + 1:]])
            try:
                figures = worst_figures(reference, run(mixed, f"only-{count}"))
            except BackendCrash:
                raise
            except BackendError as exc:
                figures = {"cosine": None, "error": None}
                say(f"  {name}: {exc}")
            layer = info[name]
            label = "float16" if layer.kind == "fp16" else f"{layer.bits}-bit"
            costs.append(LayerCost(name, op.get("type", ""), label, figures["cosine"], figures["error"]))
        ordered = sorted(costs, key=lambda x: -x.cost)
        ordered = tuple(LayerCost(**{**asdict(x), "rank": i}) for i, x in enumerate(ordered, 1))
        fix, fixed_graph = _fix(ordered, float_ops, compressed_graph, compressed_ops, compressed_at, layer_name,
                                reference, whole, budget, run, say)
        notes = _write_fixed(lambda: _from_json(fixed_graph, workdir, "fixed", timeout),
                             write_fixed if fixed_graph is not None else None, write_fixed, protected, fix)
        return Ranking(ordered, budget.text, whole, fix, notes)
    except ParityError as exc:
        return Ranking((), budget.text, {}, None, notes=(f"no layer ranking: {exc}",))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _write_fixed(build: Callable[[], Path], target, asked, protected, fix) -> tuple[str, ...]:
    """--write-fixed: build the fixed model and publish it at ``target`` (never onto an input),
    or, with nothing to keep in float (``target`` None), say that nothing was written to
    ``asked``. Returns the note."""
    if asked is None:
        return ()
    if target is None:
        return (f"--write-fixed: nothing written to {asked}: no layer needs keeping in float",)
    from parity.core.paths import copy_atomic

    copy_atomic(build(), target, "--write-fixed", inputs=protected)
    fix["written"] = str(target)
    return (f"wrote the model with {', '.join(fix['kept'])} kept in float to {target}",)


def within_budget(budget: Budget, figures: dict) -> bool:
    for metric, op, value in budget.clauses:
        got = figures.get(metric)
        if got is None:
            if metric in ("cosine", "error"):
                return False
            continue
        if not (got >= value if op == ">=" else got <= value):
            return False
    return True


def _fix(ordered, float_ops, compressed_graph, compressed_ops, compressed_at, layer_name, reference, whole,
         budget, run, say) -> dict | None:
    """Keep the 1, 2, ... most costly layers in float until the budget holds (or MAX_KEPT).
    Returns the figures and the graph of the last model tried."""
    if not ordered:
        return None, None
    if within_budget(budget, whole):
        return {"kept": [], "before": whole, "after": whole, "within_budget": True}, None
    index_of = {layer_name(compressed_ops[i]): i for i in compressed_at}
    after, graph = whole, None
    kept: list[str] = []
    for layer in ordered[:MAX_KEPT]:
        kept.append(layer.name)
        ops = list(compressed_ops)
        for name in kept:
            ops[index_of[name]] = float_ops[index_of[name]]
        say(f"ranking the compressed layers: keeping {len(kept)} in float")
        graph = dict(compressed_graph, oplists=ops)
        after = worst_figures(reference, run(graph, f"keep-{len(kept)}"))
        if within_budget(budget, after):
            break
    return {"kept": kept, "before": whole, "after": after, "within_budget": within_budget(budget, after)}, graph


def rank_int8(float_path, samples, method: str, feeds: dict, budget: Budget, open_mnn: Callable, *,
              timeout: float = 300.0, progress: Callable[[str], None] | None = None, write_fixed=None,
              protected=()) -> Ranking:
    """The same ranking for a full-int8 model, through MNN's quantization tool itself: layer L
    alone in int8 is the float model quantized with every other layer skipped
    (``skip_quant_op_names``), calibrated on ``samples`` as the model was; the fix skips the
    most costly layers. One quantization and one run per layer."""
    from parity.mnn import compression as compression_mod
    from parity.mnn import graph as mnn_graph
    from parity.mnn.quantize import full_int8

    say = progress or (lambda message: None)
    if method == "EMA":
        return Ranking((), budget.text, {}, None, notes=(
            "no layer ranking: MNN's quantization tool ignores the layers to keep in float with the EMA "
            "method (MNN 3.6.1, measured); quantize with --int8-method ADMM to rank them",))
    workdir = Path(tempfile.mkdtemp(prefix="parity-rank-"))
    try:
        graph = mnn_graph.read_graph(float_path, timeout=timeout)
        names = graph.get("tensorName") or []
        weight_ops = [op for op in graph.get("oplists", []) if op.get("type") in compression_mod.WEIGHT_OPS]
        all_ops = [op.get("name", "") for op in weight_ops]

        def run_quantized(skip, stem) -> dict:
            path = full_int8(float_path, workdir / f"{stem}.mnn", samples, method=method, skip=skip, timeout=timeout)
            try:
                with open_mnn(path) as mnn:
                    return {k: np.asarray(v) for k, v in mnn.run(feeds).outputs.items()}
            finally:
                path.unlink(missing_ok=True)

        with open_mnn(Path(float_path)) as mnn:
            reference = {k: np.asarray(v) for k, v in mnn.run(feeds).outputs.items()}
        say("ranking the int8 layers: the whole model")
        whole = worst_figures(reference, run_quantized([], "all"))
        costs = []
        for count, op in enumerate(weight_ops, 1):
            name = compression_mod.layer_name(op, names)
            say(f"ranking the int8 layers: {count}/{len(weight_ops)} {name}")
            try:
                figures = worst_figures(reference, run_quantized([n for n in all_ops if n != op.get("name")], f"only-{count}"))
            except BackendCrash:
                raise
            except BackendError as exc:
                figures = {"cosine": None, "error": None}
                say(f"  {name}: {exc}")
            costs.append(LayerCost(name, op.get("type", ""), "int8", figures["cosine"], figures["error"]))
        ordered = sorted(costs, key=lambda x: -x.cost)
        ordered = tuple(LayerCost(**{**asdict(x), "rank": i}) for i, x in enumerate(ordered, 1))
        raw = {compression_mod.layer_name(op, names): op.get("name", "") for op in weight_ops}
        kept: list[str] = []
        after = whole
        for layer in ordered[:MAX_KEPT] if not within_budget(budget, whole) else ():
            kept.append(layer.name)
            say(f"ranking the int8 layers: keeping {len(kept)} in float")
            after = worst_figures(reference, run_quantized([raw[n] for n in kept], f"keep-{len(kept)}"))
            if within_budget(budget, after):
                break
        fix = {"kept": kept, "before": whole, "after": after, "within_budget": within_budget(budget, after)}
        notes = _write_fixed(lambda: full_int8(float_path, workdir / "fixed.mnn", samples, method=method,
                                               skip=[raw[n] for n in kept], timeout=timeout),
                             write_fixed if kept else None, write_fixed, protected, fix)
        return Ranking(ordered, budget.text, whole, fix, notes)
    except ParityError as exc:
        return Ranking((), budget.text, {}, None, notes=(f"no layer ranking: {exc}",))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
