"""`mt5-pipeline demo` (`make demo`): the whole flow once, on the embedded default.

Candles go in through the ingest core, Dagster materializes features_m1, rf_m1 and
signals through its own machinery (the new-candles sensor, then the jobs), the push job
delivers to the reference EA on loopback, and the EA acks back through the real API.
The staleness guards stay on: the sample is generated (or continued) up to the current
minute, so its newest bars are fresh. Like the CLI, this module sits on top of both
shells and wires them; it holds no pipeline logic of its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import httpx

from mt5_pipeline.api.main import create_app
from mt5_pipeline.apps.ea_sim import create_ea_app
from mt5_pipeline.apps.servers import BackgroundServer, free_port
from mt5_pipeline.clock import parse_iso, utcnow
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.mt5_csv import import_file
from mt5_pipeline.market.sample_data import SAMPLE_LABEL, generate_candles, open_minutes
from mt5_pipeline.orchestration.instance import ensure_local_dagster_home
from mt5_pipeline.settings import Settings
from mt5_pipeline.signals.queue import queue_status
from mt5_pipeline.storage import migrate
from mt5_pipeline.storage.candles import newest_bars, read_candles
from mt5_pipeline.storage.engine import get_engine, redact
from mt5_pipeline.storage.schema import features_m1

# Symbol -> (first price, quote digits): scale-free features let one model learn from all.
DEMO_SYMBOLS: dict[str, tuple[float, int]] = {"EURUSD": (1.0800, 5), "GBPUSD": (1.2700, 5), "USDJPY": (150.00, 3)}
DEMO_BARS = 20_000  # about two weeks of M1 bars per symbol: enough to train, quick to run
DEMO_EA_KEY = "demo-ea-key"
# Dagster's console logger prints every step event at DEBUG; the demo's own lines say enough.
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _minute_now() -> datetime:
    return datetime.now(timezone.utc).replace(second=0, microsecond=0)


def load_candles(
    settings: Settings, say: Callable[[str], None], *, csv_file: str | None = None, bars: int = DEMO_BARS
) -> int:
    """Bring every demo symbol up to the current minute through the ingest core; return bars stored."""

    if csv_file:
        report = import_file(settings, csv_file, symbol="EURUSD", timeframe="M1", progress=False)
        say(f"imported MT5 export file {csv_file}: {report.describe()}")
    now = _minute_now()
    stored = {(b["symbol"], b["timeframe"]): b for b in newest_bars(settings.database_url)}
    for index, (symbol, (price, digits)) in enumerate(DEMO_SYMBOLS.items()):
        previous = stored.get((symbol, "M1"))
        if previous is None:
            frame = generate_candles(bars, end=now, start_price=price, seed=index, digits=digits, with_weekends=False)
        else:
            # Continue the walk from the stored close, so a second run adds only the
            # minutes since the first and the history stays one consistent series.
            n = min(bars, open_minutes(previous["newest_ts"], now, with_weekends=False))
            if n == 0:
                continue
            last = read_candles(settings.database_url, symbol, "M1", last_n=1)
            frame = generate_candles(
                n,
                end=now,
                start_price=float(last["close"].iloc[-1]),
                seed=int(now.timestamp()) + index,
                digits=digits,
                with_weekends=False,
            )
        result = ingest_candles(settings.database_url, symbol, "M1", frame)
        say(
            f"{symbol}: {result.received} bars of the {SAMPLE_LABEL} -> inserted {result.inserted}, updated "
            f"{result.updated}, unchanged {result.unchanged}"
        )
    return sum(int(b["bars"]) for b in newest_bars(settings.database_url) if b["timeframe"] == "M1")


def materialize_graph(settings: Settings, say: Callable[[str], None]) -> dict:
    """Sensor tick, features per symbol, training, prediction per symbol, one push: all through Dagster."""
    import warnings

    import dagster as dg

    # Dagster and scikit-learn load once the demo runs (`mt5-pipeline dev` imports this module for DEMO_EA_KEY).
    from mt5_pipeline.definitions import build_defs

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    from mt5_pipeline.orchestration.resources import resources_for

    home = ensure_local_dagster_home(os.environ.get("DAGSTER_HOME") or ".dagster")
    os.environ["DAGSTER_HOME"] = str(home)
    # scikit-learn only once the demo trains (see above).
    from mt5_pipeline.learning.model_store import current_model_info

    # Synthetic random walks carry no edge a model must beat (see the README's honest
    # evaluation), so the demo forces every promotion, as `mt5-pipeline train --force`
    # would, and prints what the rule would have decided: a demo that shows no signal
    # because its random-walk model was rightly rejected would show nothing else.
    defs = build_defs(settings, resources_for(settings, PROMOTION_FORCE="true"))
    outcome: dict = {}
    with dg.DagsterInstance.get() as instance:
        sensor = defs.get_repository_def().get_sensor_def("new_candles_sensor")
        with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
            tick = sensor(context)
        if not isinstance(tick, dg.SensorResult):
            raise TypeError(f"new_candles_sensor returned {type(tick).__name__}, not a SensorResult")
        symbols = sorted({rr.partition_key for rr in tick.run_requests or () if rr.partition_key is not None})
        for request in tick.dynamic_partitions_requests or ():
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys or ()))
        for event in tick.asset_events:
            instance.report_runless_asset_event(event)
        say(f"new_candles_sensor: new bars for {', '.join(symbols) or 'no symbol'}")

        def run(job_name: str, partition: str | None = None) -> dg.ExecuteInProcessResult:
            result = defs.resolve_job_def(job_name).execute_in_process(
                instance=instance, partition_key=partition, raise_on_error=True, run_config=QUIET_RUN
            )
            return result

        for symbol in symbols:
            run("features_job", symbol)
        say(f"features_m1 materialized for {len(symbols)} symbol(s)")
        checks = run("candles_checks_job").get_asset_check_evaluations()
        say("candles checks: " + ", ".join(f"{c.check_name} {'passed' if c.passed else 'FAILED'}" for c in checks))
        trained = defs.resolve_job_def("rf_m1_train_job").execute_in_process(
            instance=instance, raise_on_error=False, run_config=QUIET_RUN
        )
        # scikit-learn only once the demo trains.
        from mt5_pipeline.learning.model_registry import last_retrain

        last = last_retrain(settings) or {}
        if last.get("decision") == "failed" or current_model_info(settings) is None:
            raise RuntimeError(f"rf_m1 training failed: {last.get('reason') or trained.all_events[-1].message}")
        say(f"rf_m1 trained, evaluated and backtested: {last.get('decision', '?')} - {last.get('reason', '')}")
        decisions = {}
        for symbol in symbols:
            result = run("predict_job", symbol)
            materialization = [m for m in result.asset_materializations_for_node("signals")]
            meta = materialization[-1].metadata if materialization else {}
            if "retry_at" in meta:
                # Training ran past a minute's end: the newest bar (forming when the sample
                # was made) has closed and waits for its final version until the grace ends,
                # as in live trading. Then it is decided from the version stored.
                say(f"signals[{symbol}]: not_ready - the minute ended; asking again at {meta['retry_at'].value}")
                _sleep_until(str(meta["retry_at"].value))
                result = run("predict_job", symbol)
                materialization = [m for m in result.asset_materializations_for_node("signals")]
                meta = materialization[-1].metadata if materialization else {}
            decisions[symbol] = (
                meta["decision"].value if "decision" in meta else "?",
                meta["why"].value if "why" in meta else "",
            )
            say(f"signals[{symbol}]: {decisions[symbol][0]} - {decisions[symbol][1]}")
        outcome["decisions"] = decisions
        outcome["instance"] = str(home)
    return outcome


def push_through_dagster(settings: Settings) -> None:
    import dagster as dg

    # Dagster and scikit-learn load once the demo runs (`mt5-pipeline dev` imports this module for DEMO_EA_KEY).
    from mt5_pipeline.definitions import build_defs
    from mt5_pipeline.orchestration.resources import resources_for

    with dg.DagsterInstance.get() as instance:
        build_defs(settings, resources_for(settings)).resolve_job_def("ea_push_job").execute_in_process(
            instance=instance, raise_on_error=True, run_config=QUIET_RUN
        )


def _wait_for_acks(settings: Settings, since: datetime, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = queue_status(settings.database_url, since=since)
        if status.get("SENT", {}).get("count", 0) == 0 or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def _newest_equity_png(model_dir: Path) -> Path | None:
    pngs = sorted(model_dir.glob("*equity*.png"), key=lambda p: p.stat().st_mtime)
    return pngs[-1] if pngs else None


def _metric_lines(settings: Settings) -> list[str]:
    # scikit-learn only once the demo trains (see above).
    from mt5_pipeline.learning.model_store import current_model_info

    info = current_model_info(settings) or {}
    metrics = info.get("metrics", {})
    lines = [f"model {info.get('version', '?')} trained on {info.get('rows', '?')} rows"]
    pairs = [
        ("ROC AUC", "auc", "baseline_auc"),
        ("accuracy", "accuracy", "baseline_majority_accuracy"),
        ("balanced accuracy", "balanced_accuracy", "baseline_balanced_accuracy"),
        ("log loss", "log_loss", "baseline_log_loss"),
        ("signal hit rate", "signal_hit_rate", "baseline_always_buy_hit_rate"),
    ]
    for label, key, base in pairs:
        if key in metrics:
            base_text = f"  (baseline {metrics[base]:.4f})" if base in metrics else ""
            lines.append(f"  {label:<18} {metrics[key]:.4f}{base_text}")
    return lines


DEMO_TTL_SECONDS = 180


def run_demo(settings: Settings, *, csv_file: str | None = None, say: Callable[[str], None] = print) -> int:
    started = time.monotonic()
    since = datetime.now(timezone.utc)
    say(f"mt5-pipeline demo on {redact(settings.database_url)} (models in {settings.model_dir})")
    say(migrate.upgrade(settings.database_url).describe())

    api_port = free_port()
    api_key = settings.effective_api_keys[0]
    ea_key = settings.ea_api_key or DEMO_EA_KEY
    ea_app = create_ea_app(ea_key, ack_url=f"http://127.0.0.1:{api_port}/ea/ack", ack_api_key=api_key)
    with BackgroundServer(ea_app) as ea:
        # The demo trains between its bars' close and the push: with the default 60 s TTL a
        # run whose push fell in the last seconds of that minute found its signals expired.
        settings = settings.replace(
            ea_server_url_override=f"{ea.base_url}/signals",
            ea_api_key=ea_key,
            ea_push_enabled=True,
            signal_ttl_seconds=max(settings.signal_ttl_seconds, DEMO_TTL_SECONDS),
        )
        with BackgroundServer(create_app(settings), port=api_port) as api:
            say(f"reference EA on {ea.base_url}, API on {api.base_url}")
            candles_total = load_candles(settings, say, csv_file=csv_file)
            outcome = materialize_graph(settings, say)
            # One signal per bar: a second run within the same minute finds each newest
            # closed bar already signalled by the first, and that is the right answer.
            already = {symbol for symbol, (decision, _why) in outcome["decisions"].items() if decision == "duplicate"}
            with httpx.Client(base_url=api.base_url, headers={"X-API-Key": api_key}, timeout=30) as client:
                for symbol, (decision, _why) in outcome["decisions"].items():
                    if decision == "neutral":
                        # The seed's manual path: POST /ea/generate-signal with force=true.
                        reply = client.post(
                            "/ea/generate-signal", json={"symbol": symbol, "timeframe": "M1", "force": True}
                        ).json()
                        if reply.get("reason") == "not_ready":
                            # A minute turned during the demo: the bar that just closed is
                            # decided once its grace has passed (a couple of seconds).
                            _sleep_until(reply.get("figures", {}).get("retry_at"))
                            reply = client.post(
                                "/ea/generate-signal", json={"symbol": symbol, "timeframe": "M1", "force": True}
                            ).json()
                        if reply.get("reason") == "duplicate":
                            already.add(symbol)
                        say(
                            f"signals[{symbol}]: forced through POST /ea/generate-signal -> "
                            f"{reply.get('message') or reply.get('error')}"
                        )
                push_through_dagster(settings)
                status = _wait_for_acks(settings, since)

    from sqlalchemy import func, select

    with get_engine(settings.database_url).connect() as conn:
        feature_rows = conn.execute(select(func.count()).select_from(features_m1)).scalar_one()
    count = {
        name: status.get(name, {}).get("count", 0)
        for name in ("PENDING", "SENT", "ACKED", "FAILED", "EXPIRED", "REJECTED")
    }
    generated = sum(count.values())
    png = _newest_equity_png(Path(settings.model_dir))
    lines = [
        "",
        "=== mt5-pipeline demo summary ===",
        f"candles stored      {candles_total}",
        f"feature rows        {feature_rows}  (closed bars only: a bar still forming has none yet)",
        *_metric_lines(settings),
        f"signals generated   {generated}",
        f"signals sent        {count['SENT'] + count['ACKED']}",
        f"signals acknowledged {count['ACKED']}",
        f"signals expired     {count['EXPIRED']}  (rejected {count['REJECTED']}, failed {count['FAILED']}, pending "
        f"{count['PENDING']})",
        *(
            [
                f"already signalled   {len(already)}  (their newest closed bar has its signal from an earlier run; "
                "one per bar)"
            ]
            if already
            else []
        ),
        f"equity curve        {png if png else 'not drawn'}",
        f"Dagster instance    {outcome['instance']}  (run `make dev` and open http://127.0.0.1:3000 for the UI)",
        f"took                {time.monotonic() - started:.1f} s",
    ]
    say("\n".join(lines))
    ok = (generated > 0 and count["ACKED"] > 0) or (bool(already) and len(already) == len(outcome["decisions"]))
    if not ok:
        say("demo: no signal was delivered and acknowledged; see the lines above for why")
    return 0 if ok else 1


def _sleep_until(stamp: str | None) -> None:
    """Sleep until an ISO time (a little after, for the clock's rounding); at most 10 s."""
    if stamp:
        time.sleep(min(10.0, max(0.0, (parse_iso(stamp) - utcnow()).total_seconds()) + 0.05))
