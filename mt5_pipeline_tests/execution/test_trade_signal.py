"""The typed signal: one way to the EA's body and back, one way to a row and back."""

from datetime import datetime, timezone

import pytest

from mt5_pipeline.execution.trade_signal import PAYLOAD_KEYS, Signal

BAR = datetime(2025, 10, 25, 10, 30, tzinfo=timezone.utc)


def _signal(**kw) -> Signal:
    fields = dict(
        signal_id="550e8400-e29b-41d4-a716-446655440000",
        bar=BAR,
        symbol="EURUSD",
        timeframe="M1",
        side="BUY",
        confidence=0.78,
        sl_pips=20.0,
        tp_pips=40.5,
        price=1.095,
        expires_at=datetime(2025, 10, 25, 10, 32, tzinfo=timezone.utc),
        meta={"model": "rf_m1", "model_version": "v1", "probability": 0.78, "label": 1},
    )
    return Signal(**{**fields, **kw})


def test_the_payload_is_the_seeds_body_and_comes_back_unchanged():
    signal = _signal()
    payload = signal.to_payload()
    assert list(payload) == list(PAYLOAD_KEYS)
    assert payload["timestamp"] == "2025-10-25T10:30:00Z" and payload["expires_at"] == "2025-10-25T10:32:00Z"
    assert payload["sl_pips"] == 20 and isinstance(payload["sl_pips"], int) and payload["tp_pips"] == 40.5
    assert Signal.from_payload(payload) == signal


def test_a_row_comes_back_as_the_same_value():
    signal = _signal()
    row = signal.to_row()
    assert (row["ts"], row["model_version"], row["probability"]) == (BAR, "v1", 0.78)
    assert Signal.from_row(row) == signal


def test_it_is_frozen_down_to_its_meta():
    signal = _signal()
    with pytest.raises(AttributeError):
        signal.side = "SELL"  # type: ignore[misc]
    with pytest.raises(TypeError):
        signal.meta["model"] = "other"  # type: ignore[index]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"side": "HOLD"}, "side"),
        ({"meta": {"model": "rf_m1"}}, "meta lacks model_version, probability"),
        ({"price": float("nan")}, "price"),
    ],
)
def test_a_malformed_signal_cannot_exist(change, message):
    with pytest.raises(ValueError, match=message):
        _signal(**change)
    with pytest.raises(ValueError, match="lacks expires_at"):
        Signal.from_payload({k: v for k, v in _signal().to_payload().items() if k != "expires_at"})
