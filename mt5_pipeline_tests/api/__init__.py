"""Tests of mt5_pipeline/api/ (the Starlette shell), one file per module it mainly tests."""
