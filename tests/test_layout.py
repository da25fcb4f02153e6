"""The layout stays as the architecture says: no import cycle in the package, a small engine facade, short modules,
and nothing outside the engine's own modules reaching into its private parts."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "templora_memory"


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Package modules `path` imports anywhere (lazy and TYPE_CHECKING imports count too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules and m != name and m != "templora_memory"}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules along it, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_package_has_no_import_cycle():
    assert _cycle(_graph()) is None


def test_a_cycle_would_be_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_engine_is_a_small_facade_and_no_module_is_long():
    tree = ast.parse((PACKAGE / "engine.py").read_text())
    engine = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MemoryEngine")
    assert engine.end_lineno - engine.lineno + 1 <= 300
    long = {p.name: n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert not long


def test_nothing_outside_the_engine_uses_its_private_parts():
    outside = [*ROOT.glob("benchmarks/*.py"), *ROOT.glob("integrations/**/*.py"), *ROOT.glob("examples/*.py")]
    private = re.compile(r"engine\._[a-z]|\.bank\.active\(|state\.(kv|job)\b")
    offenders = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in outside
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert not offenders


def test_benchmarks_and_integrations_install_inside_the_namespace_only():
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(name.startswith("templora_memory") for name in setuptools["packages"])
    assert setuptools["package-dir"]["templora_memory.integrations"] == "integrations"
    assert not (PACKAGE / "bench").exists() and (ROOT / "benchmarks" / "__main__.py").exists()
