"""The tests of mt5_pipeline, mirroring its packages (docs/development.md says how)."""

from pathlib import Path

# The project root, for tests that read its files (docs, docker/, mql5/); one place, so a
# test can move between folders without counting parents.
ROOT = Path(__file__).resolve().parents[1]
