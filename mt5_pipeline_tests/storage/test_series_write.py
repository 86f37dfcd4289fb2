"""series_write: a small batch's path on PostgreSQL (every read in one request, plain
statements) ends exactly where the COPY path and the SQLite path do.

Random sequences of ingests of 1-3 bars -- new bars, re-sent ones (identical or
changed), price jumps, bars converted with another offset, partial or not, digits and
point sent or not -- are run three ways: PostgreSQL's small path, its COPY path
(SMALL_BATCH = 0) and SQLite's separate statements. Each step's answer or refusal, the
NOTIFY sent, and at the end every stored row must agree.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from select import select as wait_readable
from typing import Any

import psycopg2
import pytest
from sqlalchemy import select

from mt5_pipeline.market.ingest import CandleValidationError, ingest_candles
from mt5_pipeline.storage import series_write
from mt5_pipeline.storage.candle_batch import CANDLES_CHANNEL
from mt5_pipeline.storage.engine import get_engine, psycopg_conninfo
from mt5_pipeline.storage.schema import candle_offsets, candle_series, candles, symbols

T0 = int(datetime(2024, 3, 4, 0, 0, tzinfo=timezone.utc).timestamp())
ZONES = ("UTC+2", "UTC+3")


def _steps(seed: int, n: int = 40) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    steps, newest, level = [], 0, 1.1
    for _ in range(n):
        bars = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            i = max(0, newest + rng.choice((-2, -1, 0, 1, 1, 1, 2)))
            level *= 1 + rng.gauss(0, 1e-3)
            price = level * (rng.choice((1, 1, 1, 1, 1, 1, 1, 50)))  # now and then a bad tick
            o, c = round(price, 5), round(price * (1 + rng.gauss(0, 1e-4)), 5)
            bar = {
                "time": T0 + 60 * i,
                "open": o,
                "high": max(o, c) + rng.choice((0.0, 1e-5)),
                "low": min(o, c) - rng.choice((0.0, 1e-5, -0.5)),  # now and then low above the body: invalid
                "close": c,
                "tick_volume": rng.randrange(0, 5),
                "spread": rng.randrange(0, 3),
            }
            bars.append(bar)
            newest = max(newest, i)
        step: dict[str, Any] = {"candles": bars, "partial": rng.random() < 0.5, "max_jump": rng.choice((10.0, None))}
        if rng.random() < 0.5:
            zone = rng.choice(ZONES) if rng.random() < 0.2 else ZONES[0]
            shift = 3600 * int(zone[-1])
            step["candles"] = [{**b, "time": b["time"] + shift} for b in bars]
            step["server_time_zone"] = zone
        if rng.random() < 0.5:
            step["digits"], step["point"] = rng.choice(((5, 0.00001), (3, None), (None, 0.001)))
        steps.append(step)
    return steps


def _run(url: str, symbol: str, steps: list[dict[str, Any]], listen: Any) -> list[Any]:
    out: list[Any] = []
    for k, step in enumerate(steps):
        now = datetime.fromtimestamp(T0, timezone.utc) + timedelta(hours=2, seconds=k)
        kwargs = {key: v for key, v in step.items() if key != "candles"}
        try:
            result = ingest_candles(url, symbol, "M1", step["candles"], now=now, **kwargs)
            out.append(result)
        except CandleValidationError as exc:
            out.append(("refused", exc.errors, exc.total))
    if listen is not None:  # every NOTIFY, in commit order (delivered asynchronously: wait until quiet)
        while wait_readable([listen], [], [], 1.0)[0]:
            listen.poll()
        out.append([n.payload.replace(symbol, "S") for n in listen.notifies])
        listen.notifies.clear()
    return out


def _rows(url: str, symbol: str, *, stamps: bool) -> dict[str, list[tuple]]:
    tables = {"candles": candles, "candle_series": candle_series, "candle_offsets": candle_offsets}
    with get_engine(url).connect() as conn:
        found = {
            name: sorted(
                tuple(v for key, v in r._mapping.items() if key != "symbol" and (stamps or key != "ingested_at"))
                for r in conn.execute(select(t).where(t.c.symbol == symbol))
            )
            for name, t in tables.items()
        }
        found["symbols"] = [
            tuple(r) for r in conn.execute(select(symbols.c.digits, symbols.c.point).where(symbols.c.symbol == symbol))
        ]
    return found


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_small_path_agrees_with_the_copy_path_and_sqlite(pg_url, sqlite_url, monkeypatch, seed):
    steps = _steps(seed)
    listen = psycopg2.connect(psycopg_conninfo(pg_url))
    listen.autocommit = True
    listen.cursor().execute(f"LISTEN {CANDLES_CHANNEL}")
    try:
        small = _run(pg_url, "SMALL", steps, listen)
        monkeypatch.setattr(series_write, "SMALL_BATCH", 0)
        copy = _run(pg_url, "COPY", steps, listen)
    finally:
        listen.close()
    on_sqlite = _run(sqlite_url, "LITE", steps, None)

    assert small == copy
    assert small[:-1] == on_sqlite
    assert len(small[-1]) > 10  # the NOTIFYs
    assert any(isinstance(r, tuple) for r in small)  # some steps were refused
    assert any(getattr(r, "updated", 0) for r in small)  # and some replaced a stored bar
    assert any(getattr(r, "rejected", 0) for r in small)  # and some partial ones dropped rows
    assert _rows(pg_url, "SMALL", stamps=True) == _rows(pg_url, "COPY", stamps=True)
    assert _rows(pg_url, "SMALL", stamps=False) == _rows(sqlite_url, "LITE", stamps=False)
    assert _rows(pg_url, "SMALL", stamps=False)["candle_offsets"]  # the offsets were recorded


def test_a_refused_batch_leaves_nothing_behind(pg_url):
    bar = {"time": T0, "open": 1.1, "high": 1.2, "low": 1.0, "close": 1.1, "tick_volume": 1}
    now = datetime.fromtimestamp(T0 + 3600, timezone.utc)
    history = [{**bar, "time": T0 + 60 * i} for i in range(11)]
    ingest_candles(pg_url, "EURUSD", "M1", history, now=now, server_time_zone="UTC+2")
    jump = {**bar, "time": T0 + 60 * 11, "open": 100.0, "high": 100.0, "low": 100.0, "close": 100.0}
    before = _rows(pg_url, "EURUSD", stamps=True)
    with pytest.raises(CandleValidationError):
        ingest_candles(pg_url, "EURUSD", "M1", [jump], now=now, digits=3, point=0.001)
    assert _rows(pg_url, "EURUSD", stamps=True) == before  # nor the instrument, nor the offsets
