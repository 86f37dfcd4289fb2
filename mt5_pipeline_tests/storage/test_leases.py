"""The lease rows themselves (storage.leases), on PostgreSQL."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from mt5_pipeline.storage import leases
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import live_leases


def test_workers_adding_the_same_series_at_once_do_not_deadlock(pg_url):
    # Two workers start together and each adds every series it knows, from a set in its
    # own order. Unsorted, the second insert of a key waits on the first's uncommitted row
    # and the two wait on each other: PostgreSQL failed one with "deadlock detected".
    keys = [(f"S{i:03d}", tf) for i in range(150) for tf in ("M1", "M5")]
    errors: list[BaseException] = []
    for attempt in range(6):
        batch = [(f"{s}_{attempt}", tf) for s, tf in keys]
        orders = [batch, batch[::-1]]
        start = threading.Barrier(len(orders))

        def add(order: list[tuple[str, str]], start: threading.Barrier = start) -> None:
            start.wait()
            try:
                leases.add_series(pg_url, order)
            except BaseException as exc:  # noqa: BLE001 -- collected and asserted on below
                errors.append(exc)

        threads = [threading.Thread(target=add, args=(o,)) for o in orders]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    with get_engine(pg_url).connect() as conn:
        assert conn.execute(select(func.count()).select_from(live_leases)).scalar_one() == 6 * len(keys)
