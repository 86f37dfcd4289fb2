"""GET /health at 1M and 10M candles: constant time, beside the query it replaced.

    .venv/bin/python benchmarks/bench_health.py [--quick]

Creates a scratch database on TEST_DATABASE_URL's server and fills `candles` with 28
symbols of M1 bars straight from SQL (generate_series: 1,000,000 then 10,000,000 rows;
100,000 / 1,000,000 with --quick), with `candle_series` counted as the ingest core keeps
it, then VACUUM ANALYZE. At each size, in the same run:

* GET /health from a real `mt5-pipeline serve` process (push disabled, so no EA probe),
  p50 / p99 over 200 requests: the figure;
* GET /openapi.json (static JSON behind the key) on the same server: the HTTP floor;
* ``newest_bars()`` called directly (what /health, /metrics and new_candles_sensor read);
* the newest-bar query /health ran before (count(*) and max() per series), run directly
  on the database: the baseline /health used to pay on top of the HTTP floor.

Prints a table and writes benchmarks/out/bench_health.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from _support import START, add_row, database_name, percentile, report, scratch_database, stop, wait_healthy

from mt5_pipeline.apps.servers import free_port
from mt5_pipeline.storage.candles import newest_bars

SYMBOLS = 28
REQUESTS = 200
AIM_MS = 20.0
KEY = "bench-key-" + uuid.uuid4().hex[:8]

# What newest_bars ran before issue 11: a count(*) and a max() per series.
OLD_QUERY = """
WITH RECURSIVE series AS (
    (SELECT symbol, timeframe FROM candles ORDER BY symbol, timeframe LIMIT 1)
    UNION ALL
    SELECT nxt.symbol, nxt.timeframe FROM series s,
    LATERAL (SELECT c.symbol, c.timeframe FROM candles c
             WHERE (c.symbol, c.timeframe) > (s.symbol, s.timeframe)
             ORDER BY c.symbol, c.timeframe LIMIT 1) nxt
)
SELECT s.symbol, s.timeframe,
       (SELECT max(ts) FROM candles c WHERE c.symbol = s.symbol AND c.timeframe = s.timeframe),
       (SELECT count(*) FROM candles c WHERE c.symbol = s.symbol AND c.timeframe = s.timeframe),
       (SELECT max(ingested_at) FROM candles c WHERE c.symbol = s.symbol AND c.timeframe = s.timeframe)
FROM series s ORDER BY 1, 2"""


def fill(url: str, total: int) -> None:
    """Grow candles to `total` rows: SYMBOLS series of consecutive M1 bars, appended."""
    per = total // SYMBOLS
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute("SELECT COALESCE(max(bars), 0) FROM candle_series").fetchone()[0]
        t0 = time.perf_counter()
        for k in range(SYMBOLS):  # one statement per symbol keeps each transaction's WAL moderate
            conn.execute(
                "INSERT INTO candles (symbol, timeframe, ts, open, high, low, close, tick_volume, spread, "
                "real_volume, ingested_at) "
                "SELECT %s, 'M1', to_timestamp(%s::bigint) + i * interval '1 minute', 1.1, 1.2, 1.0, 1.1 + (i %% 7) * "
                "1e-4, 1, 2, 0, now() "
                "FROM generate_series(%s::int, %s::int) AS i",
                (f"SYM{k:02d}", START, have, per - 1),
            )
        # As the ingest core would have kept it.
        conn.execute("DELETE FROM candle_series")
        conn.execute("INSERT INTO candle_series SELECT symbol, timeframe, count(*) FROM candles GROUP BY 1, 2")
        conn.execute("VACUUM ANALYZE candles")
        conn.execute("VACUUM ANALYZE candle_series")
        print(f"  candles: {per * SYMBOLS:,} rows ({time.perf_counter() - t0:.0f} s to generate)", flush=True)


def latencies(client: httpx.Client, path: str, n: int, headers: dict | None = None) -> list[float]:
    out = []
    for i in range(n + 5):
        t0 = time.perf_counter()
        response = client.get(path, headers=headers)
        elapsed = time.perf_counter() - t0
        if response.status_code != 200:
            raise SystemExit(f"GET {path} answered {response.status_code}: {response.text[:300]}")
        if i >= 5:  # warm the pools first
            out.append(elapsed * 1000)
    return out


def old_query_ms(url: str, n: int) -> list[float]:
    out = []
    with psycopg.connect(url) as conn:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.execute(OLD_QUERY).fetchall()
            out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 and 1,000,000 candles")
    args = parser.parse_args()
    sizes = (100_000, 1_000_000) if args.quick else (1_000_000, 10_000_000)

    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="bench_health_"))
    with scratch_database("mt5_bench_health") as url:
        print(f"PostgreSQL scratch database {database_name(url)}", flush=True)
        for size in sizes:
            fill(url, size)
            port = free_port()
            log = work / f"serve_{size}.log"
            env = {
                "DATABASE_URL": url,
                "API_KEYS": KEY,
                "EA_PUSH_ENABLED": "false",  # no EA probe: the database part is what is measured
                "MODEL_DIR": str(work / "models"),
                "LOG_LEVEL": "WARNING",
                "PATH": str(Path(sys.executable).parent),
            }
            exe = Path(sys.executable).with_name("mt5-pipeline")
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=work,
                )
            try:
                base = f"http://127.0.0.1:{port}"
                wait_healthy(f"{base}/health", proc, log, timeout=60)
                with httpx.Client(base_url=base, timeout=60) as client:
                    body = client.get("/health").json()
                    assert len(body["newest_bars"]) == SYMBOLS, body
                    health = latencies(client, "/health", REQUESTS)
                    floor = latencies(client, "/openapi.json", REQUESTS, headers={"X-API-Key": KEY})
            finally:
                stop(proc)
            direct = []
            for _ in range(REQUESTS):
                t0 = time.perf_counter()
                newest_bars(url)
                direct.append((time.perf_counter() - t0) * 1000)
            old = old_query_ms(url, 3 if size >= 10_000_000 else 5)
            label = f"{size / 1e6:g}M candles"
            p50, p99 = percentile(health, 0.5), percentile(health, 0.99)
            old_p50 = percentile(old, 0.5)
            add_row(
                rows,
                f"GET /health p50, {label} (baseline: the old count(*) query alone)",
                p50,
                "ms",
                old_p50,
                f"< {AIM_MS:g} ms",
                digits=2,
                higher_is_better=False,
            )
            add_row(rows, f"GET /health p99, {label}", p99, "ms", None, f"< {AIM_MS:g} ms", digits=2)
            add_row(
                rows,
                f"newest_bars() called directly p50, {label} (baseline: the old count(*) query)",
                percentile(direct, 0.5),
                "ms",
                old_p50,
                "constant in the table size",
                digits=2,
                higher_is_better=False,
            )
            add_row(
                rows,
                f"GET /openapi.json p50, {label}: the HTTP floor",
                percentile(floor, 0.5),
                "ms",
                None,
                "context",
                digits=2,
            )
            print(f"  /health p50 {p50:.2f} ms, p99 {p99:.2f} ms; old query {old_p50:.0f} ms", flush=True)
    report("bench_health", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
