"""Where PostgreSQL and SQLite differ, storage decides: checked on the source.

No module of mt5_pipeline/ outside mt5_pipeline/storage/ asks which database it is on
(``is_postgres``, ``dialect.name``, a comparison with "postgresql"), imports a dialect
or a driver (``sqlalchemy.dialects``, psycopg2, psycopg), passes a ``dialect=`` hint, or
writes PostgreSQL-only SQL (``pg_*()`` functions, COPY, SET LOCAL, LISTEN/NOTIFY). Read
with `ast`, so a lazy import inside a function counts too; docstrings are prose, not SQL.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mt5_pipeline_tests import ROOT

PACKAGE = ROOT / "mt5_pipeline"
STORAGE = PACKAGE / "storage"

# (module, finding) -> why it may stay outside storage.
ALLOWED = {
    (
        "mt5_pipeline/api/errors.py",
        "imports psycopg2",
    ): "the API shell (another change's) maps a lost connection to 503 by the drivers' exception classes",
    ("mt5_pipeline/api/errors.py", "imports psycopg"): "the same outage check, for psycopg 3",
}

DRIVERS = ("psycopg2", "psycopg")
BACKEND_NAMES = {"postgresql", "postgres", "sqlite"}
POSTGRES_SQL = (
    re.compile(r"\bpg_[a-z_]+\s*\("),
    re.compile(r"\bCOPY\b.*\b(?:STDIN|STDOUT)\b", re.DOTALL),
    re.compile(r"^\s*(?:SET LOCAL|LISTEN|NOTIFY)\b"),
)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                ids.add(id(first.value))
    return ids


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return []


def dialect_decisions(source: str) -> set[str]:
    """What in `source` depends on the database kind, one phrase per kind of finding."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        for name in _imported(node):
            if name == "sqlalchemy.dialects" or name.startswith("sqlalchemy.dialects."):
                found.add("imports sqlalchemy.dialects")
            for driver in DRIVERS:
                if name == driver or name.startswith(driver + "."):
                    found.add(f"imports {driver}")
            if name.endswith(".is_postgres"):
                found.add("imports is_postgres")
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if called == "is_postgres":
                found.add("calls is_postgres")
            if called == "get_backend_name":
                found.add("calls get_backend_name")
            if any(k.arg == "dialect" and isinstance(k.value, ast.Constant) for k in node.keywords):
                found.add("passes a dialect= hint")
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "name"
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "dialect"
        ):
            found.add("reads dialect.name")
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in BACKEND_NAMES for o in operands):
                found.add("compares with a backend name")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if any(p.search(node.value) for p in POSTGRES_SQL):
                found.add("writes PostgreSQL-only SQL")
    return found


def _modules(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def _outside_storage() -> list[Path]:
    return [p for p in _modules(PACKAGE) if STORAGE not in p.parents]


@pytest.mark.parametrize("path", _outside_storage(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_outside_storage_decides_by_database(path):
    rel = str(path.relative_to(ROOT))
    found = {f for f in dialect_decisions(path.read_text()) if (rel, f) not in ALLOWED}
    assert not found, (
        f"{rel}: {sorted(found)}; move the difference into mt5_pipeline/storage/ (e.g. storage/dialect.py)"
    )


def test_every_allowance_is_still_needed():
    for (rel, finding), reason in ALLOWED.items():
        assert reason
        assert finding in dialect_decisions((ROOT / rel).read_text()), (
            f"{rel} no longer {finding}: drop it from ALLOWED"
        )


def test_the_check_sees_every_kind_of_decision():
    # A guard for the guard: each form is caught in a sample, and storage/ really holds
    # such code (so the walk reads the modules it should).
    sample = '''
"""A docstring may say COPY ... FROM STDIN and pg_notify(): prose."""
import psycopg2
from psycopg import sql
from sqlalchemy.dialects.postgresql import insert
from mt5_pipeline.storage.engine import is_postgres

def f(conn, url, cte, cur):
    if is_postgres(url) or conn.dialect.name == "x" or url.get_backend_name() == "sqlite":
        cte.prefix_with("MATERIALIZED", dialect="postgresql")
        cur.execute("SELECT pg_advisory_lock(1)")
        cur.execute("COPY t FROM STDIN (FORMAT BINARY)")
        cur.execute("SET LOCAL synchronous_commit TO OFF")
'''
    assert dialect_decisions(sample) == {
        "imports psycopg2",
        "imports psycopg",
        "imports sqlalchemy.dialects",
        "imports is_postgres",
        "calls is_postgres",
        "reads dialect.name",
        "calls get_backend_name",
        "compares with a backend name",
        "passes a dialect= hint",
        "writes PostgreSQL-only SQL",
    }
    assert (
        dialect_decisions(
            '"""LISTEN/NOTIFY wakes the worker; COPY ... TO STDOUT."""\nlog = ", woken by LISTEN/NOTIFY"\n'
        )
        == set()
    )

    in_storage = set().union(*(dialect_decisions(p.read_text()) for p in _modules(STORAGE)))
    assert {
        "calls is_postgres",
        "reads dialect.name",
        "imports sqlalchemy.dialects",
        "imports psycopg2",
        "writes PostgreSQL-only SQL",
    } <= in_storage
    names = {str(p.relative_to(ROOT)) for p in _outside_storage()}
    assert {
        "mt5_pipeline/learning/features.py",
        "mt5_pipeline/signals/queue.py",
        "mt5_pipeline/market/ingest.py",
        "mt5_pipeline/api/errors.py",
    } <= names
