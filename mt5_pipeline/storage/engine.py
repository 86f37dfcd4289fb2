"""Database URLs and engines: the one place a `DATABASE_URL` is interpreted.

SQLAlchemy 2.1 maps a bare ``postgresql://`` URL to psycopg 3, while the project's
declared driver is psycopg2. Every URL goes through :func:`normalize_url`, so
``postgresql://``, ``postgres://``, ``postgresql+psycopg2://`` and ``sqlite:///`` all work.
Bulk paths (COPY) use psycopg 3 on a raw connection from :func:`psycopg_conninfo`.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

# A pooled connection idle longer than this is pinged before use (a database restart or a
# dropped socket must not cost the next request); one back within it is used as is.
PING_AFTER_IDLE_SECONDS = 5.0


@functools.lru_cache(maxsize=64)
def normalize_url(url: str) -> str:
    """Return the URL with an explicit driver: psycopg2 for PostgreSQL, pysqlite for SQLite.

    Cached: every storage call passes through here, and parsing a URL cost the live path
    about a millisecond per bar.
    """
    parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername in ("postgresql", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    elif backend not in ("postgresql", "sqlite"):
        raise ValueError(f"DATABASE_URL: unsupported database {backend!r}; use postgresql:// or sqlite:///")
    return parsed.render_as_string(hide_password=False)


def is_postgres(url_or_engine: str | Engine) -> bool:
    if isinstance(url_or_engine, Engine):
        return url_or_engine.url.get_backend_name() == "postgresql"
    return _backend(url_or_engine) == "postgresql"


@functools.lru_cache(maxsize=64)
def _backend(url: str) -> str:
    return make_url(normalize_url(url)).get_backend_name()


def redact(url: str) -> str:
    """The URL with its password masked, for logs and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def psycopg_conninfo(url: str) -> str:
    """A libpq connection string (for psycopg 3's COPY) from a SQLAlchemy PostgreSQL URL."""
    parsed = make_url(normalize_url(url))
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: object) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the API read while the pusher or Dagster writes; the busy timeout makes
    # a writer wait for the lock instead of failing at once.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def make_engine(url: str) -> Engine:
    """A new engine for the URL (creating the SQLite file's folder if needed)."""
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        pool_size=5,
        max_overflow=10,
        connect_args={"connect_timeout": 5, "application_name": "mt5-pipeline"},
    )
    event.listen(engine.pool, "checkin", _stamp_checkin)
    event.listen(engine.pool, "checkout", functools.partial(_ping_if_idle, engine.dialect))
    return engine


def _stamp_checkin(_dbapi_conn: object, record: ConnectionPoolEntry | None) -> None:
    if record is not None:
        record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dialect: Dialect, dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry, _proxy: object) -> None:
    """SQLAlchemy's pre-ping, only for a connection idle past PING_AFTER_IDLE_SECONDS.

    ``pool_pre_ping`` pings on every checkout: on the live path, a dozen checkouts per bar,
    each a round trip. A connection checked in moments ago was working moments ago; one
    that sat idle is the one a database restart may have killed. A failed ping raises
    DisconnectionError, on which the pool discards the connection and opens a new one.
    """
    idle_since = record.info.get("checked_in_at")
    if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
        return
    try:
        dialect.do_ping(dbapi_conn)
    except Exception as error:
        raise exc.DisconnectionError(
            f"pooled connection idle for {time.monotonic() - idle_since:.0f} s failed its ping"
        ) from error


def get_engine(url: str) -> Engine:
    """The process-wide engine for a URL (one pool per database per process)."""
    key = normalize_url(url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(key)
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (after fork, and in tests that drop databases)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def autocommit(conn: Connection) -> Iterator[Any]:
    """A driver cursor on ``conn`` (PostgreSQL, no transaction begun on it) in autocommit:
    one round trip a call to ``execute``. Through SQLAlchemy a write is four (psycopg2's
    BEGIN, the statement, anything set before it, COMMIT) and a read three (the pool's
    ROLLBACK at check-in); on the paths every bar and every signal takes, that was most of
    their wait. Several statements in one ``execute`` run as one implicit transaction:
    committed together after the last, or rolled back together on an error. Errors come
    out as SQLAlchemy's (``OperationalError``, ``IntegrityError``...), and a connection the
    server dropped leaves the pool, as SQLAlchemy's own execution would have it.
    """
    driver: Any = conn.connection.driver_connection
    if conn.in_transaction():  # autocommit cannot be set inside one, and its work is not ours to end
        raise RuntimeError("statements in autocommit run as their own transaction: on a connection with none begun")
    errors = conn.dialect.loaded_dbapi.Error
    driver.autocommit = True
    cursor = driver.cursor()
    try:
        yield cursor
    except errors as error:
        if conn.dialect.is_disconnect(error, driver, cursor):
            conn.invalidate()
        query = cursor.query.decode(errors="replace")[:1000] if getattr(cursor, "query", None) else ""
        raise exc.DBAPIError.instance(query, None, error, errors) from error
    finally:
        if not cursor.closed:
            cursor.close()
        if not driver.closed:
            driver.autocommit = False


@contextmanager
def autocommit_cursor(database_url: str) -> Iterator[Any]:
    """:func:`autocommit` on a pooled connection of ``database_url``'s engine."""
    with get_engine(database_url).connect() as conn, autocommit(conn) as cursor:
        yield cursor
