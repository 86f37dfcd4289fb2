"""Tests of mt5_pipeline/execution/ (the contract, the execution policy, the typed signal)."""
