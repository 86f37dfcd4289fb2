"""Request bodies and query strings, checked field by field.

Every problem is collected (not just the first) and answered as 422 with one detail per
offending path. Per-candle checks (prices, alignment, future bars) are the ingest core's
job (CandleValidationError); here only the envelope around them is checked, so the two
never disagree about what a valid candle is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mt5_pipeline.api.body import json_type
from mt5_pipeline.api.errors import ApiError, Detail
from mt5_pipeline.settings import TIMEFRAME_SECONDS

TIMEFRAMES: tuple[str, ...] = tuple(TIMEFRAME_SECONDS)
# Broker symbols carry suffixes such as "EURUSD.m", "XAUUSD#" or "US30.cash".
SYMBOL_PATTERN = r"^[A-Za-z0-9._#\-]{1,32}$"  # the ingest core's rule
_SYMBOL_RE = re.compile(SYMBOL_PATTERN)
SIGNAL_ID_MAX = 36  # signals_queue.signal_id is a UUID string
ACK_STATUS_PATTERN = r"^[A-Za-z_]{1,20}$"  # signals_ack.status is String(20)
_ACK_STATUS_RE = re.compile(ACK_STATUS_PATTERN)
ACK_MESSAGE_MAX = 2000
MAX_PULL_LIMIT = 1000


class _Checker:
    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body
        self.errors: list[Detail] = []

    def fail(self, loc: str, message: str) -> None:
        self.errors.append(Detail(loc, message))

    def string(self, name: str, *, required: bool = True, default: str | None = None) -> str | None:
        if name not in self.body or (self.body[name] is None and not required):
            if required:
                self.fail(name, "field required")
            return default
        value = self.body[name]
        if not isinstance(value, str):
            self.fail(name, f"expected a string, got {json_type(value)}")
            return None
        return value

    def symbol(self, name: str = "symbol") -> str | None:
        value = self.string(name)
        if value is not None and not _SYMBOL_RE.match(value):
            self.fail(name, "expected 1-32 letters, digits or . _ # - (a broker symbol such as EURUSD)")
            return None
        return value

    def timeframe(self, name: str = "timeframe", *, required: bool = True) -> str | None:
        value = self.string(name, required=required, default=None if required else "M1")
        if value is not None and value not in TIMEFRAMES:
            self.fail(name, f"unknown timeframe {value[:16]!r}; expected one of {', '.join(TIMEFRAMES)}")
            return None
        return value

    def boolean(self, name: str, default: bool) -> bool:
        if name not in self.body or self.body[name] is None:
            return default
        value = self.body[name]
        if not isinstance(value, bool):
            self.fail(name, f"expected true or false, got {json_type(value)}")
            return default
        return value

    def done(self, what: str) -> None:
        if self.errors:
            raise ApiError(422, f"invalid {what}", self.errors)


@dataclass(frozen=True)
class IngestRequest:
    symbol: str
    timeframe: str
    candles: list[dict[str, Any]]
    utc_offset_hours: float = 0.0
    digits: int | None = None
    point: float | None = None


# Broker servers run between UTC-12 and UTC+14.
UTC_OFFSET_RANGE = (-12.0, 14.0)


def parse_ingest(body: Mapping[str, Any]) -> IngestRequest:
    c = _Checker(body)
    symbol = c.symbol()
    timeframe = c.timeframe()
    candles = body.get("candles")
    if "candles" not in body:
        c.fail("candles", "field required")
    elif not isinstance(candles, list):
        c.fail("candles", f"expected an array of candles, got {json_type(candles)}")
    else:
        # The core checks each candle's fields; it needs objects to look into.
        for i, candle in enumerate(candles):
            if not isinstance(candle, dict):
                c.fail(f"candles[{i}]", f"expected an object, got {json_type(candle)}")
                if len(c.errors) >= 100:
                    break
    offset = body.get("utc_offset_hours", 0)
    if offset is None:
        offset = 0
    if isinstance(offset, bool) or not isinstance(offset, (int, float)):
        c.fail("utc_offset_hours", f"expected a number of hours, got {json_type(offset)}")
        offset = 0
    elif not (UTC_OFFSET_RANGE[0] <= offset <= UTC_OFFSET_RANGE[1]):
        c.fail("utc_offset_hours", f"expected {UTC_OFFSET_RANGE[0]:g} to {UTC_OFFSET_RANGE[1]:g}")
        offset = 0
    # What the EA knows about the instrument (optional): its pip for signals and labels.
    from mt5_pipeline.pips import check_instrument

    digits, point = body.get("digits"), body.get("point")
    for field, message in check_instrument(digits, point):
        c.fail(field, message)
    c.done("ingest request")
    return IngestRequest(symbol, timeframe, candles, float(offset), digits, None if point is None else float(point))  # type: ignore[arg-type]


@dataclass(frozen=True)
class GenerateSignalRequest:
    symbol: str
    timeframe: str
    force: bool


def parse_generate_signal(body: Mapping[str, Any]) -> GenerateSignalRequest:
    c = _Checker(body)
    symbol = c.symbol()
    timeframe = c.timeframe(required=False)
    force = c.boolean("force", False)
    c.done("signal request")
    return GenerateSignalRequest(symbol, timeframe or "M1", force)  # type: ignore[arg-type]


@dataclass(frozen=True)
class AckRequest:
    signal_id: str
    ticket: int | None
    status: str
    message: str


def parse_ack(body: Mapping[str, Any]) -> AckRequest:
    c = _Checker(body)
    signal_id = c.string("signal_id")
    if signal_id is not None and not (0 < len(signal_id) <= SIGNAL_ID_MAX):
        c.fail("signal_id", f"expected 1-{SIGNAL_ID_MAX} characters (the signal_id the EA received)")
    ticket = body.get("ticket")
    if ticket is not None and (isinstance(ticket, bool) or not isinstance(ticket, int)):
        c.fail("ticket", f"expected a whole number or null, got {json_type(ticket)}")
        ticket = None
    elif isinstance(ticket, int) and not (0 <= ticket < 2**63):
        c.fail("ticket", "expected a ticket number between 0 and 2^63-1")
        ticket = None
    status = c.string("status")
    if status is not None and not _ACK_STATUS_RE.match(status):
        c.fail("status", "expected 1-20 letters or underscores, such as FILLED or REJECTED")
    message = c.string("message", required=False, default="")
    if message is not None and len(message) > ACK_MESSAGE_MAX:
        c.fail("message", f"longer than {ACK_MESSAGE_MAX} characters")
    c.done("ack")
    return AckRequest(signal_id, ticket, status.upper(), message or "")  # type: ignore[arg-type, union-attr]


@dataclass(frozen=True)
class PullQuery:
    status: str
    limit: int


def parse_pull_query(params: Mapping[str, str]) -> PullQuery:
    errors: list[Detail] = []
    status = params.get("status", "PENDING")
    if status.upper() != "PENDING":
        errors.append(Detail("query.status", "only PENDING can be pulled (delivered signals are not sent twice)"))
    raw = params.get("limit", "100")
    limit = 100
    try:
        limit = int(raw)
        if not 1 <= limit <= MAX_PULL_LIMIT:
            errors.append(Detail("query.limit", f"expected 1-{MAX_PULL_LIMIT}, got {limit}"))
    except ValueError:
        errors.append(Detail("query.limit", f"expected a whole number, got {raw[:20]!r}"))
    if errors:
        raise ApiError(422, "invalid query", errors)
    return PullQuery("PENDING", limit)
