"""The live worker's one-round-trip read gives what the three reads it replaces give."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd

from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline.storage.candles import candles_stamped_since, newest_two_bars
from mt5_pipeline.storage.series_snapshot import read_snapshot, stamp_digest
from mt5_pipeline.storage.symbols import instrument, record_instrument


def _times(frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(frame["time"] if "time" in frame else frame["ts"], utc=True)


def test_the_snapshot_is_the_three_reads(db_url):
    bars = generate_candles(40, seed=7, with_weekends=False).reset_index(drop=True)
    ts = _times(bars)
    first = ts.iloc[29].to_pydatetime() + timedelta(seconds=61)
    ingest_candles(db_url, "XAUUSD", "M1", bars.iloc[:30], now=first, max_jump=None)
    later = ts.iloc[39].to_pydatetime() + timedelta(seconds=61)
    ingest_candles(db_url, "XAUUSD", "M1", bars.iloc[30:], now=later, max_jump=None)
    record_instrument(db_url, "XAUUSD", 2, 0.01)
    ingest_candles(db_url, "EURUSD", "M1", bars.iloc[:3], now=first, max_jump=None)  # another series

    for since in (None, later - timedelta(seconds=1), first - timedelta(hours=1), later + timedelta(hours=1)):
        snapshot = read_snapshot(db_url, "XAUUSD", "M1", since)
        assert snapshot.newest == newest_two_bars(db_url, "XAUUSD", "M1")
        assert snapshot.instrument == instrument(db_url, "XAUUSD") == (2, 0.01)
        if since is None:
            assert snapshot.recent is None
        else:
            assert snapshot.recent == candles_stamped_since(db_url, "XAUUSD", "M1", since)
    assert [r[0] for r in read_snapshot(db_url, "XAUUSD", "M1", later - timedelta(seconds=1)).recent or []] == [
        t.to_pydatetime() for t in ts.iloc[30:]
    ]
    # Times are aware UTC, the newest first, as the ready rule reads them.
    newest = read_snapshot(db_url, "XAUUSD", "M1", None).newest
    assert [n[0] for n in newest] == [ts.iloc[39].to_pydatetime(), ts.iloc[38].to_pydatetime()]
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for pair in newest for t in pair)


def test_a_series_without_bars_or_instrument(db_url):
    since = datetime(2026, 1, 1, tzinfo=timezone.utc)
    snapshot = read_snapshot(db_url, "US30", "M1", since)
    assert snapshot.newest == [] and snapshot.recent == [] and snapshot.instrument is None
    bars = generate_candles(1, seed=1, with_weekends=False).reset_index(drop=True)
    ingest_candles(db_url, "US30", "M1", bars, now=_times(bars).iloc[0].to_pydatetime() + timedelta(seconds=61))
    snapshot = read_snapshot(db_url, "US30", "M1", None)
    assert len(snapshot.newest) == 1 and snapshot.instrument is None  # one bar, never described


def test_bars_the_tail_knows_come_as_a_digest(db_url):
    bars = generate_candles(12, seed=3, with_weekends=False).reset_index(drop=True)
    ts = _times(bars)
    now = ts.iloc[11].to_pydatetime() + timedelta(seconds=61, microseconds=999_999)  # every digit counts
    ingest_candles(db_url, "USDJPY", "M1", bars, now=now, max_jump=None)
    since = now - timedelta(hours=1)
    known = ts.iloc[8].to_pydatetime()
    full = candles_stamped_since(db_url, "USDJPY", "M1", since)
    snapshot = read_snapshot(db_url, "USDJPY", "M1", since, known=known)
    if db_url.startswith("sqlite"):  # one process, no wire: every stamped bar, whole
        assert snapshot.recent == full and snapshot.known is None
        return
    # After the tail's end the bars whole; at or before it, only a digest of (open, stamp).
    assert snapshot.recent == [r for r in full if r[0] > known]
    seen = [(r[0], r[-1]) for r in full if r[0] <= known]
    assert len(seen) == 9 and snapshot.known == stamp_digest(seen)
    # A bar re-sent (a correction: a new stamp) changes the digest; the other bars' pairs
    # digest the same as before.
    later = now + timedelta(seconds=5, microseconds=3)
    resent = bars.iloc[[4]].assign(tick_volume=bars["tick_volume"].iloc[4] + 1)
    ingest_candles(db_url, "USDJPY", "M1", resent, now=later)
    again = read_snapshot(db_url, "USDJPY", "M1", since, known=known)
    assert again.known != snapshot.known and again.known is not None and again.known.bars == 9
    restamped = {(r[0], r[-1]) for r in candles_stamped_since(db_url, "USDJPY", "M1", since) if r[0] <= known}
    assert again.known == stamp_digest(sorted(restamped)) and again.recent == snapshot.recent
    # Nothing stamped since: an empty digest, not a missing one.
    empty = read_snapshot(db_url, "USDJPY", "M1", later + timedelta(hours=1), known=known)
    assert empty.recent == [] and empty.known == stamp_digest([])
    assert read_snapshot(db_url, "USDJPY", "M1", since).known is None  # no split asked


def test_the_digest_tells_sets_apart():
    t0 = datetime(2026, 3, 29, 0, 59, tzinfo=timezone.utc)
    pairs = [(t0 + timedelta(minutes=i), t0 + timedelta(minutes=i + 1, microseconds=17 * i)) for i in range(600)]
    base = stamp_digest(pairs)
    assert stamp_digest(reversed(pairs)) == base  # a set: order does not matter
    moved = [*pairs[:10], (pairs[10][0], pairs[10][1] + timedelta(microseconds=1)), *pairs[11:]]
    swapped = [*pairs[:10], (pairs[10][0], pairs[11][1]), (pairs[11][0], pairs[10][1]), *pairs[12:]]
    assert len({base, stamp_digest(moved), stamp_digest(swapped), stamp_digest(pairs[1:])}) == 4
    assert all(0 <= v < 2**53 for v in base)  # exact in float8, as it travels
