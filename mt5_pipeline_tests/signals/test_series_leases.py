"""Live workers share the series through PostgreSQL leases: real worker processes, one killed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from mt5_pipeline.learning.features import update_features
from mt5_pipeline.learning.training import train_model
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline.signals.series_leases import SeriesLeases
from mt5_pipeline.storage import leases as lease_rows
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import signals_queue
from mt5_pipeline_tests.ea_server import wait_for
from mt5_pipeline_tests.orchestration_support import ALWAYS_DECIDE, FAST_MODEL

SYMBOLS = ("EURUSD", "GBPUSD", "AUDUSD", "NZDUSD")
LEASE = 2.0
# Set-up (training) on a shared machine can take minutes: the bars must not count as stale.
PATIENT = {"SIGNAL_MAX_BAR_AGE_SECONDS": 3600, "SIGNAL_TTL_SECONDS": 3600}


def test_workers_take_their_share_and_give_back_on_stop(pg_url):
    keys = [(s, "M1") for s in SYMBOLS] + [("USDJPY", "M1")]
    a = SeriesLeases(pg_url, lease_seconds=30, worker="a")
    a.tick(keys)
    assert a.owned == frozenset(keys)  # alone: everything
    b = SeriesLeases(pg_url, lease_seconds=30, worker="b")
    b.tick()
    a.tick()  # a sees two workers alive and gives back what is beyond its share
    b.tick()
    assert len(a.owned) == 3 and len(b.owned) == 2 and not a.owned & b.owned
    assert set(lease_rows.holders(pg_url).values()) == {"a", "b"}
    b.stop()
    assert not b.owned
    assert len(a.tick()) == 2  # b gave its series back and left: a takes them at once
    assert a.owned == frozenset(keys)


def test_a_lease_held_by_another_is_not_taken_until_it_expires(pg_url):
    keys = [("EURUSD", "M1")]
    a = SeriesLeases(pg_url, lease_seconds=1.0, worker="a")
    a.tick(keys)
    b = SeriesLeases(pg_url, lease_seconds=1.0, worker="b")
    assert b.tick() == set()  # held and alive
    time.sleep(1.2)  # a stops renewing (as if killed)
    assert b.tick() == {("EURUSD", "M1")}
    assert a.tick() == set() and not a.owns(("EURUSD", "M1"))  # a wakes up: its lease is gone


def _worker_main(url: str, model_dir: str) -> None:
    import logging

    from mt5_pipeline.apps.live_worker import run_live_worker
    from mt5_pipeline.settings import Settings

    logging.basicConfig(level="INFO")
    env = {k: str(v) for k, v in {**FAST_MODEL, **ALWAYS_DECIDE, **PATIENT}.items()}
    settings = Settings.from_env(
        {
            "DATABASE_URL": url,
            "MODEL_DIR": model_dir,
            **env,
            "LIVE_LEASE_SECONDS": str(LEASE),
            "LIVE_CLOSE_GRACE_SECONDS": "1",
        },
        env_file=None,
    )
    run_live_worker(settings)


def _signals_per_bar(url: str) -> dict[tuple[str, datetime], int]:
    q = signals_queue.c
    with get_engine(url).connect() as conn:
        rows = conn.execute(select(q.symbol, q.ts, func.count()).group_by(q.symbol, q.ts)).all()
    return {(r[0], r[1]): r[2] for r in rows}


@pytest.mark.slow
def test_two_worker_processes_one_killed_every_bar_decided_once(pg_url, settings_for):
    last_closed = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=1)
    settings = settings_for(pg_url, **{**FAST_MODEL, **ALWAYS_DECIDE, **PATIENT})
    held_back = {}
    for seed, symbol in enumerate(SYMBOLS):
        frame = generate_candles(2500, end=last_closed, seed=seed, with_weekends=False, start_price=1.1 + seed * 0.1)
        ingest_candles(pg_url, symbol, "M1", frame.iloc[:-1])
        held_back[symbol] = frame.iloc[[-1]]
        update_features(pg_url, symbol, "M1")
    train_model(settings, ["EURUSD"])

    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_main, args=(pg_url, str(settings.model_dir)), name=f"live-{i}") for i in range(2)
    ]
    for p in procs:
        p.start()
    try:
        # Both hold a share; the bar before last_closed is decided once per symbol at start.
        def split():
            held = lease_rows.holders(pg_url)
            return len(held) == len(SYMBOLS) and None not in held.values() and len(set(held.values())) == 2

        assert wait_for(split, 90), lease_rows.holders(pg_url)
        first = last_closed - timedelta(minutes=1)
        assert wait_for(lambda: sum(1 for s, b in _signals_per_bar(pg_url) if b == first) == len(SYMBOLS), 60)

        victim = procs[0]
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        victim.join(10)
        # The survivor takes every series within the lease and a tick (generous bound: 2 cores shared).
        survivor_holds_all = wait_for(
            lambda: (
                len(set(lease_rows.holders(pg_url).values())) == 1 and None not in lease_rows.holders(pg_url).values()
            ),
            30,
        )
        assert survivor_holds_all
        takeover = time.monotonic() - killed_at
        assert takeover >= LEASE * 0.5  # not before the dead worker's lease could expire

        for symbol, bar in held_back.items():
            ingest_candles(pg_url, symbol, "M1", bar)
        assert wait_for(lambda: sum(1 for s, b in _signals_per_bar(pg_url) if b == last_closed) == len(SYMBOLS), 60)
        time.sleep(2 * LEASE)  # any second decision of a bar would have landed by now
        counts = _signals_per_bar(pg_url)
        assert set(counts.values()) == {1}, counts
        assert len(counts) == 2 * len(SYMBOLS)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(30)
    assert procs[1].exitcode == 0  # stopped cleanly by SIGTERM
    assert set(lease_rows.holders(pg_url).values()) == {None}  # and gave its leases back
