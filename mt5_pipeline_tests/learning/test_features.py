"""features_m1: correct against an independent reference, no look-ahead, gaps, warm-up,
and incremental runs that equal a full recomputation on both backends."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import delete, select

from mt5_pipeline.learning.features import LOOKBACK_BARS, load_feature_rows, update_features
from mt5_pipeline.learning.indicators import (
    AFTER_GAP_BARS,
    FEATURE_SET_VERSION,
    MODEL_FEATURES,
    WARMUP_BARS,
    compute_features,
    feature_block,
)
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles
from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import FEATURE_COLUMNS, RAW_LEVEL_COLUMNS, candles, features_m1

FLOATS = [*RAW_LEVEL_COLUMNS, *FEATURE_COLUMNS]
END = datetime(2024, 6, 12, 12, 0, tzinfo=timezone.utc)  # a Wednesday


def bars(n: int, *, seed: int = 0, end: datetime = END, weekends: bool = True) -> pd.DataFrame:
    """Realistic M1 candles (random walk with volatility clusters and FX weekends), column ``ts``."""
    return generate_candles(n, end=end, seed=seed, with_weekends=weekends).rename(columns={"time": "ts"})


def store(url: str, frame: pd.DataFrame, *, now: datetime, symbol: str = "EURUSD") -> None:
    """Candles in through the real ingest core (it stamps ingested_at = now on a change)."""
    ingest_candles(url, symbol, "M1", frame.rename(columns={"ts": "time"}), now=now)


def assert_same_features(stored: pd.DataFrame, expected: pd.DataFrame, tol: float = 1e-9) -> None:
    stored = stored.reset_index(drop=True)
    expected = expected.reset_index(drop=True)
    assert len(stored) == len(expected)
    assert (stored["ts"].to_numpy() == expected["ts"].to_numpy()).all()
    a, b = stored[FLOATS].to_numpy(dtype=float), expected[FLOATS].to_numpy(dtype=float)
    assert (np.isnan(a) == np.isnan(b)).all(), "NULL/NaN in different places"
    diff = np.abs(np.nan_to_num(a) - np.nan_to_num(b))
    worst = np.unravel_index(diff.argmax(), diff.shape)
    assert diff.max() <= tol, f"{FLOATS[worst[1]]} differs by {diff.max():.3g} at row {worst[0]}"
    assert (stored["usable"].to_numpy() == expected["usable"].to_numpy()).all()
    assert (stored["after_gap"].to_numpy() == expected["after_gap"].to_numpy()).all()


# ---- pure computation --------------------------------------------------------------------


def test_model_features_are_the_schema_columns():
    assert MODEL_FEATURES == FEATURE_COLUMNS


def test_rsi_ema_and_moving_averages_match_the_ta_library():
    ta = pytest.importorskip("ta")
    frame = bars(5_000, seed=3)
    feats = compute_features(frame)
    close = frame["close"].reset_index(drop=True)
    volume = frame["tick_volume"].astype(float).reset_index(drop=True)
    reference = {
        "rsi_14": ta.momentum.RSIIndicator(close, window=14).rsi(),
        "volume_ema_20": ta.trend.EMAIndicator(volume, window=20).ema_indicator(),
        **{f"ma_{w}": ta.trend.SMAIndicator(close, window=w).sma_indicator() for w in (5, 10, 20, 50)},
    }
    # The implementations seed their recursions differently; from bar 1,000 on the seed is forgotten.
    for name, ref in reference.items():
        diff = np.abs(feats[name].to_numpy()[1000:] - ref.to_numpy()[1000:])
        assert diff.max() <= 1e-9, f"{name} differs from ta by {diff.max():.3g}"
    # And RSI really varies (a constant would match nothing above, but be explicit).
    assert feats["rsi_14"].iloc[1000:].std() > 5


def test_scale_free_features_follow_their_definitions():
    frame = bars(400, seed=1, weekends=False)
    f = compute_features(frame)
    c = frame["close"].to_numpy()
    t = 250
    assert f["ret_1"][t] == pytest.approx(np.log(c[t] / c[t - 1]), abs=1e-15)
    assert f["ret_10"][t] == pytest.approx(np.log(c[t] / c[t - 10]), abs=1e-15)
    assert f["ma_20_ratio"][t] == pytest.approx(c[t - 19 : t + 1].mean() / c[t] - 1, abs=1e-12)
    log_returns = np.diff(np.log(c))
    assert f["std_10"][t] == pytest.approx(np.std(log_returns[t - 10 : t], ddof=1), rel=1e-9)
    assert f["range_ratio"][t] == pytest.approx((frame["high"][t] - frame["low"][t]) / c[t])
    assert f["vol_ratio"][t] == pytest.approx(frame["tick_volume"][t] / f["volume_ema_20"][t])
    assert f["hour"][t] == frame["ts"][t].hour and f["dow"][t] == frame["ts"][t].day_of_week
    # The scale-free columns do not change when every price is multiplied by 100 (EURUSD -> a JPY-like level).
    scaled = frame.copy()
    for col in ("open", "high", "low", "close"):
        scaled[col] = scaled[col] * 100
    g = compute_features(scaled)
    scale_free = [c for c in FEATURE_COLUMNS if c not in ("hour", "dow")]
    np.testing.assert_allclose(g[scale_free].to_numpy()[300:], f[scale_free].to_numpy()[300:], rtol=1e-6, atol=1e-9)


def test_no_look_ahead_changing_or_deleting_later_bars_changes_nothing_before():
    frame = bars(1_500, seed=7)
    base = compute_features(frame)
    rng = np.random.default_rng(0)
    for t in (0, 49, 299, 800, 1_200, 1_498):
        changed = frame.copy()
        later = changed.index > t
        factor = rng.uniform(0.5, 2.0, later.sum())
        for col in ("open", "high", "low", "close"):
            changed.loc[later, col] = changed.loc[later, col] * factor
        changed.loc[later, "tick_volume"] = rng.integers(1, 10_000, later.sum())
        for variant in (changed, frame.iloc[: t + 1]):
            out = compute_features(variant)
            pd.testing.assert_frame_equal(out.iloc[: t + 1], base.iloc[: t + 1], check_exact=True)


def test_windows_count_bars_and_long_gaps_are_flagged():
    frame = bars(1_000, seed=2, weekends=False)
    # Cut two holes: 3 hours after bar 500 (an outage), 4 minutes after bar 700 (a quiet market).
    ts = frame["ts"].copy()
    ts.iloc[501:] += pd.Timedelta(hours=3)
    ts.iloc[701:] += pd.Timedelta(minutes=4)
    gapped = frame.assign(ts=ts)
    f = compute_features(gapped)
    flagged = np.flatnonzero(f["after_gap"].to_numpy())
    assert list(flagged) == list(range(501, 501 + AFTER_GAP_BARS))
    # The windows ignore the clock: the values are those of the gap-free series.
    plain = compute_features(frame)
    np.testing.assert_array_equal(
        f[[c for c in FEATURE_COLUMNS if c not in ("hour", "dow")]].to_numpy(),
        plain[[c for c in FEATURE_COLUMNS if c not in ("hour", "dow")]].to_numpy(),
    )
    # Flagged rows stay usable: they are real market bars (Monday's open).
    assert f["usable"].iloc[501:511].all()


def test_weekends_flag_the_first_bars_of_monday():
    frame = bars(6_000, seed=4)  # ends on a Wednesday: one weekend inside
    f = compute_features(frame)
    step = frame["ts"].diff()
    monday_first = int(np.flatnonzero(step > pd.Timedelta(hours=24))[0])
    assert f["after_gap"].iloc[monday_first : monday_first + AFTER_GAP_BARS].all()
    assert not f["after_gap"].iloc[monday_first + AFTER_GAP_BARS]
    assert not f["after_gap"].iloc[monday_first - 1]


def test_warm_up_rows_are_not_usable():
    f = compute_features(bars(WARMUP_BARS + 50, seed=5, weekends=False))
    assert not f["usable"].iloc[:WARMUP_BARS].any()
    assert f["usable"].iloc[WARMUP_BARS:].all()
    assert f[list(FEATURE_COLUMNS)].iloc[WARMUP_BARS:].notna().all().all()


def test_empty_and_tiny_inputs():
    assert compute_features(bars(5).iloc[:0]).empty
    tiny = compute_features(bars(3, weekends=False))
    assert len(tiny) == 3 and not tiny["usable"].any()


# ---- stored: full and incremental ------------------------------------------------------------


def _stored(url: str, symbol: str = "EURUSD") -> pd.DataFrame:
    return load_feature_rows(url, [symbol], "M1", usable_only=False)


def test_the_new_rows_alone_are_the_batch_rows_bit_for_bit():
    """What the live worker computes for its new bars (feature_block's last rows, no frame)
    is exactly what compute_features gives those bars over the same window: windows at
    many ends (weekend gaps among them), one to three new bars, short histories too."""
    frame = bars(2400, seed=7, end=datetime(2024, 6, 10, 12, 0, tzinfo=timezone.utc)).reset_index(drop=True)  # a Monday
    ns = pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8
    columns = {c: frame[c].to_numpy(dtype=np.float64) for c in ("high", "low", "close", "tick_volume")}
    checked = 0
    for end in [*range(2, 40, 5), *range(290, 320, 3), *range(LOOKBACK_BARS, len(frame), 37)]:
        for new in (1, 2, 3):
            lo = max(0, end + 1 - LOOKBACK_BARS - new)
            window = slice(lo, end + 1)
            expected = compute_features(frame.iloc[window]).iloc[-new:]
            matrix, after_gap, usable = feature_block(
                ns[window], *(columns[c][window] for c in ("high", "low", "close", "tick_volume")), last=new
            )
            assert np.array_equal(matrix, expected[FLOATS].to_numpy(), equal_nan=True), (end, new)
            assert (after_gap == expected["after_gap"].to_numpy()).all(), (end, new)
            assert (usable == expected["usable"].to_numpy()).all(), (end, new)
            checked += 1
    assert frame["ts"].diff().max() > pd.Timedelta(days=1)  # the windows crossed weekends
    assert checked > 100


def test_incremental_equals_full_recomputation(db_url):
    history = bars(3_000, seed=11)
    first, later = history.iloc[:2_990], history.iloc[2_990:]
    t0 = END
    store(db_url, first, now=t0)
    full = update_features(db_url, "EURUSD", now=t0)
    assert full.full and full.rows_written == 2_990 and full.lookback_bars == 0
    assert_same_features(_stored(db_url), compute_features(first))

    # Nothing new: nothing written.
    assert update_features(db_url, "EURUSD", now=t0).rows_written == 0

    # Ten new bars: only they are computed, from a bounded look-back.
    t1 = t0 + timedelta(minutes=10)
    store(db_url, later, now=t1)
    inc = update_features(db_url, "EURUSD", now=t1)
    assert not inc.full
    assert inc.rows_written == 10 and inc.lookback_bars == LOOKBACK_BARS
    assert inc.recomputed_from == later["ts"].iloc[0].to_pydatetime()
    assert inc.newest_ts == later["ts"].iloc[-1].to_pydatetime()
    stored = _stored(db_url)
    assert_same_features(stored, compute_features(history))
    assert (stored["feature_set_version"] == FEATURE_SET_VERSION).all()
    # Each row records the ingest stamp of the candle it was computed from.
    assert (stored["source_ingested_at"].iloc[-10:] == pd.Timestamp(t1)).all()
    assert (stored["source_ingested_at"].iloc[:-10] == pd.Timestamp(t0)).all()


def test_a_replaced_bar_makes_its_features_and_later_ones_stale(db_url):
    history = bars(2_500, seed=12)
    t0 = END
    store(db_url, history, now=t0)
    update_features(db_url, "EURUSD", now=t0)
    computed_before = _stored(db_url)["computed_at"]

    # The EA re-sends bar 2,000 with another close (the forming bar, then its final version).
    k = 2_000
    fixed = history.copy()
    fixed.loc[k, "close"] = fixed.loc[k, "close"] + 0.0005
    fixed.loc[k, "high"] = max(fixed.loc[k, "high"], fixed.loc[k, "close"])
    t1 = t0 + timedelta(minutes=5)
    store(db_url, fixed.iloc[[k]], now=t1)
    update = update_features(db_url, "EURUSD", now=t1)
    assert update.recomputed_from == fixed["ts"].iloc[k].to_pydatetime()
    assert update.rows_written == len(history) - k
    stored = _stored(db_url)
    assert_same_features(stored, compute_features(fixed))
    # Before the replaced bar nothing was rewritten; from it on everything was.
    assert (stored["computed_at"].iloc[:k] == computed_before.iloc[:k]).all()
    assert (stored["computed_at"].iloc[k:] == pd.Timestamp(t1)).all()
    assert stored["ma_5"].iloc[k] != pytest.approx(compute_features(history)["ma_5"].iloc[k], abs=1e-12)


def test_short_history_grows_with_usable_flags_equal_to_a_full_run(db_url):
    history = bars(700, seed=13, weekends=False)
    t = END
    # Three deliveries: all in warm-up, then crossing it, then well past it.
    for i, (lo, hi) in enumerate(((0, 120), (120, 420), (420, 700))):
        now = t + timedelta(minutes=i)
        store(db_url, history.iloc[lo:hi], now=now)
        update_features(db_url, "EURUSD", now=now)
    stored = _stored(db_url)
    assert_same_features(stored, compute_features(history))
    assert stored["usable"].sum() == 700 - WARMUP_BARS


def test_older_history_imported_later_recomputes_the_warm_up(db_url):
    history = bars(1_200, seed=14, weekends=False)
    t0 = END
    store(db_url, history.iloc[600:], now=t0)
    update_features(db_url, "EURUSD", now=t0 + timedelta(minutes=1))  # the END bar has closed
    assert _stored(db_url)["usable"].sum() == 600 - WARMUP_BARS
    t1 = t0 + timedelta(minutes=3)
    store(db_url, history.iloc[:600], now=t1)  # a CSV backfill of earlier bars
    update_features(db_url, "EURUSD", now=t1)
    assert_same_features(_stored(db_url), compute_features(history))


def test_full_run_recomputes_everything_and_drops_rows_of_deleted_candles(db_url):
    history = bars(800, seed=15, weekends=False)
    store(db_url, history, now=END)
    update_features(db_url, "EURUSD", now=END)
    gone = history["ts"].iloc[400].to_pydatetime()
    with get_engine(db_url).begin() as conn:
        conn.execute(delete(candles).where(candles.c.symbol == "EURUSD", candles.c.ts == gone))
    result = update_features(db_url, "EURUSD", full=True, now=END + timedelta(minutes=1))
    assert result.full and result.rows_written == 799
    stored = _stored(db_url)
    assert_same_features(stored, compute_features(history.drop(index=400)))


def test_each_symbol_is_its_own_series_and_usable_only_filters(db_url):
    store(db_url, bars(400, seed=16, weekends=False), now=END, symbol="EURUSD")
    store(db_url, bars(350, seed=17, weekends=False), now=END, symbol="USDJPY")
    for symbol in ("EURUSD", "USDJPY"):
        update_features(db_url, symbol, now=END + timedelta(minutes=1))
    everything = load_feature_rows(db_url, None, "M1", usable_only=False)
    assert everything.groupby("symbol").size().to_dict() == {"EURUSD": 400, "USDJPY": 350}
    usable = load_feature_rows(db_url, None, "M1", usable_only=True)
    assert usable.groupby("symbol").size().to_dict() == {"EURUSD": 100, "USDJPY": 50}
    assert usable["usable"].all() and usable[list(FEATURE_COLUMNS)].notna().all().all()
    with get_engine(db_url).connect() as conn:
        versions = set(conn.execute(select(features_m1.c.feature_set_version).distinct()).scalars())
    assert versions == {FEATURE_SET_VERSION}


def test_rows_of_another_feature_set_version_force_a_full_recompute(db_url):
    history = bars(500, seed=18, weekends=False)
    store(db_url, history, now=END)
    update_features(db_url, "EURUSD", now=END)
    with get_engine(db_url).begin() as conn:
        conn.execute(features_m1.update().values(feature_set_version="0", rsi_14=-1.0))
    result = update_features(db_url, "EURUSD", now=END + timedelta(minutes=1))
    assert result.full and result.rows_written == 500
    assert_same_features(_stored(db_url), compute_features(history))


def test_concurrent_updates_of_one_symbol_do_not_collide(db_url):
    """Two runs for consecutive bars may overlap (one sensor run per new bar)."""
    from concurrent.futures import ThreadPoolExecutor

    from mt5_pipeline.storage.candles import read_candles

    closed_minute = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=1)
    frame = generate_candles(2_000, end=closed_minute, seed=3, with_weekends=False)
    ingest_candles(db_url, "EURUSD", "M1", frame.iloc[:1_500])
    update_features(db_url, "EURUSD")
    ingest_candles(db_url, "EURUSD", "M1", frame.iloc[1_500:])
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: update_features(db_url, "EURUSD"), range(3)))
    assert sum(r.rows_written for r in results) >= 500
    stored = load_feature_rows(db_url, ["EURUSD"], usable_only=False).sort_values("ts").reset_index(drop=True)
    expected = compute_features(read_candles(db_url, "EURUSD", "M1"))
    assert len(stored) == len(expected) == 2_000
    np.testing.assert_allclose(
        stored["rsi_14"].to_numpy(), expected["rsi_14"].to_numpy(), rtol=0, atol=1e-9, equal_nan=True
    )


def test_the_forming_bar_gets_no_features_until_it_closes_and_then_from_its_final_version(db_url):
    """MT5 stamps a bar with its open time; the bar opening at END is forming until END + 1 min."""
    history = bars(400, seed=21, weekends=False)
    forming = history.iloc[[-1]].copy()
    forming[["high", "close"]] = forming[["open", "open"]].to_numpy()  # 45 s into the bar
    store(db_url, pd.concat([history.iloc[:-1], forming]), now=END + timedelta(seconds=45))
    update_features(db_url, "EURUSD", now=END + timedelta(seconds=45))
    assert _stored(db_url)["ts"].max() == END - timedelta(minutes=1)  # the forming bar has none
    store(db_url, history.iloc[[-1]], now=END + timedelta(seconds=60.5))  # the final version
    result = update_features(db_url, "EURUSD", now=END + timedelta(seconds=61))
    assert result.newest_ts == END
    stored = _stored(db_url)
    assert stored["ts"].max() == END
    assert stored["close"].iloc[-1] == history["close"].iloc[-1]
    assert_same_features(stored, compute_features(history))


def test_a_later_bar_closes_the_one_before_it_whatever_our_clock_says(db_url):
    history = bars(400, seed=22, weekends=False)
    # Our clock lags the EA's by 30 s: END is forming by the clock, but END + 1 min exists.
    extra = bars(401, seed=22, weekends=False, end=END + timedelta(minutes=1)).iloc[[-1]]
    store(db_url, pd.concat([history, extra]), now=END + timedelta(minutes=1))
    update_features(db_url, "EURUSD", now=END + timedelta(seconds=30))
    assert _stored(db_url)["ts"].max() == END
