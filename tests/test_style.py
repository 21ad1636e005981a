"""The package stays ruff-clean, the package and the tests pass mypy --strict (both configured in pyproject.toml),
and the package has no import circle."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (it is part of the test extra)")
    return found


def test_ruff_clean() -> None:
    result = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = subprocess.run([_tool("mypy"), "compozy_nb"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_the_tests() -> None:
    """The tests type-check too: what they read from an output map is checked against its TypedDict
    (compozy_nb/memory/outputs.py), so a renamed or retyped key fails here before it fails a user."""
    result = subprocess.run(
        [_tool("mypy"), "--explicit-package-bases", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------- import circles
def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports when it runs: module-level and function-level imports (a lazy
    import still climbs back up), without ``if TYPE_CHECKING:`` blocks; ``from pkg import sub`` is an edge to the
    submodule, not to the package (a parent package's ``__init__`` runs first anyway)."""
    modules: dict[str, Path] = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here
                    for _ in range(node.level - 1):
                        parent = parent.rpartition(".")[0]
                    base = f"{parent}.{base}" if base else parent
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                found = known(target) if target.split(".")[0] == package.name else None
                if found and found != name:
                    graph[name].add(found)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph(ROOT / "compozy_nb")
    assert len(graph) > 50 and "compozy_nb.memory.instance" in graph["compozy_nb.project"]
    found = circles(graph)
    detail = "; ".join(" <-> ".join(c) + f" ({ {m: sorted(graph[m] & set(c)) for m in c} })" for c in found)
    assert not found, f"import circles: {detail}"


LOWER = ("compozy_nb.memory", "compozy_nb.config", "compozy_nb.workflow", "compozy_nb.backends", "compozy_nb.embedded")
UPPER = ("compozy_nb.project", "compozy_nb.cli", "compozy_nb.server", "compozy_nb.sdk", "compozy_nb.notebook.magics")


def test_the_engine_never_imports_the_facade_or_a_shell() -> None:
    graph = import_graph(ROOT / "compozy_nb")
    wrong = {
        module: sorted(t for t in targets if t.startswith(UPPER) or t == "compozy_nb")
        for module, targets in graph.items()
        if module.startswith(LOWER)
    }
    assert not {m: t for m, t in wrong.items() if t}


def test_the_workflow_runner_does_not_know_the_project_type() -> None:
    """The runner receives a ``Host`` (what a run needs); it never names the façade, not even for typing."""
    for path in sorted((ROOT / "compozy_nb" / "workflow").glob("*.py")):
        assert "compozy_nb.project" not in path.read_text(encoding="utf-8"), path.name


def test_the_circle_check_sees_lazy_imports_and_skips_type_checking(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n")  # a lazy import back: a circle
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n")
    (pkg / "d.py").write_text("import pkg.c\n")
    assert circles(import_graph(pkg)) == [["pkg.a", "pkg.sub.b"]]


def test_the_exact_integer_bound_is_defined_once() -> None:
    from compozy_nb.limits import MAX_EXACT_INT

    lua = (ROOT / "compozy_nb" / "memory" / "scripts" / "_common.lua").read_text(encoding="utf-8")
    assert f"local MAX_INT = {MAX_EXACT_INT} " in lua
    literal = re.compile(r"2\s*\*\*\s*53|9007199254740991")
    sources = [p for p in (ROOT / "compozy_nb").rglob("*.py") if literal.search(p.read_text(encoding="utf-8"))]
    assert [p.relative_to(ROOT).as_posix() for p in sources] == ["compozy_nb/limits.py"]


def test_every_subpackage_declares_what_it_offers() -> None:
    """Each subpackage's ``__all__`` names its public modules or objects, and each one imports; a subpackage that
    lists modules lists every public one."""
    import importlib

    for init in sorted((ROOT / "compozy_nb").glob("*/__init__.py")):
        name = f"compozy_nb.{init.parent.name}"
        package = importlib.import_module(name)
        names = getattr(package, "__all__", None)
        assert names, f"{name} has no __all__"
        modules = {p.stem for p in init.parent.glob("*.py") if not p.stem.startswith("_")}
        for item in names:
            assert hasattr(package, item) or importlib.import_module(f"{name}.{item}"), (name, item)
        if set(names) & modules:
            assert set(names) == modules, (name, sorted(modules - set(names)))


def test_no_test_module_imports_another() -> None:
    """A test module imported from another works only when pytest happened to collect its folder first (a run of
    one folder fails): shared cases live in tests/*.py helpers (``from tests.hostile_cases import …``)."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.match(r"\s*(from|import)\s+test_\w+", line)
    ]
    assert offenders == []
