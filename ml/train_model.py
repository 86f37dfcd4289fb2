"""The seed's `python train_model.py` (and `docker compose run --rm ml-trainer python
train_model.py`): update the features, then train rf_m1 exactly as the Dagster `rf_m1`
asset does. Same as `mt5-pipeline train`."""

import sys

from mt5_pipeline.apps.cli import main

if __name__ == "__main__":
    sys.exit(main(["train"]))
