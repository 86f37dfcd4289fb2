"""Tests of mt5_pipeline/apps/ (launchers and the CLI), one file per module it mainly tests."""
