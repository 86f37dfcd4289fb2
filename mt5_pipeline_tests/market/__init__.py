"""Tests of mt5_pipeline/market/ (ingest, the MT5 CSV import, pips)."""
