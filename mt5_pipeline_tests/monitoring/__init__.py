"""Tests of mt5_pipeline/monitoring/ (data quality, live performance)."""
