"""The tests mirror the code: mt5_pipeline_tests/<package>/test_<module>[_<aspect>].py names
a module of mt5_pipeline/<package>/ (top-level tests name a top-level module), so a
renamed or removed module cannot leave a test under a stale name. The package's own name
stands for the package as a whole (bridge/test_bridge.py tests the Bridge end to end).
Tests that mirror no single module live in system/."""

from __future__ import annotations

from pathlib import Path

from mt5_pipeline_tests import ROOT

CROSS_CUTTING = "system"


def _modules(package: Path) -> set[str]:
    names = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    return names


def _names_a_module(stem: str, modules: set[str]) -> bool:
    topic = stem.removeprefix("test_")
    return any(topic == m or topic.startswith(m + "_") for m in modules)


def stale_tests(code: Path, tests: Path) -> list[str]:
    """Every test file (or test folder) under ``tests`` that mirrors nothing in ``code``, with why."""
    problems = []
    for folder in sorted(p for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"):
        if not (folder / "__init__.py").is_file():
            problems.append(f"{folder.name}/: no __init__.py (test modules must be importable by package)")
        if folder.name != CROSS_CUTTING and not (code / folder.name / "__init__.py").is_file():
            problems.append(f"{folder.name}/: no package mt5_pipeline/{folder.name}/ to mirror")
        for nested in folder.iterdir():
            if nested.is_dir() and nested.name != "__pycache__":
                problems.append(f"{folder.name}/{nested.name}/: one level of folders, one per package")
    for test in sorted(tests.rglob("test_*.py")):
        where = test.parent.relative_to(tests)
        if where.parts == (CROSS_CUTTING,):
            continue
        package = code.joinpath(*where.parts)
        if not package.is_dir():
            continue  # the folder is reported above
        modules = _modules(package) | ({package.name} if where.parts else set())
        if not _names_a_module(test.stem, modules):
            problems.append(f"{test.relative_to(tests)}: names no module of {package.relative_to(code.parent)}/")
    return problems


def test_every_test_file_names_a_module_of_its_package():
    assert stale_tests(ROOT / "mt5_pipeline", ROOT / "mt5_pipeline_tests") == []


def test_every_package_with_code_has_its_test_folder():
    packages = {p.parent.name for p in (ROOT / "mt5_pipeline").glob("*/__init__.py")}
    folders = {p.name for p in (ROOT / "mt5_pipeline_tests").iterdir() if (p / "__init__.py").is_file()}
    assert packages - folders == set()


def _tree(root: Path, files: list[str]) -> None:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")


def test_a_renamed_module_leaves_a_stale_test_that_is_named(tmp_path):
    code, tests = tmp_path / "mt5_pipeline", tmp_path / "mt5_pipeline_tests"
    _tree(code, ["__init__.py", "clock.py", "signals/__init__.py", "signals/queue.py", "bridge/__init__.py"])
    _tree(tests, [
        "__init__.py", "test_clock.py", "signals/__init__.py", "signals/test_queue_leases.py", "bridge/__init__.py",
        "bridge/test_bridge_http.py", "system/__init__.py", "system/test_docs.py",
    ])  # fmt: skip
    assert stale_tests(code, tests) == []
    (code / "signals" / "queue.py").rename(code / "signals" / "outbox.py")
    _tree(tests, ["test_calendar.py", "market/test_ingest.py", "learning/__init__.py"])
    assert stale_tests(code, tests) == [
        "learning/: no package mt5_pipeline/learning/ to mirror",
        "market/: no __init__.py (test modules must be importable by package)",
        "market/: no package mt5_pipeline/market/ to mirror",
        "signals/test_queue_leases.py: names no module of mt5_pipeline/signals/",
        "test_calendar.py: names no module of mt5_pipeline/",
    ]
