"""A live bar's writes: its feature rows and its signal, committed together.

The rows the worker's tail computed for the bar (:mod:`mt5_pipeline.signals.series_tail`)
and the bar's signal with its NOTIFY commit in one transaction: the pusher wakes on that
commit, and a crash between the two cannot leave a signal whose features were never
stored. On PostgreSQL the whole transaction is one round trip (the statements sent
together run as one implicit transaction); on the live path, once a bar per symbol, the
seven round trips it used to take were most of the worker's wait. With no signal queued
(a neutral bar, a guard) the rows are stored alone; rows never stored drop the series'
tail, so the batch path recomputes them.
"""

from __future__ import annotations

from datetime import datetime

from mt5_pipeline.execution.trade_signal import Signal
from mt5_pipeline.learning.indicators import FEATURE_SET_VERSION
from mt5_pipeline.signals import queue
from mt5_pipeline.signals.queue_enqueue import NOTIFY_CHANNEL, row_values
from mt5_pipeline.signals.series_tail import SeriesTails
from mt5_pipeline.storage.bar_commit import commit_bar
from mt5_pipeline.storage.features import NewRows

Series = tuple[str, str]


class BarWrite:
    """The ``enqueue`` a live decision passes to :func:`generate_signal`, holding the bar's rows."""

    def __init__(self, tails: SeriesTails, key: Series, rows: NewRows | None, at: datetime) -> None:
        self.tails, self.key, self.rows, self.at = tails, key, rows, at

    def enqueue(self, database_url: str, signal: Signal, *, now: datetime) -> bool:
        if self.rows is None:
            return queue.enqueue(database_url, signal, now=now)
        rows, (symbol, timeframe) = self.rows, self.key
        inserted = commit_bar(
            database_url, symbol, timeframe, rows, version=FEATURE_SET_VERSION, computed_at=self.at,
            signal_row=row_values(signal, now), channel=NOTIFY_CHANNEL,
        )  # fmt: skip
        self.rows = None
        return inserted

    def finish(self) -> None:
        """Store the rows if the signal's transaction did not (no signal, or it failed)."""
        if self.rows is None:
            return
        rows, self.rows = self.rows, None
        try:
            self.tails.store(self.key, rows, computed_at=self.at)
        except Exception:
            self.tails.invalidate(self.key)
            raise
