"""A trade signal as one typed, frozen value: made by the decision, stored by the queue,
sent by the pusher, shown by the API and the Dagster asset.

It has one way to become the body the EA receives (:meth:`Signal.to_payload`, the seed's
keys in the seed's order plus ``expires_at``), one way to become a ``signals_queue`` row
(:meth:`Signal.to_row`) and one way back from each (:meth:`Signal.from_row`,
:meth:`Signal.from_payload`). Times are aware UTC datetimes inside, ISO 8601 with ``Z``
outside.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from mt5_pipeline.clock import as_utc, iso_z, parse_iso

SIDES = ("BUY", "SELL")

# The body's keys, in the seed's order.
PAYLOAD_KEYS = (
    "signal_id",
    "timestamp",
    "symbol",
    "timeframe",
    "side",
    "confidence",
    "sl_pips",
    "tp_pips",
    "price",
    "meta",
    "expires_at",
)
# What meta must carry: the queue stores these in their own columns too.
REQUIRED_META = ("model", "model_version", "probability")


def json_number(value: float) -> int | float:
    """20.0 -> 20: the seed's payload shows whole pips as integers."""
    value = float(value)
    return int(value) if value.is_integer() else value


@dataclass(frozen=True)
class Signal:
    signal_id: str
    bar: datetime  # the open time of the closed bar it was made from (the payload's "timestamp")
    symbol: str
    timeframe: str
    side: str  # BUY | SELL
    confidence: float
    sl_pips: float
    tp_pips: float
    price: float
    expires_at: datetime  # the bar's close + SIGNAL_TTL_SECONDS
    meta: Mapping[str, Any] = field(default_factory=dict)  # model, model_version, probability, label, ...

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"side: expected BUY or SELL, got {self.side!r}")
        missing = [k for k in REQUIRED_META if k not in self.meta]
        if missing:
            raise ValueError(f"meta lacks {', '.join(missing)}")
        for name in ("confidence", "sl_pips", "tp_pips", "price"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"{name}: must be a finite number")
        # Read-only, so the value stays what was decided wherever it travels.
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        object.__setattr__(self, "bar", as_utc(self.bar))
        object.__setattr__(self, "expires_at", as_utc(self.expires_at))

    @property
    def model(self) -> str:
        return str(self.meta["model"])

    @property
    def model_version(self) -> str:
        return str(self.meta["model_version"])

    @property
    def probability(self) -> float:
        return float(self.meta["probability"])

    # ---- the EA's body -----------------------------------------------------------------

    def to_payload(self) -> dict:
        return {
            "signal_id": self.signal_id,
            "timestamp": iso_z(self.bar),
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "side": self.side,
            "confidence": float(self.confidence),
            "sl_pips": json_number(self.sl_pips),
            "tp_pips": json_number(self.tp_pips),
            "price": float(self.price),
            "meta": dict(self.meta),
            "expires_at": iso_z(self.expires_at),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Signal:
        missing = [k for k in PAYLOAD_KEYS if k not in payload]
        if missing:
            raise ValueError(f"signal lacks {', '.join(missing)}")
        return cls._read(
            payload,
            bar=parse_iso(payload["timestamp"]),
            expires_at=parse_iso(payload["expires_at"]),
            meta=dict(payload["meta"]),
        )

    # ---- the queue's row ------------------------------------------------------------------

    def to_row(self) -> dict:
        """The signals_queue columns this value fills (the queue adds status and times)."""
        return {
            "signal_id": self.signal_id,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "ts": self.bar,
            "side": self.side,
            "confidence": float(self.confidence),
            "probability": self.probability,
            "sl_pips": float(self.sl_pips),
            "tp_pips": float(self.tp_pips),
            "price": float(self.price),
            "model": self.model,
            "model_version": self.model_version,
            "meta": json.dumps(dict(self.meta), separators=(",", ":")),
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_row(cls, row: Any) -> Signal:
        m = row._mapping if hasattr(row, "_mapping") else row
        return cls._read(m, bar=m["ts"], expires_at=m["expires_at"], meta=json.loads(m["meta"] or "{}"))

    @classmethod
    def _read(cls, m: Mapping[str, Any], *, bar: Any, expires_at: Any, meta: Mapping[str, Any]) -> Signal:
        """The fields a payload and a queue row spell alike; the times and meta, which they
        spell differently, come read."""
        return cls(
            signal_id=str(m["signal_id"]),
            bar=bar,
            symbol=m["symbol"],
            timeframe=m["timeframe"],
            side=m["side"],
            confidence=float(m["confidence"]),
            sl_pips=float(m["sl_pips"]),
            tp_pips=float(m["tp_pips"]),
            price=float(m["price"]),
            expires_at=expires_at,
            meta=meta,
        )
