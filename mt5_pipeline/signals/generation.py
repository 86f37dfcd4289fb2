"""From a model probability to a queued trade signal: the decision band, the staleness
guards, and one signal per bar.

The seed calls the model's probability "confidence": at or above SIGNAL_BUY_THRESHOLD a
BUY whose confidence is the probability; at or below SIGNAL_SELL_THRESHOLD a SELL whose
confidence is 1 - p (the probability of the move the SELL bets on); in between nothing,
unless forced.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from mt5_pipeline.bars import Ready
from mt5_pipeline.clock import as_utc, iso_z, parse_iso, resolve_now
from mt5_pipeline.execution.execution_policy import ExecutionPolicy, signal_meta
from mt5_pipeline.execution.trade_signal import Signal
from mt5_pipeline.learning.prediction import Prediction
from mt5_pipeline.market.extremes import RecentBars, unconfirmed_extreme, unconfirmed_extreme_in, window_ends_at
from mt5_pipeline.market.pips import PipSizeUnknown, pip_size, pip_size_for
from mt5_pipeline.settings import Settings
from mt5_pipeline.signals import queue

log = logging.getLogger(__name__)

Predictor = Callable[[Settings, str, str], Prediction]
Instrument = tuple[int | None, float | None]  # the symbols row: (digits, point)


@dataclass(frozen=True)
class Decision:
    side: str | None  # "BUY" | "SELL" | None (neutral band, not forced)
    confidence: float
    probability: float
    reason: str


@dataclass(frozen=True)
class GenerateResult:
    # "queued" | "duplicate" | "neutral" | "too_late" | "stale_bar" | "stale_model" | "unconfirmed_extreme"
    # | "unknown_pip_size" | "not_ready"
    status: str
    message: str
    probability: float | None
    confidence: float | None
    signal: Signal | None  # the signal queued (for "duplicate": the one the bar already has)
    bar: datetime | None = None  # open time of the closed bar that was decided on
    figures: dict | None = None  # "too_late": the bar's close, the deadline, how late; "not_ready": retry_at

    @property
    def queued(self) -> bool:
        return self.status == "queued"


def decide(probability: float, settings: Settings, force: bool = False) -> Decision:
    """The seed's decision band. In the band the confidence reported is the probability
    itself (what the seed's "0.45 < Confidence < 0.55" means); forced, the side follows
    the probability's side of 0.5."""
    p = float(probability)
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"probability must be between 0 and 1, got {probability!r}")
    buy, sell = settings.signal_buy_threshold, settings.signal_sell_threshold
    if p >= buy:
        return Decision("BUY", p, p, f"probability {p:.3f} >= SIGNAL_BUY_THRESHOLD {buy}")
    if p <= sell:
        return Decision("SELL", 1.0 - p, p, f"probability {p:.3f} <= SIGNAL_SELL_THRESHOLD {sell}")
    band = f"probability {p:.3f} is inside the neutral band ({sell}, {buy})"
    if not force:
        return Decision(None, p, p, band)
    if p >= 0.5:
        return Decision("BUY", p, p, f"forced: {band}; BUY because it is >= 0.5")
    return Decision("SELL", 1.0 - p, p, f"forced: {band}; SELL because it is < 0.5")


def signal_expires_at(bar_open: datetime, timeframe: str, settings: Settings) -> datetime:
    """The bar's close (open + timeframe; MN1: the calendar month) plus SIGNAL_TTL_SECONDS."""
    from mt5_pipeline.bars import bar_close

    return bar_close(bar_open, timeframe) + timedelta(seconds=settings.signal_ttl_seconds)


def too_late(settings: Settings, bar_open: datetime, timeframe: str, *, now: datetime | None = None) -> dict | None:
    """The figures when a signal for this bar could no longer be delivered (its close +
    SIGNAL_TTL_SECONDS has passed), else None. Checked before queueing, so the queue never
    holds a signal that was born expired."""
    at = resolve_now(now)
    expires = signal_expires_at(bar_open, timeframe, settings)
    if at < expires:
        return None
    close = expires - timedelta(seconds=settings.signal_ttl_seconds)
    return {
        "bar": iso_z(bar_open),
        "bar_close": iso_z(close),
        "signal_ttl_seconds": settings.signal_ttl_seconds,
        "deadline": iso_z(expires),
        "now": iso_z(at),
        "seconds_late": round((at - expires).total_seconds(), 3),
    }


def bar_staleness(
    settings: Settings, timeframe: str, newest_bar_open: datetime | str | None, *, now: datetime | None = None
) -> str | None:
    """Why the newest closed bar is too old to trade on (the feed stalled), or None if fresh.

    Age is measured from the bar's open time: a healthy M1 feed keeps its newest closed
    bar under two bars old, so the limit is SIGNAL_MAX_BAR_AGE_SECONDS (default two bars +
    30 s). A signal also needs its bar's close + SIGNAL_TTL_SECONDS ahead
    (:func:`too_late`, checked first), so this guard can only be the stricter of the two:
    whichever limit a bar passes first, no undeliverable signal is queued. /health uses this too.
    """
    at = resolve_now(now)
    if newest_bar_open is None:
        return f"no {timeframe} bars at all"
    newest_bar_open = parse_iso(newest_bar_open)
    age = (at - newest_bar_open).total_seconds()
    limit = settings.max_bar_age_seconds(timeframe)
    if age > limit:
        return (
            f"the newest {timeframe} bar ({iso_z(newest_bar_open)}) is {age:.0f} s old, "
            f"more than SIGNAL_MAX_BAR_AGE_SECONDS={limit}: the feed has stalled"
        )
    return None


def model_staleness(
    settings: Settings, trained_at: datetime | str | None, *, now: datetime | None = None
) -> str | None:
    """Why the model is too old to trade on, or None if fresh enough (/health uses this too)."""
    if trained_at is None:
        return "the model's training time is unknown"
    at = resolve_now(now)
    trained_at = parse_iso(trained_at)
    age_h = (at - trained_at).total_seconds() / 3600.0
    if age_h > settings.model_max_age_hours:
        return (
            f"the model was trained {age_h:.1f} h ago ({iso_z(trained_at)}), "
            f"more than MODEL_MAX_AGE_HOURS={settings.model_max_age_hours:g}: retrain it"
        )
    return None


def build_signal(
    prediction: Prediction,
    decision: Decision,
    settings: Settings,
    *,
    forced: bool = False,
    pip_size: float | None = None,
) -> Signal:
    """The signal for a decided prediction: priced at the bar's close, expiring at its close + TTL."""
    if decision.side is None:
        raise ValueError("no side: nothing to build")
    sl, tp = settings.sl_tp_pips(prediction.symbol)
    return Signal(
        signal_id=str(uuid.uuid4()),
        bar=prediction.ts,
        symbol=prediction.symbol,
        timeframe=prediction.timeframe,
        side=decision.side,
        confidence=round(decision.confidence, 6),
        sl_pips=sl,
        tp_pips=tp,
        price=float(prediction.close),
        expires_at=signal_expires_at(prediction.ts, prediction.timeframe, settings),
        meta={
            "model": prediction.model,
            # The class the model predicts: 1 = price up (BUY), 0 = not up (SELL).
            "label": 1 if decision.side == "BUY" else 0,
            "model_version": prediction.model_version,
            "probability": round(decision.probability, 6),
            "label_mode": prediction.label_mode,
            "label_horizon": prediction.label_horizon,
            "forced": forced,
            # The unit of sl_pips/tp_pips in price, so the EA need not guess it.
            **({"pip_size": pip_size} if pip_size is not None else {}),
            # The entry rule and the time exit the backtest simulated, for the bridge and the EA.
            **signal_meta(ExecutionPolicy.from_settings(settings)),
        },
    )


def _default_predictor(now: datetime, bar: datetime | None) -> Predictor:
    from mt5_pipeline.learning.model import predict_latest  # helper module; heavy imports stay lazy

    return lambda settings, symbol, timeframe: predict_latest(settings, symbol, timeframe, now=now, bar=bar)


def _not_ready(symbol: str, timeframe: str, waiting: datetime | None, until: datetime | None) -> GenerateResult:
    if waiting is None:
        message = f"No signal: no closed {symbol} {timeframe} bar yet"
    else:
        message = (
            f"No signal yet: the {symbol} {timeframe} bar {iso_z(waiting)} has closed "
            "but its final version has not arrived"
        )
        if until is not None:
            message += (
                f"; it is decided from the version stored at {iso_z(until)} "
                "(LIVE_CLOSE_GRACE_SECONDS after its close) if none comes"
            )
    return GenerateResult(
        "not_ready", message, None, None, None, waiting, {"retry_at": iso_z(until)} if until is not None else None
    )


Enqueue = Callable[..., bool]  # queue.enqueue's signature: (database_url, signal, *, now) -> queued


def generate_signal(
    settings: Settings,
    symbol: str,
    timeframe: str = "M1",
    force: bool = False,
    *,
    now: datetime | None = None,
    predictor: Predictor | None = None,
    refresh_features: bool = False,
    bar: datetime | None = None,
    recent_bars: RecentBars | None = None,
    enqueue: Enqueue | None = None,
    instrument: Instrument | None | Literal["unread"] = "unread",
) -> GenerateResult:
    """Predict the series' ready bar, decide, and queue at most one signal for it.

    The ready bar (:func:`mt5_pipeline.storage.candles.ready_bar`) is the newest closed bar whose final
    version is in or whose LIVE_CLOSE_GRACE_SECONDS have passed; inside the grace the bar
    before it is decided, and with nothing ready the answer is "not_ready". `bar`: the
    caller has chosen it by the same rule (the live worker, which also knows what NOTIFY
    said); exactly that bar is predicted.

    `refresh_features` first brings the symbol's features up to its newest closed candle
    (the API's manual path and the live worker: the bar just ingested may not have
    features yet; the Dagster prediction run has just computed them). NoModelError /
    NoFeaturesError / ModelMismatchError / ModelTimeframeError from the predictor
    propagate. Late or stale inputs never produce a signal, forced or not. The database
    holds one signal per (symbol, timeframe, bar), whatever the model version: a second
    request for the bar answers "duplicate" with the signal the bar already has.

    `recent_bars`: the series' newest EXTREME_CHECK_WINDOW candles up to ``bar`` already in
    hand (the live worker's tail), for the extreme-bar guard instead of reading them;
    ignored when they do not end at the bar predicted.

    `enqueue`: queues the signal (:func:`queue.enqueue` by default); the live worker's
    also commits the bar's feature row in the same transaction.

    `instrument`: the symbol's (digits, point) as the caller just read them (None: the EA
    never described it), for the pip instead of reading them again.
    """
    at = resolve_now(now)
    ready = None
    if bar is None:
        from mt5_pipeline.storage.candles import ready_bar

        ready = ready_bar(
            settings.database_url, symbol, timeframe, grace_seconds=settings.live_close_grace_seconds, now=at
        )
        if ready.stored and ready.bar is None:
            return _not_ready(symbol, timeframe, ready.waiting, ready.until)
        wanted = ready.bar
    else:
        wanted = as_utc(bar)
    if refresh_features:
        from mt5_pipeline.learning.features import update_features

        update_features(settings.database_url, symbol, timeframe, now=at)
    predict = predictor or _default_predictor(at, wanted)
    prediction = predict(settings, symbol, timeframe)
    p = float(prediction.probability)
    bar = as_utc(prediction.ts)
    if wanted is not None and bar > wanted:
        # An injected predictor went past the ready bar: its final version may still change.
        return _not_ready(symbol, timeframe, bar, None)
    held = _held_back(settings, symbol, timeframe, prediction, at, ready, recent_bars)
    if held is not None:
        return held

    decision = decide(p, settings, force)
    if decision.side is None:
        message = f"No signal: {decision.reason}; send force=true to trade it anyway"
        log.info("No signal for %s %s: %s", symbol, timeframe, decision.reason)
        return GenerateResult("neutral", message, p, decision.confidence, None, bar)
    return _queue(
        settings, prediction, decision, force=force, now=at, enqueue=enqueue or queue.enqueue, instrument=instrument
    )


def _held_back(
    settings: Settings,
    symbol: str,
    timeframe: str,
    prediction: Prediction,
    at: datetime,
    ready: Ready | None,
    recent_bars: RecentBars | None,
) -> GenerateResult | None:
    """Why the predicted bar gets no signal whatever the probability (too late, a stalled
    feed, an old model, an unconfirmed extreme bar), or None."""
    p = float(prediction.probability)
    bar = as_utc(prediction.ts)
    late = too_late(settings, bar, prediction.timeframe, now=at)
    if late and ready is not None and ready.waiting is not None and ready.waiting > bar:
        # The bar before is past its deadline, but the one that just closed becomes ready
        # within the grace: "ask again then", not "too late" (which reads as a dead feed).
        return _not_ready(symbol, timeframe, ready.waiting, ready.until)
    if late:
        message = (
            f"No signal: too late for {symbol} {prediction.timeframe} bar {late['bar']}: it closed at "
            f"{late['bar_close']}, "
            f"and with SIGNAL_TTL_SECONDS={late['signal_ttl_seconds']} its signal had to reach the EA by "
            f"{late['deadline']}; "
            f"it is now {late['now']} ({late['seconds_late']:g} s late)"
        )
        log.warning(message)
        return GenerateResult("too_late", message, p, None, None, bar, late)
    stale = bar_staleness(settings, prediction.timeframe, bar, now=at)
    if stale:
        log.warning("No signal for %s %s: %s", symbol, timeframe, stale)
        return GenerateResult("stale_bar", f"No signal: {stale}", p, None, None, bar)
    stale = model_staleness(settings, prediction.model_trained_at, now=at)
    if stale:
        log.warning("No signal for %s %s: %s", symbol, timeframe, stale)
        return GenerateResult("stale_model", f"No signal: {stale}", p, None, None, bar)

    if recent_bars is not None and window_ends_at(recent_bars, bar):
        hold = unconfirmed_extreme_in(recent_bars, symbol, prediction.timeframe)
    else:
        hold = unconfirmed_extreme(settings.database_url, symbol, prediction.timeframe, bar)
    if hold:
        log.warning("No signal for %s %s: %s", symbol, timeframe, hold)
        return GenerateResult("unconfirmed_extreme", f"No signal: {hold}", p, None, None, bar)
    return None


def _queue(
    settings: Settings,
    prediction: Prediction,
    decision: Decision,
    *,
    force: bool,
    now: datetime,
    enqueue: Enqueue,
    instrument: Instrument | None | Literal["unread"],
) -> GenerateResult:
    """Price the decided signal in the instrument's pips and queue it: "queued", or
    "duplicate" with the signal the bar already has."""
    p, bar = decision.probability, as_utc(prediction.ts)
    symbol, timeframe = prediction.symbol, prediction.timeframe
    try:
        # Pips only mean something in the instrument's own unit: never an FX default for gold.
        if instrument == "unread":
            pip = pip_size_for(settings, settings.database_url, symbol)
        else:  # the same rule, on the row the caller read
            pip = pip_size(symbol, settings.pip_sizes, instrument)
    except PipSizeUnknown as exc:
        log.warning("No signal for %s %s: %s", symbol, timeframe, exc)
        return GenerateResult("unknown_pip_size", f"No signal: {exc}", p, decision.confidence, None, bar)

    signal = build_signal(
        prediction, decision, settings, forced=force and decision.reason.startswith("forced"), pip_size=pip
    )
    if not enqueue(settings.database_url, signal, now=now):
        existing = queue.find_bar_signal(settings.database_url, symbol, timeframe, bar)
        if existing is None:  # the signal_id collided, not the bar: cannot happen with uuid4
            raise RuntimeError(f"signal {signal.signal_id} was not queued and the bar has no signal")
        message = (
            f"The {symbol} {timeframe} bar {iso_z(bar)} already has its signal: {existing.signal_id} "
            f"({existing.side}, model {existing.model_version}); one signal per bar, nothing new queued"
        )
        log.info(message)
        return GenerateResult("duplicate", message, p, decision.confidence, existing, bar)

    log.info("Generated signal: %s %s (confidence: %.1f%%)", signal.symbol, signal.side, decision.confidence * 100)
    return GenerateResult("queued", "Signal generated and added to queue", p, decision.confidence, signal, bar)
