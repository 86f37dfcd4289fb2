"""Tests of mt5_pipeline/storage/ (migrations, candles, bulk reads) on both backends."""
