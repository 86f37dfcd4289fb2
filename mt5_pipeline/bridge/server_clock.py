"""The trade server's clock for the bridge's trade bookkeeping: deal, position and bar
times from the terminal are the server's wall clock, not UTC.

One function converts them, with the core's zone rules (:mod:`mt5_pipeline.server_time`,
the conversion the API applies to the bars): ``BRIDGE_SERVER_TIME_ZONE`` (such as
``UTC+2/+3@US``) converts each time with the offset in force at it, so a trade opened in
summer and reported in winter is still right; with ``auto``, the bars feed's fixed offset
(``BRIDGE_UTC_OFFSET_HOURS`` or measured from the last tick), right only while the
server's offset does not change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np

from mt5_pipeline.server_time import ServerZone


class ZoneSource(Protocol):
    """Whatever knows the server's zone (the bars feed: it measures an auto offset)."""

    def zone(self) -> ServerZone | None: ...


def server_to_utc(bars: ZoneSource, server_times: Iterable[int]) -> list[int] | None:
    """UTC epoch seconds of server-clock epoch seconds, or None while the server's zone
    is not known yet (``auto`` before a fresh tick: the caller waits, as the bars feed does)."""
    zone = bars.zone()
    if zone is None:
        return None
    server = np.fromiter((int(t) for t in server_times), dtype=np.int64)
    utc, ok = zone.to_utc(server)
    if not ok.all():
        # Inside a spring-forward hour the rules skip (no FX server trades then): the
        # offset just after the switch.
        utc[~ok] = zone.to_utc(server[~ok] + 3600)[0] - 3600
    return [int(u) for u in utc]
