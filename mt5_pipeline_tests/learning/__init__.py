"""Tests of mt5_pipeline/learning/ (features, labels, training, promotion, backtest, drift)."""
