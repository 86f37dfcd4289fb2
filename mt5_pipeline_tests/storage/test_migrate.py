"""Schema and migrations on both backends; URL normalisation."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from mt5_pipeline.storage import migrate
from mt5_pipeline.storage.engine import get_engine, normalize_url, psycopg_conninfo, redact
from mt5_pipeline.storage.schema import metadata


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql://u@h:5432/db", "postgresql+psycopg2://u@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///./data/mt5.db", "sqlite:///./data/mt5.db"),
    ],
)
def test_urls_are_normalised_in_one_place(url, expected):
    assert normalize_url(url) == expected


def test_conninfo_and_redaction():
    assert psycopg_conninfo("postgresql+psycopg2://u:pw@h/db") == "postgresql://u:pw@h/db"
    assert "pw" not in redact("postgresql://u:pw@h/db")


def test_migrations_create_every_table_and_twice_is_a_no_op(db_url):
    engine = get_engine(db_url)
    assert migrate.is_up_to_date(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"candles", "features_m1", "signals_queue", "signals_ack", "model_registry"} <= tables
    again = migrate.upgrade(db_url)
    assert again.before == again.after == migrate.head_revision()
    assert "already at" in again.describe()


def test_migrations_match_the_schema_module(db_url):
    engine = get_engine(db_url)
    with engine.connect() as conn:
        # Only our tables: Dagster's storage may share the database (as in production).
        ours = {"include_name": lambda name, kind, _parent: kind != "table" or name in metadata.tables}
        context = MigrationContext.configure(
            conn, opts={"compare_type": False, "version_table": migrate.VERSION_TABLE, **ours}
        )
        diffs = compare_metadata(context, metadata)
    assert diffs == []


def test_indexes_fit_the_queries(db_url):
    insp = inspect(get_engine(db_url))
    assert insp.get_pk_constraint("candles")["constrained_columns"] == ["symbol", "timeframe", "ts"]
    queue_indexes = {ix["name"] for ix in insp.get_indexes("signals_queue")}
    assert "ix_signals_queue_pending" in queue_indexes
    one_per_bar = [ix for ix in insp.get_indexes("signals_queue") if ix["name"] == "uq_signals_queue_bar"]
    assert one_per_bar and one_per_bar[0]["unique"] and one_per_bar[0]["column_names"] == ["symbol", "timeframe", "ts"]
    uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("signals_queue")}
    assert ("symbol", "timeframe", "ts", "model_version") not in uniques


def test_migration_0003_keeps_old_duplicate_signals_but_sends_only_the_first(db_url):
    """Two signals for one bar from two model versions, stored before 0003: both rows stay,
    the later one is superseded and (being PENDING) EXPIRED, and the bar is then closed to
    a third."""
    import datetime as dt
    import json

    from alembic import command

    from mt5_pipeline.signals import queue
    from mt5_pipeline.storage.schema import signals_queue

    url = db_url
    engine = get_engine(url)
    with engine.begin() as conn:  # back to the schema as it was before 0003
        config = migrate.alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0002")
    bar = dt.datetime(2025, 10, 25, 11, 29, tzinfo=dt.timezone.utc)
    now = bar + dt.timedelta(seconds=65)
    with engine.begin() as conn:
        for i, (side, version) in enumerate((("SELL", "v1"), ("BUY", "v2"), ("BUY", "v1"))):
            ts = bar if i < 2 else bar - dt.timedelta(minutes=1)
            conn.execute(
                signals_queue.insert().values(
                    signal_id=f"sig-{i}",
                    symbol="EURUSD",
                    timeframe="M1",
                    ts=ts,
                    side=side,
                    confidence=0.6,
                    probability=0.6,
                    sl_pips=20,
                    tp_pips=40,
                    price=1.1,
                    model="rf_m1",
                    model_version=version,
                    status="PENDING",
                    meta=json.dumps({"model": "rf_m1", "model_version": version, "probability": 0.6}),
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    expires_at=now + dt.timedelta(hours=1),
                )
            )
    migrate.upgrade(url)
    rows = {sid: queue.get_signal(url, sid) for sid in ("sig-0", "sig-1", "sig-2")}
    assert rows["sig-0"]["status"] == "PENDING" and not rows["sig-0"]["superseded"]
    assert (
        rows["sig-1"]["status"] == "EXPIRED"
        and rows["sig-1"]["superseded"]
        and "superseded" in rows["sig-1"]["last_error"]
    )
    assert rows["sig-2"]["status"] == "PENDING" and not rows["sig-2"]["superseded"]
    assert [s.signal_id for s in queue.pending_for_pull(url, now=now)] == ["sig-0", "sig-2"]
    assert queue.find_bar_signal(url, "EURUSD", "M1", bar).signal_id == "sig-0"


def test_upgrade_reports_plain_table_without_timescaledb(pg_url):
    result = migrate.upgrade(pg_url)
    assert "plain table" in result.candles_storage or "hypertable" in result.candles_storage


def test_our_alembic_history_leaves_dagsters_alone(db_url):
    from sqlalchemy import text

    engine = get_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    assert migrate.VERSION_TABLE in tables
    if "alembic_version" in tables:  # Dagster's PostgreSQL storage, sharing the database
        with engine.connect() as conn:
            theirs = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
        assert not theirs & {"0001", "0002"}


def test_upgrade_from_empty_on_a_new_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'new.db'}"
    result = migrate.upgrade(url)
    assert result.before is None and result.after == migrate.head_revision()
    assert "SQLite" in result.candles_storage


def test_a_pooled_connection_killed_while_idle_is_replaced_before_use(pg_url, monkeypatch):
    """No pre-ping on every checkout, but one after idle: a backend killed while its
    connection sat in the pool (a database restart) does not cost the next request."""
    from sqlalchemy import text

    from mt5_pipeline.storage import engine as engines

    engines.dispose_engines()
    engine = engines.get_engine(pg_url)
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with engines.make_engine(pg_url).connect() as admin:
        assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
        admin.commit()
    monkeypatch.setattr(engines, "PING_AFTER_IDLE_SECONDS", 0.0)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
    # Back within the idle limit, the connection is used as it is (no ping round trip).
    monkeypatch.setattr(engines, "PING_AFTER_IDLE_SECONDS", 3600.0)
    pings = []
    monkeypatch.setattr(engine.dialect, "do_ping", lambda dbapi_conn: pings.append(1) or True)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert pings == []
    engines.dispose_engines()
