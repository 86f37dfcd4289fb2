"""The live-signal worker (`mt5-pipeline live`): from a committed closed bar to a queued
signal in milliseconds, for every symbol at once.

Dagster stays the control plane and the record (``new_candles_sensor`` still
materializes ``features_m1`` and ``signals`` per symbol, so the UI shows every bar and
decision), but a Dagster run per symbol and bar costs seconds; a trader on M1 needs the
signal at the EA within a second of the bar's close. This worker is that hot path:

- **Woken by the ingest commit.** On PostgreSQL the ingest core NOTIFYs
  ``CANDLES_CHANNEL`` with "SYMBOL TIMEFRAME OPEN" when a batch holds a closed bar; the
  worker LISTENs. SQLite polls every ``LIVE_POLL_SECONDS`` and reaches the same decisions.
- **A timer for the EA that only sends the forming bar.** ``LIVE_CLOSE_GRACE_SECONDS``
  after each bar's close, a bar whose final version never came is signalled from the
  version stored (its last forming one). A final version posted within the grace wins.
- **Incremental.** For each woken series: one read (:mod:`mt5_pipeline.storage.series_snapshot`:
  the ready rule's bars, the tail's new bars, the pip's row), the newest *ready* closed bar
  (below), its feature row, one prediction, the decision, and one round trip that commits
  the row with the signal (:mod:`mt5_pipeline.signals.bar_write`), whose NOTIFY wakes the pusher.
- **One row per bar.** Each series' recent tail stays in memory
  (:mod:`mt5_pipeline.signals.series_tail`): a new closed bar costs one feature row, not a
  500-bar read; a correction sends the series back through the batch path. A series taken
  over (or decided before a restart) gets its tail at once, not on its next bar.
- **Several workers, any host.** On PostgreSQL the workers share the series by leases
  (:mod:`mt5_pipeline.signals.series_leases`); a dead worker's series are taken over within
  ``LIVE_LEASE_SECONDS`` and a bit. SQLite has one host: LIVE_PROCESSES split by hash.
- **Once per bar.** The worker remembers the bar it decided per series; the database's
  one-signal-per-bar index settles a race with the Dagster path (or a second worker):
  the loser gets "duplicate", never a second signal.

A closed bar is *ready* when its final version is in: a later bar of the series exists,
the EA posted it after its close (its ``ingested_at`` is past the close, or the NOTIFY
said so), or the grace after its close has run out.
"""

from __future__ import annotations

import functools
import logging
import select
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from mt5_pipeline.bars import ready_among
from mt5_pipeline.clock import from_epoch, iso_z, resolve_now, utcnow
from mt5_pipeline.market.extremes import EXTREME_CHECK_WINDOW
from mt5_pipeline.settings import TIMEFRAME_SECONDS, Settings
from mt5_pipeline.signals.bar_write import BarWrite
from mt5_pipeline.signals.generation import Instrument, Predictor, generate_signal
from mt5_pipeline.signals.series_leases import LeaseKeeper, SeriesLeases
from mt5_pipeline.signals.series_tail import Recent, SeriesTails
from mt5_pipeline.storage import decisions as stored_decisions
from mt5_pipeline.storage.candles import CANDLES_CHANNEL, newest_bars
from mt5_pipeline.storage.notifications import Listener, notifications_supported
from mt5_pipeline.storage.series_snapshot import read_snapshot

log = logging.getLogger(__name__)

Series = tuple[str, str]  # (symbol, timeframe)

# The set of series is re-read this often (a new symbol's first bar also arrives by NOTIFY).
SERIES_REFRESH_SECONDS = 30.0
# On PostgreSQL the poll is only a safety net behind LISTEN.
LISTEN_POLL_FACTOR = 20
# Which timeframes have a model is re-read this often (a first training starts the worker).
MODELS_REFRESH_SECONDS = 5.0
# Reading what a readable LISTEN socket holds (it is there already: no wait in practice).
READ_SECONDS = 0.05
# At start and on a takeover, bars decided this recently (by any worker) are not decided again.
DECIDED_LOOKBACK = timedelta(hours=1)


@dataclass(frozen=True)
class LiveDecision:
    symbol: str
    timeframe: str
    bar: datetime | None
    status: str  # generate_signal's status, or "no_features" / "no_model" / "error"
    message: str
    trigger: str  # "notify" | "poll" | "timer" | "start" | "takeover"
    signal_id: str | None = None
    seconds: float = 0.0  # time spent on this series (features + predict + queue)
    probability: float | None = None
    confidence: float | None = None
    side: str | None = None
    feature_rows: int = 0
    feature_path: str = ""  # "tail" (one row from memory) or "batch"

    def record(self, worker: str, decided_at: datetime) -> dict:
        """The live_decisions row Dagster's sensor turns into run-less asset events."""
        return {
            "symbol": self.symbol, "timeframe": self.timeframe, "bar": self.bar, "status": self.status,
            "message": self.message[:2000], "probability": self.probability, "confidence": self.confidence,
            "signal_id": self.signal_id, "side": self.side, "feature_rows": self.feature_rows,
            "feature_path": self.feature_path, "trigger": self.trigger, "worker": worker,
            "seconds": self.seconds, "decided_at": decided_at,
        }  # fmt: skip


def parse_notification(payload: str) -> tuple[Series, datetime | None] | None:
    """ "SYMBOL TIMEFRAME [OPEN]" -> ((symbol, timeframe), open time of the bar the EA sent closed)."""
    parts = payload.split()
    if len(parts) < 2 or parts[1] not in TIMEFRAME_SECONDS:
        return None
    final = None
    if len(parts) > 2 and parts[2].isdigit():
        final = from_epoch(int(parts[2]))
    return (parts[0], parts[1]), final


class LiveWorker:
    """Decides each series' newest ready closed bar once. ``handle`` is one pass; ``run`` is the loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        predictor: Predictor | None = None,
        shard: tuple[int, int] = (0, 1),
        leases: SeriesLeases | None = None,
    ) -> None:
        self.settings = settings
        self.predictor = predictor
        # (index, count): this worker decides the series whose symbol hashes to index (SQLite, one host).
        self.shard = shard
        # PostgreSQL: the series this worker holds a lease on (any number of hosts).
        self.leases = leases
        # Without leases (SQLite, or a worker built by a test) only a heartbeat: Dagster's
        # sensor records the bars run-less while some live worker is alive.
        self.presence = leases or SeriesLeases(
            settings.database_url, lease_seconds=settings.live_lease_seconds, share=False
        )
        self.tails = SeriesTails(settings.database_url)
        self.decided: dict[Series, datetime] = {}
        self.final: dict[Series, datetime] = {}  # bars the EA sent after they closed (NOTIFY)
        self.known: set[Series] = set()
        self._series_read_at = float("-inf")
        self._timeframes: list[str] = []
        self._timeframes_read_at = float("-inf")
        self._polled: dict[Series, tuple] = {}  # each series' newest (bar, stamp) at the last safety-net poll
        self._executor: ThreadPoolExecutor | None = None

    # ---- what there is to do --------------------------------------------------------

    def timeframes(self) -> list[str]:
        """Timeframes with a model (no model, no signals: the worker idles until the first training)."""
        if time.monotonic() - self._timeframes_read_at >= MODELS_REFRESH_SECONDS:
            from mt5_pipeline.learning.model import model_timeframes

            self._timeframes = model_timeframes(self.settings)
            self._timeframes_read_at = time.monotonic()
        return self._timeframes

    def refresh_series(self, *, force: bool = False) -> set[Series]:
        if force or time.monotonic() - self._series_read_at >= SERIES_REFRESH_SECONDS:
            from mt5_pipeline.storage.candles import list_symbols

            self.known |= set(list_symbols(self.settings.database_url))
            self._series_read_at = time.monotonic()
        return self.known

    def next_tick(self, now: datetime) -> datetime | None:
        """The next bar close + grace over the timeframes with a model (None: none has one)."""
        grace = self.settings.live_close_grace_seconds
        ticks = []
        for timeframe in self.timeframes():
            # H4 and longer close on the broker's day (22:00 UTC for a UTC+2 server), W1 on
            # its Sunday, MN1 on its 1st: the worker does not know the broker's zone, so it
            # looks every minute (a pass over the series is a few small reads).
            step = (
                TIMEFRAME_SECONDS[timeframe]
                if TIMEFRAME_SECONDS[timeframe] <= TIMEFRAME_SECONDS["H1"]
                else TIMEFRAME_SECONDS["M1"]
            )
            since = (now - timedelta(seconds=grace)).timestamp()
            boundary = (int(since) // step + 1) * step
            ticks.append(from_epoch(boundary + grace))
        return min(ticks) if ticks else None

    # ---- one pass ---------------------------------------------------------------------

    def handle(
        self, series: Iterable[Series], *, now: datetime | None = None, trigger: str = "poll"
    ) -> list[LiveDecision]:
        """Decide every given series whose newest ready bar is not decided yet.

        Series are independent (one lock per symbol in the features, one row per bar in
        the queue), so they run on LIVE_WORKER_THREADS threads: most of a decision is
        waiting for the database, and 28 symbols closing the same minute should not queue
        behind each other.
        """
        timeframes = set(self.timeframes())
        keys = sorted(k for k in set(series) if k[1] in timeframes and self.owns(k))
        self.known.update(keys)
        at = resolve_now(now)
        keys = [k for k in keys if not self._decided_newest(k, at)]
        if len(keys) <= 1 or self.settings.live_worker_threads <= 1:
            decisions = [d for d in map(lambda k: self._one(k, now, trigger), keys) if d is not None]
        else:
            decisions = [d for d in self._pool().map(lambda k: self._one(k, now, trigger), keys) if d is not None]
        self._record(decisions)
        return decisions

    def _decided_newest(self, key: Series, at: datetime) -> bool:
        """The series' decided bar is the newest that can be closed at ``at``: the next one
        closes a whole bar after it. Then the pass has nothing to read (the minute timer's
        pass over every series, the NOTIFY of a forming bar). Bars up to H1 only: they
        last as long in UTC as in the broker's clock; H4 and D1 across a daylight-saving
        change, and calendar months, do not. A series without a tail is read anyway: the
        pass builds it (a takeover), so its next bar costs one row."""
        decided = self.decided.get(key)
        step = TIMEFRAME_SECONDS[key[1]]
        return (
            decided is not None
            and step <= TIMEFRAME_SECONDS["H1"]
            and at < decided + timedelta(seconds=2 * step)
            and self.tails.window(key) is not None
        )

    def _pool(self) -> ThreadPoolExecutor:
        # Kept across passes: a pass a bar, and new threads for each cost more than a decision.
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.settings.live_worker_threads, thread_name_prefix="live"
            )
        return self._executor

    def close(self) -> None:
        """Stop the pass's threads (``run`` does on its way out)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _record(self, decisions: list[LiveDecision]) -> None:
        """One INSERT for the pass's decisions, after they are queued: the record never delays a signal."""
        if not decisions:
            return
        at = utcnow()
        try:
            stored_decisions.record(self.settings.database_url, [d.record(self.presence.worker, at) for d in decisions])
        except Exception as exc:  # the signals are queued; only Dagster's view of them is late
            log.warning("live decisions not recorded for Dagster (%s: %s)", type(exc).__name__, exc)

    def owns(self, key: Series) -> bool:
        if self.leases is not None:
            return self.leases.owns(key)
        index, count = self.shard
        return count <= 1 or zlib.crc32(key[0].encode()) % count == index

    def _one(self, key: Series, now: datetime | None, trigger: str) -> LiveDecision | None:
        at = resolve_now(now)
        symbol, timeframe = key
        # One round trip: the ready rule's two newest bars, the tail's new bars, the pip's row.
        window = self.tails.window(key)
        since, end = (None, None) if window is None else window
        snapshot = read_snapshot(self.settings.database_url, symbol, timeframe, since, known=end)
        newest = snapshot.newest
        bar = ready_among(
            newest[0] if newest else None,
            newest[1][0] if len(newest) > 1 else None,
            timeframe,
            grace_seconds=self.settings.live_close_grace_seconds,
            now=at,
            final=self.final.get(key),
        ).bar
        if bar is None or (key in self.decided and self.decided[key] >= bar):
            if bar is not None and window is None:
                self._warm(key, at)
            return None
        recent = None if window is None or snapshot.recent is None else Recent(window, snapshot.recent, snapshot.known)
        return self._decide(key, bar, at, trigger, recent=recent, instrument=snapshot.instrument)

    def _warm(self, key: Series, at: datetime) -> None:
        """Build the tail of a series with nothing to decide (taken over, or decided before a
        restart), so its next bar costs one row, not the batch path on the hot path."""
        try:
            self.tails.update(*key, now=at)
        except Exception as exc:  # only a later bar's speed is at stake: it takes the batch path
            log.warning("live tail of %s %s not built (%s: %s)", *key, type(exc).__name__, exc)

    def _decide(
        self,
        key: Series,
        bar: datetime,
        at: datetime,
        trigger: str,
        *,
        recent: Recent | None = None,
        instrument: Instrument | None | Literal["unread"] = "unread",
    ) -> LiveDecision:
        from mt5_pipeline.learning.model import ModelTimeframeError, NoFeaturesError
        from mt5_pipeline.learning.model_store import ModelMismatchError, NoModelError

        symbol, timeframe = key
        started = time.perf_counter()
        rows, path = 0, ""
        try:
            rows = self.tails.update(symbol, timeframe, now=at, defer=True, recent=recent).rows_written
            path = self.tails.last_path.get(key, "")
            write = BarWrite(self.tails, key, self.tails.take_pending(key), at)
            try:
                # The bar asked for, not "the newest closed": with the previous bar undecided (a
                # start, an error) the newest may still be waiting for its final version.
                result = generate_signal(
                    self.settings, symbol, timeframe, now=at, predictor=self.predictor or self._from_tail(key, bar),
                    bar=bar, recent_bars=self.tails.bar_columns_until(key, bar, EXTREME_CHECK_WINDOW),
                    enqueue=write.enqueue, instrument=instrument,
                )  # fmt: skip
            finally:
                write.finish()
        except NoFeaturesError as exc:
            self.decided[key] = bar  # warm-up or a gap: nothing to do until the next bar
            return LiveDecision(*key, bar, "no_features", str(exc), trigger, **_spent(started, rows, path))
        except (NoModelError, ModelMismatchError, ModelTimeframeError) as exc:
            self._timeframes_read_at = float("-inf")  # the model changed under us: look again
            log.warning("No live signal for %s %s: %s", symbol, timeframe, exc)
            return LiveDecision(*key, bar, "no_model", str(exc), trigger, **_spent(started, rows, path))
        self.decided[key] = max(bar, result.bar) if result.bar is not None else bar
        signal_id = result.signal.signal_id if result.signal else None
        seconds = time.perf_counter() - started
        log.info(
            "live %s %s bar %s (%s): %s in %.0f ms",
            symbol,
            timeframe,
            iso_z(bar),
            trigger,
            result.status,
            seconds * 1000,
        )
        return LiveDecision(
            symbol, timeframe, result.bar or bar, result.status, result.message, trigger, signal_id, seconds,
            probability=result.probability, confidence=result.confidence,
            side=result.signal.side if result.signal else None, feature_rows=rows, feature_path=path,
        )  # fmt: skip

    def seed_decided(self, keys: Iterable[Series]) -> None:
        """Remember the bars other workers (or this one before a restart) decided: a start
        or a takeover decides a series' newest ready bar unless it was decided already,
        so Dagster records each bar's decision once."""
        decided = stored_decisions.newest_decided(
            self.settings.database_url, keys, now=utcnow(), within=DECIDED_LOOKBACK
        )
        for key, bar in decided.items():
            if key not in self.decided or self.decided[key] < bar:
                self.decided[key] = bar

    def _from_tail(self, key: Series, bar: datetime) -> Predictor | None:
        """The bar's prediction from the feature row the tail just computed and stored
        (the values predict_latest would read back), or None: read it from the database."""
        row = self.tails.feature_row(key, bar)
        if row is None:
            return None
        from mt5_pipeline.learning.model import predict_row

        return lambda settings, symbol, timeframe: predict_row(settings, symbol, timeframe, row)

    # ---- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, listen: bool | None = None) -> None:
        url = self.settings.database_url
        use_listen = notifications_supported(url) if listen is None else listen
        listener = Listener(url, CANDLES_CHANNEL) if use_listen else None
        poll = self.settings.live_poll_seconds * (LISTEN_POLL_FACTOR if listener else 1)
        if listener:
            listener.connect()  # before the first pass, so no commit falls between the two
        keeper_stop = threading.Event()
        # Leases are kept on their own thread, so a long pass never lets one lapse; the
        # first tick runs here, so the first pass knows what this worker holds. The loop
        # wakes every lease tick to decide series it took over, but the safety-net poll
        # pass keeps its own cadence.
        wake = min(poll, self.leases.interval) if self.leases is not None else poll
        polled_at = time.monotonic()
        self._safely(lambda: self.presence.tick(self.refresh_series(force=True)))
        self.presence.take_gained()  # the start pass below decides them
        keeper = LeaseKeeper(self.presence, lambda: set(self.known), keeper_stop)
        keeper.start()
        self._safely(lambda: self.seed_decided(self.refresh_series(force=True)))
        self._safely(lambda: self.handle(self.refresh_series(force=True), trigger="start"))
        try:
            tick: datetime | None = None
            while not stop.is_set():
                if self.leases is not None:
                    gained = self.leases.take_gained()
                    if gained:
                        for key in gained:
                            self.tails.invalidate(key)  # another worker may have written it meanwhile
                            self.decided.pop(key, None)
                        self._safely(functools.partial(self.seed_decided, gained))
                        self._safely(functools.partial(self.handle, gained, trigger="takeover"))
                now = utcnow()
                if tick is None:
                    # Kept until it has fired: recomputed from the clock each pass, a tick
                    # passed during a notified pass would slide to the next bar's close.
                    tick = self.next_tick(now)
                wait = wake if tick is None else max(0.0, min(wake, (tick - now).total_seconds()))
                if listener is not None:
                    payloads = _listen(listener, wait, stop)
                else:
                    stop.wait(wait)
                    payloads = []
                if stop.is_set():
                    break
                woken: set[Series] = set()
                for payload in payloads:
                    parsed = parse_notification(payload)
                    if parsed is None:
                        continue
                    key, final = parsed
                    woken.add(key)
                    if final is not None and (key not in self.final or final > self.final[key]):
                        self.final[key] = final
                if woken:
                    self._safely(functools.partial(self.handle, woken, trigger="notify"))
                # The grace pass runs when due even while notifications stream in: a series
                # whose EA sends only forming bars is never notified of a closed bar.
                if tick is not None and utcnow() >= tick:
                    tick = None
                    self._safely(lambda: self.handle(self.refresh_series(), trigger="timer"))
                elif not woken and time.monotonic() - polled_at >= poll:
                    polled_at = time.monotonic()
                    if listener is not None:
                        self._safely(self._safety_net_poll)
                    else:
                        self._safely(lambda: self.handle(self.refresh_series(), trigger="poll"))
        finally:
            if listener is not None:
                listener.close()
            keeper_stop.set()
            keeper.join(timeout=self.presence.interval + 5)
            self.presence.stop()
            self.close()

    def _safety_net_poll(self) -> None:
        """Behind LISTEN, the poll only looks for a commit whose NOTIFY was missed: one read
        of every series' newest bar and stamp, and a pass over the series where either
        changed since the last poll (not a ready_bar read per series every few seconds,
        the idle worker's largest cost). A bar becoming ready by its grace running out is
        the minute timer's pass."""
        newest = {
            (b["symbol"], b["timeframe"]): (b["newest_ts"], b["newest_ingested_at"])
            for b in newest_bars(self.settings.database_url)
        }  # fmt: skip
        # A series whose newest bar is the one it decided has nothing new (the notified pass
        # decided it): after every bar close that is every series, a read each.
        changed = {
            key
            for key, seen in newest.items()
            if self._polled.get(key) != seen and not (key in self.decided and seen[0] <= self.decided[key])
        }
        if changed:
            self.handle(changed, trigger="poll")
        self._polled = newest  # after the pass: a pass that failed is retried on the next poll

    def _safely(self, step: Callable[[], object]) -> None:
        try:
            step()
        except Exception as exc:  # a database blip must not end the worker; the next pass retries
            log.exception("live pass failed (%s); retrying on the next wake-up", exc.__class__.__name__)
            time.sleep(min(1.0, self.settings.live_poll_seconds))


def _spent(started: float, rows: int, path: str) -> dict[str, Any]:
    """What a decision cost: its time and the feature rows it wrote (and how)."""
    return {"seconds": time.perf_counter() - started, "feature_rows": rows, "feature_path": path}


def _listen(listener: Listener, seconds: float, stop: threading.Event) -> list[str]:
    """``listener.wait``, idle on the socket: psycopg's wait for notifications wakes every
    0.1 s to stay interruptible, a millisecond of CPU a second per idle worker. Here the
    thread sleeps in select() until the connection has data (a NOTIFY, or its loss, which
    listener.wait then handles) or the time is up (at most a lease tick: stop is seen then)."""
    conn = listener.conn
    if conn is None or seconds <= 0:
        return listener.wait(seconds, stop)
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], seconds)
    except (OSError, ValueError):  # a closed socket: listener.wait notices and reconnects
        readable = [True]
    if not readable or stop.is_set():
        return []
    return listener.wait(READ_SECONDS, stop)
