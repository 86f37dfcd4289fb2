"""The seed's `python train_model.py` (and `docker compose run --rm ml-trainer python
train_model.py`): update the features, then train rf_m1 exactly as the Dagster `rf_m1`
asset does. Same as `mt5-pipeline train` run from the project root, whatever directory
it is started from (see mt5_pipeline.apps.seed); `--force` and `--timeframe` pass through."""

import sys
from pathlib import Path

try:
    import mt5_pipeline  # noqa: F401  (installed, or run from the repository)
except ImportError:  # pragma: no cover - only without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mt5_pipeline.apps.seed import run_seed_script  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_seed_script(__file__, ["train", *sys.argv[1:]]))
