"""The seed's EA pusher worker: ``python api/run_ea_pusher.py`` or ``cd api && python run_ea_pusher.py``.

The same worker as ``mt5-pipeline push``: pushes queued signals to the EA every
EA_PUSH_INTERVAL seconds (at once on PostgreSQL NOTIFY), stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

try:
    import mt5_pipeline  # noqa: F401  (installed, or run from the repository)
except ImportError:  # pragma: no cover - only without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from mt5_pipeline.pusher import run_worker  # noqa: E402
from mt5_pipeline.settings import SettingsError, load_settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="one push cycle, then exit")
    args = parser.parse_args(argv)
    # Run from api/ (as the seed does), the project's .env is one folder up.
    env_file = Path(".env") if Path(".env").is_file() else REPO_ROOT / ".env"
    try:
        settings = load_settings(env_file=env_file)
    except SettingsError as exc:
        print(f"run_ea_pusher: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s - %(levelname)s - %(message)s")
    return run_worker(settings, once=args.once)


if __name__ == "__main__":
    sys.exit(main())
