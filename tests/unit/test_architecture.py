"""The house rules of the import graph (DESIGN.md §2), read from the source: no circle in
``app``, imports that flow one way, and pure modules that touch no I/O library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "app"


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in APP.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports, at the top or inside a function. ``from pkg import
    sub`` counts as importing ``pkg.sub`` when that is a module."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


GRAPH = {name: {i for i in imports_of(name) if i in MODULES} for name in MODULES}


def test_no_import_circle_in_app() -> None:
    circles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for nxt in sorted(GRAPH[name]):
            if state.get(nxt) == "open":
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    # A package's __init__ re-exporting its own modules is not a circle of the design.
    real = [c for c in circles if not all(m.startswith(c[-1] + ".") or m == c[-1] for m in c)]
    assert real == []


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m.startswith("app.workers") or m == "app.cli")
)
def test_processes_and_cli_go_through_lifecycle(module: str) -> None:
    """Workers and the CLI loop, measure and dispatch: no repository, no model, no SQL."""
    forbidden = {
        i for i in imports_of(module) if i.startswith(("app.repositories", "app.db.models"))
    }
    assert forbidden == set()
    # Connection plumbing (the worker's LISTEN connection) is fine; SQL is not.
    plumbing = {"sqlalchemy.ext.asyncio", "sqlalchemy.pool"}
    assert {i for i in imports_of(module) if i.split(".")[0] == "sqlalchemy"} <= plumbing


@pytest.mark.parametrize("module", ["app.domain", "app.budget.policy", "app.budget.pricing"])
def test_pure_modules_import_no_io_library(module: str) -> None:
    io = {"sqlalchemy", "asyncpg", "redis", "httpx", "alembic", "psutil"}
    assert {i.split(".")[0] for i in imports_of(module)} & io == set()


def test_only_lifecycle_opens_transactions_in_app() -> None:
    """Repositories never commit; processes, the CLI and the demo never begin."""
    opened = {
        name
        for name, path in MODULES.items()
        if ".begin()" in path.read_text()
        and name not in {"app.lifecycle", "app.db.migrate", "app.db.engine"}
    }
    assert opened <= {"app.demo.fleet", "app.demo.audit"}  # seeding and auditing its own data
