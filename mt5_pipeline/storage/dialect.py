"""Portable forms of the statements PostgreSQL and SQLite spell differently.

Modules above storage write their SQL once, with these, and never ask which database
they are on: the difference is decided here, when a statement runs or compiles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, CTE, FromClause, Table, bindparam, cast, column, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable
from sqlalchemy.types import TypeEngine

from mt5_pipeline.clock import as_utc
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
        """As :meth:`execute`, as its own transaction on ``conn`` (none begun on it), like a
        :class:`DriverStatement`: on PostgreSQL one round trip (values bound as given, no
        bind types applied); on SQLite :meth:`execute` in a transaction committed at once."""
        if not _on_postgres(conn):
            with _own_transaction(conn):
                return [tuple(row) for row in self.execute(conn, build, rows)]
        driver = self._driver
        if driver is None:
            driver = self._driver = DriverStatement(build(self._rows(True)))
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in self.types]
        return driver.run(conn, {f"{self.name}_{n}": list(v) for n, v in zip(self.types, columns, strict=True)})


# Sent ahead of the statement in its string (DriverStatement's ``no_commit_flush``).
_NO_COMMIT_FLUSH = "SET LOCAL synchronous_commit TO OFF; "


@contextmanager
def _own_transaction(conn: Connection) -> Iterator[None]:
    """A transaction on ``conn`` (SQLite), committed at the end: the counterpart of
    PostgreSQL's autocommitted string, with the same refusal of a transaction begun."""
    if conn.in_transaction():  # its work is not ours to commit
        raise RuntimeError("statements in autocommit run as their own transaction: on a connection with none begun")
    with conn.begin():
        yield


class DriverStatement:
    """A statement on the path of every signal, run as its own transaction.

    PostgreSQL: compiled once to the driver's SQL and sent in ONE round trip on an
    autocommit cursor: the string is one implicit transaction that commits as it ends, so
    a write costs one round trip instead of four (BEGIN, a SET, the statement, COMMIT), and
    no SQLAlchemy execution machinery runs per call. The rows come back as the driver gives
    them (no result types applied: callers normalise what they read, e.g. times to UTC).

    SQLite: the same statement through ``conn`` in a transaction committed at once
    (in-process calls: nothing to save), result types applied.

    ``no_commit_flush``: the commit does not wait for the WAL flush (PostgreSQL), for
    writes a crash may lose because they are redone anyway, on a path where the flush is
    latency; SQLite already runs with ``synchronous=NORMAL``.
    """

    def __init__(self, statement: Executable, *, no_commit_flush: bool = False) -> None:
        self.statement = statement
        compiled = statement.compile(dialect=postgresql.psycopg2.dialect())  # type: ignore[attr-defined,no-untyped-call]
        self.sql = (_NO_COMMIT_FLUSH if no_commit_flush else "") + str(compiled)
        # Literals in the statement are anonymous bound parameters, with their values here.
        self.defaults = dict(compiled.params)

    def run(self, conn: Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run on ``conn`` (no transaction begun on it) as its own transaction; the rows it
        returns, as tuples."""
        return self._run(conn, params)[0]

    def rowcount(self, conn: Connection, params: dict[str, Any]) -> int:
        """As :meth:`run`; the rows it changed."""
        return self._run(conn, params)[1]

    def _run(self, conn: Connection, params: dict[str, Any]) -> tuple[list[tuple[Any, ...]], int]:
        if not _on_postgres(conn):
            with _own_transaction(conn):
                result = conn.execute(self.statement, params)
                return ([tuple(row) for row in result] if result.returns_rows else []), result.rowcount
        with autocommit(conn) as cur:
            cur.execute(self.sql, {**self.defaults, **params})
            return (cur.fetchall() if cur.description is not None else []), cur.rowcount


# Positional ``%s`` placeholders, so a batch's parameters are one flat list (no dict of
# names per value on the hot path).
_POSITIONAL = postgresql.psycopg2.dialect(paramstyle="format")  # type: ignore[no-untyped-call]


class RowsInsert:
    """An INSERT of any number of rows as ONE statement of PostgreSQL's driver SQL, for the
    paths that send their statements themselves (in one round trip, or in one string with
    what commits with them): ``INSERT ... VALUES (%s, ...), (%s, ...) [ON CONFLICT ...]
    [RETURNING ...]``.

    ``build`` finishes the one-row INSERT of ``table`` it is given (an ON CONFLICT clause,
    RETURNING, a statement around it as a CTE); SQLAlchemy compiles that once per column
    list, and the row's ``VALUES (...)`` is repeated for the row count (cached). Values
    are bound as given, but datetimes as aware UTC (as the tables' UtcDateTime binds them).
    """

    def __init__(self, table: Table, build: Callable[[postgresql.Insert], ClauseElement] | None = None) -> None:
        self.table = table
        self.build = build
        self._forms: dict[tuple[str, ...], _RowsForm] = {}

    def render(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], **named: Any) -> tuple[str, list[Any]]:
        """The statement for ``rows`` (values in the order of ``columns``) and its flat
        parameters; ``named``: the values of the statement's other bound parameters."""
        if not rows:
            raise ValueError("an INSERT of no rows")
        key = tuple(columns)
        form = self._forms.get(key)
        if form is None:
            form = self._forms[key] = _RowsForm(self.table, key, self.build)
        return form.sql(len(rows)), form.params(rows, named)


class _RowsForm:
    """:class:`RowsInsert` for one column list."""

    def __init__(
        self, table: Table, columns: tuple[str, ...], build: Callable[[postgresql.Insert], ClauseElement] | None
    ) -> None:
        binds = {c: f"_row_{c}" for c in columns}
        one_row = postgresql.insert(table).values({c: bindparam(b) for c, b in binds.items()})
        compiled = (build(one_row) if build is not None else one_row).compile(dialect=_POSITIONAL)
        assert isinstance(compiled, SQLCompiler)
        names: list[str] = list(compiled.positiontup or [])
        # The compiler writes the columns in the table's order: where each value goes.
        in_sql = [n for n in names if n in binds.values()]
        if sorted(in_sql) != sorted(binds.values()):
            raise ValueError(f"{table.name}: the INSERT does not take exactly the columns {list(columns)}")
        first = names.index(in_sql[0])
        if names[first : first + len(in_sql)] != in_sql:
            raise ValueError(f"{table.name}: the row's values are not one VALUES group")
        self.row = "(" + ", ".join(["%s"] * len(columns)) + ")"
        self.text = str(compiled)
        if self.text.count("VALUES " + self.row) != 1:
            raise ValueError(f"{table.name}: no single VALUES {self.row} to repeat in {self.text!r}")
        position = {b: i for i, b in enumerate(binds.values())}
        self.order = [position[n] for n in in_sql]
        self.before = names[:first]
        self.after = names[first + len(in_sql) :]
        # The statement's literals (anonymous bound parameters); a named one must be given.
        self.fixed = {n: compiled.params[n] for n in (*self.before, *self.after) if not compiled.binds[n].required}
        self._sql: dict[int, str] = {}

    def sql(self, count: int) -> str:
        text = self._sql.get(count)
        if text is None:
            text = self._sql[count] = self.text.replace("VALUES " + self.row, "VALUES " + ", ".join([self.row] * count))
        return text

    def params(self, rows: Sequence[Sequence[Any]], named: dict[str, Any]) -> list[Any]:
        def value(name: str) -> Any:
            return named[name] if name in named else self.fixed[name]

        out = [value(n) for n in self.before]
        order = self.order
        for row in rows:
            for i in order:
                v = row[i]
                out.append(as_utc(v) if isinstance(v, datetime) else v)
        out += [value(n) for n in self.after]
        return out
