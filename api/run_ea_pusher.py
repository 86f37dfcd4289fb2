"""The seed's EA pusher worker: ``python api/run_ea_pusher.py`` or ``cd api && python run_ea_pusher.py``.

The same worker as ``mt5-pipeline push`` run from the project root, whatever directory it
is started from (see mt5_pipeline.apps.seed): pushes queued signals to the EA every
EA_PUSH_INTERVAL seconds (at once on PostgreSQL NOTIFY), stops cleanly on SIGTERM/SIGINT.
``--once`` runs one push cycle.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import mt5_pipeline  # noqa: F401  (installed, or run from the repository)
except ImportError:  # pragma: no cover - only without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mt5_pipeline.apps.seed import run_seed_script  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return run_seed_script(__file__, ["push", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
