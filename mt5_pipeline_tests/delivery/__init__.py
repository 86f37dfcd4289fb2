"""Tests of mt5_pipeline/delivery/ (the EA client and the pusher), one file per module it mainly tests."""
