"""Ingest throughput: the ingest core against one INSERT with a commit per row.

    .venv/bin/python benchmarks/bench_ingest.py [--quick]

Creates a scratch database on TEST_DATABASE_URL's server (default
postgresql://postgres@127.0.0.1:5432/test), drops it afterwards, and measures in one run:

* 1,000,000 M1 candles through ``ingest_candles`` in batches of 100,000 — validation,
  binary COPY and the idempotent upsert included — as DataFrames (the importer's path)
  and as lists of dicts (the API's path, after JSON parsing), each into an empty table,
  best of --repeat runs (default 3);
* the same million again (every bar unchanged: nothing written, nothing locked);
* 100,000 bars re-sent with other values (updates);
* the naive baseline: one INSERT and one commit per row, on a 5,000-row sample;
* peak memory (max RSS of this process).

Prints a table and writes benchmarks/out/bench_ingest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import psycopg2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mt5_pipeline.ingest import ingest_candles  # noqa: E402
from mt5_pipeline.storage import migrate  # noqa: E402
from mt5_pipeline.storage.engine import dispose_engines, psycopg_conninfo  # noqa: E402

SERVER_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
OUT = Path(__file__).resolve().parent / "out" / "bench_ingest.json"
AIM_CANDLES_PER_S = 150_000
AIM_RATIO = 70
AIM_PEAK_MB = 1024
START = 1_577_836_800  # 2020-01-01 00:00 UTC


def make_bars(n: int, seed: int, start: int = START) -> pd.DataFrame:
    """A random walk of consecutive M1 bars with valid OHLC (numpy only: quick to make)."""
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


def ingest_all(url: str, symbol: str, frame: pd.DataFrame, batch: int, as_dicts: bool, now: datetime) -> tuple[float, dict]:
    """Seconds spent inside ingest_candles (building the dicts is the client's work, not timed)."""
    spent = 0.0
    totals = {"inserted": 0, "updated": 0, "unchanged": 0}
    for start in range(0, len(frame), batch):
        part = frame.iloc[start : start + batch]
        payload = part.to_dict(orient="records") if as_dicts else part
        t0 = time.perf_counter()
        result = ingest_candles(url, symbol, "M1", payload, now=now)
        spent += time.perf_counter() - t0
        for key in totals:
            totals[key] += getattr(result, key)
    return spent, totals


def best_of(repeat: int, url: str, symbol: str, frame: pd.DataFrame, batch: int, as_dicts: bool, now: datetime) -> float:
    times = []
    for _ in range(repeat):
        truncate(url)
        spent, counts = ingest_all(url, symbol, frame, batch, as_dicts=as_dicts, now=now)
        assert counts["inserted"] == len(frame), counts
        times.append(spent)
    kind = "dicts" if as_dicts else "DataFrame"
    print(f"  new bars, {kind}: " + ", ".join(f"{len(frame) / t:,.0f}" for t in times) + " candles/s", flush=True)
    return min(times)


def truncate(url: str) -> None:
    with psycopg.connect(psycopg_conninfo(url), autocommit=True) as conn:
        conn.execute("TRUNCATE candles")
        conn.execute("CHECKPOINT")  # start the next run with no dirty pages of this one


def naive_insert(url: str, frame: pd.DataFrame) -> float:
    """One INSERT and one COMMIT per row through psycopg2, the declared driver."""
    conn = psycopg2.connect(psycopg_conninfo(url))
    now = datetime.now(timezone.utc)
    rows = [
        ("NAIVE", "M1", datetime.fromtimestamp(int(r.time), timezone.utc), r.open, r.high, r.low, r.close, int(r.tick_volume), int(r.spread), int(r.real_volume), now)
        for r in frame.itertuples(index=False)
    ]
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        for row in rows:
            cur.execute(
                "INSERT INTO candles (symbol, timeframe, ts, open, high, low, close, tick_volume, spread, real_volume, ingested_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                row,
            )
            conn.commit()
    spent = time.perf_counter() - t0
    conn.close()
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200,000 candles and a 2,000-row naive sample")
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="new-bar runs per input kind; the best is reported")
    args = parser.parse_args()
    n = 200_000 if args.quick else 1_000_000
    naive_n = 2_000 if args.quick else 5_000

    admin = psycopg.connect(psycopg_conninfo(SERVER_URL), autocommit=True)
    name = f"mt5_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = psycopg_conninfo(SERVER_URL).rsplit("/", 1)[0] + f"/{name}"
    rows: list[dict] = []
    try:
        migrate.upgrade(url)
        now = datetime.now(timezone.utc)
        frame = make_bars(n, seed=1)
        load = os.getloadavg()[0]
        print(f"ingest core, {n:,} M1 candles in batches of {args.batch:,} (PostgreSQL scratch database {name}; load average {load:.2f})", flush=True)

        # Each new-bar run starts from an empty table, so no run pays for another's index
        # growth (two million rows outgrow the server's 128 MB of shared buffers). The
        # best of --repeat runs is reported: on a shared 2-core machine other processes'
        # bursts only ever slow a run down.
        t_dicts = best_of(args.repeat, url, "GBPUSD", make_bars(n, seed=2), args.batch, True, now)
        t_df = best_of(args.repeat, url, "EURUSD", frame, args.batch, False, now)  # leaves EURUSD stored
        t_again, c_again = ingest_all(url, "EURUSD", frame, args.batch, as_dicts=False, now=now)
        assert c_again["unchanged"] == n, c_again
        changed = frame.iloc[: args.batch].copy()
        changed["close"] = changed["open"]  # still inside [low, high]
        changed["tick_volume"] += 1
        t_upd, c_upd = ingest_all(url, "EURUSD", changed, args.batch, as_dicts=False, now=now)
        assert c_upd["updated"] == len(changed), c_upd
        t_naive = naive_insert(url, make_bars(naive_n, seed=3))
    finally:
        dispose_engines()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    naive_rate = naive_n / t_naive
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def row(figure: str, value: float, unit: str, baseline: float | None, aim: str) -> None:
        rows.append(
            {
                "figure": figure,
                "value": round(value, 1),
                "unit": unit,
                "baseline": None if baseline is None else round(baseline, 1),
                "ratio": None if not baseline else round(value / baseline, 1),
                "aim": aim,
            }
        )

    row(f"ingest_candles, new bars, DataFrame batches (best of {args.repeat})", n / t_df, "candles/s", naive_rate, f">= {AIM_CANDLES_PER_S:,} candles/s, >= {AIM_RATIO}x naive")
    row(f"ingest_candles, new bars, list-of-dict batches, API path (best of {args.repeat})", n / t_dicts, "candles/s", naive_rate, f">= {AIM_CANDLES_PER_S:,} candles/s")
    row("ingest_candles, re-sent unchanged bars", n / t_again, "candles/s", naive_rate, "faster than new bars")
    row("ingest_candles, re-sent changed bars (updates)", len(changed) / t_upd, "candles/s", naive_rate, "")
    row("naive: one INSERT + COMMIT per row", naive_rate, "rows/s", None, "baseline")
    row("peak memory (max RSS)", peak_mb, "MB", None, f"< {AIM_PEAK_MB} MB")

    width = max(len(r["figure"]) for r in rows)
    print(f"\n{'figure':<{width}}  {'value':>12}  {'unit':<10} {'baseline':>10}  {'ratio':>7}  aim")
    for r in rows:
        baseline = "" if r["baseline"] is None else f"{r['baseline']:,.0f}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.1f}x"
        print(f"{r['figure']:<{width}}  {r['value']:>12,.0f}  {r['unit']:<10} {baseline:>10}  {ratio:>7}  {r['aim']}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwrote {OUT.relative_to(ROOT)}")
    ok = n / t_df >= AIM_CANDLES_PER_S and peak_mb < AIM_PEAK_MB
    print("aim met" if ok else "aim NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
