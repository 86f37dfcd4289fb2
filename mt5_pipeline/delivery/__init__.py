"""Delivery: the pusher, the EA client and its breaker, and the trades that come back."""
