"""Every statement on the trades and reconciliation_state tables.

One row per position ticket. The merge rule, kept here with the statements so no caller
can bypass it: a report fills in what it knows and never takes back what is recorded:
a close is never undone by a late open report, a field the report leaves out (None)
keeps its stored value, and a report equal to the row changes nothing (not even
``updated_at``), so a repeated report is a no-op.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.engine import Connection, RowMapping

from mt5_pipeline.clock import as_utc
from mt5_pipeline.storage.dialect import insert_on_conflict
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import reconciliation_state, signals_queue, trades

# Columns a report may set; the rest (id, created_at, updated_at) are the table's.
REPORT_COLUMNS = (
    "ticket", "signal_id", "unknown_signal", "model_version", "account", "magic", "symbol", "timeframe", "side",
    "volume", "open_time", "open_price", "sl", "tp", "close_time", "close_price", "exit_reason", "profit", "pips",
    "swap", "commission", "pip_size",
)  # fmt: skip
_CLOSE_COLUMNS = ("close_time", "close_price", "exit_reason", "profit", "pips")


def signal_links(conn: Connection, signal_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """model_version, timeframe, symbol and meta (parsed) of each known signal_id."""
    ids = sorted({s for s in signal_ids if s})
    if not ids:
        return {}
    q = signals_queue.c
    rows = conn.execute(
        select(q.signal_id, q.model_version, q.timeframe, q.symbol, q.meta).where(q.signal_id.in_(ids))
    ).all()
    out = {}
    for r in rows:
        try:
            meta = json.loads(r.meta or "{}")
        except ValueError:
            meta = {}
        out[r.signal_id] = {
            "model_version": r.model_version,
            "timeframe": r.timeframe,
            "symbol": r.symbol,
            "meta": meta,
        }
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, datetime) and isinstance(b, datetime):
        return as_utc(a) == as_utc(b)
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return a == b


def merge(stored: RowMapping | Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    """The columns to change on ``stored`` for ``report`` (empty: nothing to do)."""
    closed = stored.get("close_time") is not None
    changes: dict[str, Any] = {}
    for name in REPORT_COLUMNS:
        if name == "ticket" or name not in report:
            continue
        value = report[name]
        if value is None:
            continue  # not said by this report: what is recorded stays
        if closed and name in _CLOSE_COLUMNS and report.get("close_time") is None:
            continue  # an open report arriving after the close never reopens
        if name == "unknown_signal" and stored.get("signal_id") and not report.get("signal_id"):
            continue
        if not _same(stored.get(name), value):
            changes[name] = value
    return changes


def upsert_trades(
    database_url: str, reports: list[dict[str, Any]], *, now: datetime
) -> list[tuple[str, dict[str, Any]]]:
    """Record each report (a dict of REPORT_COLUMNS; ``ticket``, and for a new ticket
    ``symbol``, ``side``, ``volume``, ``open_time``, ``open_price``, are required).
    Returns (outcome, row after) per report, in order: inserted, updated or unchanged."""
    out: list[tuple[str, dict[str, Any]]] = []
    with get_engine(database_url).begin() as conn:
        for report in reports:
            values = {k: report[k] for k in REPORT_COLUMNS if k in report and report[k] is not None}
            inserted = conn.execute(
                insert_on_conflict(conn, trades)
                .values(**values, created_at=now, updated_at=now)
                .on_conflict_do_nothing(index_elements=["ticket"])
                .returning(trades.c.id)
            ).first()
            row = (
                conn.execute(select(trades).where(trades.c.ticket == report["ticket"]).with_for_update())
                .mappings()
                .one()
            )
            if inserted is not None:
                out.append(("inserted", dict(row)))
                continue
            changes = merge(row, report)
            if not changes:
                out.append(("unchanged", dict(row)))
                continue
            conn.execute(update(trades).where(trades.c.ticket == report["ticket"]).values(**changes, updated_at=now))
            out.append(("updated", {**dict(row), **changes, "updated_at": now}))
    return out


def get_trades(database_url: str, tickets: Iterable[int]) -> dict[int, dict[str, Any]]:
    ids = sorted(set(tickets))
    if not ids:
        return {}
    with get_engine(database_url).connect() as conn:
        return {r["ticket"]: dict(r) for r in conn.execute(select(trades).where(trades.c.ticket.in_(ids))).mappings()}


def open_trades(database_url: str, *, magic: int | None = None, account: int | None = None) -> list[dict[str, Any]]:
    """Trades without a close, oldest first; only ``magic`` / ``account`` when given."""
    t = trades.c
    q = select(trades).where(t.close_time.is_(None))
    if magic is not None:
        q = q.where(t.magic == magic)
    if account is not None:
        q = q.where((t.account == account) | t.account.is_(None))
    with get_engine(database_url).connect() as conn:
        return [dict(r) for r in conn.execute(q.order_by(t.open_time, t.ticket)).mappings()]


def closed_trades(database_url: str, *, timeframe: str | None = None) -> list[dict[str, Any]]:
    """Closed trades, by close time (the order they realised their result in)."""
    t = trades.c
    q = select(trades).where(t.close_time.is_not(None))
    if timeframe is not None:
        q = q.where(t.timeframe == timeframe)
    with get_engine(database_url).connect() as conn:
        return [dict(r) for r in conn.execute(q.order_by(t.close_time, t.ticket)).mappings()]


def position_figures(database_url: str) -> dict[str, dict[str, float]]:
    """Per symbol: open positions, and realised pips and profit of the closed ones."""
    t = trades.c
    is_open = t.close_time.is_(None)
    q = select(
        t.symbol,
        func.sum(case((is_open, 1), else_=0)).label("open"),
        func.count().label("trades"),
        func.coalesce(func.sum(case((is_open, None), else_=t.pips)), 0.0).label("pips"),
        func.coalesce(
            func.sum(case((is_open, None), else_=func.coalesce(t.profit, 0.0) + t.swap + t.commission)), 0.0
        ).label("profit"),
    ).group_by(t.symbol)
    with get_engine(database_url).connect() as conn:
        rows = conn.execute(q).all()
    return {
        r.symbol: {
            "open": float(r.open or 0),
            "closed": float(r.trades - (r.open or 0)),
            "pips": float(r.pips or 0),
            "profit": float(r.profit or 0),
        }
        for r in rows
    }


def record_reconciliation(
    database_url: str,
    *,
    account: int,
    magic: int,
    checked_at: datetime,
    terminal_positions: int,
    unknown: list[int],
    missing: list[int],
) -> None:
    values = {
        "checked_at": checked_at,
        "terminal_positions": terminal_positions,
        "unknown_positions": len(unknown),
        "missing_positions": len(missing),
        "detail": json.dumps({"unknown": unknown, "missing": missing}),
    }
    with get_engine(database_url).begin() as conn:
        stmt = insert_on_conflict(conn, reconciliation_state).values(account=account, magic=magic, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=["account", "magic"], set_=values))


def reconciliation_states(database_url: str) -> list[dict[str, Any]]:
    with get_engine(database_url).connect() as conn:
        rows = (
            conn.execute(
                select(reconciliation_state).order_by(reconciliation_state.c.account, reconciliation_state.c.magic)
            )
            .mappings()
            .all()
        )
    out = []
    for r in rows:
        row = dict(r)
        row["detail"] = json.loads(row.get("detail") or "{}")
        out.append(row)
    return out
