"""No import cycle among parity's modules and the scripts.

The graph is read from the source with ``ast`` (nothing is imported). Its edges:

- every ``import`` and ``from ... import`` statement, at module level and inside functions: a
  lazy import is still a dependency, and the cycles once found here (``parity.backends`` ->
  ``parity.backends.mnn`` -> ``parity.run.targets`` -> ``parity.backends``; ``scripts/bench.py`` <->
  ``scripts/bench_realistic.py``) ran through function-level imports only. Imports under
  ``if TYPE_CHECKING:`` never run and are left out;
- importing ``a.b.c`` depends on ``a.b`` and ``a`` too: Python runs their ``__init__`` first, so
  what a package's ``__init__`` imports is reached from each of its modules;
- ``from pkg import name`` where ``pkg.name`` is a module is an edge to that module;
- relative imports are resolved against the importing module's package;
- a script in scripts/ is a top-level module named for its file (scripts/ is on sys.path when
  one runs).

``python tests/test_import_cycles.py`` prints the graph's cycles.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_names(root: Path = ROOT, packages=("parity",), scripts=("scripts",)) -> dict[str, Path]:
    """Module name -> file: the packages' modules (``parity.backends`` for its __init__) and the
    scripts' files (by stem)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for folder in scripts:
        for path in sorted((root / folder).glob("*.py")):
            modules[path.stem] = path
    return modules


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imported(node: ast.AST, package: str, modules) -> list[str]:
    """The modules one import statement names (before adding their packages)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = package.split(".") if package else []
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Module -> the modules (of ``modules``) it depends on through its imports."""
    modules = module_names() if modules is None else modules
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _imported(node, package, modules):
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # a.b.c runs a/__init__ and a/b/__init__ first
                    prefix = ".".join(parts[:i])
                    if prefix in modules and prefix != name:
                        graph[name].add(prefix)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle for each strongly connected component of more than one module, as a path that
    starts and ends at the same module (the shortest through the component's first module)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for component in components:
        start = min(component)
        parent, queue, end = {start: None}, deque([start]), None
        while end is None:  # breadth first inside the component until an edge leads back to start
            v = queue.popleft()
            for w in sorted(graph[v] & component):
                if w == start:
                    end = v
                    break
                if w not in parent:
                    parent[w] = v
                    queue.append(w)
        path = []
        while end is not None:
            path.append(end)
            end = parent[end]
        found.append(path[::-1] + [start])
    return found


def _shown(found: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in found)


def test_no_import_cycle_in_parity_or_scripts():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + _shown(found)


def test_the_graph_is_read():
    graph = import_graph()
    assert "parity.core.judge" in graph["parity.checking.pipeline"]  # module level
    assert "parity.checking.diagnose" in graph["parity.checking.pipeline"]  # inside a function: counted
    assert "parity.backends.registry" in graph["parity.checking.pipeline"]  # from pkg.mod import name
    assert "parity.run" in graph["parity.backends.mnn_child"]  # its package's __init__ runs
    assert "parity.run.targets" in graph["parity.backends.mnn"]
    assert "bench_common" in graph["bench"] and "bench_realistic" in graph["bench"]  # scripts
    assert "parity.mnn.converter" in graph["bench_realistic"]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_finds_the_cycles_parity_once_had(tmp_path):
    """The shape of the two cycles found in parity before: a package whose __init__ imports its
    adapters inside a function, an adapter importing a module that imports a sibling adapter
    (relative and absolute); two scripts importing each other inside functions."""
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/backends/__init__.py": "def open_backend():\n    from pkg.backends.mnn import Mnn\n",
        "pkg/backends/mnn.py": "def f():\n    from ..targets import open_worker\n",
        "pkg/backends/agent.py": "X = 1\n",
        "pkg/targets.py": "def g():\n    from pkg.backends import agent\n",
        "pkg/clean.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import targets\n",
        "scripts/bench.py": "def main():\n    import bench_realistic\n",
        "scripts/bench_realistic.py": "def figures():\n    from bench import HAND_WRITTEN\n",
    })
    graph = import_graph(module_names(tmp_path, packages=("pkg",)))
    assert "pkg.targets" in graph["pkg.backends.mnn"]  # relative import resolved
    assert "pkg.backends.agent" in graph["pkg.targets"]  # from pkg import module
    assert "pkg.targets" not in graph["pkg.clean"]  # TYPE_CHECKING only
    found = cycles(graph)
    assert ["bench", "bench_realistic", "bench"] in found, found
    backends = next(c for c in found if "pkg.backends" in c)
    assert backends[0] == backends[-1] and {"pkg.backends", "pkg.backends.mnn", "pkg.targets"} <= set(backends)
    assert "pkg.backends -> pkg.backends.mnn -> pkg.targets" in _shown(found)


def test_no_cycle_where_the_factory_lives_apart(tmp_path):
    """The fix: the factory in a module of its own, the package's __init__ importing nothing."""
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/backends/__init__.py": '"""adapters"""\n',
        "pkg/backends/registry.py": "def open_backend():\n    from pkg.backends.mnn import Mnn\n",
        "pkg/backends/mnn.py": "def f():\n    from ..targets import open_worker\n",
        "pkg/backends/agent.py": "X = 1\n",
        "pkg/targets.py": "def g():\n    from pkg.backends import agent\n",
        "scripts/bench.py": "import bench_common\ndef main():\n    import bench_realistic\n",
        "scripts/bench_common.py": "HAND_WRITTEN = ''\n",
        "scripts/bench_realistic.py": "from bench_common import HAND_WRITTEN\n",
    })
    assert cycles(import_graph(module_names(tmp_path, packages=("pkg",)))) == []


if __name__ == "__main__":
    print(_shown(cycles(import_graph())) or "no import cycle in parity/ or scripts/")


# What each subpackage may import from parity (besides itself and the package's light __init__):
# the layers of the architecture, lowest first. A new dependency across them is a design change
# to make here, on purpose, not by an import added in passing.
LAYERS = {
    "parity.core": set(),  # metrics, alignment, the verdict's rules: depends on nothing else
    "parity.run": {"parity.core", "parity.mnn.log"},  # processes and targets
}


def violations(graph: dict[str, set[str]], layers: dict[str, set[str]]) -> list[str]:
    found = []
    for module, deps in sorted(graph.items()):
        for layer, allowed in layers.items():
            if module != layer and not module.startswith(layer + "."):
                continue
            for dep in sorted(deps):
                inside = dep == layer or dep.startswith(layer + ".") or dep == "parity"
                # an allowed module's packages come with it: Python runs their __init__ first
                if not inside and not any(dep == a or dep.startswith(a + ".") or a.startswith(dep + ".")
                                          for a in allowed):
                    if dep.startswith("parity."):
                        found.append(f"{module} imports {dep}")
    return found


def test_core_and_run_import_only_the_layers_below_them():
    assert violations(import_graph(), LAYERS) == []


def test_a_layer_violation_is_seen():
    graph = {"parity.core.metrics": {"parity.checking.pipeline", "parity.core.errors", "numpy"}}
    assert violations(graph, LAYERS) == ["parity.core.metrics imports parity.checking.pipeline"]
