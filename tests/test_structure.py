"""The package's shape: no import cycle (counting imports inside functions too), and the
check's options travel as one object."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "parity"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """parity module -> the parity modules it imports anywhere in its source."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # "from parity import layers" imports the module parity.layers
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("parity"):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_is_read():
    graph = import_graph()
    assert "parity.judge" in graph["parity.pipeline"]
    assert "parity.diagnose" in graph["parity.pipeline"]  # imported inside a function: counted


def test_no_import_cycle_in_parity():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_check_takes_an_options_object():
    from parity.options import CheckOptions
    from parity.pipeline import check

    parameters = inspect.signature(check).parameters
    assert parameters["options"].annotation in ("CheckOptions | None", CheckOptions | None)
    assert [p for p in parameters.values() if p.kind == p.KEYWORD_ONLY] == [parameters["progress"]]
    options = CheckOptions.from_keywords(seed=3, layers=True, layer_rtol=0.05, mnn_options={"threads": 1})
    assert options.layers.enabled and options.layers.layer_rtol == 0.05
    assert options.mnn.threads == 1 and options.seed == 3


if __name__ == "__main__":  # python tests/test_structure.py: print the graph's cycles
    print(cycles(import_graph()) or "no import cycle in parity/")


def test_fail_on_layers_implies_capturing_layers():
    from parity.options import CheckOptions, LayerOptions

    assert LayerOptions(fail_on_layers=True).enabled
    assert CheckOptions.from_keywords(fail_on_layers=True).layers.enabled
