"""The README's module map, generated from the code: each package, its modules and what it imports.

    python tools/module_map.py            print the map
    python tools/module_map.py --write    replace the block between the README's markers

The picture is a Mermaid graph of the packages (GitHub draws it); an arrow means "imports",
and an arrow implied by a longer path is left out so the layers stay readable. The table
under it lists every direct import. `mt5_pipeline_tests/system/test_module_map.py` fails
when the README's block is not what this script prints.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mt5_pipeline"
README = ROOT / "README.md"
START, END = "<!-- module-map:start -->", "<!-- module-map:end -->"

GROUND = ("clock", "server_time", "bars", "settings", "figures")
# Bottom to top; the shells last.
ORDER = (
    "ground",
    "storage",
    "market",
    "execution",
    "learning",
    "signals",
    "delivery",
    "monitoring",
    "bridge",
    "orchestration",
    "api",
    "apps",
)
ROLE = {
    "ground": "UTC and the trade server's clock, bar times, every setting, figure styling",
    "storage": "every table and the only place PostgreSQL and SQLite differ",
    "market": "market data: symbols and pips, ingest and its checks, MT5 CSV import, extreme bars",
    "execution": "the execution contract: the signal, the entry and exit policy, what an ack means",
    "learning": "indicators, features, labels, training, evaluation, backtest, model files and serving",
    "signals": "from a closed bar to a queued signal: the decision, the outbox queue, the live worker",
    "delivery": "the pusher, the EA client and its breaker, the trades that come back",
    "monitoring": "data-quality checks, live performance beside the backtest",
    "bridge": "the MT5 terminal's side (a peer system): bars up, signals down, trades back",
    "orchestration": "the Dagster shell: assets, checks, sensors, schedules, jobs, the one resource",
    "api": "the Starlette shell: routes, auth, the HTTP contract, metrics, health",
    "apps": "launchers: the CLI, worker loops, the demo, the dev server, the reference EA",
}


def package_of(path: Path) -> str | None:
    rel = path.relative_to(PACKAGE)
    top = rel.parts[0].removesuffix(".py")
    if len(rel.parts) == 1 or top in GROUND:  # a ground module may be a package (settings/)
        return "ground" if top in GROUND else None
    return rel.parts[0] if rel.parts[0] in ORDER else None


def _target(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "mt5_pipeline" or len(parts) < 2:
        return None
    return "ground" if parts[1] in GROUND else parts[1] if parts[1] in ORDER else None


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(t for n in names if (t := _target(n)))
    return found


def collect() -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    modules: dict[str, list[str]] = {p: [] for p in ORDER}
    edges: dict[str, set[str]] = {p: set() for p in ORDER}
    for path in sorted(PACKAGE.rglob("*.py")):
        pkg = package_of(path)
        if pkg is None or "migrations" in path.parts:
            continue
        if pkg == "ground":  # listed by name, a ground package once
            name = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
            if name not in modules[pkg]:
                modules[pkg].append(name)
        elif path.name != "__init__.py" or pkg == "bridge":
            modules[pkg].append(path.stem)
        edges[pkg] |= imports_of(path) - {pkg}
    return modules, edges


def reduced(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop a->c when a reaches c through another package (a DAG: the stage rule holds)."""

    def reach(start: str, skip: str) -> set[str]:
        seen, todo = set(), [n for n in edges[start] if n != skip]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(edges[n])
        return seen

    return {a: {c for c in cs if c not in reach(a, c)} for a, cs in edges.items()}


def render() -> str:
    modules, edges = collect()
    lines = [START, "", "```mermaid", "flowchart BT"]
    for pkg in ORDER:
        shape = ("[", "]") if pkg in ("bridge", "orchestration", "api", "apps") else ("([", "])")
        lines.append(f"    {pkg}{shape[0]}{pkg}{shape[1]}")
    for a, cs in reduced(edges).items():
        lines += [f"    {a} --> {c}" for c in sorted(cs, key=ORDER.index)]
    lines += ["```", "", "| package | what it holds | modules | imports |", "| --- | --- | --- | --- |"]
    for pkg in ORDER:
        where = "`mt5_pipeline/*.py`" if pkg == "ground" else f"`mt5_pipeline/{pkg}/`"
        mods = ", ".join(modules[pkg])
        uses = ", ".join(sorted(edges[pkg], key=ORDER.index)) or "—"
        lines.append(f"| {pkg} ({where}) | {ROLE[pkg]} | {mods} | {uses} |")
    lines += ["", "Generated by `python tools/module_map.py --write`; a test keeps it current.", "", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the README's block")
    args = parser.parse_args(argv)
    block = render()
    if not args.write:
        print(block)
        return 0
    text = README.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    README.write_text(head + block + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
