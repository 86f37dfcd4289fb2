"""Trades come back: what the bridge or the MQL5 EA reports about each position, recorded
against the signal and model version that opened it (docs/trades.md).

- A report is keyed by the position's ticket. The open report inserts the trade, the
  close report completes the same row, a repeat changes nothing (``storage.trades``).
- The signal decides timeframe and model version; a report naming no signal, or one the
  queue does not know (opened by hand, a lost ack), is kept and flagged
  ``unknown_signal``: never dropped, and left out of the model's live performance.
- Pips are computed here, once, with the pip the signal carried (``meta.pip_size``) or
  the pipeline's pip rule: (close - open) x side / pip from the fill prices, so the
  spread is paid, as the backtest pays it. A reported ``pips`` is kept only when no pip
  is known here.
- Reconciliation: the bridge sends the terminal's positions carrying its magic; the
  differences with the open trades are returned and recorded (``reconciliation_state``)
  for /health and /metrics. A position the API did not know is recorded now (flagged if
  its signal is unknown); a trade the terminal no longer holds is returned as
  ``missing``: the bridge reports its close from the deals history. Nothing is closed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mt5_pipeline.clock import resolve_now
from mt5_pipeline.market.pips import PipSizeUnknown, pip_size_for
from mt5_pipeline.settings import Settings
from mt5_pipeline.storage import trades as store
from mt5_pipeline.storage.engine import get_engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    ticket: int
    outcome: str  # inserted, updated, unchanged
    status: str  # open, closed
    unknown_signal: bool
    trade: dict[str, Any]


def _pip(settings: Settings, symbol: str, link: Mapping[str, Any] | None) -> float | None:
    meta_pip = (link or {}).get("meta", {}).get("pip_size")
    if isinstance(meta_pip, int | float) and meta_pip > 0:
        return float(meta_pip)
    try:
        return pip_size_for(settings, None, symbol)
    except PipSizeUnknown:
        return None


def pips_of(side: str, open_price: float, close_price: float, pip: float) -> float:
    """Pips a trade made: positive when the price moved its way."""
    sign = 1.0 if side == "BUY" else -1.0
    return round(sign * (close_price - open_price) / pip, 6)


def record_trades(
    settings: Settings, reports: Iterable[Mapping[str, Any]], *, now: datetime | None = None
) -> list[Recorded]:
    """Record open and close reports (dicts with the trades table's column names).
    The reporter's ``timeframe`` and ``model_version`` give way to the signal's."""
    copies = [dict(r) for r in reports]
    now = resolve_now(now)
    with get_engine(settings.database_url).connect() as conn:
        links = store.signal_links(conn, (r.get("signal_id") or "" for r in copies))
    stored = store.get_trades(settings.database_url, (r["ticket"] for r in copies))
    rows = []
    for r in copies:
        link = links.get(r.get("signal_id") or "")
        previous = stored.get(r["ticket"], {})
        if link is not None:
            r["model_version"] = link["model_version"]
            r["timeframe"] = link["timeframe"]
            r["unknown_signal"] = False
        elif r.get("signal_id") or not previous.get("signal_id"):
            r["unknown_signal"] = True
            r.pop("model_version", None)  # only a known signal says which model traded
        symbol = r.get("symbol") or previous.get("symbol")
        pip = _pip(settings, symbol, link) if symbol else None
        side = r.get("side") or previous.get("side")
        open_price = r.get("open_price") if r.get("open_price") is not None else previous.get("open_price")
        if pip is not None and r.get("close_price") is not None and open_price is not None and side:
            r["pips"] = pips_of(side, float(open_price), float(r["close_price"]), pip)
            r["pip_size"] = pip
        elif pip is not None:
            r["pip_size"] = pip
        rows.append(r)
    out = []
    for report, (outcome, row) in zip(rows, store.upsert_trades(settings.database_url, rows, now=now), strict=True):
        if row.get("unknown_signal") and outcome == "inserted":
            log.warning("trade %s: signal %r unknown; recorded and flagged", row["ticket"], report.get("signal_id"))
        out.append(
            Recorded(
                int(row["ticket"]),
                outcome,
                "closed" if row.get("close_time") is not None else "open",
                bool(row.get("unknown_signal")),
                row,
            )
        )
    return out


def open_trades(settings: Settings, *, magic: int | None = None, account: int | None = None) -> list[dict[str, Any]]:
    return store.open_trades(settings.database_url, magic=magic, account=account)


@dataclass(frozen=True)
class Reconciliation:
    in_sync: bool
    terminal_positions: int
    unknown: list[int]  # in the terminal, not open here: recorded now
    missing: list[int]  # open here, gone from the terminal: the bridge reports their close
    recorded: list[Recorded]


def reconcile(
    settings: Settings,
    *,
    magic: int,
    account: int | None,
    positions: Iterable[Mapping[str, Any]],
    now: datetime | None = None,
) -> Reconciliation:
    """Compare the terminal's positions carrying ``magic`` with the open trades, record the
    unknown ones and the state; never closes anything."""
    now = resolve_now(now)
    held = {int(p["ticket"]): p for p in positions}
    open_here = {int(t["ticket"]) for t in store.open_trades(settings.database_url, magic=magic, account=account)}
    known = store.get_trades(settings.database_url, held)
    # A ticket the terminal holds that is recorded closed is not reopened: MT5 never reuses a
    # position ticket, so that close was reported in error, and a person should look.
    unknown = sorted(t for t in held if t not in known)
    missing = sorted(open_here - set(held))
    recorded = (
        record_trades(settings, [{**held[t], "magic": magic, "account": account} for t in unknown], now=now)
        if unknown
        else []
    )
    store.record_reconciliation(
        settings.database_url,
        account=account or 0,
        magic=magic,
        checked_at=now,
        terminal_positions=len(held),
        unknown=unknown,
        missing=missing,
    )
    if unknown or missing:
        log.warning(
            "reconciliation (magic %s): %d position(s) unknown to the API, %d open trade(s) gone from the terminal",
            magic,
            len(unknown),
            len(missing),
        )
    return Reconciliation(not unknown and not missing, len(held), unknown, missing, recorded)


def reconciliation_summary(settings: Settings) -> dict[str, Any]:
    """For /health: ``never`` (no bridge has reconciled), ``in_sync`` or ``differences``, with the counts."""
    states = store.reconciliation_states(settings.database_url)
    if not states:
        return {"state": "never", "checked_at": None, "unknown_positions": 0, "missing_positions": 0}
    unknown = sum(s["unknown_positions"] for s in states)
    missing = sum(s["missing_positions"] for s in states)
    return {
        "state": "in_sync" if not unknown and not missing else "differences",
        "checked_at": max(s["checked_at"] for s in states),
        "unknown_positions": unknown,
        "missing_positions": missing,
    }
