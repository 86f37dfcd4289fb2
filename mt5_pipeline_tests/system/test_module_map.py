"""The README's module map is what tools/module_map.py draws from today's imports."""

from __future__ import annotations

import importlib.util

from mt5_pipeline_tests import ROOT


def _module_map():
    spec = importlib.util.spec_from_file_location("module_map", ROOT / "tools" / "module_map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_module_map_is_current():
    mm = _module_map()
    text = (ROOT / "README.md").read_text()
    block = text[text.index(mm.START) : text.index(mm.END) + len(mm.END)]
    assert block == mm.render(), "README's module map is stale: run `python tools/module_map.py --write`"


def test_the_map_places_every_core_package_and_draws_only_downward_arrows():
    mm = _module_map()
    modules, edges = mm.collect()
    assert "queue" in modules["signals"] and "pusher" in modules["delivery"] and "settings" in modules["ground"]
    # The shells know the core; within the core an arrow never points to a later stage.
    rank = {p: i for i, p in enumerate(mm.ORDER)}
    for a, cs in edges.items():
        if a not in ("bridge", "orchestration", "api", "apps"):
            assert all(rank[c] < rank[a] for c in cs), (a, cs)
    # A guard for the guard: the reduction keeps a direct arrow only when no longer path exists.
    assert mm.reduced({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == {"a": {"b"}, "b": {"c"}, "c": set()}
