"""Tests of mt5_pipeline/orchestration/ (the Dagster shell), run with Dagster's own machinery."""
