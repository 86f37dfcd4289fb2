"""The operator's view: Prometheus' alert rules and the Grafana dashboard ask only for
metrics the project really serves, and the rules fire when they should.

promtool (Debian's `prometheus` package) checks the configuration and runs
docker/prometheus/alerts_test.yml where it is installed. Whatever the machine, every
metric name and label matcher in the rules and the dashboard is checked against the
/metrics of a real API and a real bridge (on the stand-in terminal) after a day of bars,
a trained champion and a delivered signal.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mt5_pipeline.delivery.pusher import push_pending
from mt5_pipeline.learning.features import update_features
from mt5_pipeline.learning.training import train_model
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.market.sample_data import generate_candles, minutes_ago
from mt5_pipeline.signals import queue
from mt5_pipeline_tests import ROOT
from mt5_pipeline_tests.bridge_support import API_KEY, build_rig
from mt5_pipeline_tests.ea_server import make_signal

PROMETHEUS = ROOT / "docker" / "prometheus"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "mt5-pipeline.json"
COMPOSE = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
# Prometheus makes `up` itself for every target.
SYNTHETIC = {"up"}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "le",
    "inf",
    "nan",
}


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return {r["alert"]: r["expr"] for group in rules["groups"] for r in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    dash = json.loads(DASHBOARD.read_text())
    return {f"{p['title']} [{t['refId']}]": t["expr"] for p in dash["panels"] for t in p.get("targets", [])}


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, {label: value}) of every series selector in a PromQL expression."""
    out = []
    # Grouping clauses name labels, not metrics; ranges are durations.
    cleaned = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    cleaned = re.sub(r"\[[^\]]*\]", " ", cleaned)
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?(\s*\()?", cleaned):
        name, matchers, call = m.group(1), m.group(2), m.group(3)
        if call or name.lower() in PROMQL_WORDS:
            continue
        labels = dict(re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', matchers or ""))
        out.append((name, labels))
    return out


def test_the_selector_parser_finds_names_and_matchers():
    found = selectors('sum by (status) (rate(mt5_api_requests_total{route="/ingest"}[5m])) > 0 or up{job="x"} == 0')
    assert found == [("mt5_api_requests_total", {"route": "/ingest"}), ("up", {"job": "x"})]


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (apt-get install prometheus): the metric-name check below still runs",
)
def test_promtool_checks_the_config_and_the_rules_fire_as_specified(tmp_path):
    for path in PROMETHEUS.iterdir():
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "api_key").write_text("key")
    # The container's paths, here.
    config = (
        (tmp_path / "prometheus.yml")
        .read_text()
        .replace("/etc/prometheus/", f"{tmp_path}/")
        .replace("/prometheus/api_key", f"{tmp_path}/api_key")
    )
    (tmp_path / "prometheus.yml").write_text(config)
    checked = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has a unit test.
    covered = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "alerts_test.yml").read_text()))
    assert set(alert_expressions()) <= covered | {"MT5RetrainFailed", "MT5ApiDown"}


def test_compose_provisions_prometheus_and_grafana_with_these_files():
    services = COMPOSE["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    for service in (prometheus, grafana):
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"])  # no login in front of them
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    api_job = next(j for j in config["scrape_configs"] if j["job_name"] == "mt5-api")
    assert api_job["static_configs"][0]["targets"] == ["api:18001"]
    assert api_job["authorization"]["credentials_file"] in prometheus["command"][0]
    datasource = yaml.safe_load(
        (ROOT / "docker" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    dash = json.loads(DASHBOARD.read_text())
    assert all(p["datasource"]["uid"] == datasource["uid"] for p in dash["panels"] if p["type"] != "row")


@pytest.fixture
def served(sqlite_url, tmp_path) -> dict[str, dict[str, list[dict[str, str]]]]:
    """Sample name -> label sets, from a real API's and a real bridge's /metrics."""
    rig = build_rig(sqlite_url, tmp_path)
    try:
        settings = rig.api_settings.replace(rf_n_estimators=5, rf_min_samples_leaf=20)
        bars = generate_candles(3000, end=minutes_ago(1), with_weekends=False, seed=7)
        ingest_candles(rig.url, "EURUSD", "M1", bars.iloc[:-10])
        # The newest bars as the EA sends them, so the API's own ingest counters have samples.
        newest = [
            {**{k: v for k, v in row.items() if k != "time"}, "time": int(row["time"].timestamp())}
            for row in bars.iloc[-10:].to_dict("records")
        ]
        posted = httpx.post(
            f"{rig.api_server.base_url}/ingest",
            json={"symbol": "EURUSD", "timeframe": "M1", "candles": newest},
            headers={"X-API-Key": API_KEY},
            timeout=30,
        )
        assert posted.status_code == 200, posted.text
        update_features(rig.url, "EURUSD", "M1")
        train_model(settings, force=True)
        now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        queue.enqueue(rig.url, make_signal("EURUSD", ts=now - timedelta(minutes=1)))
        assert push_pending(rig.api_settings).sent == 1  # to the bridge, which trades it
        queue.enqueue(rig.url, make_signal("USDJPY", ts=now - timedelta(minutes=1)))  # left waiting
        # Prometheus sends the key as a bearer token; only /metrics takes it that way.
        bearer = {"Authorization": f"Bearer {API_KEY}"}
        api = httpx.get(f"{rig.api_server.base_url}/metrics", headers=bearer, timeout=60)
        assert api.status_code == 200, api.text
        assert httpx.get(f"{rig.api_server.base_url}/ea/queue-status", headers=bearer, timeout=10).status_code == 401
        bridge = httpx.get(f"{rig.bridge_server.base_url}/metrics", timeout=10)
        assert bridge.status_code == 200
    finally:
        rig.close()
    samples: dict[str, list[dict[str, str]]] = {}
    for text in (api.text, bridge.text):
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples.setdefault(s.name, []).append(dict(s.labels))
    return {"samples": samples}


def test_the_new_delivery_drift_and_terminal_metrics_carry_values(served):
    samples = served["samples"]
    assert {"quantile": "0.5"} in samples["ea_delivery_latency_seconds"]
    assert samples["ea_oldest_pending_age_seconds"] and samples["ea_signals_delivered_last_hour"]
    assert {"symbol": "EURUSD", "timeframe": "M1"} in samples["mt5_drift_max_psi"]
    assert samples["mt5_bridge_terminal_connected"] == [{}]


def test_every_rule_and_panel_asks_for_metrics_that_exist(served):
    samples = served["samples"]
    expressions = {
        **{f"alert {k}": v for k, v in alert_expressions().items()},
        **{f"panel {k}": v for k, v in dashboard_expressions().items()},
    }
    assert len(expressions) > 20
    for where, expr in expressions.items():
        found = selectors(expr)
        assert found, f"{where}: no metric in {expr!r}"
        for name, labels in found:
            if name in SYNTHETIC:
                continue
            assert name in samples, f"{where}: {name} is not served by the API or the bridge"
            for label, value in labels.items():
                values = {s.get(label) for s in samples[name]}
                assert value in values, (
                    f"{where}: {name}{{{label}={value!r}}} matches nothing served ({sorted(v for v in values if v)})"
                )
