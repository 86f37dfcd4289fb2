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
  against a model trained here with ``mt5_pipeline.model.train_model`` on 6,000
  generated bars. ``force: true``: the first request queues a signal, the rest find the
  bar already has one (409), so every request predicts and touches the queue.

Prints a table and writes benchmarks/out/bench_api.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mt5_pipeline.ingest import ingest_candles  # noqa: E402
from mt5_pipeline.settings import Settings  # noqa: E402
from mt5_pipeline.storage import migrate  # noqa: E402
from mt5_pipeline.storage.engine import dispose_engines, psycopg_conninfo  # noqa: E402

SERVER_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
OUT = Path(__file__).resolve().parent / "out" / "bench_api.json"
BATCH = 10_000
AIM_RATIO = 0.40
AIM_P99_MS = 50.0
KEY = "bench-key-" + uuid.uuid4().hex[:8]
START = 1_577_836_800  # 2020-01-01 00:00 UTC


def make_bars(n: int, seed: int, start: int = START) -> pd.DataFrame:
    """A random walk of consecutive M1 bars with valid OHLC."""
    rng = np.random.default_rng(seed)
    close = 1.1 * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    open_ = np.concatenate([[1.1], close[:-1]])
    wick = np.abs(rng.normal(0, 5e-5, (2, n)))
    return pd.DataFrame(
        {
            "time": start + 60 * np.arange(n, dtype=np.int64),
            "open": np.round(open_, 5),
            "high": np.round(np.maximum(open_, close) + wick[0], 5) + 1e-5,
            "low": np.round(np.minimum(open_, close) - wick[1], 5) - 1e-5,
            "close": np.round(close, 5),
            "tick_volume": rng.integers(1, 200, n),
            "spread": rng.integers(0, 20, n),
            "real_volume": np.zeros(n, dtype=np.int64),
        }
    )


def batches(frame: pd.DataFrame) -> list[list[dict]]:
    return [frame.iloc[i : i + BATCH].to_dict(orient="records") for i in range(0, len(frame), BATCH)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("mt5-pipeline")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mt5_pipeline.cli"]
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([*cmd, "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            return proc
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("serve did not answer within 60 s") from None
            time.sleep(0.2)


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
    from mt5_pipeline.features import update_features
    from mt5_pipeline.model import train_model
    from mt5_pipeline.sample_data import generate_candles, minutes_ago

    settings = Settings.from_env({"DATABASE_URL": url, "MODEL_DIR": str(model_dir), "API_KEYS": KEY}, env_file=None)
    frame = generate_candles(6_000, end=minutes_ago(1), with_weekends=False, seed=11)
    ingest_candles(url, "EURUSD", "M1", frame)
    update_features(url, "EURUSD", "M1")
    result = train_model(settings, ["EURUSD"])
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 candles and 60 signal requests")
    args = parser.parse_args()
    n = 100_000 if args.quick else 1_000_000
    n_signals = 60 if args.quick else 300

    admin = psycopg.connect(psycopg_conninfo(SERVER_URL), autocommit=True)
    name = f"mt5_bench_api_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = psycopg_conninfo(SERVER_URL).rsplit("/", 1)[0] + f"/{name}"
    rows: list[dict] = []
    proc: subprocess.Popen | None = None
    work = Path(tempfile.mkdtemp(prefix="bench_api_"))
    try:
        migrate.upgrade(url)
        frame = make_bars(n, seed=1)
        parts = batches(frame)
        print(f"{n:,} M1 candles in batches of {BATCH:,} (PostgreSQL scratch database {name})", flush=True)

        t_core, inserted = core_rate(url, parts)
        assert inserted == n, inserted
        print(f"  core: {n / t_core:,.0f} candles/s", flush=True)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE candles")  # the API run starts from the same empty table

        bodies = [json.dumps({"symbol": "EURUSD_API", "timeframe": "M1", "candles": part}).encode() for part in parts]
        body_mb = sum(map(len, bodies)) / len(bodies) / 1e6
        del parts

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "EA_", "DATABASE_", "MT5_", "METRICS_", "SIGNAL_", "MODEL_"))}
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
        proc = start_server(env, port, work / "serve.log")
        base = f"http://127.0.0.1:{port}"
        t_api, wall_api, inserted_api, per_request = api_rate(base, bodies)
        assert inserted_api == n, inserted_api
        del bodies
        print(f"  API:  {n / t_api:,.0f} candles/s ({body_mb:.2f} MB per request)", flush=True)

        print("training a model for /ea/generate-signal ...", flush=True)
        train(url, work / "models")
        latencies, codes = signal_latencies(base, n_signals)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        dispose_engines()
        try:
            from mt5_pipeline.storage.bulk import dispose_pg_connections

            dispose_pg_connections()
        except ImportError:
            pass
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    core = n / t_core
    api = n / t_api
    p50 = percentile(latencies, 0.50) * 1000
    p99 = percentile(latencies, 0.99) * 1000

    def row(figure: str, value: float, unit: str, baseline: float | None, aim: str, digits: int = 1) -> None:
        rows.append(
            {
                "figure": figure,
                "value": round(value, digits),
                "unit": unit,
                "baseline": None if baseline is None else round(baseline, digits),
                "ratio": None if not baseline else round(value / baseline, 3),
                "aim": aim,
            }
        )

    row("POST /ingest to `mt5-pipeline serve`, 10,000-candle batches", api, "candles/s", core, f">= {AIM_RATIO:.0%} of the core's rate")
    row("POST /ingest, wall clock incl. client", n / wall_api, "candles/s", core, "")
    row("ingest_candles called directly, same batches", core, "candles/s", None, "baseline")
    row("POST /ingest request p50 (10,000 candles)", percentile(per_request, 0.5) * 1000, "ms", None, "")
    row("POST /ea/generate-signal p50", p50, "ms", None, "", 2)
    row("POST /ea/generate-signal p99", p99, "ms", None, f"< {AIM_P99_MS:g} ms", 2)
    row("POST /ea/generate-signal mean", statistics.fmean(latencies) * 1000, "ms", None, f"{len(latencies)} requests: {codes}", 2)

    width = max(len(r["figure"]) for r in rows)
    print(f"\n{'figure':<{width}}  {'value':>12}  {'unit':<10} {'baseline':>10}  {'ratio':>7}  aim")
    for r in rows:
        baseline = "" if r["baseline"] is None else f"{r['baseline']:,.0f}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        print(f"{r['figure']:<{width}}  {r['value']:>12,.2f}  {r['unit']:<10} {baseline:>10}  {ratio:>7}  {r['aim']}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwrote {OUT.relative_to(ROOT)}")
    ok = api / core >= AIM_RATIO and p99 < AIM_P99_MS
    print("aim met" if ok else "aim NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
