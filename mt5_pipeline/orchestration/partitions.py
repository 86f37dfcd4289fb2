"""One partition per symbol, added by `new_candles_sensor` when a symbol's first bars arrive."""

import dagster as dg

symbols_partitions = dg.DynamicPartitionsDefinition(name="symbols")
