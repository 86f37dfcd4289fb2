"""Tests of mt5_pipeline/signals/ (generation, the queue, the live worker and its series)."""
