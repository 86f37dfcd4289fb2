"""A validated candle batch as the storage layer takes it, and what it tells the live worker.

The ingest core validates; storage writes (:mod:`mt5_pipeline.storage.candle_store_pg`,
:mod:`mt5_pipeline.storage.candle_store_sqlite`). This is the shape between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from mt5_pipeline.bars import bar_close
from mt5_pipeline.clock import from_epoch

# LISTEN/NOTIFY channel of committed closed bars; the payload is "SYMBOL TIMEFRAME OPEN".
CANDLES_CHANNEL = "candles_closed"
# A bar's values: what decides whether a re-sent bar changed.
BAR_VALUES = ("open", "high", "low", "close", "tick_volume", "spread", "real_volume")


@dataclass(frozen=True)
class CandleBatch:
    """A validated batch: one row per distinct ts, sorted by ts."""

    symbol: str
    timeframe: str
    received: int
    ts: np.ndarray  # int64 epoch seconds
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    tick_volume: np.ndarray  # int64
    spread: np.ndarray  # int64
    real_volume: np.ndarray  # int64
    source_rows: np.ndarray | None = None  # each row's index in the batch as sent (for errors)
    utc_offset_s: np.ndarray | None = None  # the offset each bar was converted from server time with

    def take(self, keep: np.ndarray) -> CandleBatch:
        """The rows where `keep` (a mask) is true."""
        pick = {
            name: getattr(self, name)[keep]
            for name in ("ts", "open", "high", "low", "close", "tick_volume", "spread", "real_volume")
        }
        return CandleBatch(
            self.symbol,
            self.timeframe,
            self.received,
            **pick,
            source_rows=None if self.source_rows is None else self.source_rows[keep],
            utc_offset_s=None if self.utc_offset_s is None else self.utc_offset_s[keep],
        )

    def __len__(self) -> int:
        return len(self.ts)


def newest_closed_in_batch(batch: CandleBatch, now: datetime) -> int | None:
    """Open time (epoch s) of the newest closed bar the batch holds, or None: every bar but
    the newest is closed (a later one exists); the newest is once its timeframe has run out."""
    if len(batch) == 0:
        return None
    newest = int(batch.ts[-1])
    if bar_close(from_epoch(newest), batch.timeframe) <= now:
        return newest
    return int(batch.ts[-2]) if len(batch) > 1 else None
