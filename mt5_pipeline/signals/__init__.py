"""Signals: from a closed bar's prediction to a queued signal, live and in batch."""
