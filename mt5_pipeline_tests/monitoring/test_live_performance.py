"""Live performance: the bootstrap band, and the Dagster asset and its check run by Dagster
on a real trained model and real trade reports."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest

from mt5_pipeline.delivery.trades import record_trades
from mt5_pipeline.learning import model_registry
from mt5_pipeline.learning.model_store import read_sidecar
from mt5_pipeline.monitoring.live_performance import MIN_TRADES, bootstrap_band
from mt5_pipeline.orchestration.assets import features_m1, rf_m1
from mt5_pipeline.orchestration.performance import live_performance_asset, plausible_check_name
from mt5_pipeline.signals import queue
from mt5_pipeline_tests.api_support import make_signal
from mt5_pipeline_tests.orchestration_support import FAST_MODEL, load_symbols, resources_for


def test_bootstrap_band_passes_the_backtests_own_trades_and_warns_on_a_losing_streak():
    rng = np.random.default_rng(0)
    backtest = rng.choice([40.0, -20.0], size=500, p=[0.4, 0.6])  # +4 pips a trade on average
    assert bootstrap_band(backtest, rng.choice(backtest, size=50)).passed
    losing = bootstrap_band(backtest, np.full(50, -20.0))
    assert losing.judged and not losing.passed and "below the backtest's 95% band" in losing.description
    assert losing.band_low < 0 < losing.band_high
    assert not bootstrap_band(backtest, np.full(MIN_TRADES - 1, -20.0)).judged
    # Across many live samples drawn from the backtest itself, about 5-10% warn (two tests at 95%).
    warned = sum(not bootstrap_band(backtest, rng.choice(backtest, size=40), draws=500).passed for _ in range(200))
    assert 2 <= warned <= 30


def _report(settings, version: str, pips: list[float]) -> None:
    reports = []
    for i, p in enumerate(pips):
        signal = make_signal(minutes_ago=i + 1, version=version)
        assert queue.enqueue(settings.database_url, signal)
        reports.append(
            {
                "ticket": 900_000 + i, "signal_id": signal["signal_id"], "symbol": "EURUSD", "side": "BUY",
                "volume": 0.1, "open_time": f"2024-06-11T10:{i:02d}:00Z", "open_price": 1.1,
                "close_time": f"2024-06-11T11:{i:02d}:00Z", "close_price": round(1.1 + p * 0.0001, 6),
                "exit_reason": "tp" if p > 0 else "sl", "profit": p,
            }
        )  # fmt: skip
    from mt5_pipeline.clock import parse_iso

    for r in reports:
        r["open_time"], r["close_time"] = parse_iso(r["open_time"]), parse_iso(r["close_time"])
    record_trades(settings, reports)


@pytest.mark.parametrize("losing", [False, True])
def test_live_performance_asset_and_its_warning(sqlite_url, settings_for, losing):
    # Short holds and a decision on every bar: enough backtest trades on a small evaluation part.
    short = {"LABEL_MAX_HOLD_BARS": 5, "SIGNAL_BUY_THRESHOLD": 0.5, "SIGNAL_SELL_THRESHOLD": 0.4999}
    settings = settings_for(sqlite_url, **FAST_MODEL, **short)
    load_symbols(sqlite_url, {"EURUSD": 0}, bars=3000)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("symbols", ["EURUSD"])
    resources = resources_for(settings, **FAST_MODEL, **short)
    asset = live_performance_asset("M1")

    empty = dg.materialize([asset], instance=instance, resources=resources)
    assert empty.success and empty.get_asset_check_evaluations()[0].passed  # nothing traded yet

    assert dg.materialize([features_m1], partition_key="EURUSD", instance=instance, resources=resources).success
    assert dg.materialize([rf_m1], instance=instance, resources=resources, selection=[rf_m1]).success
    version = model_registry.champion(settings)["version"]
    backtest_pips = read_sidecar(settings.model_dir / "rf_m1.pkl")["backtest_trade_pips"]
    assert len(backtest_pips) >= MIN_TRADES
    n = 30
    pips = [-25.0] * n if losing else [round(float(np.mean(backtest_pips)), 2)] * n
    _report(settings, version, pips)

    result = dg.materialize([asset], instance=instance, resources=resources)
    assert result.success
    meta = result.asset_materializations_for_node("live_performance")[0].metadata
    assert meta["model_version"].value == version
    assert meta["live/trades"].value == n
    assert meta["live/total_pips"].value == pytest.approx(sum(pips), abs=0.01)
    assert meta["backtest/trades"].value == len(backtest_pips)
    assert "data:image/png;base64," in meta["equity_curve"].value
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == plausible_check_name("M1")
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.passed is (not losing), evaluation.description
