"""Examples the OpenAPI document shows beside each request body: a body the API accepts
as it stands (the schema-based tests send them), one per route that takes a body."""

from __future__ import annotations

from typing import Any

INGEST: dict[str, Any] = {
    "symbol": "EURUSD",
    "timeframe": "M1",
    "candles": [
        {
            "time": 1730000000 - 1730000000 % 60,
            "open": 1.0801,
            "high": 1.0803,
            "low": 1.0799,
            "close": 1.0802,
            "tick_volume": 57,
            "spread": 2,
            "real_volume": 0,
        }
    ],
}

GENERATE_SIGNAL: dict[str, Any] = {"symbol": "EURUSD", "timeframe": "M1", "force": False}

ACK: dict[str, Any] = {
    "signal_id": "550e8400-e29b-41d4-a716-446655440000",
    "ticket": 12345678,
    "status": "FILLED",
    "message": "",
}

TRADES: dict[str, Any] = {
    "trades": [
        {
            "ticket": 50000001,
            "signal_id": "550e8400-e29b-41d4-a716-446655440000",
            "symbol": "EURUSD",
            "side": "BUY",
            "volume": 0.01,
            "open_time": "2024-10-27T03:35:00Z",
            "open_price": 1.08012,
            "sl": 1.07812,
            "tp": 1.08412,
            "close_time": "2024-10-27T04:12:00Z",
            "close_price": 1.08412,
            "exit_reason": "tp",
            "profit": 4.0,
            "swap": 0.0,
            "commission": -0.07,
            "magic": 250101,
            "account": 5000001,
        }
    ]
}

RECONCILE: dict[str, Any] = {"magic": 250101, "account": 5000001, "positions": []}
