"""Prometheus metrics: queue figures read from the database at scrape time, plus what
only this process can see.

The pusher worker and Dagster runs are other processes. Counting sends in the API's
memory would show zero while the worker delivers hundreds, so the seed's
`ea_signals_*_total` figures, the queue depth, bar ages and model age are derived from
the database whenever /metrics is scraped: true across processes and restarts. (As
counters they only go down if rows are deleted, which a retention job would do.)

In-process figures (ingest batches, push durations of pushes this API ran, the last EA
connection test) live in a private CollectorRegistry per app, so two apps in one test
process never share or double-register them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mt5_pipeline.api.errors import is_database_outage
from mt5_pipeline.clock import parse_iso
from mt5_pipeline.delivery.breaker import delivery_status
from mt5_pipeline.settings import Settings
from mt5_pipeline.signals.queue import delivery_figures, status_counts
from mt5_pipeline.storage.candles import newest_bars
from mt5_pipeline.storage.schema import SIGNAL_STATUSES
from mt5_pipeline.storage.trades import position_figures, reconciliation_states

log = logging.getLogger("api.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _utc_seconds(value: object) -> float | None:
    """Epoch seconds of a stored time: an ISO string, or a datetime (pandas' Timestamp is one), naive meaning UTC."""
    if isinstance(value, str | datetime):
        return parse_iso(value).timestamp()
    return None


class DatabaseCollector(Collector):
    """Queue, candle and model figures computed from the database on every scrape."""

    # Drift reads a day of features per symbol: computed at most this often, not per scrape.
    DRIFT_EVERY_SECONDS = 600.0

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._drift: tuple[float, list[tuple[str, str, float]]] | None = None

    def describe(self) -> list[Metric]:
        # Empty: registering must not query the database.
        return []

    def collect(self) -> Iterator[Metric]:
        families: list[Metric] = []
        database_up = 1
        for part in (
            self._queue_families,
            self._latency_families,
            self._candle_families,
            self._model_families,
            self._delivery_families,
            self._retrain_families,
            self._drift_families,
            self._trade_families,
        ):
            try:
                families.extend(part())
            except ImportError:  # a core module this build does not have
                continue
            except Exception as exc:  # a scrape must still answer while the database is down
                if is_database_outage(exc):
                    log.warning("metrics: database unavailable: %s", type(exc).__name__)
                    database_up = 0
                    break
                log.error("metrics: %s failed", part.__name__, exc_info=exc)
        up = GaugeMetricFamily("mt5_database_up", "1 when the last scrape could read the database")
        up.add_metric([], database_up)
        yield up
        yield from families

    def _queue_families(self) -> Iterator[Metric]:
        counts = {s: 0 for s in SIGNAL_STATUSES}
        counts.update(status_counts(self.settings.database_url))
        generated = CounterMetricFamily(
            "ea_signals_generated", "signals ever queued (all statuses), from signals_queue"
        )
        generated.add_metric([], sum(counts.values()))
        sent = CounterMetricFamily("ea_signals_sent", "signals delivered to the EA (SENT or ACKED), from signals_queue")
        sent.add_metric([], counts["SENT"] + counts["ACKED"])
        failed = CounterMetricFamily(
            "ea_signals_failed", "signals never delivered: FAILED (gave up) plus REJECTED (the EA said no)"
        )
        failed.add_metric([], counts["FAILED"] + counts["REJECTED"])
        expired = CounterMetricFamily("ea_signals_expired", "signals too late to send (EXPIRED)")
        expired.add_metric([], counts["EXPIRED"])
        depth = GaugeMetricFamily("ea_signals_queue", "signals in signals_queue per status", labels=["status"])
        for status in sorted(counts):
            depth.add_metric([status], counts[status])
        yield from (generated, sent, failed, expired, depth)

    def _latency_families(self) -> Iterator[Metric]:
        now = self.clock()
        figures = delivery_figures(self.settings.database_url, now=datetime.fromtimestamp(now, tz=timezone.utc))
        oldest = GaugeMetricFamily(
            "ea_oldest_pending_age_seconds",
            "seconds the oldest unexpired PENDING signal has waited since it was queued (0: none waiting)",
        )
        created = figures["oldest_pending_created_at"]
        oldest.add_metric([], max(0.0, now - created.timestamp()) if created is not None else 0.0)
        latency = GaugeMetricFamily(
            "ea_delivery_latency_seconds",
            "queue-to-EA seconds (sent_at - created_at) of the signals delivered in the last hour, by quantile",
            labels=["quantile"],
        )
        values = figures["latencies"]
        if values:
            for q in (0.5, 0.9, 0.99):
                latency.add_metric([str(q)], values[min(len(values) - 1, int(q * len(values)))])
        delivered = GaugeMetricFamily("ea_signals_delivered_last_hour", "signals delivered to the EA in the last hour")
        delivered.add_metric([], len(values))
        yield from (oldest, latency, delivered)

    def _drift_families(self) -> Iterator[Metric]:
        # scikit-learn and scipy load with the first scrape, not with the app.
        from mt5_pipeline.learning.drift import feature_drift, symbols_with_features

        now = self.clock()
        if self._drift is None or now - self._drift[0] >= self.DRIFT_EVERY_SECONDS:
            rows = []
            for timeframe in self.settings.timeframes:
                for symbol in symbols_with_features(self.settings, timeframe):
                    report = feature_drift(self.settings, symbol, timeframe)
                    top = report.values.get("max_psi")
                    if top is not None and math.isfinite(top):
                        rows.append((symbol, timeframe, float(top)))
            self._drift = (now, rows)
        family = GaugeMetricFamily(
            "mt5_drift_max_psi",
            "largest feature PSI of the last DRIFT_WINDOW_HOURS against the champion's training rows (0.25: large "
            "shift), refreshed every 10 minutes",
            labels=["symbol", "timeframe"],
        )
        for symbol, timeframe, top in self._drift[1]:
            family.add_metric([symbol, timeframe], top)
        yield family

    def _candle_families(self) -> Iterator[Metric]:
        now = self.clock()
        age = GaugeMetricFamily(
            "mt5_newest_bar_age_seconds",
            "seconds since the open time of the newest stored bar",
            labels=["symbol", "timeframe"],
        )
        bars = GaugeMetricFamily("mt5_candles_stored", "bars stored", labels=["symbol", "timeframe"])
        for row in newest_bars(self.settings.database_url):
            labels = [str(row["symbol"]), str(row["timeframe"])]
            newest = _utc_seconds(row.get("newest_ts"))
            if newest is not None:
                age.add_metric(labels, max(0.0, now - newest))
            if row.get("bars") is not None:
                bars.add_metric(labels, float(row["bars"]))
        yield from (age, bars)

    def _delivery_families(self) -> Iterator[Metric]:
        # The pushers run elsewhere; they keep the EA's state in the database (mt5_pipeline.delivery.breaker).

        d = delivery_status(self.settings.database_url, self.settings.ea_server_url)
        state = GaugeMetricFamily(
            "ea_delivery_state",
            "1 for the pushers' current view of the EA: ok, outage (circuit breaker open, signals held) or "
            "config_error (401/403/404/405/415: delivery stopped)",
            labels=["state"],
        )
        for name in ("ok", "outage", "config_error"):
            state.add_metric([name], 1 if d["state"] == name else 0)
        config = GaugeMetricFamily(
            "ea_config_error",
            "1 while a configuration error stops delivery, by the EA's HTTP status",
            labels=["status_code"],
        )
        if d["state"] == "config_error":
            config.add_metric([str(d["status_code"])], 1)
        yield from (state, config)

    def _model_families(self) -> Iterator[Metric]:
        # scikit-learn loads with the first question about a model, not with the app.
        from mt5_pipeline.learning.model_store import current_model_info

        info = current_model_info(self.settings)
        present = GaugeMetricFamily("mt5_model_present", "1 when a current model exists")
        present.add_metric([], 0 if info is None else 1)
        yield present
        if info is None:
            return
        trained = _utc_seconds(info.get("trained_at"))
        if trained is not None:
            age = GaugeMetricFamily("mt5_model_age_seconds", "seconds since the current model was trained")
            age.add_metric([], max(0.0, self.clock() - trained))
            yield age
        version = GaugeMetricFamily("mt5_model_info", "the current model's version", labels=["version"])
        version.add_metric([str(info.get("version", ""))], 1)
        yield version

    def _retrain_families(self) -> Iterator[Metric]:
        # scikit-learn loads with the first question about a model, not with the app.
        from mt5_pipeline.learning.model_registry import DECISIONS, last_outcomes, retrain_counts

        counts = retrain_counts(self.settings.database_url)
        names = sorted({name for name, _ in counts} | {f"rf_{tf.lower()}" for tf in self.settings.timeframes})
        retrains = CounterMetricFamily(
            "mt5_model_retrains",
            "retrains per model and outcome (promoted, forced, rejected, failed), from model_registry",
            labels=["model", "outcome"],
        )
        for name in names:
            for decision in DECISIONS:
                retrains.add_metric([name, decision], counts.get((name, decision), 0))
        failed = GaugeMetricFamily(
            "mt5_model_last_retrain_failed",
            "1 when the model's last retrain failed (the champion is ageing)",
            labels=["model"],
        )
        outcomes = last_outcomes(self.settings.database_url)
        for name in names:
            failed.add_metric([name], 1 if (outcomes.get(name) or {}).get("decision") == "failed" else 0)
        yield from (retrains, failed)

    def _trade_families(self) -> Iterator[Metric]:
        # Reported by the bridge or the EA (POST /ea/trades), read from the trades table.

        figures = position_figures(self.settings.database_url)
        open_ = GaugeMetricFamily(
            "mt5_open_positions", "open trades per symbol, as reported by the bridge or the EA", labels=["symbol"]
        )
        pips = GaugeMetricFamily(
            "mt5_realised_pips", "net pips of the closed trades per symbol (after spread)", labels=["symbol"]
        )
        profit = GaugeMetricFamily(
            "mt5_realised_profit",
            "profit + swap + commission of the closed trades per symbol, account currency",
            labels=["symbol"],
        )
        closed = CounterMetricFamily("mt5_trades_closed", "closed trades per symbol", labels=["symbol"])
        for symbol, f in sorted(figures.items()):
            open_.add_metric([symbol], f["open"])
            pips.add_metric([symbol], f["pips"])
            profit.add_metric([symbol], f["profit"])
            closed.add_metric([symbol], f["closed"])
        differences = GaugeMetricFamily(
            "mt5_reconciliation_differences",
            "positions the terminal and the trades table disagree on, at the last reconciliation",
            labels=["kind"],
        )
        age = GaugeMetricFamily(
            "mt5_reconciliation_age_seconds", "seconds since the bridge last reconciled (absent: never)"
        )
        states = reconciliation_states(self.settings.database_url)
        differences.add_metric(["unknown"], sum(s["unknown_positions"] for s in states))
        differences.add_metric(["missing"], sum(s["missing_positions"] for s in states))
        families = [open_, pips, profit, closed, differences]
        if states:
            newest = max(_utc_seconds(s["checked_at"]) or 0.0 for s in states)
            age.add_metric([], max(0.0, self.clock() - newest))
            families.append(age)
        yield from families


class ApiMetrics:
    """Every metric of one app, in its own registry."""

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.connection_test_success = Gauge(
            "ea_connection_test_success", "1 if the last EA connection test from this API succeeded, else 0", registry=r
        )
        self.candles_rejected = Counter(
            "mt5_candles_rejected",
            "candles refused by POST /ingest with partial=true (the rest of the batch was stored)",
            registry=r,
        )
        self.candles_ingested = Counter(
            "mt5_candles_ingested", "candles received by POST /ingest, by outcome", ["result"], registry=r
        )
        self.ingest_batch_size = Histogram(
            "mt5_ingest_batch_size",
            "candles per POST /ingest batch",
            buckets=(1, 10, 100, 1_000, 10_000, 50_000, 100_000, 200_000),
            registry=r,
        )
        self.ingest_duration = Histogram(
            "mt5_ingest_duration_seconds",
            "time in the ingest core per accepted batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.push_duration = Histogram(
            "ea_push_duration_seconds",
            "duration of push cycles run by this API (POST /ea/push-signals)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.requests = Counter(
            "mt5_api_requests", "requests answered, by route and status", ["method", "route", "status"], registry=r
        )
        r.register(DatabaseCollector(settings))

    def render(self) -> bytes:
        return generate_latest(self.registry)
