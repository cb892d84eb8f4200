"""Planted mutants: does the test suite notice when the verdict engine is wrong?

    python scripts/mutants.py [--per-module 8] [--seed 0] [--module parity/checking/diagnose.py ...]
                              [--list] [--timeout 600] [--json mutants.json]

For each module of the verdict engine (TESTS below), every site of a small set of mutation operators is listed (comparisons
flipped or loosened, arithmetic swapped, and/or swapped, numeric constants scaled, booleans
and verdict kinds exchanged, a returned value replaced by None); ``--per-module`` of them are
drawn with ``--seed``. Each mutant is written into a copy of the repository's tracked files in a
temporary folder
(the module re-generated with ``ast.unparse``) and the module's tests run against it with
``PYTHONPATH`` pointing there, stopping at the first failure. A mutant is killed when a test
fails, survives when all pass, and times out otherwise. Nothing in the repository is changed.

The score is killed / (killed + survived); the survivors are printed with their diff line so
a person can judge whether each is equivalent (harmless) or a gap in the tests.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the tests that exercise each module (without torch: the mutants must be caught by the tests
# every environment runs)
_DIAGNOSIS_TESTS = ["tests/test_numerics.py", "tests/test_verdict.py", "tests/test_core_verdicts.py",
                    "tests/test_options.py"]
_EXPERIMENTS = ("measure", "repeat", "target", "float16", "rounding", "conversion", "variants", "numpy_reference")
_LAYER_TESTS = ["tests/test_layers.py", "tests/test_isolation.py", "tests/test_isolation_property.py",
                "tests/test_capture.py", "tests/test_numerics.py"]
_LAYER_MODULES = ("layers", "onnx_graph", "pairing", "capture", "divergence", "isolation", "fp16_headroom")
TESTS = {
    **{f"parity/checking/{m}.py": _DIAGNOSIS_TESTS
       for m in ("diagnose", *(f"experiments/{e}" for e in _EXPERIMENTS))},
    "parity/checking/numerics.py": ["tests/test_numerics.py", "tests/test_verdict.py"],
    "parity/mnn/ops.py": ["tests/test_op_references.py", "tests/test_verdict.py", "tests/test_numerics.py"],
    "parity/core/judge.py": ["tests/test_core_properties.py", "tests/test_metrics.py", "tests/test_layers.py",
                        "tests/test_check_cli.py", "tests/test_options.py", "tests/test_user_side.py"],
    "parity/checking/budget.py": ["tests/test_compression.py", "tests/test_library_checks.py"],
    "parity/checking/compression_policy.py": ["tests/test_compression.py", "tests/test_library_checks.py"],
    "parity/checking/samples.py": ["tests/test_samples.py", "tests/test_library_checks.py"],
    **{f"parity/checking/{m}.py": _LAYER_TESTS for m in _LAYER_MODULES},
    "parity/checking/fp16_emulation.py": ["tests/test_fp16_emulation.py"],
}
KINDS = ("conversion", "runtime", "undetermined", "numerics", "export", "compression", "usage")


@dataclass
class Site:
    module: str
    line: int
    kind: str
    before: str
    after: str
    index: int  # which site of the module (its place in the walk)


class _Mutator(ast.NodeTransformer):
    """Walks a module; lists each site (``target`` None) or applies site number ``target``."""

    SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
    SWAP_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}

    def __init__(self, target: int | None = None):
        self.target = target
        self.count = 0
        self.sites: list[tuple[int, str, str, str]] = []
        self.applied = None

    def _site(self, node, kind, before, after) -> bool:
        index = self.count
        self.count += 1
        self.sites.append((getattr(node, "lineno", 0), kind, before, after))
        if index == self.target:
            self.applied = (getattr(node, "lineno", 0), kind, before, after)
            return True
        return False

    def visit_FunctionDef(self, node):
        if node.name.startswith("__") or node.name in ("to_dict", "describe", "from_dict"):
            return node  # reprs and serialisation: not the engine's decisions
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Compare(self, node):
        self.generic_visit(node)
        op = node.ops[0]
        swap = self.SWAP_CMP.get(type(op))
        if swap and self._site(node, "comparison", type(op).__name__, swap.__name__):
            node.ops = [swap()] + node.ops[1:]
        return node

    def visit_BinOp(self, node):
        self.generic_visit(node)
        swap = self.SWAP_BIN.get(type(node.op))
        if swap and self._site(node, "arithmetic", type(node.op).__name__, swap.__name__):
            node.op = swap()
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        swap = ast.Or if isinstance(node.op, ast.And) else ast.And
        if self._site(node, "boolean", type(node.op).__name__, swap.__name__):
            node.op = swap()
        return node

    def visit_Constant(self, node):
        value = node.value
        if isinstance(value, bool):
            if self._site(node, "constant", repr(value), repr(not value)):
                return ast.copy_location(ast.Constant(not value), node)
        elif isinstance(value, (int, float)) and value not in (0, 1, -1):
            new = value * 10 if isinstance(value, float) else value + 1
            if self._site(node, "constant", repr(value), repr(new)):
                return ast.copy_location(ast.Constant(new), node)
        elif isinstance(value, str) and value in KINDS:
            new = KINDS[(KINDS.index(value) + 1) % len(KINDS)]
            if self._site(node, "verdict kind", repr(value), repr(new)):
                return ast.copy_location(ast.Constant(new), node)
        return node

    def visit_Return(self, node):
        self.generic_visit(node)
        if node.value is not None and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            if self._site(node, "return", "return ...", "return None"):
                node.value = ast.Constant(None)
        return node


def sites(module: str) -> list[Site]:
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    mutator = _Mutator()
    mutator.visit(tree)
    return [Site(module, line, kind, before, after, i) for i, (line, kind, before, after) in enumerate(mutator.sites)]


def mutated_source(site: Site) -> str:
    tree = ast.parse((ROOT / site.module).read_text(encoding="utf-8"))
    mutator = _Mutator(site.index)
    tree = mutator.visit(tree)
    assert mutator.applied is not None and mutator.applied[0] == site.line
    return ast.unparse(ast.fix_missing_locations(tree))


def _copy_tracked(dest: Path) -> None:
    """The repository's tracked files (as they are in the work tree) copied to ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def run_mutant(site: Site, timeout: float) -> tuple[str, float, str]:
    tests = TESTS[site.module]
    missing = [t for t in tests if not (ROOT / t).exists()]
    if missing:
        raise SystemExit(f"mutants: TESTS names {', '.join(missing)}, which do not exist")
    with tempfile.TemporaryDirectory(prefix="parity-mutant-") as tmp:
        _copy_tracked(Path(tmp))
        (Path(tmp) / site.module).write_text(mutated_source(site), encoding="utf-8")
        # the copy is the current directory (first on sys.path, also for the CLI the tests start
        # with `python -m parity` from the repository root, which is the copy's)
        env = dict(os.environ, PYTHONPATH=tmp, PYTHONDONTWRITEBYTECODE="1")
        start = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                   "-m", "not torch and not arm64 and not slow", *tests],
                                  cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout", time.monotonic() - start, ""
        elapsed = time.monotonic() - start
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        if proc.returncode == 0:
            return "survived", elapsed, last
        if proc.returncode != 1 and " failed" not in last:
            # 2-5 with no test failed: interrupted, usage error, nothing collected. (A mutant in a
            # module the parity pytest plugin uses can also break pytest's own reporting, exit 3,
            # after a test failed: that test killed it.)
            return f"error {proc.returncode}", elapsed, last
        failed = next((ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED")), last)
        return "killed", elapsed, failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", help="a module of TESTS (default: all of them)")
    parser.add_argument("--per-module", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--list", action="store_true", help="only list the drawn mutants")
    parser.add_argument("--json", help="write every mutant and its outcome here")
    args = parser.parse_args(argv)
    modules = args.module or list(TESTS)
    rng = random.Random(args.seed)
    drawn = []
    for module in modules:
        all_sites = sites(module)
        drawn += sorted(rng.sample(all_sites, min(args.per_module, len(all_sites))), key=lambda s: s.line)
        print(f"{module}: {len(all_sites)} sites, {min(args.per_module, len(all_sites))} drawn", flush=True)
    if args.list:
        for s in drawn:
            print(f"  {s.module}:{s.line} {s.kind}: {s.before} -> {s.after}")
        return 0
    results = []
    for n, site in enumerate(drawn, 1):
        outcome, elapsed, detail = run_mutant(site, args.timeout)
        results.append({**site.__dict__, "outcome": outcome, "seconds": round(elapsed, 1), "detail": detail})
        print(f"[{n}/{len(drawn)}] {outcome:8s} {site.module}:{site.line} {site.kind}: {site.before} -> "
              f"{site.after} ({elapsed:.0f} s) {detail[:120]}", flush=True)
    killed = sum(r["outcome"] == "killed" for r in results)
    survived = [r for r in results if r["outcome"] == "survived"]
    print(f"\nmutation score: {killed} killed of {killed + len(survived)} "
          f"({killed / max(1, killed + len(survived)):.0%}); {sum(r['outcome'] == 'timeout' for r in results)} "
          f"timed out, {sum(r['outcome'].startswith('error') for r in results)} stopped pytest itself")
    for module in modules:
        mine = [r for r in results if r["module"] == module]
        k = sum(r["outcome"] == "killed" for r in mine)
        s = sum(r["outcome"] == "survived" for r in mine)
        print(f"  {module}: {k} killed, {s} survived")
    for r in survived:
        print(f"  survivor {r['module']}:{r['line']} {r['kind']}: {r['before']} -> {r['after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
