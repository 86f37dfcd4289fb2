"""Each live series' recent tail, kept in the worker's memory: a new closed bar costs one row.

:func:`features.update_features` finds the first stale bar, reads ``LOOKBACK_BARS`` bars
before it and recomputes from there: on every live bar that is a 500-bar read and three
probes. A worker that decided the previous bar already holds those 500 bars. Here a
series' tail is the ``LOOKBACK_BARS`` closed bars whose features are stored; a new closed
bar is read alone (the series' recently stamped bars, through the ingested_at index), its
features computed over tail + bar, one row written, the tail shifted by one.

**Identical to the batch.** The window computed is exactly the one ``update_features``
would read for that bar (the ``LOOKBACK_BARS`` stored bars before it, then it), and the
new row comes from :func:`indicators.feature_block`, the numpy core the batch's
``compute_features`` runs too (here without a frame, only the new rows' values), so the
rows are bit for bit those of the batch path (tested over a long series with corrections).
Why the window and not a running state: see ``feature_block``.

**Invalidated by corrections.** Every read of the recent bars also sees a re-sent bar (its
stamp changes) and a gap filled (a bar older than the tail's end appears): any bar at or
before the tail's end whose (ts, stamp) the tail has not seen drops the tail, and the
batch path (:func:`features.update_features`) does that bar's work, reading its look-back
once; the tail is then read again. The same happens on a feature-set change, a first
bar, or anything unexpected: the batch path is always the fallback, never a second rule.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy.engine import Connection

from mt5_pipeline.bars import closed_cutoff
from mt5_pipeline.clock import resolve_now
from mt5_pipeline.learning.features import LOOKBACK_BARS, FeatureUpdate, update_features
from mt5_pipeline.learning.indicators import FEATURE_SET_VERSION, FLOAT_COLUMNS, feature_block
from mt5_pipeline.storage import features as stored
from mt5_pipeline.storage.candles import CANDLE_COLUMNS, candles_stamped_since, read_candles
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.series_snapshot import StampDigest, stamp_digest

Series = tuple[str, str]

# Feature rows kept per series for the prediction: the bar decided is the newest computed,
# or one before it while the newest waits for its final version.
KEEP_ROWS = 4
# How far before the newest stamp it handled the tail reads again. The ingest stamps a
# series' bars after taking its lock, later than every stamp stored, so whoever has seen a
# stamp has seen every change committed before it (market.ingest); this margin is only a
# guard. Not the batch path's WATERMARK_MARGIN (60 s): every bar stamped within the margin
# is read again on every live bar, and after a bulk ingest (the history an EA posts at its
# start) a minute of that was most of the worker's CPU at the next bar closes.
TAIL_MARGIN = timedelta(seconds=10)


# What the features and the extreme-bar guard read of a bar; ts and ingested_at as int64
# nanoseconds since the epoch (UTC). Columns of numpy arrays, not a DataFrame: shifting a
# frame by one bar and building one from a bar's tuple cost more than the features.
_TAIL_COLUMNS = ("ts", "high", "low", "close", "tick_volume", "ingested_at")
_TUPLE_INDEX = {name: CANDLE_COLUMNS.index(name) for name in _TAIL_COLUMNS}
_TIMES = ("ts", "ingested_at")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class TailWindow(NamedTuple):
    """Where a series' next read of recently stamped bars starts, and the open of the
    tail's newest bar: of a stamped bar at or before it the tail needs only to know it
    has seen it (:func:`read_snapshot`'s ``known``)."""

    since: datetime
    end: datetime


class Recent(NamedTuple):
    """Bars stamped since ``window.since`` that a caller read for the tail (as
    :func:`candles_stamped_since` returns them), or, with ``known``, only those opening
    after ``window.end`` and a digest of the rest (:func:`read_snapshot`)."""

    window: TailWindow
    rows: list[tuple]
    known: StampDigest | None = None


@dataclass
class _Tail:
    bars: dict[str, np.ndarray]  # the newest LOOKBACK_BARS closed bars with stored features, oldest first
    seen: dict[datetime, datetime] = field(
        default_factory=dict
    )  # ts -> ingested_at of recently stamped bars already handled
    watermark: datetime | None = None  # newest stamp handled; reads start TAIL_MARGIN before it
    whole: bool = False  # the tail started at the series' first bar (it held fewer than LOOKBACK_BARS)
    rows: dict[datetime, dict] = field(default_factory=dict)  # the feature rows of the newest bars computed here, by ts
    # The digest of `seen` within a window, computed when the tail is built: after a bulk
    # ingest `seen` holds the whole batch until the next bar, and digesting it then, on the
    # hot path, cost more than the rest of the decision.
    digest: tuple[TailWindow, StampDigest] | None = None

    def seen_digest(self, window: TailWindow) -> StampDigest:
        """The digest of the (open, stamp) pairs seen that :func:`read_snapshot` digests for ``window``."""
        if self.digest is not None and self.digest[0] == window:
            return self.digest[1]
        since, end = window
        return stamp_digest((ts, stamp) for ts, stamp in self.seen.items() if ts <= end and stamp >= since)

    def __len__(self) -> int:
        return len(self.bars["ts"])

    @property
    def end(self) -> datetime:
        """The open of the newest bar."""
        return _EPOCH + timedelta(microseconds=int(self.bars["ts"][-1]) // 1000)


def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """read_candles' frame as the tail's columns."""
    out = {name: frame[name].to_numpy(dtype=np.float64) for name in ("high", "low", "close")}
    out["tick_volume"] = frame["tick_volume"].to_numpy(dtype=np.int64)
    for name in _TIMES:
        out[name] = pd.DatetimeIndex(frame[name]).as_unit("ns").asi8.copy()
    return out


def _from_tuples(rows: list[tuple]) -> dict[str, np.ndarray]:
    """Candle tuples (CANDLE_COLUMNS order, aware datetimes) as the tail's columns."""
    out: dict[str, np.ndarray] = {}
    for name in _TAIL_COLUMNS:
        values = [r[_TUPLE_INDEX[name]] for r in rows]
        if name in _TIMES:
            out[name] = np.array([pd.Timestamp(v).value for v in values], dtype=np.int64)
        else:
            out[name] = np.array(values, dtype=np.int64 if name == "tick_volume" else np.float64)
    return out


def _utc(ns: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(ns.view("M8[ns]")).tz_localize("UTC")


def _frame(bars: dict[str, np.ndarray]) -> pd.DataFrame:
    """The columns as a frame of read_candles' dtypes (what compute_features and the guards read)."""
    return pd.DataFrame({name: _utc(values) if name in _TIMES else values for name, values in bars.items()})


@dataclass
class TailStats:
    fast: int = 0  # bars computed from the tail (one row each)
    rebuilt: int = 0  # batch-path updates (first bar of a series, corrections, gaps)


class SeriesTails:
    """The features of each series' new closed bars, from its tail in memory.

    Thread-safe across series (one lock per series; the live worker decides several at
    once). Another process writing the same series' features is harmless: writes go
    through the same per-series writer lock, and identical inputs give identical rows.
    """

    def __init__(self, database_url: str, *, lookback: int = LOOKBACK_BARS) -> None:
        self.database_url = database_url
        self.lookback = lookback
        self._tails: dict[Series, _Tail] = {}
        self._locks: dict[Series, threading.Lock] = {}
        self._guard = threading.Lock()
        self.stats = TailStats()
        self.last_path: dict[Series, str] = {}  # "tail" or "batch": how the series' last update was done
        self._pending: dict[Series, stored.NewRows] = {}  # deferred rows the caller has not taken yet

    def invalidate(self, key: Series | None = None) -> None:
        """Drop one series' tail (all with None): its next update takes the batch path."""
        with self._guard:
            if key is None:
                self._tails.clear()
                self._pending.clear()
            else:
                self._tails.pop(key, None)
                self._pending.pop(key, None)

    def feature_row(self, key: Series, bar: datetime) -> dict | None:
        """The feature row this tail computed and stored for ``bar`` (as predict_latest would
        read it back: ts, the float columns, usable, feature_set_version), or None."""
        tail = self._tails.get(key)
        return None if tail is None else tail.rows.get(bar)

    def bars_until(self, key: Series, bar: datetime, n: int) -> pd.DataFrame | None:
        """:meth:`bar_columns_until` as a frame of read_candles' dtypes."""
        columns = self.bar_columns_until(key, bar, n)
        return None if columns is None else _frame(columns)

    def bar_columns_until(self, key: Series, bar: datetime, n: int) -> dict[str, np.ndarray] | None:
        """The tail's newest ``n`` bars up to ``bar`` (the stored candles: the tail is
        dropped on any correction) as numpy columns (ts, high, low, close; ts in int64
        nanoseconds, UTC), or None without a tail or when ``bar`` is not in it or the tail
        holds fewer than ``n`` bars before it while the series may hold more."""
        tail = self._tails.get(key)
        if tail is None:
            return None
        ts = tail.bars["ts"]
        at = pd.Timestamp(bar).value
        upto = int(np.searchsorted(ts, at, side="right"))
        if upto == 0 or ts[upto - 1] != at:
            return None
        if upto < n and not tail.whole:
            return None
        lo = max(0, upto - n)
        return {name: tail.bars[name][lo:upto] for name in ("ts", "high", "low", "close")}

    def window(self, key: Series) -> TailWindow | None:
        """The series' :class:`TailWindow` (None: no tail, the next update takes the batch
        path). A caller may read the recent bars itself, with more, in one round trip and
        hand them to :meth:`update` (``recent``)."""
        tail = self._tails.get(key)
        if tail is None or tail.watermark is None:
            return None
        return TailWindow(tail.watermark - TAIL_MARGIN, tail.end)

    def _lock(self, key: Series) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def update(
        self,
        symbol: str,
        timeframe: str,
        *,
        now: datetime | None = None,
        defer: bool = False,
        recent: Recent | None = None,
    ) -> FeatureUpdate:
        """Bring the series' features up to its newest closed bar (as ``update_features`` does).

        ``defer``: rows computed from the tail are not stored here but handed to the caller
        (:meth:`take_pending`), who stores them (:meth:`store`) with what it commits next;
        a caller that cannot must :meth:`invalidate` the series. The batch path stores its own.

        ``recent``: the bars stamped since the :meth:`window` that the caller read; used
        when the tail's window is still that one, else read again.
        """
        key = (symbol, timeframe)
        at = resolve_now(now)
        with self._lock(key):
            tail = self._tails.get(key)
            if self.take_pending(key) is not None:
                tail = None  # a deferred row was never stored: the batch path finds its bar stale
            if tail is not None:
                done = self._fast(key, tail, at, defer, recent)
                if done is not None:
                    self.last_path[key] = "tail"
                    return done
                self._tails.pop(key, None)
            self.last_path[key] = "batch"
            return self._rebuild(key, at)

    # ---- the batch path, then a fresh tail ---------------------------------------------------

    def _rebuild(self, key: Series, at: datetime) -> FeatureUpdate:
        symbol, timeframe = key
        # What is stamped recently is read BEFORE the batch update: whatever it sees, the
        # update (which reads later) has handled; a bar stamped in between is not in
        # `seen`, so the next update takes this path again rather than miss it.
        newest_stored = stored.newest_feature(self.database_url, symbol, timeframe)
        since = (newest_stored.source_ingested_at - TAIL_MARGIN) if newest_stored is not None else None
        recent = candles_stamped_since(self.database_url, symbol, timeframe, since) if since is not None else None
        result = update_features(self.database_url, symbol, timeframe, now=at)
        self.stats.rebuilt += 1
        if result.newest_ts is None:
            return result
        bars = read_candles(self.database_url, symbol, timeframe, end=result.newest_ts, last_n=self.lookback)
        newest = stored.newest_feature(self.database_url, symbol, timeframe)
        if newest is None or newest.feature_set_version != FEATURE_SET_VERSION or bars.empty:
            return result
        tail = _Tail(bars=_columns(bars), whole=len(bars) < self.lookback)
        if recent:
            tail.seen = {r[0]: r[-1] for r in recent}
            tail.watermark = max(r[-1] for r in recent)
            window = TailWindow(tail.watermark - TAIL_MARGIN, tail.end)
            tail.digest = (window, tail.seen_digest(window))
        else:
            tail.watermark = newest.source_ingested_at
        self._tails[key] = tail
        return result

    # ---- one row ---------------------------------------------------------------------------

    def _fast(self, key: Series, tail: _Tail, at: datetime, defer: bool, read: Recent | None) -> FeatureUpdate | None:
        """The new closed bars from the tail, or None when the batch path must run."""
        symbol, timeframe = key
        if tail.watermark is None:
            return None
        since, end = tail.watermark - TAIL_MARGIN, tail.end
        if read is not None and read.window == (since, end):
            recent = read.rows
            if read.known is not None and read.known != tail.seen_digest(read.window):
                return None  # the bars at or before the tail's end are not the ones it saw: a correction
        else:
            recent = candles_stamped_since(self.database_url, symbol, timeframe, since)
        fresh = [r for r in recent if tail.seen.get(r[0]) != r[-1]]
        if any(r[0] <= end for r in fresh):
            return None  # a re-sent bar or a gap filled at or before the tail's end: a correction
        newest_open = max([end, *(r[0] for r in recent)])
        cutoff = closed_cutoff(timeframe, now=at, newest_open=newest_open)
        new_rows = [r for r in fresh if r[0] <= cutoff]
        if not new_rows:
            return FeatureUpdate(symbol, timeframe, 0, end, 0, None, False)
        new = _from_tuples(new_rows)
        lookback = len(tail)
        columns = {name: np.concatenate([tail.bars[name], new[name]]) for name in _TAIL_COLUMNS}
        matrix, after_gap, usable = feature_block(
            columns["ts"], columns["high"], columns["low"], columns["close"],
            columns["tick_volume"].astype(np.float64), timeframe=timeframe, last=len(new_rows),
        )  # fmt: skip
        rows = stored.NewRows([r[0] for r in new_rows], matrix, after_gap, usable, [r[-1] for r in new_rows])
        if defer:
            self._pending[key] = rows
        else:
            self.store(key, rows, computed_at=at)
        self.stats.fast += len(new_rows)
        if len(columns["ts"]) > self.lookback:
            tail.whole = False
        tail.bars = {name: values[-self.lookback :] for name, values in columns.items()}
        # The rows computed, for the prediction: the float64 values the read-back gives.
        for ts, values, is_usable in zip(rows.ts, matrix.tolist(), usable.tolist(), strict=True):
            row = dict(zip(FLOAT_COLUMNS, values, strict=True))
            row.update(ts=ts, usable=is_usable, feature_set_version=FEATURE_SET_VERSION)
            tail.rows[ts] = row
        for ts in sorted(tail.rows)[:-KEEP_ROWS]:
            del tail.rows[ts]
        for r in new_rows:
            tail.seen[r[0]] = r[-1]
        tail.watermark = max(tail.watermark, *(r[-1] for r in recent))
        floor = tail.watermark - 2 * TAIL_MARGIN
        tail.seen = {ts: stamp for ts, stamp in tail.seen.items() if stamp >= floor}
        tail.digest = None  # of the window before: the next one is a new window over a small `seen`
        return FeatureUpdate(symbol, timeframe, len(new_rows), new_rows[-1][0], lookback, new_rows[0][0], False)

    # ---- storing the rows ------------------------------------------------------------------

    def take_pending(self, key: Series) -> stored.NewRows | None:
        """The rows a deferred update computed and the caller must store (or None)."""
        with self._guard:
            return self._pending.pop(key, None)

    def store(
        self, key: Series, rows: stored.NewRows, *, computed_at: datetime, conn: Connection | None = None
    ) -> None:
        """Store rows computed from the tail: in ``conn``'s transaction (the live worker's,
        which also queues the bar's signal), or in one of their own."""
        symbol, timeframe = key
        if conn is not None:
            stored.write_new_rows(conn, symbol, timeframe, rows, version=FEATURE_SET_VERSION, computed_at=computed_at)
            return
        with get_engine(self.database_url).begin() as own:
            stored.write_new_rows(
                own, symbol, timeframe, rows, version=FEATURE_SET_VERSION, computed_at=computed_at, alone=True
            )
