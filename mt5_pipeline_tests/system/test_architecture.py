"""The house rule, checked on the source: one plain domain core, shells on top.

The domain modules (the stage packages, the ground modules and storage/) import neither
Dagster, Starlette nor uvicorn, nor the API, the launchers, the bridge or the Dagster
layer -- at module level or inside a function. The two shells (the Dagster layer, the
API) know the core and never each other. Inside the core, each stage imports only the
stages below it and the ground. Read with `ast`, so a lazy import inside a function
counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mt5_pipeline_tests import ROOT

PACKAGE = ROOT / "mt5_pipeline"

# Shells and peers: what wires the core to triggers and processes.
SHELLS = {"api", "orchestration", "apps", "bridge", "definitions"}
FRAMEWORKS = ("dagster", "starlette", "uvicorn")
# A bare top-level `api` stays forbidden too: that name is anyone's.
SHELL_MODULES = ("api", *(f"mt5_pipeline.{s}" for s in SHELLS))


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from mt5_pipeline import apps` names the shell in the alias
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# The core by stage, from the ground up: a module may import its own stage, the ground
# and the stages before it in this list, never one after it.
GROUND = ("clock", "server_time", "bars", "settings", "figures", "storage")
STAGES = ("market", "execution", "learning", "signals", "delivery", "monitoring")


def domain_modules() -> list[Path]:
    # __init__ exposes `defs` lazily for `-m mt5_pipeline` (INTERFACES); importing the
    # package still imports no framework (test_importing_the_core_imports_no_framework).
    top = [p for p in PACKAGE.glob("*.py") if p.stem not in SHELLS and p.stem != "__init__"]
    packages = [p for name in ("storage", "settings", *STAGES) for p in (PACKAGE / name).rglob("*.py")]
    return sorted(top + packages)


def _part(path: Path) -> str:
    """The ground module or stage a core file belongs to."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _part_of(name: str) -> str | None:
    """The ground module or stage an imported name points into (None: outside the core)."""
    parts = name.split(".")
    if parts[0] != "mt5_pipeline" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in (*GROUND, *STAGES) else None


def upward_imports(path: Path) -> list[str]:
    """What `path` imports from a stage above its own (or, from the ground, from any stage)."""
    own = _part(path)
    rank = {s: i for i, s in enumerate(STAGES)}
    ceiling = rank.get(own, -1)
    return sorted(n for n in _imports(path) if (p := _part_of(n)) in rank and rank[p] > ceiling)


def test_the_core_is_grouped_by_stage():
    # Every core module sits in a stage or is one of the ground modules: nothing new lands
    # beside them unplaced.
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.stem not in (*GROUND, *SHELLS, "__init__"))
    assert loose == []
    for stage in STAGES:
        assert (PACKAGE / stage / "__init__.py").is_file(), stage


@pytest.mark.parametrize("path", domain_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_stage_imports_only_the_stages_below_it(path):
    bad = upward_imports(path)
    assert bad == [], f"{path.relative_to(ROOT)} ({_part(path)}) imports {bad}, a stage above it"


def test_the_stage_rule_sees_an_upward_import(monkeypatch):
    # A guard for the guard: a market module that imported the signals stage is caught,
    # and the ground importing a stage is caught too.
    fake = PACKAGE / "market" / "pips.py"
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, *a, **k: "from mt5_pipeline.signals.queue import enqueue\nimport mt5_pipeline.learning.model\n",
    )
    caught = ["mt5_pipeline.learning.model", "mt5_pipeline.signals.queue", "mt5_pipeline.signals.queue.enqueue"]
    assert upward_imports(fake) == caught
    assert upward_imports(PACKAGE / "settings.py") == caught
    assert upward_imports(PACKAGE / "monitoring" / "quality.py") == []


@pytest.mark.parametrize("path", domain_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_domain_modules_import_no_framework_no_shell_and_no_launcher(path):
    bad = sorted(name for name in _imports(path) if _under(name, FRAMEWORKS) or _under(name, SHELL_MODULES))
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}: the domain core must not know the shells"


def test_the_two_shells_never_import_each_other():
    api_files = sorted((PACKAGE / "api").rglob("*.py"))
    dagster_files = sorted((PACKAGE / "orchestration").rglob("*.py")) + [PACKAGE / "definitions.py"]
    for path in api_files:
        bad = sorted(
            n
            for n in _imports(path)
            if _under(n, ("dagster", "mt5_pipeline.orchestration", "mt5_pipeline.definitions", "mt5_pipeline.apps"))
        )
        assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"
    for path in dagster_files:
        bad = sorted(
            n
            for n in _imports(path)
            if _under(n, ("api", "mt5_pipeline.api", "starlette", "uvicorn", "mt5_pipeline.apps"))
        )
        assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


def test_the_bridge_imports_neither_the_apps_nor_the_api():
    # The bridge is a peer of the API beside the terminal: the contract it obeys is the core's.
    files = sorted((PACKAGE / "bridge").rglob("*.py"))
    assert len(files) >= 8
    for path in files:
        bad = sorted(
            n
            for n in _imports(path)
            if _under(
                n,
                (
                    "api",
                    "mt5_pipeline.api",
                    "mt5_pipeline.apps",
                    "mt5_pipeline.orchestration",
                    "mt5_pipeline.definitions",
                ),
            )
        )
        assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"
    # A guard for the guard: the contract is what it imports instead.
    assert "mt5_pipeline.execution.contract" in _imports(PACKAGE / "bridge" / "executor.py")


def test_the_rule_sees_what_it_checks():
    # A guard for the guard: the core is found, and a shell's own imports are seen.
    names = {p.parent.name if p.stem == "__init__" else p.stem for p in domain_modules()}
    assert {
        "settings",
        "ingest",
        "features",
        "indicators",
        "generation",
        "queue",
        "pusher",
        "live",
        "trade_signal",
        "prediction",
        "contract",
    } <= names
    assert not names & SHELLS
    assert "dagster" in _imports(PACKAGE / "definitions.py")
    assert any(_under(n, ("mt5_pipeline.api",)) for n in _imports(PACKAGE / "apps" / "cli.py"))


def test_importing_the_core_imports_no_framework():
    import subprocess
    import sys

    code = (
        "import sys, mt5_pipeline, mt5_pipeline.signals.live, mt5_pipeline.delivery.pusher, "
        "mt5_pipeline.signals.generation, mt5_pipeline.market.ingest; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'starlette', 'uvicorn', 'api')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.strip()
    assert out == "[]"


# A conflict hunk left inside a docstring or a Markdown file still imports and renders:
# nothing else would notice it.
_MARKERS = ("<" * 7 + " ", "=" * 7 + "\n", ">" * 7 + " ")
_TEXT_SUFFIXES = {
    ".py",
    ".md",
    ".mq5",
    ".yml",
    ".yaml",
    ".toml",
    ".ini",
    ".cfg",
    ".json",
    ".sh",
    ".service",
    ".txt",
    ".mako",
}


def _conflict_lines(text: str) -> list[int]:
    return [
        n for n, line in enumerate(text.splitlines(keepends=True), 1) if line.startswith(_MARKERS) or line == "=" * 7
    ]


def test_no_merge_conflict_markers_or_patch_leftovers_in_the_tree():
    skip = {".git", ".venv", "build", "node_modules", "data", "models", ".dagster"}
    found, leftovers = [], []
    for path in ROOT.rglob("*"):
        parts = set(path.relative_to(ROOT).parts)
        if parts & skip or not path.is_file() or any(p.endswith(".egg-info") for p in parts):
            continue
        if path.suffix in {".orig", ".rej"}:
            leftovers.append(str(path.relative_to(ROOT)))
        elif path.suffix in _TEXT_SUFFIXES or path.name in {"Dockerfile", "Makefile"}:
            lines = _conflict_lines(path.read_text(encoding="utf-8", errors="replace"))
            found += [f"{path.relative_to(ROOT)}:{n}" for n in lines]
    assert not found, f"merge conflict markers: {found}"
    assert not leftovers, f"patch leftovers: {leftovers}"


def test_the_conflict_check_catches_a_hunk():
    hunk = "a\n" + "<" * 7 + " HEAD\nb\n" + "=" * 7 + "\nc\n" + ">" * 7 + " branch\n"
    assert _conflict_lines(hunk) == [2, 4, 6]
