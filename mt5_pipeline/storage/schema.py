"""The tables, defined once (SQLAlchemy Core). Alembic migrations create them; a test
checks that the migrations and this module agree.

Times are timezone-aware UTC everywhere. On SQLite they are stored as ISO text by
SQLAlchemy, so always compare through these column objects, never with raw strings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

from mt5_pipeline.clock import as_utc

metadata = MetaData()


def partial_index(name: str, *columns: str, where: str, unique: bool = False) -> Index:
    """An index over the rows `where` holds, on PostgreSQL and SQLite alike."""
    return Index(name, *columns, unique=unique, postgresql_where=text(where), sqlite_where=text(where))


# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def series_key() -> tuple[Column, Column]:
    """The primary key of a per-series table: the symbol and the timeframe."""
    return Column("symbol", String(32), primary_key=True), Column("timeframe", String(4), primary_key=True)


def flag(name: str, comment: str | None = None, *, server_default: ColumnElement[Any] | None = None) -> Column:
    """A NOT NULL boolean, false unless set. ``server_default`` is for the flags whose migration
    wrote the default as ``false()`` (0 on SQLite) rather than the literal ``false``."""
    default = text("false") if server_default is None else server_default
    return Column(name, Boolean, nullable=False, server_default=default, comment=comment)


def surrogate_id() -> Column:
    """An auto-incremented BIGINT primary key (INTEGER on SQLite)."""
    return Column("id", BigId, primary_key=True, autoincrement=True)


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC in and out, on both backends.

    SQLite keeps no offset, so a naive value read back is UTC by construction; an aware
    value going in is converted to UTC first. A naive value going in is taken as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


Double = Float(precision=53)

SIGNAL_STATUSES = ("PENDING", "SENT", "ACKED", "FAILED", "EXPIRED", "REJECTED")

candles = Table(
    "candles",
    metadata,
    *series_key(),
    Column("ts", UtcDateTime, primary_key=True, comment="bar open time, UTC (MT5's bar time)"),
    Column("open", Double, nullable=False),
    Column("high", Double, nullable=False),
    Column("low", Double, nullable=False),
    Column("close", Double, nullable=False),
    Column("tick_volume", BigInteger, nullable=False, server_default="0"),
    Column("spread", Integer, nullable=False, server_default="0", comment="in points, as MT5 gives it"),
    Column("real_volume", BigInteger, nullable=False, server_default="0"),
    Column("ingested_at", UtcDateTime, nullable=False, comment="set on insert and whenever a re-sent bar changes"),
    # The primary key (symbol, timeframe, ts) serves "newest bar per symbol" and "a time
    # range per symbol". This one finds bars changed since the features last ran.
    Index("ix_candles_symbol_tf_ingested_at", "symbol", "timeframe", "ingested_at"),
)

# Bars per series, kept by the ingest core in the transaction that changes them (under
# the series lock), so nothing on a request path or sensor tick counts the candles table.
candle_series = Table(
    "candle_series",
    metadata,
    *series_key(),
    Column("bars", BigInteger, nullable=False, server_default="0", comment="bars stored, kept by the ingest core"),
)

# What the EA says about an instrument (optional `digits` / `point` in POST /ingest):
# where a pip is known without guessing (mt5_pipeline.market.pips).
# How the bars of a series were converted from the trade server's clock: runs of bars
# (first_ts..last_ts, UTC epoch seconds) stored with one UTC offset. A bar re-sent with
# another offset is refused (mt5_pipeline.server_time, ingest): it would otherwise land
# an hour off, on top of a bar converted correctly. Runs, not a column per bar: a zone
# changes its offset twice a year, so a series holds a few rows per year.
candle_offsets = Table(
    "candle_offsets",
    metadata,
    *series_key(),
    Column("first_ts", BigInteger, primary_key=True, comment="UTC epoch seconds of the run's first bar"),
    Column("last_ts", BigInteger, nullable=False, comment="UTC epoch seconds of the run's last bar"),
    Column("utc_offset_s", Integer, nullable=False, comment="server time minus UTC, seconds, for every bar in the run"),
)

symbols = Table(
    "symbols",
    metadata,
    Column("symbol", String(32), primary_key=True),
    Column("digits", Integer, nullable=True, comment="MT5 SYMBOL_DIGITS: decimals of a quote"),
    Column("point", Double, nullable=True, comment="MT5 SYMBOL_POINT: smallest price step"),
    Column("updated_at", UtcDateTime, nullable=False),
)

# Feature set: see mt5_pipeline/learning/features.py (FEATURE_SET_NAME / FEATURE_SET_VERSION).
FEATURE_COLUMNS = (
    "ret_1",
    "ret_5",
    "ret_10",
    "ma_5_ratio",
    "ma_10_ratio",
    "ma_20_ratio",
    "ma_50_ratio",
    "std_5",
    "std_10",
    "std_20",
    "rsi_14",
    "vol_ratio",
    "range_ratio",
    "hour",
    "dow",
)
RAW_LEVEL_COLUMNS = ("close", "ma_5", "ma_10", "ma_20", "ma_50", "volume_ema_20")

features_m1 = Table(
    "features_m1",
    metadata,
    Column("symbol", String(32), primary_key=True),
    Column("timeframe", String(4), primary_key=True, server_default="M1"),
    Column("ts", UtcDateTime, primary_key=True),
    *(Column(name, Double, nullable=True) for name in RAW_LEVEL_COLUMNS),
    *(Column(name, Double, nullable=True) for name in FEATURE_COLUMNS),
    flag("after_gap", "first bars after a gap longer than the limit"),
    flag("usable", "every window full and past warm-up"),
    Column("feature_set_version", String(32), nullable=False),
    Column(
        "source_ingested_at",
        UtcDateTime,
        nullable=False,
        comment="the candle's ingested_at when these features were computed",
    ),
    Column("computed_at", UtcDateTime, nullable=False),
)

signals_queue = Table(
    "signals_queue",
    metadata,
    surrogate_id(),
    Column("signal_id", String(36), nullable=False, unique=True),
    Column("symbol", String(32), nullable=False),
    Column("timeframe", String(4), nullable=False),
    Column("ts", UtcDateTime, nullable=False, comment="the bar's open time"),
    Column("side", String(4), nullable=False),
    Column("confidence", Double, nullable=False),
    Column("probability", Double, nullable=False),
    Column("sl_pips", Double, nullable=False),
    Column("tp_pips", Double, nullable=False),
    Column("price", Double, nullable=False),
    Column("model", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("meta", Text, nullable=False, server_default="{}", comment="JSON sent to the EA as meta"),
    Column("status", String(10), nullable=False, server_default="PENDING"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("sent_at", UtcDateTime, nullable=True),
    Column("acked_at", UtcDateTime, nullable=True),
    Column("ticket", BigInteger, nullable=True),
    Column("claim_token", String(36), nullable=True, comment="who holds the lease; the final update must match it"),
    Column("lease_until", UtcDateTime, nullable=True),
    flag(
        "superseded",
        "a second signal for a bar, kept from before one-signal-per-bar (migration 0003); never sent",
        server_default=false(),
    ),
    # One signal per bar whatever the model version, enforced by the database: a retrain
    # mid-bar, or the live worker and a Dagster run racing, can never queue a second one.
    partial_index("uq_signals_queue_bar", "symbol", "timeframe", "ts", where="NOT superseded", unique=True),
    # The claim scans pending rows oldest first; a partial index keeps that fast when
    # millions of delivered rows sit in the table.
    partial_index("ix_signals_queue_pending", "id", where="status = 'PENDING'"),
    Index("ix_signals_queue_status_created", "status", "created_at"),
    # The claim's "is an earlier row of this symbol waiting?" probe (migration 0004).
    partial_index("ix_signals_queue_pending_symbol", "symbol", "id", where="status = 'PENDING'"),
)

signals_ack = Table(
    "signals_ack",
    metadata,
    surrogate_id(),
    Column("signal_id", String(36), nullable=False, unique=True),
    Column("ticket", BigInteger, nullable=True),
    Column("status", String(20), nullable=False),
    Column("message", Text, nullable=False, server_default=""),
    Column("acked_at", UtcDateTime, nullable=False),
    Index("ix_signals_ack_acked_at", "acked_at"),
)

model_registry = Table(
    "model_registry",
    metadata,
    surrogate_id(),
    Column("model", String(64), nullable=False),
    Column("version", String(64), nullable=False, unique=True),
    Column("path", Text, nullable=False),
    Column("trained_at", UtcDateTime, nullable=False),
    Column("symbols", Text, nullable=False, comment="JSON list"),
    Column("train_start", UtcDateTime, nullable=True),
    Column("train_end", UtcDateTime, nullable=True),
    Column("rows", BigInteger, nullable=False),
    Column("feature_set_version", String(32), nullable=False),
    Column("label_mode", String(20), nullable=False),
    Column("metrics", Text, nullable=False, comment="JSON"),
    Column("data_hash", String(64), nullable=False),
    flag("is_current"),  # the champion: what rf_<tf>.pkl holds
    # Champion/challenger (migration 0006): every retrain leaves a row, see mt5_pipeline/learning/model_registry.py.
    Column("timeframe", String(4), nullable=False, server_default="M1"),
    Column("kind", String(32), nullable=False, server_default="random_forest"),
    Column(
        "decision",
        String(10),
        nullable=False,
        server_default="promoted",
        comment="promoted, forced, rejected or failed",
    ),
    Column("reason", Text, nullable=False, server_default=""),
    Column(
        "scores",
        Text,
        nullable=False,
        server_default="{}",
        comment="JSON: candidate and champion on the same window, with the baselines",
    ),
    Column("champion_version", String(64), nullable=True, comment="the champion the candidate was compared with"),
    Index("ix_model_registry_model_trained_at", "model", "trained_at"),
    Index("ix_model_registry_model_decision", "model", "decision"),
)

# The pusher's view of the EA, shared by every pusher (worker, API, Dagster run) through
# the database: a circuit breaker while the EA fails every request, and the reason a
# configuration error (401/403/404/405/415) stopped delivery, for /health, /metrics and
# the push sensor, which run in other processes. One row per EA URL. mt5_pipeline.delivery.breaker.
ea_delivery_state = Table(
    "ea_delivery_state",
    metadata,
    Column("ea", String(512), primary_key=True, comment="the EA signals URL, without user info"),
    Column("state", String(10), nullable=False, server_default="closed", comment="closed | outage | config"),
    Column("failures", Integer, nullable=False, server_default="0", comment="failed requests in a row"),
    Column("probe_at", UtcDateTime, nullable=True, comment="when one pusher may try the EA again"),
    Column("suspect_id", BigInteger, nullable=True, comment="signals_queue.id whose failure opened the breaker"),
    Column("status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("opened_at", UtcDateTime, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
)

# Positions the signals opened, as the bridge or the MQL5 EA reports them from the
# terminal's deals history (POST /ea/trades; mt5_pipeline/storage/trades.py). One row per
# position ticket: the open report inserts it, the close report completes it, a repeat
# changes nothing. Kept even when the signal is unknown (flagged), never dropped.
TRADE_EXIT_REASONS = ("sl", "tp", "time", "opposite_signal", "manual")  # execution_policy.EXIT_REASONS

trades = Table(
    "trades",
    metadata,
    surrogate_id(),
    Column(
        "ticket",
        BigInteger,
        nullable=False,
        unique=True,
        comment="the terminal's position ticket (POSITION_IDENTIFIER)",
    ),
    Column("signal_id", String(36), nullable=True, comment="the signal that opened it, as the reporter knows it"),
    flag(
        "unknown_signal",
        "no such signal in signals_queue (opened by hand, or a lost link): kept and flagged",
        server_default=false(),
    ),
    Column("model_version", String(64), nullable=True, comment="from the signal, when it is known"),
    Column("account", BigInteger, nullable=True, comment="the trading account (login)"),
    Column("magic", BigInteger, nullable=True),
    Column("symbol", String(32), nullable=False),
    Column("timeframe", String(4), nullable=True, comment="from the signal when known, else as reported"),
    Column("side", String(4), nullable=False, comment="BUY or SELL"),
    Column("volume", Double, nullable=False, comment="lots"),
    Column("open_time", UtcDateTime, nullable=False),
    Column("open_price", Double, nullable=False),
    Column("sl", Double, nullable=True),
    Column("tp", Double, nullable=True),
    Column("close_time", UtcDateTime, nullable=True, comment="null while the position is open"),
    Column("close_price", Double, nullable=True),
    Column("exit_reason", String(16), nullable=True, comment="sl, tp, time, opposite_signal or manual"),
    Column(
        "profit",
        Double,
        nullable=True,
        comment="in the account currency, before swap and commission (MT5's DEAL_PROFIT)",
    ),
    Column(
        "pips",
        Double,
        nullable=True,
        comment="(close - open) x side / pip size: the fills' prices, so the spread is paid",
    ),
    Column("swap", Double, nullable=False, server_default="0"),
    Column("commission", Double, nullable=False, server_default="0"),
    Column("pip_size", Double, nullable=True, comment="the price size of the pip used for pips"),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ix_trades_signal_id", "signal_id"),
    # Open positions (reconciliation, /health, /metrics) and a timeframe's closed trades (live performance).
    partial_index("ix_trades_open", "magic", "ticket", where="close_time IS NULL"),
    Index("ix_trades_timeframe_close_time", "timeframe", "close_time"),
)

# The last reconciliation of the terminal's positions with the open trades, per
# (account, magic): what /health and /metrics show. The bridge runs it (POST /ea/reconcile).
reconciliation_state = Table(
    "reconciliation_state",
    metadata,
    Column("account", BigInteger, primary_key=True, comment="0 when the reporter did not say"),
    Column("magic", BigInteger, primary_key=True),
    Column("checked_at", UtcDateTime, nullable=False),
    Column("terminal_positions", Integer, nullable=False, server_default="0"),
    Column(
        "unknown_positions",
        Integer,
        nullable=False,
        server_default="0",
        comment="in the terminal, not open in trades (recorded now)",
    ),
    Column(
        "missing_positions",
        Integer,
        nullable=False,
        server_default="0",
        comment="open in trades, gone from the terminal (its close is to be reported)",
    ),
    Column("detail", Text, nullable=False, server_default="{}", comment="JSON: the tickets of each kind"),
)

# Live workers on one host or several share the series through leases (mt5_pipeline.signals.series_leases).
live_workers = Table(
    "live_workers",
    metadata,
    Column("worker", String(128), primary_key=True, comment="host:pid:random, one per live worker process"),
    Column("started_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False, comment="the worker is gone once this passes without a renewal"),
)

live_leases = Table(
    "live_leases",
    metadata,
    *series_key(),
    Column(
        "worker", String(128), nullable=True, index=True, comment="the live worker deciding this series; NULL: free"
    ),
    Column("expires_at", UtcDateTime, nullable=False, comment="free for another worker once this passes"),
    Column("acquired_at", UtcDateTime, nullable=True),
)

# What the live worker decided per bar: the Dagster sensor turns these rows into run-less
# asset events (features_m1 and signals per symbol partition), so the record costs no run.
live_decisions = Table(
    "live_decisions",
    metadata,
    surrogate_id(),
    Column("symbol", String(32), nullable=False),
    Column("timeframe", String(4), nullable=False),
    Column("bar", UtcDateTime, nullable=True, comment="the bar decided (open time)"),
    Column("status", String(24), nullable=False, comment="generate_signal's status, or no_features / no_model"),
    Column("message", Text, nullable=False, server_default=""),
    Column("probability", Float, nullable=True),
    Column("confidence", Float, nullable=True),
    Column("signal_id", String(36), nullable=True),
    Column("side", String(4), nullable=True),
    Column(
        "feature_rows", Integer, nullable=False, server_default="0", comment="feature rows written for this decision"
    ),
    Column("feature_path", String(8), nullable=False, server_default="", comment="tail (one row from memory) or batch"),
    Column("trigger", String(10), nullable=False, server_default=""),
    Column("worker", String(128), nullable=False, server_default=""),
    Column("seconds", Float, nullable=False, server_default="0"),
    Column("decided_at", UtcDateTime, nullable=False),
    Index("ix_live_decisions_decided_at", "decided_at"),
)
