"""One partition per symbol, added by `new_candles_sensor` when a symbol's first bars arrive."""

import dagster as dg

SYMBOLS_PARTITIONS = "symbols"
symbols_partitions = dg.DynamicPartitionsDefinition(name=SYMBOLS_PARTITIONS)
