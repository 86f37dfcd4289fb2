"""The trade server's clock for the bridge's trade bookkeeping: deal, position and bar
times from the terminal are the server's wall clock, not UTC.

One function converts them, so the rule is in one place: for now the bars feed's
offset (``BRIDGE_UTC_OFFSET_HOURS`` or the offset measured from the last tick).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def server_to_utc(bars: Any, server_times: Iterable[int]) -> list[int] | None:
    """UTC epoch seconds of server-clock epoch seconds, or None while the server's
    offset is not known yet (the caller waits, as the bars feed does)."""
    offset = bars.offset_seconds()
    if offset is None:
        return None
    return [int(t) - int(offset) for t in server_times]
