"""What clients send: each request body and query string, declared once.

These models are both the validator (mt5_pipeline.api.validation) and the OpenAPI
schema (mt5_pipeline.api.openapi), so the two cannot say different things. Strict: a
"1" is not 1 and a 1 is not true. Fields not declared here are ignored, as before.

Per-candle checks (prices, alignment, future bars) are the ingest core's job
(CandleValidationError), done column-wise over the whole batch; here a candle is only
checked to be an object, and `Candle` describes it for the document.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mt5_pipeline.api.validation import describe
from mt5_pipeline.clock import from_epoch, parse_iso
from mt5_pipeline.execution.contract import ACK_STATUSES, SYMBOL_PATTERN
from mt5_pipeline.execution.execution_policy import EXIT_REASONS
from mt5_pipeline.market.pips import MAX_DIGITS, check_instrument
from mt5_pipeline.server_time import EXAMPLES as ZONE_EXAMPLES
from mt5_pipeline.server_time import ZoneError, parse_zone
from mt5_pipeline.settings import TIMEFRAME_SECONDS

TIMEFRAMES: tuple[str, ...] = tuple(TIMEFRAME_SECONDS)
SIGNAL_ID_MAX = 36  # signals_queue.signal_id is a UUID string
ACK_STATUS_PATTERN = r"^[A-Za-z_]{1,20}$"  # signals_ack.status is String(20)
ACK_MESSAGE_MAX = 2000
MAX_PULL_LIMIT = 1000
DEFAULT_PULL_LIMIT = 100
# Broker servers run between UTC-12 and UTC+14.
UTC_OFFSET_RANGE = (-12, 14)

if TYPE_CHECKING:  # a Literal of a runtime tuple is pydantic's to check, not mypy's
    Timeframe = str
    ExitReason = str
else:
    Timeframe = Literal[TIMEFRAMES]
    ExitReason = Literal[EXIT_REASONS]
# The description doubles as the error message's "expected ...", so it says what is valid.
Symbol = Annotated[
    str,
    Field(
        pattern=SYMBOL_PATTERN,
        description="1-32 letters, digits or . _ # - (a broker symbol such as EURUSD or XAUUSD#)",
        examples=["EURUSD"],
    ),
]


def _default_for_null(default: Any) -> AfterValidator:
    # An explicit null has always meant "not sent" for optional fields; keep it so.
    return AfterValidator(lambda value: default if value is None else value)


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class Candle(_Request):
    """One bar, with MetaTrader 5's MqlRates field names. `time` is the bar's open time in UTC."""

    time: int | datetime = Field(
        description="the bar's open time: epoch seconds (UTC), or ISO 8601 with Z or an offset"
    )
    open: float = Field(gt=0)
    high: float = Field(gt=0)
    low: float = Field(gt=0)
    close: float = Field(gt=0)
    tick_volume: int = Field(ge=0)
    spread: int | None = Field(0, ge=0, description="in points, as MT5 gives it; null means 0")
    real_volume: int | None = Field(0, ge=0, description="null means 0")


def _an_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PydanticCustomError("candle_type", "expected an object, got {got}", {"got": describe(value)})
    return value


# Only "is it an object": pydantic would otherwise build a Candle per bar, ten thousand
# per batch, to repeat what the core checks anyway (and with other messages).
CandleObject = Annotated[Candle, PlainValidator(_an_object, json_schema_input_type=Candle)]


def _zone(value: str | None) -> str | None:
    # The core's reading (server_time.parse_zone), so the API refuses what ingest could not convert.
    if value is None:
        return None
    try:
        return parse_zone(value).name
    except ZoneError as exc:
        raise PydanticCustomError("server_time_zone", str(exc)) from None


class IngestRequest(_Request):
    symbol: Symbol
    timeframe: Timeframe
    candles: list[CandleObject]
    utc_offset_hours: Annotated[
        float | None,
        Field(
            ge=UTC_OFFSET_RANGE[0],
            le=UTC_OFFSET_RANGE[1],
            description=(
                "the broker's UTC offset: where its H4/D1/W1/MN1 bars begin (times themselves are UTC); null means 0"
            ),
        ),
        _default_for_null(0.0),
    ] = 0.0
    server_time_zone: Annotated[
        str | None,
        Field(
            max_length=64,
            description=(
                "the trade server's time zone: candle times are then the server's clock (MT5's bar times), "
                "converted to UTC here "
                f"bar by bar with the zone's rules; such as {ZONE_EXAMPLES}. Instead of utc_offset_hours"
            ),
            examples=["UTC+2/+3@US"],
        ),
        AfterValidator(_zone),
    ] = None
    partial: Annotated[
        bool | None,
        Field(
            description=(
                "true: store the good rows and list the bad ones in the answer (rejected, errors) instead of "
                "refusing the batch"
            )
        ),
        _default_for_null(False),
    ] = False
    digits: int | None = Field(
        None,
        ge=0,
        le=MAX_DIGITS,
        description=(
            "MT5's SYMBOL_DIGITS for this symbol (optional): with `point`, where its pip size comes from for "
            "anything that is "
            "not a currency pair (gold, indices, crypto); a pip is point x 10 on 3- and 5-digit quotes, else one point"
        ),
    )
    point: float | None = Field(
        None,
        gt=0,
        le=1,
        description=(
            "MT5's SYMBOL_POINT for this symbol (optional), e.g. 0.01 for XAUUSD quoted 2034.56; must match `digits` "
            "when both are sent"
        ),
    )

    @model_validator(mode="after")
    def _one_way_to_convert(self) -> IngestRequest:
        if self.server_time_zone is not None and "utc_offset_hours" in self.model_fields_set and self.utc_offset_hours:
            raise PydanticCustomError(
                "zone_and_offset",
                "send server_time_zone (times in server time) or utc_offset_hours (times in UTC), not both",
            )
        return self

    @field_validator("point")
    @classmethod
    def _point_matches_digits(cls, point: float | None, info: ValidationInfo) -> float | None:
        # The core's rule and wording (pips.check_instrument); `digits` is in info.data only if valid.
        for field, message in check_instrument(info.data.get("digits"), point):
            if field == "point":
                raise PydanticCustomError("point_mismatch", message)
        return None if point is None else float(point)


class GenerateSignalRequest(_Request):
    symbol: Symbol
    timeframe: Annotated[Timeframe | None, _default_for_null("M1")] = "M1"
    force: Annotated[
        bool | None, Field(description="queue a signal even inside the neutral band"), _default_for_null(False)
    ] = False


def _known_ack_status(value: str) -> str:
    value = value.upper()
    if value not in ACK_STATUSES:
        raise PydanticCustomError(
            "ack_status", "expected one of {allowed}, got {got}", {"allowed": ", ".join(ACK_STATUSES), "got": value}
        )
    return value


class AckRequest(_Request):
    signal_id: str = Field(min_length=1, max_length=SIGNAL_ID_MAX, description="the signal_id the EA received")
    ticket: int | None = Field(None, ge=0, lt=2**63, description="the order's ticket, null (or 0) when there is none")
    status: Annotated[
        str,
        Field(
            pattern=ACK_STATUS_PATTERN,
            description=(
                "1-20 letters or underscores, one of FILLED, PLACED, PARTIAL, ACKED (the signal becomes ACKED), "
                "REJECTED or EXPIRED; never moves a signal backwards (docs/execution.md)"
            ),
            examples=["FILLED"],
        ),
        AfterValidator(_known_ack_status),
    ]
    message: Annotated[str | None, Field(max_length=ACK_MESSAGE_MAX), _default_for_null("")] = ""
    retcode: int | None = Field(
        None,
        ge=0,
        lt=2**31,
        description="the terminal's MqlTradeResult retcode, e.g. 10018 for a closed market (optional)",
    )


def _pending_only(value: Any) -> Any:
    if isinstance(value, str) and value.upper() == "PENDING":
        return "PENDING"
    raise PydanticCustomError("pull_status", "only PENDING can be pulled (delivered signals are not sent twice)")


_WHOLE = re.compile(r"\s*[+-]?[0-9]+\s*")


def _whole_number(value: Any) -> Any:
    # int() would take "5_0" and pydantic's string mode "5.0"; a limit is digits.
    if isinstance(value, str) and _WHOLE.fullmatch(value):
        return int(value)
    raise PydanticCustomError("whole_number", "expected a whole number, got {got}", {"got": describe(value)})


class PullQuery(_Request):
    """GET /ea/signals: every value arrives as a string."""

    status: Annotated[
        Literal["PENDING"], Field(description="delivered signals are not sent twice"), BeforeValidator(_pending_only)
    ] = "PENDING"
    limit: Annotated[
        int,
        Field(ge=1, le=MAX_PULL_LIMIT, description="at most this many, oldest first"),
        BeforeValidator(_whole_number),
    ] = DEFAULT_PULL_LIMIT


# ---- trades (POST /ea/trades, GET /ea/trades, POST /ea/reconcile) ------------------------

MAX_TRADES_PER_REPORT = 1000
TICKET_MAX = 2**63


_YEAR_10000 = 253_402_300_800  # epoch seconds: datetime stops at 9999


def _utc_time(value: Any) -> datetime:
    # Epoch seconds as MT5 gives them (converted to UTC by the reporter) or ISO 8601.
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _YEAR_10000:
        return from_epoch(value)
    if isinstance(value, str):
        try:
            parsed = parse_iso(value) if ("Z" in value or "+" in value[10:] or "-" in value[10:]) else None
        except (ValueError, OverflowError):  # OverflowError: an offset past year 9999
            parsed = None
        if parsed is not None:
            return parsed
    raise PydanticCustomError(
        "utc_time", "expected epoch seconds (UTC) or ISO 8601 with Z or an offset, got {got}", {"got": describe(value)}
    )


UtcTime = Annotated[datetime, PlainValidator(_utc_time, json_schema_input_type=int | datetime)]
Price = Annotated[float, Field(gt=0)]
# A stop or target of 0 is MT5's "none".
Level = Annotated[
    float | None, Field(ge=0, description="price; 0 or null: none"), AfterValidator(lambda v: None if not v else v)
]


class TradeReport(_Request):
    """One position, as the terminal's deals history tells it: the open (IN deal) and,
    once closed, the close (OUT deal). Report it again when it closes: same ticket."""

    ticket: int = Field(
        gt=0, lt=TICKET_MAX, description="the position's ticket (POSITION_IDENTIFIER / DEAL_POSITION_ID)"
    )
    signal_id: str | None = Field(
        None,
        min_length=1,
        max_length=SIGNAL_ID_MAX,
        description="the signal that opened it (null: none known; the trade is flagged)",
    )
    symbol: Symbol
    timeframe: Timeframe | None = Field(None, description="the signal's timeframe wins when the signal is known")
    side: Literal["BUY", "SELL"]
    volume: float = Field(gt=0, description="lots")
    open_time: UtcTime = Field(description="the IN deal's time, UTC")
    open_price: Price
    sl: Level = None
    tp: Level = None
    close_time: UtcTime | None = Field(None, description="the OUT deal's time, UTC; null while open")
    close_price: Price | None = None
    exit_reason: ExitReason | None = Field(None, description="why it closed (required with close_time)")
    profit: float | None = Field(None, description="DEAL_PROFIT of the OUT deal, account currency")
    pips: float | None = Field(None, description="used only when the API knows no pip for the symbol")
    swap: float | None = Field(None, description="account currency")
    commission: float | None = Field(None, description="IN and OUT deals together, account currency")
    magic: int | None = Field(None, ge=0, lt=TICKET_MAX)
    account: int | None = Field(None, ge=0, lt=TICKET_MAX, description="the trading account (login)")

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for what one field cannot say: a close is all three of its fields, after the open."""
        closing = {"close_time": self.close_time, "close_price": self.close_price, "exit_reason": self.exit_reason}
        if all(v is None for v in closing.values()):
            return []
        out = [
            (name, "required with the other close fields (close_time, close_price, exit_reason)")
            for name, v in closing.items()
            if v is None
        ]
        if self.close_time is not None and self.close_time < self.open_time:
            out.append(("close_time", "before open_time"))
        return out


class TradesRequest(_Request):
    trades: list[TradeReport] = Field(
        min_length=1, max_length=MAX_TRADES_PER_REPORT, description="positions to record; each is idempotent by ticket"
    )


class OpenTradesQuery(_Request):
    """GET /ea/trades: every value arrives as a string."""

    status: Literal["open"] = Field("open", description="only open trades are listed (what reconciliation compares)")
    magic: Annotated[
        int | None,
        Field(ge=0, lt=TICKET_MAX, description="only trades with this magic"),
        BeforeValidator(lambda v: v if v is None else _whole_number(v)),
    ] = None
    account: Annotated[
        int | None,
        Field(ge=0, lt=TICKET_MAX, description="only this account's trades (and those with none)"),
        BeforeValidator(lambda v: v if v is None else _whole_number(v)),
    ] = None


class TerminalPosition(_Request):
    """One of the terminal's open positions (positions_get), as TradeReport's open part."""

    ticket: int = Field(gt=0, lt=TICKET_MAX)
    signal_id: str | None = Field(
        None, min_length=1, max_length=SIGNAL_ID_MAX, description="from the position's comment, when it carries one"
    )
    symbol: Symbol
    timeframe: Timeframe | None = None
    side: Literal["BUY", "SELL"]
    volume: float = Field(gt=0)
    open_time: UtcTime
    open_price: Price
    sl: Level = None
    tp: Level = None
    swap: float | None = None


class ReconcileRequest(_Request):
    magic: int = Field(ge=0, lt=TICKET_MAX, description="BRIDGE_MAGIC: only positions carrying it are compared")
    account: int | None = Field(None, ge=0, lt=TICKET_MAX)
    positions: list[TerminalPosition] = Field(
        max_length=10_000, description="every open position in the terminal with this magic"
    )
