"""What the API answers: each response body, declared once for the OpenAPI document.

The routes build these bodies as plain dicts (and the signal from the core's
Signal.to_payload()); the models are the promise, and the schemathesis test checks the
answers against the document generated from them. Timestamps are ISO 8601 in UTC with
`Z` (mt5_pipeline.clock.iso_z): whole seconds unless there is a fraction.
A field with a default may be left out of the answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from mt5_pipeline.api.requests import Timeframe

Count = Annotated[int, Field(ge=0)]


class FieldError(BaseModel):
    """One offending path in a request (the ingest core's FieldError has the same fields)."""

    loc: str = Field(description="path of the offending value, such as candles[3].high or query.limit")
    message: str


class Error(BaseModel):
    """Every failure: `success` false, what went wrong, and for bad input each offending path."""

    success: Literal[False]
    error: str = Field(description="what went wrong; never names a key or a password")
    details: list[FieldError] = Field([], description="one entry per offending path (left out when there is none)")
    reason: str | None = Field(None, description="machine-readable cause where several share a status code")


class IngestResponse(BaseModel):
    success: Literal[True]
    received: Count
    inserted: Count
    updated: Count = Field(description="bars already stored whose values changed (re-sent, corrected)")
    unchanged: Count = Field(description="bars already stored with the same values (a safe retry)")
    duplicates: Count = Field(
        0, description="times that appeared twice in the batch (the last one was kept); left out when 0"
    )
    rejected: Count = Field(
        0, description="with partial=true: rows refused and not stored (each named in errors); left out when 0"
    )
    errors: list[FieldError] = Field(
        [],
        description=(
            "with partial=true: why each refused row was refused (the first 50, then a count); left out when none"
        ),
    )


class SignalMeta(BaseModel):
    """The signal's meta: who decided it, and the pip its stops are in."""

    model_config = ConfigDict(extra="allow")

    model: str
    model_version: str
    probability: float = Field(ge=0, le=1)
    pip_size: float | None = Field(
        None,
        gt=0,
        description=(
            "price size of one pip for this symbol (the core's rule): stops go sl_pips x pip_size from the fill price"
        ),
    )
    entry_policy: Literal["one_per_symbol_timeframe", "stack", "reverse"] | None = Field(
        None,
        description=(
            "the execution policy's entry rule (ENTRY_POLICY, docs/trades.md): the executor obeys it, "
            "as the backtest did"
        ),
    )
    max_hold_bars: int | None = Field(
        None, ge=1, description="the time exit: close at the close of this many bars counted from the entry bar"
    )


class Signal(BaseModel):
    """What the EA receives (POST to EA_SERVER_URL, or GET /ea/signals in pull mode)."""

    signal_id: str = Field(description="UUID; the EA dedupes on it")
    timestamp: datetime = Field(description="open time of the bar the signal is for")
    symbol: str
    timeframe: Timeframe
    side: Literal["BUY", "SELL"]
    confidence: float = Field(ge=0, le=1)
    sl_pips: float
    tp_pips: float
    price: float
    meta: SignalMeta = Field(description="model, label, model_version, probability, pip_size, ...")
    expires_at: datetime = Field(description="after this the EA must not trade it")


class GenerateSignalQueued(BaseModel):
    success: Literal[True]
    message: str = Field(examples=["Signal generated and added to queue"])
    signal: Signal


class GenerateSignalNeutral(BaseModel):
    success: Literal[False]
    message: str
    confidence: float
    probability: float | None
    reason: Literal["neutral"]


class TestConnectionResponse(BaseModel):
    connected: bool
    ea_server: str = Field(examples=["192.168.15.18:8080"])
    ea_url: str = Field(examples=["http://192.168.15.18:8080/signals"])
    message: str
    status_code: int | None = Field(
        None, description="what the EA's signals route answered to the probe, when it answered"
    )


class StatusCount(BaseModel):
    count: Count
    latest: datetime | None = Field(description="when the newest of them was created")


class QueueStatusResponse(BaseModel):
    success: Literal[True]
    queue_status: dict[str, StatusCount] = Field(
        description=(
            "per status (PENDING, SENT, ACKED, FAILED, EXPIRED, REJECTED): signals created in the period; statuses "
            "with none are left out"
        )
    )
    period: Literal["last_24_hours"]


class PushResponse(BaseModel):
    success: Literal[True]
    sent_count: Count
    message: str = Field(examples=["Successfully pushed 3 signals to EA"])
    claimed: Count
    rejected: Count
    retried: Count
    failed: Count
    expired: Count


class AckResponse(BaseModel):
    success: Literal[True]
    signal_id: str
    status: str = Field(
        description=(
            "the signal's queue status after the ack: ACKED, REJECTED or EXPIRED as the ack says, or where it already "
            "was when that is further along"
        )
    )
    ticket: int | None
    ack_status: str = Field(description="the status the EA reported")
    repeated: bool = Field(description="this signal had been acked before")


class SignalsResponse(BaseModel):
    success: Literal[True]
    signals: list[Signal]


class Retrain(BaseModel):
    outcome: Literal["promoted", "forced", "rejected", "failed"]
    version: str
    at: datetime
    reason: str


class NewestBar(BaseModel):
    symbol: str
    timeframe: str
    newest_ts: datetime | None
    age_seconds: float | None
    stale: bool


class ModelStatus(BaseModel):
    model: str
    champion_version: str | None
    champion_age_seconds: float | None
    last_retrain: Retrain | None


class Trade(BaseModel):
    """A row of the trades table."""

    ticket: int
    signal_id: str | None
    unknown_signal: bool = Field(
        description="the signal is not in signals_queue: kept, flagged, left out of the model's live figures"
    )
    model_version: str | None
    account: int | None
    magic: int | None
    symbol: str
    timeframe: str | None
    side: Literal["BUY", "SELL"]
    volume: float
    open_time: datetime
    open_price: float
    sl: float | None
    tp: float | None
    close_time: datetime | None
    close_price: float | None
    exit_reason: str | None
    profit: float | None
    pips: float | None
    swap: float
    commission: float
    pip_size: float | None
    status: Literal["open", "closed"]


class TradeOutcome(BaseModel):
    ticket: int
    outcome: Literal["inserted", "updated", "unchanged"] = Field(description="unchanged: a repeated report")
    status: Literal["open", "closed"]
    unknown_signal: bool


class TradesResponse(BaseModel):
    success: Literal[True]
    received: Count
    inserted: Count
    updated: Count
    unchanged: Count
    flagged: Count = Field(description="reports whose signal is unknown (kept and flagged)")
    trades: list[TradeOutcome]


class OpenTradesResponse(BaseModel):
    success: Literal[True]
    trades: list[Trade]


class ReconcileResponse(BaseModel):
    success: Literal[True]
    in_sync: bool
    terminal_positions: Count
    unknown: list[int] = Field(description="positions the API did not hold open: recorded now")
    missing: list[int] = Field(
        description="trades the API holds open that the terminal does not: report their close from the deals history"
    )


class Reconciliation(BaseModel):
    state: Literal["never", "in_sync", "differences"]
    checked_at: datetime | None
    unknown_positions: Count
    missing_positions: Count


class OpenPositions(BaseModel):
    symbol: str
    open: Count


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "unavailable"]
    model: Literal["loaded", "missing", "stale"]
    model_version: str | None
    model_age_seconds: float | None
    model_stale_reason: str | None = None
    model_error: str | None = Field(None, description="why the model file cannot be used (retrain)")
    ea: Literal["reachable", "unreachable", "disabled"]
    delivery: Literal["push", "pull"]
    ea_delivery: Literal["ok", "outage", "config_error"] | None = Field(
        None,
        description="the pushers' view of the EA (push mode): outage = signals held while they probe; "
        "config_error = delivery stopped (401/403/404/405/415)",
    )
    ea_delivery_status_code: int | None = None
    ea_delivery_error: str | None = Field(None, description="what the EA answered, and which setting to check")
    ea_delivery_since: datetime | None = None
    newest_bars: list[NewestBar]
    champion_age_seconds: float | None = Field(None, description="age of the first timeframe's champion")
    last_retrain: Retrain | None = None
    retrain_failed: list[str] = Field([], description="timeframes whose last retrain failed (status is degraded)")
    models: dict[str, ModelStatus] | None = Field(
        None, description="per timeframe in TIMEFRAMES: the champion and the last retrain"
    )
    open_positions: list[OpenPositions] = Field([], description="open trades per symbol, as reported (POST /ea/trades)")
    reconciliation: Reconciliation | None = Field(
        None,
        description=(
            "the bridge's last comparison of the terminal's positions with the open trades "
            "(differences: status degraded)"
        ),
    )
    version: str
