"""The package's layers are enforced: the import-linter contracts in pyproject.toml must hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports is not installed: pip install -e '.[test]'")
    done = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_no_import_loop():
    """No module imports, directly or through others, a module that imports it back (function-level
    imports count: a loop hidden in a function is still a loop in the design)."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("brmtrl", include_external_packages=False)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def visit(v: str) -> None:   # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                loops.append(sorted(comp))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert loops == [], f"import loops: {loops}"


def test_no_module_over_450_lines():
    src = ROOT / "src" / "brmtrl"
    long = {str(p.relative_to(src)): n for p in src.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}, f"modules over 450 lines: {long}"


def test_every_module_has_a_layer():
    """The layers contract names every top-level module and subpackage of brmtrl (a new module must be
    placed in a layer, not slip past the contract)."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}
    src = ROOT / "src" / "brmtrl"
    modules = {p.stem for p in src.glob("*.py") if p.stem != "__init__"} | \
        {p.parent.name for p in src.glob("*/__init__.py")}
    assert modules - named == set(), f"modules in no layer: {sorted(modules - named)}"
    assert named - modules == set(), f"layers name modules that do not exist: {sorted(named - modules)}"
