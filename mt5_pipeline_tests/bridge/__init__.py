"""Tests of mt5_pipeline/bridge/: a unit test file per module, and test_bridge*.py for the whole Bridge end to end."""
