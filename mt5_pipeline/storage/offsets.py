"""Which UTC offset each run of a series' stored bars was converted with (``candle_offsets``).

The ingest core reads the runs before storing a batch (a bar inside a run of another
offset is refused) and records the batch's runs after, merged with their neighbours so a
series keeps a few rows per year. On PostgreSQL the check, the candle upsert and the
record are one transaction under the series lock
(:mod:`mt5_pipeline.storage.series_write`). On SQLite the record is serialised by the
single writer, but check and record are two short transactions around the candle
upsert, so two clients racing on one bar with two offsets are not caught there (a bridge
and an EA feeding one series with different zones: a set-up error).
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import delete, insert, select, text

from mt5_pipeline.storage.engine import get_engine, is_postgres
from mt5_pipeline.storage.schema import candle_offsets

Run = tuple[int, int, int]  # (first_ts, last_ts, utc_offset_s), epoch seconds


def offset_runs(database_url: str, symbol: str, timeframe: str) -> list[Run]:
    """The series' runs, oldest first."""
    o = candle_offsets.c
    with get_engine(database_url).connect() as conn:
        rows = conn.execute(
            select(o.first_ts, o.last_ts, o.utc_offset_s)
            .where(o.symbol == symbol, o.timeframe == timeframe)
            .order_by(o.first_ts)
        ).all()
    return [(int(a), int(b), int(c)) for a, b, c in rows]


def stored_offsets(runs: list[Run], ts: np.ndarray) -> np.ndarray:
    """Per bar time: the offset its stored bar was converted with, or a sentinel (no record)."""
    out = np.full(len(ts), NO_RECORD, dtype=np.int64)
    if not runs or not len(ts):
        return out
    firsts = np.array([r[0] for r in runs], dtype=np.int64)
    lasts = np.array([r[1] for r in runs], dtype=np.int64)
    offsets = np.array([r[2] for r in runs], dtype=np.int64)
    idx = np.searchsorted(firsts, ts, side="right") - 1
    inside = (idx >= 0) & (ts <= lasts[np.maximum(idx, 0)])
    out[inside] = offsets[idx[inside]]
    return out


NO_RECORD = np.iinfo(np.int64).min


def batch_runs(runs: list[Run], ts: np.ndarray, offsets: np.ndarray) -> list[Run]:
    """Runs of a sorted batch, cut where the offset changes or a stored run lies between two bars."""
    if not len(ts):
        return []
    firsts = np.array([r[0] for r in runs] or [np.iinfo(np.int64).max], dtype=np.int64)
    before = np.searchsorted(firsts, ts, side="right")
    cut = np.flatnonzero((np.diff(offsets) != 0) | (np.diff(before) != 0)) + 1
    starts = np.concatenate([[0], cut]).astype(np.int64)
    ends = np.concatenate([cut - 1, [len(ts) - 1]]).astype(np.int64)
    return [(int(ts[a]), int(ts[b]), int(offsets[a])) for a, b in zip(starts, ends, strict=True)]


def _coalesce(runs: list[Run]) -> list[Run]:
    merged: list[Run] = []
    for first, last, offset in sorted(runs):
        if merged and merged[-1][2] == offset:
            prev = merged[-1]
            merged[-1] = (prev[0], max(prev[1], last), offset)
        else:
            merged.append((first, last, offset))
    return merged


def runs_change(old: list[Run], new: list[Run]) -> tuple[list[Run], list[Run]]:
    """(stored runs to delete, runs to insert) to add `new` to `old`, neighbours of equal offset merged."""
    merged = _coalesce(old + list(new))
    if merged == old:
        return [], []
    kept = set(old)
    return sorted(kept - set(merged)), [r for r in merged if r not in kept]


def record_runs(database_url: str, symbol: str, timeframe: str, new: list[Run]) -> None:
    """Add the batch's runs, merging neighbours of equal offset; rewrites only what changed."""
    if not new:
        return
    o = candle_offsets.c
    engine = get_engine(database_url)
    with engine.begin() as conn:
        if is_postgres(database_url):
            conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                {"key": f"offsets {symbol} {timeframe}"},
            )
        rows = conn.execute(
            select(o.first_ts, o.last_ts, o.utc_offset_s)
            .where(o.symbol == symbol, o.timeframe == timeframe)
            .order_by(o.first_ts)
        ).all()
        old = [(int(a), int(b), int(c)) for a, b, c in rows]
        gone, added = runs_change(old, new)
        if gone:
            conn.execute(
                delete(candle_offsets).where(
                    o.symbol == symbol, o.timeframe == timeframe, o.first_ts.in_([r[0] for r in gone])
                )
            )
        if added:
            conn.execute(
                insert(candle_offsets),
                [
                    {"symbol": symbol, "timeframe": timeframe, "first_ts": a, "last_ts": b, "utc_offset_s": c}
                    for a, b, c in added
                ],
            )
