"""The trade server's clock: MT5 bar times are the server's wall clock, not UTC.

Most FX brokers run their server at UTC+2 in winter and UTC+3 in summer, so one offset
measured today is wrong for half of any history. A :class:`ServerZone` holds the
server's zone *rules* and converts each bar by the offset in force at that bar. This is
the only place that turns server times into UTC: the ingest core (a client that sends
``server_time_zone``), the bridge's bookkeeping and the MT5 CSV importer all call it.

A zone is written as one of:

* ``UTC``, ``UTC+3``, ``UTC-5:30``: a fixed offset (what ``auto`` measures: right only
  while the server's offset does not change).
* an IANA zone, such as ``Europe/Athens`` (UTC+2/+3 on the EU dates) or ``Asia/Tokyo``.
* a broker convention ``UTC+A/+B@US`` or ``UTC+A/+B@EU``: UTC+A in winter and UTC+A+1
  in summer, switching on the US dates (New York's: the "New York close" servers, most
  often ``UTC+2/+3@US``) or on the EU dates (at 01:00 UTC, as all of the EU does).

A server time that the rules skip (inside a spring-forward hour) is refused; one they
repeat (a fall-back hour) is read as the first of the two, the summer one. FX servers
switch on a weekend, when there are no bars, so neither occurs on a real feed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

# Broker servers run between UTC-12 and UTC+14.
OFFSET_RANGE_S = (-12 * 3600, 14 * 3600)
_FIXED = re.compile(r"(?:UTC|GMT)?\s*(?:([+-])(\d{1,2})(?::?(\d{2}))?)?", re.IGNORECASE)
_CONVENTION = re.compile(r"(?:UTC|GMT)?\s*([+-]\d{1,2})\s*/\s*([+-]\d{1,2})\s*@\s*(US|EU)", re.IGNORECASE)
# The dates a convention switches on, as the zone whose standard offset is known.
_SWITCH_ZONES = {"US": ("America/New_York", -5 * 3600), "EU": ("Europe/London", 0)}

EXAMPLES = "UTC+2, Europe/Athens, or UTC+2/+3@US (UTC+2 in winter, +3 in summer, switching on the US dates)"


class ZoneError(ValueError):
    """A zone that cannot be read; the message says what is accepted."""


@dataclass(frozen=True)
class ServerZone:
    """The server's wall clock = the local time of ``base`` (None: UTC) + ``shift_s``."""

    name: str
    base: str | None = None
    shift_s: int = 0

    @property
    def fixed(self) -> bool:
        return self.base is None

    def _base_zone(self) -> ZoneInfo | None:
        return None if self.base is None else ZoneInfo(self.base)

    def to_utc(self, server_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(UTC epoch seconds, ok mask) of server-clock epoch seconds, bar by bar.

        A server time the rules skip is not ok (its UTC value is left 0).
        """
        server_s = np.asarray(server_s, dtype=np.int64)
        if self.base is None or not len(server_s):
            return server_s - self.shift_s, np.ones(len(server_s), dtype=bool)
        wall = pd.DatetimeIndex((server_s - self.shift_s).astype("datetime64[s]"))
        local = wall.tz_localize(self.base, ambiguous=np.ones(len(wall), dtype=bool), nonexistent="NaT")
        ok = ~np.asarray(local.isna())
        utc = np.zeros(len(server_s), dtype=np.int64)
        utc[ok] = local[ok].tz_convert("UTC").tz_localize(None).to_numpy().astype("datetime64[s]").astype(np.int64)
        return utc, ok

    def offset_at_utc(self, utc_s: np.ndarray | int) -> np.ndarray:
        """The server's offset from UTC (seconds) at UTC epoch seconds."""
        utc_s = np.atleast_1d(np.asarray(utc_s, dtype=np.int64))
        if self.base is None:
            return np.full(len(utc_s), self.shift_s, dtype=np.int64)
        return np.fromiter((_offset(self.base, int(t)) for t in utc_s), dtype=np.int64, count=len(utc_s)) + self.shift_s

    def to_server(self, utc_s: np.ndarray | int) -> np.ndarray:
        utc_s = np.atleast_1d(np.asarray(utc_s, dtype=np.int64))
        return utc_s + self.offset_at_utc(utc_s)

    def offset_now(self, now: datetime) -> int:
        return int(self.offset_at_utc(int(now.timestamp()))[0])

    def __str__(self) -> str:
        return self.name


def _offset(base: str, utc_s: int) -> int:
    moment = datetime.fromtimestamp(utc_s, timezone.utc).astimezone(ZoneInfo(base))
    delta = moment.utcoffset() or timedelta(0)
    return int(delta.total_seconds())


def fixed_zone(offset_s: int) -> ServerZone:
    hours, rest = divmod(abs(int(offset_s)), 3600)
    sign = "-" if offset_s < 0 else "+"
    name = "UTC" if offset_s == 0 else f"UTC{sign}{hours}" + (f":{rest // 60:02d}" if rest else "")
    return ServerZone(name, None, int(offset_s))


@lru_cache(maxsize=256)
def parse_zone(text: str) -> ServerZone:
    """A zone from its written form (see the module docstring); ZoneError when unreadable."""
    if not isinstance(text, str) or not text.strip() or len(text) > 64:
        raise ZoneError(f"expected a server time zone such as {EXAMPLES}, got {text!r}")
    spec = text.strip()
    convention = _CONVENTION.fullmatch(spec)
    if convention:
        winter, summer, dates = int(convention.group(1)), int(convention.group(2)), convention.group(3).upper()
        if summer != winter + 1:
            raise ZoneError(
                f"{spec!r}: the summer offset must be one hour more than the winter one (as in UTC+2/+3@US)"
            )
        base, standard = _SWITCH_ZONES[dates]
        zone = ServerZone(f"UTC{winter:+d}/{summer:+d}@{dates}", base, winter * 3600 - standard)
        _check_range(zone, spec)
        return zone
    fixed = _FIXED.fullmatch(spec)
    if fixed and (spec.upper().startswith(("UTC", "GMT")) or fixed.group(1)):
        sign, hours, minutes = fixed.groups()
        offset = 0 if sign is None else (1 if sign == "+" else -1) * (int(hours) * 3600 + int(minutes or 0) * 60)
        if not OFFSET_RANGE_S[0] <= offset <= OFFSET_RANGE_S[1] or (minutes and int(minutes) >= 60):
            raise ZoneError(f"{spec!r}: a server's offset is between UTC-12 and UTC+14")
        return fixed_zone(offset)
    try:
        ZoneInfo(spec)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ZoneError(f"{spec!r} is not a time zone: expected {EXAMPLES}") from None
    return ServerZone(spec, spec, 0)


def _check_range(zone: ServerZone, spec: str) -> None:
    for probe in (datetime(2025, 1, 15, tzinfo=timezone.utc), datetime(2025, 7, 15, tzinfo=timezone.utc)):
        if not OFFSET_RANGE_S[0] <= zone.offset_now(probe) <= OFFSET_RANGE_S[1]:
            raise ZoneError(f"{spec!r}: a server's offset is between UTC-12 and UTC+14")


def runs(ts: np.ndarray, offsets: np.ndarray) -> list[tuple[int, int, int]]:
    """(first ts, last ts, offset) per run of equal offsets in a series sorted by ts."""
    if not len(ts):
        return []
    cut = np.flatnonzero(np.diff(offsets) != 0) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut - 1, [len(ts) - 1]])
    return [(int(ts[a]), int(ts[b]), int(offsets[a])) for a, b in zip(starts, ends, strict=True)]


__all__ = ["EXAMPLES", "ServerZone", "ZoneError", "fixed_zone", "parse_zone", "runs"]
