"""The code's shape, checked on every run: short functions, no import cycle, no private name
imported across modules, imports at module top except the measured start-up cases, and no
pointer to a file outside this repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lowres"
MAX_LINES = 100
LONG_EXCEPTIONS = {"lowres.train.loop._train"}
"""The training loop (its definition says why it stays one function)."""

LAZY_IMPORTS = {
    "lowres.cli": "`lowres --help` and argument errors take 0.05 s instead of 1.7 s (torch)",
    "lowres.data.registry": "each dataset's loader (and its libraries) loads only when used",
}
"""Modules (and the packages' modules below them) allowed lowres imports inside function
bodies, and why (measured on this project's 2-core machine); every other module imports at its
top."""


def _lazy(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in LAZY_IMPORTS)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, tree: ast.Module):
    """(node, imported lowres module names, imported names) of every lowres import."""
    package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("lowres"):
                continue
            names = [a.name for a in node.names]
            subs = [f"{target}.{a}" for a in names if f"{target}.{a}" in MODULES]
            yield node, subs if len(subs) == len(names) else [target, *subs], names
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names if a.name.startswith("lowres")]
            if mods:
                yield node, mods, []


def _owner(module: str) -> str | None:
    while module not in MODULES and "." in module:
        module = module.rsplit(".", 1)[0]
    return module if module in MODULES else None


def test_no_function_over_100_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                qual = f"{name}.{node.name}"
                if lines > MAX_LINES and qual not in LONG_EXCEPTIONS:
                    long.append(f"{qual}: {lines} lines")
    assert not long, long


def test_no_import_cycle():
    graph: dict[str, set[str]] = {n: set() for n in MODULES}
    for name, path in MODULES.items():
        for _, targets, _ in _imports(name, ast.parse(path.read_text())):
            for target in targets:
                owner = _owner(target)
                if owner and owner != name:
                    graph[name].add(owner)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_no_private_name_imported_across_modules():
    bad = []
    for name, path in MODULES.items():
        for _, targets, names in _imports(name, ast.parse(path.read_text())):
            for n in names:
                if n.startswith("_") and n != "__version__" and f"{targets[0]}.{n}" not in MODULES:
                    bad.append(f"{name} imports {targets[0]}.{n}")
    assert not bad, bad


def test_imports_inside_functions_only_where_documented():
    bad = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node, _, _ in _imports(name, tree):
            if id(node) not in top and not _lazy(name):
                bad.append(f"{name}:{node.lineno}")
    assert not bad, f"import inside a function outside LAZY_IMPORTS: {bad}"


@pytest.mark.parametrize("folder", ["lowres", "tests", "benchmarks", "experiments"])
def test_no_reference_to_files_outside_the_repository(folder):
    pattern = re.compile(r"\.\./shared|PAPER\.md|FINDINGS\.md|DESIGN\.md|PEERS\.md")
    hits = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / folder).rglob("*"))
        if p.is_file()
        and p.suffix in {".py", ".toml", ".md", ".sh", ".txt"}
        and p.name != "test_shape.py"
        and pattern.search(p.read_text(encoding="utf-8", errors="replace"))
    ]
    assert not hits, hits
