"""The API against the core it wraps: POST /ingest throughput and /ea/generate-signal latency.

    .venv/bin/python benchmarks/bench_api.py [--quick]

Creates a scratch database on TEST_DATABASE_URL's server (default
postgresql://postgres@127.0.0.1:5432/test), drops it afterwards, and measures in one run:

* 1,000,000 M1 candles (100,000 with --quick) through ``ingest_candles`` called directly,
  in batches of 10,000 list-of-dict candles (what the API hands the core after parsing):
  the baseline;
* the same number of candles through ``POST /ingest`` to a real ``mt5-pipeline serve``
  process on loopback, batches of 10,000, one request at a time as an EA sends them
  (bodies serialised before the clock starts: the client's JSON work is not the server's);
* ``POST /ea/generate-signal`` latency, p50 and p99 over 300 requests (60 with --quick),
  against a model trained here with ``mt5_pipeline.learning.model.train_model`` on 6,000
  generated bars. ``force: true``: the first request queues a signal, the rest find the
  bar already has one (409), so every request predicts and touches the queue.

Prints a table and writes benchmarks/out/bench_api.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pandas as pd
import psycopg
from _support import add_row, database_name, finish, make_bars, percentile, scratch_database, stop, wait_healthy

from mt5_pipeline.apps.servers import free_port
from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.settings import Settings

BATCH = 10_000
AIM_RATIO = 0.40
AIM_P99_MS = 50.0
KEY = "bench-key-" + uuid.uuid4().hex[:8]


def batches(frame: pd.DataFrame) -> list[list[dict]]:
    return [frame.iloc[i : i + BATCH].to_dict(orient="records") for i in range(0, len(frame), BATCH)]


def start_server(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("mt5-pipeline")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mt5_pipeline.apps.cli"]
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [*cmd, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def core_rate(url: str, parts: list[list[dict]]) -> tuple[float, int]:
    spent, inserted = 0.0, 0
    for part in parts:
        t0 = time.perf_counter()
        result = ingest_candles(url, "CORE", "M1", part)
        spent += time.perf_counter() - t0
        inserted += result.inserted
    return spent, inserted


def api_rate(base: str, bodies: list[bytes]) -> tuple[float, float, int, list[float]]:
    """(seconds inside requests, wall seconds, candles inserted, per-request seconds)."""
    per_request: list[float] = []
    inserted = 0
    headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
    with httpx.Client(base_url=base, timeout=300) as client:
        wall0 = time.perf_counter()
        for body in bodies:
            t0 = time.perf_counter()
            response = client.post("/ingest", content=body, headers=headers)
            per_request.append(time.perf_counter() - t0)
            if response.status_code != 200:
                raise SystemExit(f"POST /ingest answered {response.status_code}: {response.text[:500]}")
            inserted += response.json()["inserted"]
        wall = time.perf_counter() - wall0
    return sum(per_request), wall, inserted, per_request


def train(url: str, model_dir: Path) -> Settings:
    from mt5_pipeline.learning.features import update_features
    from mt5_pipeline.learning.training import train_model
    from mt5_pipeline.market.sample_data import generate_candles, minutes_ago

    settings = Settings.from_env({"DATABASE_URL": url, "MODEL_DIR": str(model_dir), "API_KEYS": KEY}, env_file=None)
    frame = generate_candles(6_000, end=minutes_ago(1), with_weekends=False, seed=11)
    ingest_candles(url, "EURUSD", "M1", frame)
    update_features(url, "EURUSD", "M1")
    result = train_model(settings, ["EURUSD"], force=True)  # latency needs a model, not a good one
    print(f"  trained {result.version} on {result.rows:,} rows", flush=True)
    return settings


def signal_latencies(base: str, n: int) -> tuple[list[float], dict[int, int]]:
    headers = {"X-API-Key": KEY}
    body = {"symbol": "EURUSD", "timeframe": "M1", "force": True}
    out: list[float] = []
    codes: dict[int, int] = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        for i in range(n + 5):
            t0 = time.perf_counter()
            response = client.post("/ea/generate-signal", json=body, headers=headers)
            elapsed = time.perf_counter() - t0
            if response.status_code not in (200, 409):
                raise SystemExit(f"/ea/generate-signal answered {response.status_code}: {response.text[:500]}")
            if i >= 5:  # the first requests load the model and warm the pools
                out.append(elapsed)
                codes[response.status_code] = codes.get(response.status_code, 0) + 1
    return out, codes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 candles and 60 signal requests")
    args = parser.parse_args()
    n = 100_000 if args.quick else 1_000_000
    n_signals = 60 if args.quick else 300

    work = Path(tempfile.mkdtemp(prefix="bench_api_"))
    with scratch_database("mt5_bench_api") as url:
        proc: subprocess.Popen | None = None
        try:
            frame = make_bars(n, seed=1)
            parts = batches(frame)
            print(
                f"{n:,} M1 candles in batches of {BATCH:,} (PostgreSQL scratch database {database_name(url)})",
                flush=True,
            )

            t_core, inserted = core_rate(url, parts)
            assert inserted == n, inserted
            print(f"  core: {n / t_core:,.0f} candles/s", flush=True)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("TRUNCATE candles")  # the API run starts from the same empty table

            bodies = [
                json.dumps({"symbol": "EURUSD_API", "timeframe": "M1", "candles": part}).encode() for part in parts
            ]
            body_mb = sum(map(len, bodies)) / len(bodies) / 1e6
            del parts

            port = free_port()
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("API_", "EA_", "DATABASE_", "MT5_", "METRICS_", "SIGNAL_", "MODEL_"))
            }
            env.update(
                DATABASE_URL=url,
                API_KEYS=KEY,
                API_PORT=str(port),
                MODEL_DIR=str(work / "models"),
                LOG_LEVEL="WARNING",
                EA_SERVER_PORT="9",
                # Training below takes a while; the bars it trains on must still count as fresh.
                SIGNAL_MAX_BAR_AGE_SECONDS="3600",
            )
            base = f"http://127.0.0.1:{port}"
            proc = start_server(env, port, work / "serve.log")
            wait_healthy(f"{base}/health", proc, work / "serve.log", timeout=60)
            t_api, wall_api, inserted_api, per_request = api_rate(base, bodies)
            assert inserted_api == n, inserted_api
            del bodies
            print(f"  API:  {n / t_api:,.0f} candles/s ({body_mb:.2f} MB per request)", flush=True)

            print("training a model for /ea/generate-signal ...", flush=True)
            train(url, work / "models")
            latencies, codes = signal_latencies(base, n_signals)
        finally:
            if proc is not None:
                stop(proc)

    core = n / t_core
    api = n / t_api
    # "nearest": each percentile is a latency some request really had.
    p50 = percentile(latencies, 0.50, method="nearest") * 1000
    p99 = percentile(latencies, 0.99, method="nearest") * 1000

    rows: list[dict] = []
    add_row(
        rows,
        "POST /ingest to `mt5-pipeline serve`, 10,000-candle batches",
        api,
        "candles/s",
        core,
        f">= {AIM_RATIO:.0%} of the core's rate",
    )
    add_row(rows, "POST /ingest, wall clock incl. client", n / wall_api, "candles/s", core, "")
    add_row(rows, "ingest_candles called directly, same batches", core, "candles/s", None, "baseline")
    add_row(
        rows,
        "POST /ingest request p50 (10,000 candles)",
        percentile(per_request, 0.5, method="nearest") * 1000,
        "ms",
        None,
        "",
    )
    add_row(rows, "POST /ea/generate-signal p50", p50, "ms", None, "", digits=2)
    add_row(rows, "POST /ea/generate-signal p99", p99, "ms", None, f"< {AIM_P99_MS:g} ms", digits=2)
    add_row(
        rows,
        "POST /ea/generate-signal mean",
        statistics.fmean(latencies) * 1000,
        "ms",
        None,
        f"{len(latencies)} requests: {codes}",
        digits=2,
    )
    return finish("bench_api", rows, api / core >= AIM_RATIO and p99 < AIM_P99_MS)


if __name__ == "__main__":
    sys.exit(main())
