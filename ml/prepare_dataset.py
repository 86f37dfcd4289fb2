"""The seed's `cd ml && python prepare_dataset.py`: bring features_m1 up to date for every symbol.

Same code path as the Dagster `features_m1` asset (mt5_pipeline.features.update_features).
"""

import sys

from mt5_pipeline.features import update_features
from mt5_pipeline.settings import SettingsError, load_settings
from mt5_pipeline.storage.bulk import list_symbols


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    for symbol, timeframe in list_symbols(settings.database_url, "M1"):
        update = update_features(settings.database_url, symbol, timeframe)
        print(f"{symbol} {timeframe}: {update.rows_written} feature rows written, newest bar {update.newest_ts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
