"""The timeframes MT5 knows, by name, in seconds: the one list every stage reads."""

from __future__ import annotations

TIMEFRAME_SECONDS: dict[str, int] = {
    "M1": 60,
    "M5": 300,
    "M15": 900,
    "M30": 1800,
    "H1": 3600,
    "H4": 14400,
    "D1": 86400,
    "W1": 604800,
    "MN1": 2592000,  # nominal; months are aligned by calendar, not by this figure
}
