"""Features never stay stale after a correction, however late its commit.

features.first_stale_bar only looks at candles stamped after the newest feature row's
source stamp minus WATERMARK_MARGIN. That is safe only if a change committed after a
features run always carries a later stamp than anything that run saw. The ingest core
guarantees it: it stamps under the series lock, from the database clock, and always after
the newest stamp already stored in the series.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import psycopg

from mt5_pipeline.learning.features import WATERMARK_MARGIN, load_feature_rows, update_features
from mt5_pipeline.learning.indicators import compute_features
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline.storage.candles import read_candles, series_lock_key
from mt5_pipeline.storage.engine import psycopg_conninfo
from mt5_pipeline_tests.learning.test_features import assert_same_features

END = datetime(2024, 6, 12, 12, 0, tzinfo=timezone.utc)


def _bars(n: int) -> pd.DataFrame:
    return generate_candles(n, end=END, seed=21, with_weekends=False)


def _corrected(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    fixed = frame.copy()
    fixed.loc[k, "close"] = fixed.loc[k, "close"] + 0.0007
    fixed.loc[k, "high"] = max(fixed.loc[k, "high"], fixed.loc[k, "close"])
    return fixed


def test_a_correction_whose_stamp_lags_by_more_than_the_margin_is_recomputed(db_url):
    history = _bars(2_501)
    first, newest = history.iloc[:2_500], history.iloc[[2_500]]
    t0 = END
    ingest_candles(db_url, "EURUSD", "M1", first, now=t0)
    update_features(db_url, "EURUSD", now=t0)

    # A newer bar arrives and its features are computed: the watermark moves to its stamp.
    lag = 3 * WATERMARK_MARGIN
    ingest_candles(db_url, "EURUSD", "M1", newest, now=t0 + lag)
    update_features(db_url, "EURUSD", now=t0 + lag)

    # Then a correction of bar 2,000 commits whose clock reading is `lag` older: what a
    # commit that lagged its stamp by three margins looked like when the stamp was
    # taken before the lock. It must still be stamped after everything stored.
    k = 2_000
    fixed = _corrected(history, k)
    ingest_candles(db_url, "EURUSD", "M1", fixed.iloc[[k]], now=t0)
    bar = pd.Timestamp(fixed["time"].iloc[k])
    stamps = read_candles(db_url, "EURUSD", "M1").set_index("ts")["ingested_at"]
    assert stamps.loc[bar] > stamps.drop(bar).max()

    update = update_features(db_url, "EURUSD", now=t0 + lag + timedelta(seconds=1))
    assert update.recomputed_from == bar.to_pydatetime()
    assert_same_features(
        load_feature_rows(db_url, ["EURUSD"], "M1", usable_only=False),
        compute_features(fixed.rename(columns={"time": "ts"})),
    )


def test_the_stamp_is_taken_after_the_series_lock_from_the_database_clock(pg_url):
    """Real concurrency: another transaction holds the series lock; the correction waits
    behind it and is stamped after it commits, not when it was called."""
    history = generate_candles(100, end=datetime.now(timezone.utc) - timedelta(minutes=5), seed=3, with_weekends=False)
    ingest_candles(pg_url, "EURUSD", "M1", history)
    fixed = _corrected(history, 50)

    holder = psycopg.connect(psycopg_conninfo(pg_url))
    holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (series_lock_key("EURUSD", "M1"),))
    errors: list[BaseException] = []

    def correct() -> None:
        try:
            ingest_candles(pg_url, "EURUSD", "M1", fixed.iloc[[50]])
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    called = datetime.now(timezone.utc)
    worker = threading.Thread(target=correct)
    worker.start()
    with psycopg.connect(psycopg_conninfo(pg_url), autocommit=True) as watcher:
        deadline = time.monotonic() + 30
        while not watcher.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "the correction never waited for the lock"
            time.sleep(0.02)
    time.sleep(0.3)  # the lock is held a while after the correction was called
    released = holder.execute("SELECT clock_timestamp()").fetchone()[0]
    holder.commit()
    holder.close()
    worker.join(timeout=30)
    assert not errors, errors

    stamp = (
        read_candles(pg_url, "EURUSD", "M1").set_index("ts")["ingested_at"].loc[pd.Timestamp(fixed["time"].iloc[50])]
    )
    assert stamp.to_pydatetime() > released > called
