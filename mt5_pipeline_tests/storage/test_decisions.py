"""The live_decisions rows a worker pass stores read back as given, on both backends."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from mt5_pipeline.storage import decisions
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import live_decisions

AT = datetime(2026, 3, 2, 10, 0, 5, 123456, tzinfo=timezone.utc)


def _row(symbol: str, bar: datetime | None, status: str, **extra: object) -> dict:
    row = {
        "symbol": symbol, "timeframe": "M1", "bar": bar, "status": status, "message": "it's 'quoted' %s",
        "probability": None, "confidence": None, "signal_id": None, "side": None, "feature_rows": 0,
        "feature_path": "", "trigger": "notify", "worker": "host:1:abc", "seconds": 0.0021, "decided_at": AT,
    }  # fmt: skip
    row.update(extra)
    return row


def test_a_pass_is_stored_as_given_and_read_back_by_the_takeover(db_url):
    bar = AT.replace(second=0, microsecond=0) - timedelta(minutes=1)
    rows = [
        _row("XAUUSD", bar, "queued", probability=0.61, confidence=0.61, signal_id="s-1", side="BUY",
             feature_rows=1, feature_path="tail"),
        _row("USDJPY", bar - timedelta(minutes=1), "neutral", probability=0.5),
        _row("US30", None, "no_model"),
    ]  # fmt: skip
    decisions.record(db_url, rows)
    decisions.record(db_url, [])
    with get_engine(db_url).connect() as conn:
        stored = [dict(r._mapping) for r in conn.execute(select(live_decisions).order_by(live_decisions.c.id))]
    assert [{k: r[k] for k in rows[0]} for r in stored] == rows
    newest = decisions.newest_decided(db_url, [("XAUUSD", "M1"), ("USDJPY", "M1"), ("US30", "M1")], now=AT,
                                      within=timedelta(hours=1))  # fmt: skip
    assert newest == {("XAUUSD", "M1"): bar, ("USDJPY", "M1"): bar - timedelta(minutes=1)}
