"""The live worker's in-memory tail gives the batch path's features, bit for bit, one row a bar.

A long series is fed bar by bar, as an EA would post it, into two symbols with the same
candles: one kept by SeriesTails (the live worker), one by update_features (the batch
path). Corrections come in along the way: a re-sent bar inside the tail, one older than
the tail, and a gap filled later. Every feature row of the two must be identical: float
equality, no tolerance.

The tail's rows come from the incremental path (indicators.feature_block on the tail's
numpy columns, only the new row's values, stored by storage.features.write_new_rows);
the batch's from compute_features over update_features' frame, stored by COPY. The
indicators whose value depends on where the 500-bar window starts (the moving averages'
and deviations' centred cumulative sums, the RSI's and the volume EMA's seeds) are
recomputed over the window in numpy rather than carried as a running state, which would
differ from the batch in the last bits (see feature_block's docstring).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

from mt5_pipeline.learning.features import LOOKBACK_BARS, load_feature_rows, update_features
from mt5_pipeline.learning.indicators import FLOAT_COLUMNS
from mt5_pipeline.market.extremes import (
    EXTREME_CHECK_WINDOW,
    unconfirmed_extreme,
    unconfirmed_extreme_in,
    window_ends_at,
)
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline.signals.series_tail import Recent, SeriesTails
from mt5_pipeline.storage.series_snapshot import read_snapshot

LIVE_BARS = 160


def _post(url: str, frame: pd.DataFrame, now) -> None:
    for symbol in ("TAIL", "BATCH"):
        ingest_candles(url, symbol, "M1", frame, now=now, max_jump=None)


def _changed(bar: pd.DataFrame) -> pd.DataFrame:
    out = bar.copy()
    out["close"] = out["close"] * 1.0003
    out["high"] = out[["high", "close"]].max(axis=1)
    out["tick_volume"] = out["tick_volume"] + 7
    return out


def _assert_same_features(db_url: str) -> pd.DataFrame:
    """TAIL's feature rows are BATCH's, value for value; TAIL's rows."""
    rows = load_feature_rows(db_url, ["TAIL", "BATCH"], usable_only=False)
    tail = rows[rows.symbol == "TAIL"].reset_index(drop=True)
    batch = rows[rows.symbol == "BATCH"].reset_index(drop=True)
    assert len(tail) == len(batch)
    assert (tail["ts"].to_numpy() == batch["ts"].to_numpy()).all()
    for column in (*FLOAT_COLUMNS, "after_gap", "usable"):
        assert np.array_equal(tail[column].to_numpy(), batch[column].to_numpy(), equal_nan=True), column
    # The gap's bars and the corrected ones carry the corrected candles' features.
    assert (tail["source_ingested_at"].to_numpy() == batch["source_ingested_at"].to_numpy()).all()
    return tail


def test_the_tail_gives_the_batch_features_over_a_long_series_with_corrections(db_url):
    history = generate_candles(LOOKBACK_BARS + 700 + LIVE_BARS, seed=11, with_weekends=False).reset_index(drop=True)
    ts = pd.to_datetime(history["time"] if "time" in history else history["ts"], utc=True)
    first_live = len(history) - LIVE_BARS
    gap = set(range(first_live + 40, first_live + 44))  # bars the EA only sends later
    spike = first_live + 120
    history.loc[spike, "high"] = history.loc[spike, "high"] * 1.02  # an extreme bar for the guard
    tails = SeriesTails(db_url)
    holds = []

    start_now = ts.iloc[first_live - 1].to_pydatetime() + timedelta(seconds=61)
    _post(db_url, history.iloc[:first_live], start_now)
    tails.update("TAIL", "M1", now=start_now)
    update_features(db_url, "BATCH", "M1", now=start_now)

    for i in range(first_live, len(history)):
        now = ts.iloc[i].to_pydatetime() + timedelta(seconds=61)
        if i not in gap:
            _post(db_url, history.iloc[[i]], now)
        if i == first_live + 20:
            _post(db_url, _changed(history.iloc[[i - 3]]), now)  # a re-sent bar inside the tail
        if i == first_live + 21:
            # Right after the rebuild at +20: the snapshot path compares with the digest the
            # rebuild computed, and must still tell a re-sent bar.
            _post(db_url, _changed(history.iloc[[i - 5]]), now)
        if i == first_live + 31:
            # Odd bars go through the snapshot (below): there the bars at or before the
            # tail's end come as a digest, which must tell this re-sent bar.
            _post(db_url, _changed(history.iloc[[i - 2]]), now)
        if i == first_live + 111:
            _post(db_url, _changed(history.iloc[[i - LOOKBACK_BARS - 9]]), now)  # the same, older than the tail
        if i == first_live + 60:
            _post(db_url, history.iloc[sorted(gap)], now)  # the gap filled
        if i == first_live + 100:
            _post(db_url, _changed(history.iloc[[i - LOOKBACK_BARS - 50]]), now)  # older than the tail
        window = tails.window(("TAIL", "M1"))
        if i % 2 and window is not None:
            # As the live worker does every other bar here: the new bars read with the
            # ready rule's in one snapshot, handed to the tail.
            snapshot = read_snapshot(db_url, "TAIL", "M1", window.since, known=window.end)
            assert snapshot.recent is not None
            tails.update("TAIL", "M1", now=now, recent=Recent(window, snapshot.recent, snapshot.known))
        else:
            tails.update("TAIL", "M1", now=now)
        update_features(db_url, "BATCH", "M1", now=now)
        if i - first_live in (21, 22, 31, 32, 111, 112):
            # Just after a correction: the next rebuild would mend a missed one, so the
            # rows are compared here, not only at the end.
            _assert_same_features(db_url)
        if i not in gap:
            # The extreme-bar guard on the tail's bars says what it says on the stored ones.
            bar = ts.iloc[i].to_pydatetime()
            window = tails.bars_until(("TAIL", "M1"), bar, EXTREME_CHECK_WINDOW)
            hold = unconfirmed_extreme(db_url, "TAIL", "M1", bar)
            assert window is not None, i
            assert unconfirmed_extreme_in(window, "TAIL", "M1") == hold, i
            # The same from the numpy columns the live worker hands the guard.
            columns = tails.bar_columns_until(("TAIL", "M1"), bar, EXTREME_CHECK_WINDOW)
            assert columns is not None and window_ends_at(columns, bar) and window_ends_at(window, bar), i
            assert unconfirmed_extreme_in(columns, "TAIL", "M1") == hold, i
            holds.append(hold)

    tail = _assert_same_features(db_url)
    assert len(tail) == len(history)
    assert any(holds), "the spike was never held"
    # The feature row kept for the prediction is the stored one.
    newest = tails.feature_row(("TAIL", "M1"), ts.iloc[-1].to_pydatetime())
    assert newest is not None and newest["usable"] == bool(tail["usable"].iloc[-1])
    for column in FLOAT_COLUMNS:
        assert np.array_equal(newest[column], tail[column].iloc[-1], equal_nan=True), column
    # Most live bars cost one row; each correction (and the first bar) went the batch way.
    assert tails.stats.fast >= LIVE_BARS - 20
    assert 2 <= tails.stats.rebuilt <= 12, tails.stats


def test_the_tail_matches_a_full_recomputation(pg_url):
    history = generate_candles(LOOKBACK_BARS + 400, seed=3, with_weekends=False).reset_index(drop=True)
    ts = pd.to_datetime(history["time"] if "time" in history else history["ts"], utc=True)
    tails = SeriesTails(pg_url)
    first_live = len(history) - 60
    now = ts.iloc[first_live - 1].to_pydatetime() + timedelta(seconds=61)
    ingest_candles(pg_url, "TAIL", "M1", history.iloc[:first_live], now=now, max_jump=None)
    tails.update("TAIL", "M1", now=now)
    for i in range(first_live, len(history)):
        now = ts.iloc[i].to_pydatetime() + timedelta(seconds=61)
        ingest_candles(pg_url, "TAIL", "M1", history.iloc[[i]], now=now, max_jump=None)
        update = tails.update("TAIL", "M1", now=now)
        assert update.rows_written == 1 and update.lookback_bars == LOOKBACK_BARS
    live = load_feature_rows(pg_url, ["TAIL"], usable_only=False)
    update_features(pg_url, "TAIL", "M1", full=True, now=now)
    full = load_feature_rows(pg_url, ["TAIL"], usable_only=False)
    for column in FLOAT_COLUMNS:
        np.testing.assert_allclose(
            live[column].to_numpy(), full[column].to_numpy(), rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=column
        )
