"""The seed's `python train_model.py` (and `docker compose run --rm ml-trainer python train_model.py`).

Brings the features up to date, then trains rf_m1 exactly as the Dagster `rf_m1` asset
does, writing MODEL_DIR/rf_m1.pkl atomically with its versioned copy and sidecar.
"""

import sys

from prepare_dataset import main as prepare

from mt5_pipeline.model import train_model
from mt5_pipeline.settings import SettingsError, load_settings


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if prepare() != 0:
        return 1
    result = train_model(settings)
    auc, base = result.metrics.get("auc"), result.metrics.get("baseline_auc")
    print(f"trained {result.version} on {result.rows} rows -> {result.path}")
    print(f"out-of-sample AUC {auc} (baseline {base}); backtest: {result.backtest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
