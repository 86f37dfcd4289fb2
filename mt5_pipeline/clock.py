"""UTC time, one way everywhere: aware datetimes in, ISO 8601 with `Z` out.

Every function that depends on "now" takes an optional `now` so tests can pin the clock;
`resolve_now` is how they turn it into an aware UTC datetime.
"""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """Aware UTC; naive values (SQLite reads) are taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def from_epoch(seconds: float) -> datetime:
    """Seconds since 1970 (MT5's bar times, epoch columns) as aware UTC."""
    return datetime.fromtimestamp(seconds, timezone.utc)


def resolve_now(now: datetime | None) -> datetime:
    return as_utc(now) if now is not None else utcnow()


def iso_z(value: datetime) -> str:
    """ISO 8601 in UTC with ``Z`` (whole seconds unless there is a fraction)."""
    value = as_utc(value)
    # %Y is not zero-padded below year 1000 on glibc, which breaks RFC 3339 date-time.
    text = f"{value.year:04d}-{value:%m-%dT%H:%M:%S}"
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_iso(value: str | datetime) -> datetime:
    """An ISO 8601 string (``Z`` or an offset) or a datetime, as aware UTC."""
    if isinstance(value, datetime):
        return as_utc(value)
    return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
