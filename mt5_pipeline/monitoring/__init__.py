"""Monitoring: data-quality checks and live performance against the backtest."""
