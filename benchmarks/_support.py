"""What the benchmarks share: the repo root on sys.path, a scratch PostgreSQL database,
generated M1 bars, percentiles, helper processes, and the table + JSON each one ends with.

Not named bench_*: run_all.py runs every benchmarks/bench_*.py. Imported by bench_ml's
training children too, which measure their own peak memory: keep the imports light.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = Path(__file__).resolve().parent / "out"
sys.path.insert(0, str(ROOT))

from mt5_pipeline.storage import migrate  # noqa: E402
from mt5_pipeline.storage.engine import dispose_engines, psycopg_conninfo  # noqa: E402

SERVER_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
START = 1_577_836_800  # 2020-01-01 00:00 UTC


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new database `<prefix>_<pid>_<random>` on SERVER_URL's server, migrated; yields its URL
    and drops it afterwards, WITH (FORCE) so that connections left open cannot keep it."""
    import psycopg  # not at the top: the training children never need it

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    server = psycopg_conninfo(SERVER_URL)
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = server.rsplit("/", 1)[0] + f"/{name}"
            migrate.upgrade(url)
            yield url
        finally:
            dispose_engines()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


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


def percentile(values: Sequence[float] | np.ndarray, q: float, method: str = "linear") -> float:
    """The q-quantile, 0 <= q <= 1; `method` as numpy's ("nearest": always an observed value)."""
    return float(np.percentile(np.asarray(values, dtype=float), q * 100, method=method))


def bench_parser(doc: str | None, quick_help: str | None = None) -> argparse.ArgumentParser:
    """The command line every benchmark takes: its docstring as help and --quick (a smaller run);
    callers add their own options before parse_args()."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


# ---- helper processes ------------------------------------------------------------------------------


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll `url` until it answers; exit with the end of the process's log if it dies or
    has not answered within `timeout` seconds."""
    import httpx  # not at the top: the training children never need it

    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=5)
            return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            state = (
                f"exited with {proc.returncode}" if proc.poll() is not None else f"did not answer within {timeout:g} s"
            )
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise SystemExit(f"{url}: server {state}:\n{tail}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


# ---- the table -------------------------------------------------------------------------------------


def add_row(
    rows: list[dict],
    figure: str,
    value: float,
    unit: str,
    baseline: float | None,
    aim: str,
    *,
    digits: int | None = 1,
    ratio_digits: int = 3,
    higher_is_better: bool = True,
) -> None:
    """Append one figure as run_all.py reads it. value and baseline are rounded to `digits`
    places (None: 3 significant figures); ratio = value / baseline, or baseline / value
    where lower is better, so that a ratio above 1 always favours the value."""

    def rnd(v: float | None) -> float | None:
        return None if v is None else (float(f"{v:.3g}") if digits is None else round(float(v), digits))

    ratio = None
    # No ratio against a zero: a zero value where lower is better (a busy CPU that the idle
    # estimate swallowed) has none.
    if baseline and (higher_is_better or value):
        ratio = round(
            float(value) / float(baseline) if higher_is_better else float(baseline) / float(value), ratio_digits
        )
    rows.append(
        {"figure": figure, "value": rnd(value), "unit": unit, "baseline": rnd(baseline), "ratio": ratio, "aim": aim}
    )


def add_quantile_rows(
    rows: list[dict],
    figures: Mapping[float, tuple[str, str]],
    seconds: Sequence[float],
    baseline_seconds: Sequence[float] | None = None,
    **options: Any,
) -> None:
    """One row a quantile q -> (figure, aim): the q-quantile of `seconds` in ms, against the same
    quantile of `baseline_seconds` where there is one; `options` as add_row's."""
    for q, (figure, aim) in figures.items():
        baseline = None if baseline_seconds is None else percentile(baseline_seconds, q) * 1000
        add_row(rows, figure, percentile(seconds, q) * 1000, "ms", baseline, aim, **options)


def _cell(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"


def report(name: str, rows: list[dict]) -> Path:
    """Print the rows as a table and write them to benchmarks/out/<name>.json."""
    width = max(len(r["figure"]) for r in rows)
    print(f"\n{'figure':<{width}}  {'value':>12}  {'unit':<10} {'baseline':>12}  {'ratio':>8}  aim")
    for r in rows:
        ratio = "" if r["ratio"] is None else _cell(r["ratio"]) + "x"
        print(
            f"{r['figure']:<{width}}  {_cell(r['value']):>12}  {r['unit']:<10} {_cell(r['baseline']):>12}  {ratio:>8} "
            f" {r['aim']}"
        )
    out = OUT_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return out


def finish(name: str, rows: list[dict], aim_met: bool) -> int:
    """Report the rows, say whether the benchmark's aim was met; main()'s exit status (0: a
    missed aim is a figure to read, not a failure)."""
    report(name, rows)
    print("aim met" if aim_met else "aim NOT met")
    return 0
