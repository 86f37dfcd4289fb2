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

import os
import resource
import sys
import time
from datetime import datetime, timezone
from functools import partial

import pandas as pd
import psycopg
import psycopg2
from _support import add_row, bench_parser, database_name, finish, make_bars, scratch_database

from mt5_pipeline.market.ingest import ingest_candles
from mt5_pipeline.storage.engine import psycopg_conninfo

AIM_CANDLES_PER_S = 150_000
AIM_RATIO = 70
AIM_PEAK_MB = 1024


def ingest_all(
    url: str, symbol: str, frame: pd.DataFrame, batch: int, as_dicts: bool, now: datetime
) -> tuple[float, dict]:
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


def best_of(
    repeat: int, url: str, symbol: str, frame: pd.DataFrame, batch: int, as_dicts: bool, now: datetime
) -> float:
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
        (
            "NAIVE",
            "M1",
            datetime.fromtimestamp(int(r.time), timezone.utc),
            r.open,
            r.high,
            r.low,
            r.close,
            int(r.tick_volume),
            int(r.spread),
            int(r.real_volume),
            now,
        )
        for r in frame.itertuples(index=False)
    ]
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        for row in rows:
            cur.execute(
                "INSERT INTO candles (symbol, timeframe, ts, open, high, low, close, tick_volume, spread, "
                "real_volume, ingested_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                row,
            )
            conn.commit()
    spent = time.perf_counter() - t0
    conn.close()
    return spent


def main() -> int:
    parser = bench_parser(__doc__, "200,000 candles and a 2,000-row naive sample")
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="new-bar runs per input kind; the best is reported")
    args = parser.parse_args()
    n = 200_000 if args.quick else 1_000_000
    naive_n = 2_000 if args.quick else 5_000

    with scratch_database("mt5_bench_ingest") as url:
        now = datetime.now(timezone.utc)
        frame = make_bars(n, seed=1)
        load = os.getloadavg()[0]
        print(
            f"ingest core, {n:,} M1 candles in batches of {args.batch:,} (PostgreSQL scratch database "
            f"{database_name(url)}; load average {load:.2f})",
            flush=True,
        )

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

    naive_rate = naive_n / t_naive
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    rows: list[dict] = []
    row = partial(add_row, rows, digits=1, ratio_digits=1)
    row(
        f"ingest_candles, new bars, DataFrame batches (best of {args.repeat})",
        n / t_df,
        "candles/s",
        naive_rate,
        f">= {AIM_CANDLES_PER_S:,} candles/s, >= {AIM_RATIO}x naive",
    )
    row(
        f"ingest_candles, new bars, list-of-dict batches, API path (best of {args.repeat})",
        n / t_dicts,
        "candles/s",
        naive_rate,
        f">= {AIM_CANDLES_PER_S:,} candles/s",
    )
    row("ingest_candles, re-sent unchanged bars", n / t_again, "candles/s", naive_rate, "faster than new bars")
    row("ingest_candles, re-sent changed bars (updates)", len(changed) / t_upd, "candles/s", naive_rate, "")
    row("naive: one INSERT + COMMIT per row", naive_rate, "rows/s", None, "baseline")
    row("peak memory (max RSS)", peak_mb, "MB", None, f"< {AIM_PEAK_MB} MB")
    return finish("bench_ingest", rows, n / t_df >= AIM_CANDLES_PER_S and peak_mb < AIM_PEAK_MB)


if __name__ == "__main__":
    sys.exit(main())
