"""The seed's `cd ml && python prepare_dataset.py`: bring features_m1 up to date for every
symbol. Same as `mt5-pipeline features` run from the project root (and the Dagster
`features_m1` asset), whatever directory it is started from (see mt5_pipeline.apps.seed)."""

import sys
from pathlib import Path

try:
    import mt5_pipeline  # noqa: F401  (installed, or run from the repository)
except ImportError:  # pragma: no cover - only without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mt5_pipeline.apps.seed import run_seed_script  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_seed_script(__file__, ["features", *sys.argv[1:]]))
