"""The seed's `cd ml && python prepare_dataset.py`: bring features_m1 up to date for every
symbol. Same as `mt5-pipeline features` and the Dagster `features_m1` asset."""

import sys

from mt5_pipeline.apps.cli import main

if __name__ == "__main__":
    sys.exit(main(["features"]))
