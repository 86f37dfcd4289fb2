"""newest_bars in constant time: series found by index walks, bars counted by the ingest core.

/health, /metrics and new_candles_sensor read newest_bars on every call; its figures must
not come from counting the candles table (1.1 s at 1M bars before). These tests pin the
figures; benchmarks/bench_health.py measures the time at 1M and 10M bars.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import insert, select, text

from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.storage import migrate
from mt5_pipeline.storage.candles import newest_bars
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import candle_series, candles

T0 = int(datetime(2024, 6, 3, 9, 0, tzinfo=timezone.utc).timestamp())
NOW = datetime(2024, 6, 3, 12, 0, tzinfo=timezone.utc)


def rows(n: int, start: int = 0, close: float = 1.1) -> list[dict]:
    return [
        {"time": T0 + 60 * i, "open": 1.1, "high": 1.2, "low": 1.0, "close": close, "tick_volume": 1}
        for i in range(start, start + n)
    ]


def counted(url: str) -> dict[tuple[str, str], int]:
    with get_engine(url).connect() as conn:
        return {(r.symbol, r.timeframe): r.bars for r in conn.execute(select(candle_series))}


def test_ingest_keeps_the_bar_count_per_series(db_url):
    ingest_candles(db_url, "EURUSD", "M1", rows(10), now=NOW)
    ingest_candles(db_url, "EURUSD", "M1", rows(10, start=5), now=NOW)  # 5 stored again, 5 new
    ingest_candles(db_url, "EURUSD", "M1", rows(3, close=1.15), now=NOW)  # corrections: no new bar
    ingest_candles(db_url, "GBPUSD", "M1", rows(4), now=NOW)
    ingest_candles(db_url, "EURUSD", "M1", [], now=NOW)
    assert counted(db_url) == {("EURUSD", "M1"): 15, ("GBPUSD", "M1"): 4}
    figures = {(b["symbol"], b["timeframe"]): b["bars"] for b in newest_bars(db_url)}
    assert figures == {("EURUSD", "M1"): 15, ("GBPUSD", "M1"): 4}


def test_concurrent_ingests_of_one_series_count_every_bar(pg_url):
    import threading

    threads = [
        threading.Thread(
            target=ingest_candles, args=(pg_url, "EURUSD", "M1", rows(50, start=25 * k)), kwargs={"now": NOW}
        )
        for k in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with get_engine(pg_url).connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM candles")).scalar()
    assert stored == 175 and counted(pg_url) == {("EURUSD", "M1"): 175}


def test_a_series_written_around_the_ingest_core_is_still_reported(db_url):
    # Rows inserted directly (a manual fix, a restore): no candle_series row; counted then.
    with get_engine(db_url).begin() as conn:
        conn.execute(
            insert(candles),
            [
                {
                    "symbol": "XAUUSD",
                    "timeframe": "M1",
                    "ts": datetime.fromtimestamp(T0 + 60 * i, timezone.utc),
                    "open": 2000.0,
                    "high": 2001.0,
                    "low": 1999.0,
                    "close": 2000.5,
                    "tick_volume": 1,
                    "spread": 0,
                    "real_volume": 0,
                    "ingested_at": NOW,
                }
                for i in range(7)
            ],
        )
    (bar,) = newest_bars(db_url)
    assert (bar["symbol"], bar["bars"], bar["newest_ts"], bar["newest_ingested_at"]) == (
        "XAUUSD",
        7,
        datetime.fromtimestamp(T0 + 360, timezone.utc),
        NOW,
    )
    # Its first ingest counts what is there, then keeps counting.
    ingest_candles(
        db_url,
        "XAUUSD",
        "M1",
        [{"time": T0 + 420, "open": 2000.0, "high": 2001.0, "low": 1999.0, "close": 2000.5, "tick_volume": 1}],
        now=NOW,
    )
    assert counted(db_url) == {("XAUUSD", "M1"): 8}


def test_the_migration_counts_what_is_already_stored(db_url):
    ingest_candles(db_url, "EURUSD", "M1", rows(12), now=NOW)
    ingest_candles(
        db_url,
        "EURUSD",
        "M5",
        [{"time": T0, "open": 1.1, "high": 1.2, "low": 1.0, "close": 1.1, "tick_volume": 1}],
        now=NOW,
    )
    engine = get_engine(db_url)
    from alembic import command

    with engine.begin() as conn:  # back to before 0004 (which brought candle_series)
        config = migrate.alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
    migrate.upgrade(db_url)
    assert counted(db_url) == {("EURUSD", "M1"): 12, ("EURUSD", "M5"): 1}


def test_newest_bars_counts_nothing_and_scans_no_table(pg_url):
    """Executed plan: index probes only; the count fallback never runs when ingest kept the count."""
    for k in range(3):
        ingest_candles(pg_url, f"SYM{k}", "M1", rows(2000))
    from mt5_pipeline.storage.candles import _PG_SERIES, _PG_SERIES_STATS

    with get_engine(pg_url).connect() as conn:
        conn.execute(text("ANALYZE candles"))
        plan = [r[0] for r in conn.execute(text("EXPLAIN ANALYZE " + _PG_SERIES + _PG_SERIES_STATS))]
    executed = [line for line in plan if "never executed" not in line]
    assert float(plan[0].split("cost=")[1].split("..")[1].split()[0]) < 1000  # far below jit_above_cost (100,000)
    assert not [
        line for line in executed if "Seq Scan on candles " in line or "Bitmap Heap Scan on candles " in line
    ], "\n".join(plan)
    assert not [line for line in executed if "Aggregate" in line], "\n".join(plan)  # no count(*) ran
    assert [b["bars"] for b in newest_bars(pg_url)] == [2000, 2000, 2000]
