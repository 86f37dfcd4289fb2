"""Portable forms of the statements PostgreSQL and SQLite spell differently.

Modules above storage write their SQL once, with these, and never ask which database
they are on: the difference is decided here, when a statement runs or compiles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ARRAY, CTE, FromClause, Table, bindparam, cast, column, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql.expression import Executable
from sqlalchemy.types import TypeEngine

from mt5_pipeline.storage.engine import autocommit


def _on_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def insert_on_conflict(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that takes ``on_conflict_do_nothing`` / ``on_conflict_do_update`` and
    ``.excluded``: both databases have the clause, SQLAlchemy builds it per dialect."""
    return (postgresql if _on_postgres(conn) else sqlite).insert(table)


def materialized(cte: CTE) -> CTE:
    """The CTE computed once, never inlined into each use (PostgreSQL 12+ may inline a CTE
    used once; SQLite has no such hint and needs none for these)."""
    return cte.prefix_with("MATERIALIZED", dialect="postgresql")


def skip_commit_flush(conn: Connection) -> None:
    """This transaction's commit does not wait for the WAL flush (PostgreSQL): for writes a
    crash may lose because they are redone anyway, on a path where the flush is latency.
    SQLite already runs with ``synchronous=NORMAL`` (see :mod:`mt5_pipeline.storage.engine`)."""
    if _on_postgres(conn):
        conn.execute(text("SET LOCAL synchronous_commit TO OFF"))


class RowsParameter:
    """Many rows bound to one statement as a FROM item, so a batch of per-row updates is
    written as one statement.

    PostgreSQL: one execution for the whole batch (each column one array, unnested), one
    round trip. SQLite has no arrays: one execution per row, in the same transaction
    (in-process calls, nothing to save).
    """

    def __init__(self, name: str, **types: TypeEngine) -> None:
        self.name = name
        self.types = types
        self._statements: dict[str, Executable] = {}
        self._driver: DriverStatement | None = None

    def _rows(self, on_postgres: bool) -> FromClause:
        if on_postgres:
            arrays = [cast(bindparam(f"{self.name}_{n}", type_=ARRAY(t)), ARRAY(t)) for n, t in self.types.items()]
            columns = [column(n, t) for n, t in self.types.items()]
            return func.unnest(*arrays).table_valued(*columns).render_derived(name=self.name)
        return select(*(bindparam(f"{self.name}_{n}", type_=t).label(n) for n, t in self.types.items())).subquery(
            self.name
        )

    def execute(
        self, conn: Connection, build: Callable[[FromClause], Executable], rows: Sequence[Sequence[Any]]
    ) -> Sequence[Row]:
        """Run ``build(rows_table)`` over `rows` (tuples in the order of the column types);
        the rows it returns. The statement is built once per database kind."""
        on_postgres = _on_postgres(conn)
        statement = self._statements.get(conn.dialect.name)
        if statement is None:
            statement = self._statements[conn.dialect.name] = build(self._rows(on_postgres))
        keys = [f"{self.name}_{n}" for n in self.types]
        if on_postgres:
            columns = list(zip(*rows, strict=True)) if rows else [() for _ in keys]
            return conn.execute(statement, {k: list(values) for k, values in zip(keys, columns, strict=True)}).all()
        out: list[Row] = []
        for row in rows:
            out += conn.execute(statement, dict(zip(keys, row, strict=True))).all()
        return out

    def run_in_one_round_trip(
        self, conn: Connection, build: Callable[[FromClause], Executable], rows: Sequence[Sequence[Any]]
    ) -> list[tuple[Any, ...]]:
        """PostgreSQL only: as :meth:`execute`, as a :class:`DriverStatement` (one round
        trip, its own transaction; values bound as given, no bind types applied)."""
        driver = self._driver
        if driver is None:
            driver = self._driver = DriverStatement(build(self._rows(True)))
        columns = list(zip(*rows, strict=True))
        return driver.run(conn, {f"{self.name}_{n}": list(v) for n, v in zip(self.types, columns, strict=True)})


class DriverStatement:
    """A statement compiled once to PostgreSQL's driver SQL, run in ONE round trip.

    ``prefix`` (e.g. ``SET LOCAL ...;``) is sent in the same string. Autocommit makes the
    string one implicit transaction that commits as it ends, so a write costs one round
    trip instead of four (BEGIN, prefix, statement, COMMIT), and no SQLAlchemy execution
    machinery runs per call. For the statements on the path of every signal; the rows come
    back as the driver gives them (no result types applied).
    """

    def __init__(self, statement: Executable, prefix: str = "") -> None:
        compiled = statement.compile(dialect=postgresql.psycopg2.dialect())  # type: ignore[attr-defined,no-untyped-call]
        self.sql = prefix + str(compiled)
        # Literals in the statement are anonymous bound parameters, with their values here.
        self.defaults = dict(compiled.params)

    def run(self, conn: Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run on ``conn`` (PostgreSQL, no transaction begun on it) with autocommit on; the
        rows it returns."""
        return self._run(conn, params)[0]

    def rowcount(self, conn: Connection, params: dict[str, Any]) -> int:
        """As :meth:`run`; the rows it changed."""
        return self._run(conn, params)[1]

    def _run(self, conn: Connection, params: dict[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        with autocommit(conn) as cur:
            cur.execute(self.sql, {**self.defaults, **params})
            return (cur.fetchall() if cur.description is not None else []), cur.rowcount
