"""The shape of the code (docs/architecture.md): the library never imports the jobs, the jobs' modules
import each other without a loop, and no module outgrows one concept (about 400 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("img2pose_core", "jobs", "benchmarks")
MAX_LINES = 400


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool = False, package: str | None = None) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved); with
    ``top_level_only``, only those imported when the module itself is imported (not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if package is None:
        package = _name(path) if path.name == "__init__.py" else _name(path).rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            found |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return found


def test_the_library_never_imports_the_jobs():
    offenders = {
        _name(p): sorted(n for n in _imports(p) if n == "jobs" or n.startswith("jobs."))
        for p in _modules("img2pose_core")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, offenders


def test_the_check_sees_a_dynamic_import(tmp_path):
    """Negative control: importlib.import_module("jobs.x") and a relative import are both seen."""
    module = tmp_path / "m.py"
    module.write_text("import importlib\nfrom .sibling import thing\ndef f():\n    importlib.import_module('jobs.annotate')\n")
    names = _imports(module, package="img2pose_core.cli")
    assert "jobs.annotate" in names and "img2pose_core.cli.sibling.thing" in names


def _jobs_graph() -> dict[str, set[str]]:
    modules = {_name(p): p for p in _modules("jobs")}
    return {name: {n for n in _imports(path, top_level_only=True) if n in modules and n != name}
            for name, path in modules.items()}  # fmt: skip


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_jobs_import_each_other_without_a_loop():
    graph = _jobs_graph()
    assert "jobs.run" in graph and graph["jobs.run"], "the graph was not read"
    assert _cycle(graph) is None, _cycle(graph)
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check can fail


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_outgrows_one_concept(package):
    long = {str(p.relative_to(ROOT)): n for p in _modules(package)
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}  # fmt: skip
    assert not long, f"over {MAX_LINES} lines: {long}"
