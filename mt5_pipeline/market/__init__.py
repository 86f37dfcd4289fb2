"""Market data: bars and their times, instruments and pips, ingest and MT5 CSV import."""
