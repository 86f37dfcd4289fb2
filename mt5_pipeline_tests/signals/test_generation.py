"""From probability to queued signal: the seed's decision band, staleness guards, one
signal per bar. The predictor is injected (its contract is model.Prediction), so these
tests pin probabilities exactly; the queue is the real database."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from mt5_pipeline.learning.prediction import Prediction
from mt5_pipeline.signals import queue
from mt5_pipeline.signals.generation import decide, generate_signal
from mt5_pipeline_tests.ea_server import BODY_KEYS

NOW = datetime(2025, 10, 25, 10, 31, 5, tzinfo=timezone.utc)
BAR = datetime(2025, 10, 25, 10, 30, tzinfo=timezone.utc)


def predictor_of(p: float, *, ts: datetime = BAR, close: float = 1.0950, **kw):
    fields = {
        "model_version": "20251025T030000Z",
        "model_trained_at": NOW - timedelta(hours=7),
        "label_mode": "horizon",
        "label_horizon": 5,
        **kw,
    }

    def predict(settings, symbol, timeframe):
        return Prediction(symbol, timeframe, ts, close, p, **fields)

    return predict


@pytest.mark.parametrize(
    "p, side, confidence",
    [
        (0.78, "BUY", 0.78),
        (0.55, "BUY", 0.55),
        (1.0, "BUY", 1.0),
        (0.45, "SELL", 0.55),
        (0.2, "SELL", 0.8),
        (0.0, "SELL", 1.0),
    ],
)
def test_decision_band(settings, p, side, confidence):
    d = decide(p, settings)
    assert d.side == side
    assert d.confidence == pytest.approx(confidence)
    assert d.probability == p


def test_neutral_band_says_why_and_force_picks_the_side(settings):
    d = decide(0.51, settings)
    assert d.side is None and d.confidence == 0.51
    assert "0.510" in d.reason and "(0.45, 0.55)" in d.reason
    assert decide(0.51, settings, force=True).side == "BUY"
    forced_sell = decide(0.47, settings, force=True)
    assert forced_sell.side == "SELL" and forced_sell.confidence == pytest.approx(0.53)
    with pytest.raises(ValueError):
        decide(1.2, settings)
    with pytest.raises(ValueError):
        decide(float("nan"), settings)


def test_thresholds_come_from_settings(settings_for, db_url):
    s = settings_for(db_url, signal_buy_threshold=0.7, signal_sell_threshold=0.3)
    assert decide(0.65, s).side is None
    assert decide(0.7, s).side == "BUY"


def test_a_buy_is_queued_in_the_seeds_shape_and_logged(settings, caplog):
    caplog.set_level(logging.INFO, logger="mt5_pipeline")
    result = generate_signal(settings, "EURUSD", "M1", now=NOW, predictor=predictor_of(0.785))
    assert result.status == "queued" and result.message == "Signal generated and added to queue"
    s = result.signal.to_payload()
    assert list(s) == BODY_KEYS
    assert s["timestamp"] == "2025-10-25T10:30:00Z"  # the bar's open time
    assert (s["symbol"], s["timeframe"], s["side"], s["confidence"], s["price"]) == (
        "EURUSD",
        "M1",
        "BUY",
        0.785,
        1.095,
    )
    assert s["sl_pips"] == 20 and s["tp_pips"] == 40 and isinstance(s["sl_pips"], int)
    assert s["meta"]["model"] == "rf_m1" and s["meta"]["label"] == 1
    assert s["meta"]["model_version"] == "20251025T030000Z" and s["meta"]["probability"] == 0.785
    # bar close (10:31) + SIGNAL_TTL_SECONDS (60)
    assert s["expires_at"] == "2025-10-25T10:32:00Z"
    assert queue.pending_for_pull(settings.database_url, now=NOW) == [result.signal]
    assert "Generated signal: EURUSD BUY (confidence: 78.5%)" in caplog.text


def test_a_sell_carries_the_inverted_confidence_and_per_symbol_pips(settings_for, db_url):
    s = settings_for(db_url, symbol_sl_tp_pips="USDJPY=25/50.5")
    result = generate_signal(s, "USDJPY", now=NOW, predictor=predictor_of(0.3, close=150.25))
    assert result.status == "queued"
    assert (result.signal.side, result.signal.confidence, result.signal.meta["label"]) == ("SELL", 0.7, 0)
    assert (result.signal.to_payload()["sl_pips"], result.signal.to_payload()["tp_pips"]) == (25, 50.5)


def test_the_same_bar_predicted_twice_gives_one_signal(settings):
    first = generate_signal(settings, "EURUSD", now=NOW, predictor=predictor_of(0.8))
    second = generate_signal(
        settings, "EURUSD", now=NOW + timedelta(seconds=3), predictor=predictor_of(0.8), force=True
    )
    assert first.status == "queued" and second.status == "duplicate"
    assert "already has its signal" in second.message
    assert second.signal.signal_id == first.signal.signal_id
    assert queue.status_counts(settings.database_url)["PENDING"] == 1


def test_neutral_probability_queues_nothing_unless_forced(settings):
    result = generate_signal(settings, "EURUSD", now=NOW, predictor=predictor_of(0.51))
    assert result.status == "neutral" and result.signal is None
    assert result.confidence == 0.51 and result.probability == 0.51
    assert "0.510" in result.message and "(0.45, 0.55)" in result.message and "force" in result.message
    assert queue.status_counts(settings.database_url)["PENDING"] == 0
    forced = generate_signal(settings, "EURUSD", force=True, now=NOW, predictor=predictor_of(0.51))
    assert forced.status == "queued" and forced.signal.meta["forced"] is True


def test_a_retrain_mid_bar_never_adds_a_second_signal(settings):
    """The bar has one signal whatever the model version: the database's unique index says so."""
    first = generate_signal(settings, "EURUSD", now=NOW, predictor=predictor_of(0.2, model_version="v1"))
    second = generate_signal(
        settings, "EURUSD", now=NOW + timedelta(seconds=5), predictor=predictor_of(0.9, model_version="v2")
    )
    assert first.status == "queued" and first.signal.side == "SELL"
    assert second.status == "duplicate" and second.signal.signal_id == first.signal.signal_id
    assert first.signal.signal_id in second.message and "SELL" in second.message and "v1" in second.message
    assert queue.status_counts(settings.database_url)["PENDING"] == 1
    assert [s.side for s in queue.pending_for_pull(settings.database_url, now=NOW)] == ["SELL"]


def test_a_bar_past_close_plus_ttl_is_too_late_and_queues_nothing(settings):
    # M1 bar 10:30 closes 10:31; SIGNAL_TTL_SECONDS=60: deliverable until 10:32:00.
    late = generate_signal(
        settings, "EURUSD", force=True, now=BAR + timedelta(seconds=121), predictor=predictor_of(0.9)
    )
    assert late.status == "too_late" and late.signal is None
    assert "too late" in late.message and "10:32:00Z" in late.message and "SIGNAL_TTL_SECONDS=60" in late.message
    assert late.figures == {
        "bar": "2025-10-25T10:30:00Z",
        "bar_close": "2025-10-25T10:31:00Z",
        "signal_ttl_seconds": 60,
        "deadline": "2025-10-25T10:32:00Z",
        "now": "2025-10-25T10:32:01Z",
        "seconds_late": 1.0,
    }
    assert queue.status_counts(settings.database_url)["PENDING"] == 0
    ok = generate_signal(settings, "EURUSD", now=BAR + timedelta(seconds=119), predictor=predictor_of(0.9))
    assert ok.status == "queued"


@pytest.mark.parametrize("timeframe", ["M1", "M5", "M15", "H1", "H4", "D1"])
def test_bar_age_guard_and_ttl_agree_on_every_timeframe(settings, timeframe):
    """Whatever the timeframe, a signal is queued only while it can still be delivered."""
    from mt5_pipeline.settings import TIMEFRAME_SECONDS

    # Default guard: two bars + 30 s from the open, always looser than close + TTL, so the
    # TTL decides: a second before the deadline is queued, at and after it "too late".
    statuses = {}
    for offset in (-1, 0, 1, 200):
        now = BAR + timedelta(seconds=TIMEFRAME_SECONDS[timeframe] + settings.signal_ttl_seconds + offset)
        result = generate_signal(settings, f"EURUSD{offset}", timeframe, now=now, predictor=predictor_of(0.9))
        statuses[offset] = result.status
        if result.status == "queued":
            assert now < result.signal.expires_at
    assert statuses == {-1: "queued", 0: "too_late", 1: "too_late", 200: "too_late"}
    assert queue.status_counts(settings.database_url)["PENDING"] == 1


def test_bar_age_limit_is_a_setting(settings_for, db_url):
    s = settings_for(db_url, signal_max_bar_age_seconds=30)
    result = generate_signal(s, "EURUSD", now=BAR + timedelta(seconds=65), predictor=predictor_of(0.9))
    assert result.status == "stale_bar" and "SIGNAL_MAX_BAR_AGE_SECONDS=30" in result.message


def test_no_signal_from_an_old_model(settings):
    old = predictor_of(0.9, model_trained_at=NOW - timedelta(hours=49))
    result = generate_signal(settings, "EURUSD", now=NOW, predictor=old)
    assert result.status == "stale_model" and "MODEL_MAX_AGE_HOURS=48" in result.message
    assert queue.status_counts(settings.database_url)["PENDING"] == 0


def test_predictor_errors_reach_the_caller(settings):
    class NoModelError(RuntimeError):
        pass

    def predict(settings, symbol, timeframe):
        raise NoModelError("no model: run mt5-pipeline train")

    with pytest.raises(NoModelError):
        generate_signal(settings, "EURUSD", now=NOW, predictor=predict)


def test_a_symbol_without_a_pip_size_gets_no_signal_and_the_message_names_the_setting(settings_for, db_url):
    refused = generate_signal(settings_for(db_url), "XAUUSD", now=NOW, predictor=predictor_of(0.9, close=2650.0))
    assert refused.status == "unknown_pip_size" and refused.signal is None
    assert "PIP_SIZES=XAUUSD=" in refused.message
    assert queue.status_counts(db_url)["PENDING"] == 0
    gold = generate_signal(
        settings_for(db_url, pip_sizes="XAUUSD=0.1"), "XAUUSD", now=NOW, predictor=predictor_of(0.9, close=2650.0)
    )
    assert gold.status == "queued" and gold.signal.meta["pip_size"] == 0.1


def test_no_signal_from_an_extreme_bar_until_the_next_bars_confirm_it(settings):
    from mt5_pipeline.market.ingest import ingest_candles
    from mt5_pipeline.market.sample_data import generate_candles

    history = generate_candles(400, end=BAR - timedelta(minutes=1), seed=3, with_weekends=False)
    spike = history.iloc[[-1]].copy()
    spike["time"] = BAR
    level = float(history["close"].iloc[-1])
    spike[["open", "low"]] = level
    spike[["high", "close"]] = level * 1.03  # a 3% jump in one M1 bar: plausible, extreme
    ingest_candles(settings.database_url, "EURUSD", "M1", history, now=NOW)
    ingest_candles(settings.database_url, "EURUSD", "M1", spike, now=NOW)
    held = generate_signal(settings, "EURUSD", now=NOW, predictor=predictor_of(0.9, close=level * 1.03))
    assert held.status == "unconfirmed_extreme" and held.signal is None
    assert queue.status_counts(settings.database_url)["PENDING"] == 0
