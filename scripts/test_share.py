"""How many of the test functions run the parity CLI in a child process, and how many call the
library in-process: a static measure of tests/, read from the source (nothing is run).

The rule, per test function (a ``def test_*`` in tests/test_*.py, at module level or in a
class; a parametrized or hypothesis test counts once):

- **cli**: the test runs the parity CLI in a child process: its body, or a function or pytest
  fixture it reaches, starts a process (``subprocess.run/Popen/check_output/check_call/call``)
  and names the CLI in the same function (the literal ``"-m", "parity"`` or the name
  ``PARITY``). "Reaches" follows, transitively, calls by name to functions of the same file
  or of a tests/ module it imports (``helpers.run_parity``, ``hostile.run_hostile``, a file's
  own ``_run``/``_check`` wrappers), and the test's and the fixtures' parameters that name a
  fixture of the same file or of conftest.py.
- **child**: not cli, but it starts another child process the same way (``python -c`` with a
  script that imports parity, ssh-keygen, a browser...).
- **library**: neither: the test calls parity's functions in this process (parity itself
  may still start its MNN workers; those are the library's, not the test's).

The share printed is of test functions that do not run the CLI (library + child), the measure of
issue 22 ("57% of test functions run the CLI in a subprocess"); the in-process share (library
only) is printed beside it.

    python scripts/test_share.py [--per-file] [TESTS_DIR]
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from pathlib import Path

SPAWNERS = {"run", "Popen", "check_output", "check_call", "call"}


def _spawns(node: ast.AST) -> bool:
    """A call to ``subprocess.<spawner>`` (or a name imported from subprocess) anywhere in node."""
    for call in ast.walk(node):
        if not isinstance(call, ast.Call):
            continue
        f = call.func
        if isinstance(f, ast.Attribute) and f.attr in SPAWNERS and isinstance(f.value, ast.Name) \
                and f.value.id == "subprocess":
            return True
    return False


def _names_cli(node: ast.AST) -> bool:
    """The parity CLI named in node: the literal sequence "-m", "parity", or the name PARITY."""
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id == "PARITY":
            return True
        if isinstance(n, (ast.List, ast.Tuple)):
            items = [e.value if isinstance(e, ast.Constant) else None for e in n.elts]
            if any(a == "-m" and b == "parity" for a, b in zip(items, items[1:])):
                return True
    return False


def _is_fixture(fn: ast.FunctionDef) -> bool:
    for d in fn.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Attribute) and target.attr == "fixture":
            return True
        if isinstance(target, ast.Name) and target.id == "fixture":
            return True
    return False


class Module:
    def __init__(self, path: Path, local_modules: set[str]):
        self.name = path.stem
        self.tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        self.functions: dict[str, ast.FunctionDef] = {}  # module-level defs and class methods
        self.fixtures: dict[str, ast.FunctionDef] = {}
        self.tests: list[str] = []
        self.imported: dict[str, tuple[str, str]] = {}  # local name -> (tests module, name)
        self.modules: dict[str, str] = {}  # local name -> tests module
        for node in self.tree.body:
            self._collect(node, local_modules)

    def _collect(self, node, local_modules, prefix=""):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            key = prefix + node.name
            self.functions.setdefault(node.name, node)
            if _is_fixture(node):
                self.fixtures[node.name] = node
            elif node.name.startswith("test_") and (not prefix or prefix.startswith("Test")):
                self.tests.append(key)
                self.functions[key] = node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                self._collect(item, local_modules, prefix=node.name + ".")
        elif isinstance(node, ast.ImportFrom) and node.module in local_modules:
            for alias in node.names:
                self.imported[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in local_modules:
                    self.modules[alias.asname or alias.name] = alias.name


class Suite:
    def __init__(self, tests_dir: Path):
        paths = sorted(tests_dir.glob("*.py"))
        names = {p.stem for p in paths}
        self.modules = {p.stem: Module(p, names) for p in paths}
        self._memo: dict[tuple[str, str], str] = {}

    def _resolve_call(self, module: Module, call: ast.Call):
        f = call.func
        if isinstance(f, ast.Name):
            if f.id in module.functions:
                return module.name, f.id
            if f.id in module.imported:
                return module.imported[f.id]
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in module.modules:
            return module.modules[f.value.id], f.attr
        return None

    def _fixture(self, module: Module, name: str):
        for owner in (module, self.modules.get("conftest")):
            if owner is not None and name in owner.fixtures:
                return owner.name, name
        return None

    def kind(self, module_name: str, function: str) -> str:
        """'cli', 'child' or 'library' for one function of one tests module (see the docstring)."""
        key = (module_name, function)
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = "library"  # a recursive path adds nothing
        module = self.modules.get(module_name)
        fn = module.functions.get(function) if module else None
        if fn is None:
            return "library"
        spawns = _spawns(fn)
        kinds = {"cli" if spawns and _names_cli(fn) else "child" if spawns else "library"}
        for call in ast.walk(fn):
            if isinstance(call, ast.Call):
                target = self._resolve_call(module, call)
                if target is not None and target != key:
                    kinds.add(self.kind(*target))
        for arg in fn.args.args:
            fixture = self._fixture(module, arg.arg)
            if fixture is not None and fixture != key:
                kinds.add(self.kind(*fixture))
        result = "cli" if "cli" in kinds else "child" if "child" in kinds else "library"
        self._memo[key] = result
        return result

    def table(self) -> dict[str, Counter]:
        per_file = {}
        for name, module in self.modules.items():
            if name.startswith("test_") and module.tests:
                per_file[name] = Counter(self.kind(name, t) for t in module.tests)
        return per_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests_dir", nargs="?", default=str(Path(__file__).resolve().parents[1] / "tests"))
    parser.add_argument("--per-file", action="store_true", help="one line per test file")
    parser.add_argument("--list", choices=("cli", "child", "library"), help="list the tests of one kind")
    args = parser.parse_args(argv)
    suite = Suite(Path(args.tests_dir))
    per_file = suite.table()
    if args.list:
        for name, module in suite.modules.items():
            if name.startswith("test_"):
                for t in module.tests:
                    if suite.kind(name, t) == args.list:
                        print(f"{name}.py::{t}")
        return 0
    total = sum(per_file.values(), Counter())
    if args.per_file:
        print(f"{'file':32} {'tests':>5} {'cli':>5} {'child':>5} {'library':>7}")
        for name, c in sorted(per_file.items()):
            print(f"{name + '.py':32} {sum(c.values()):5} {c['cli']:5} {c['child']:5} {c['library']:7}")
    n = sum(total.values())
    print(f"test functions: {n}; run the parity CLI in a child: {total['cli']} ({total['cli'] / n:.0%}); "
          f"another child process: {total['child']}; in-process only: {total['library']}")
    print(f"share not running the CLI (calls the library directly): {(n - total['cli']) / n:.1%}; "
          f"in-process only: {total['library'] / n:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
