"""`make bench`: run every benchmarks/bench_*.py and write benchmarks/RESULTS.md.

Each benchmark prints its own table and writes its rows to benchmarks/out/<name>.json
(figure, value, unit, baseline, ratio, aim). This collects them into one table with the
machine's cores and the date. `--quick` passes --quick to every benchmark.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    OUT.mkdir(exist_ok=True)
    sections: list[str] = []
    failures: list[str] = []
    for script in sorted(HERE.glob("bench_*.py")):
        name = script.stem
        print(f"=== {name} ===", flush=True)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, str(script), *(["--quick"] if quick else [])], cwd=HERE.parent)
        took = time.monotonic() - started
        if proc.returncode != 0:
            failures.append(name)
            sections.append(f"### {name}\n\nfailed (exit {proc.returncode}) after {took:.0f} s\n")
            continue
        rows = json.loads((OUT / f"{name}.json").read_text()) if (OUT / f"{name}.json").exists() else []
        lines = [
            f"### {name} ({took:.0f} s)",
            "",
            "| figure | value | unit | baseline | ratio | aim |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in rows:
            lines.append(
                f"| {row.get('figure')} | {_fmt(row.get('value'))} | {row.get('unit', '')} | "
                f"{_fmt(row.get('baseline'))} | "
                f"{_fmt(row.get('ratio'))} | {row.get('aim') or ''} |"
            )
        sections.append("\n".join(lines) + "\n")
    header = (
        "# Benchmark results\n\n"
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}, Python {platform.python_version()})"
        f"{', quick mode' if quick else ''}. Baselines are measured in the same run; "
        "`make bench` writes this file.\n\n"
    )
    (HERE / "RESULTS.md").write_text(header + "\n".join(sections))
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
