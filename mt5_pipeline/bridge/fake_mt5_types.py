"""What the ``MetaTrader5`` package defines, for the stand-in terminal: its constants
(same values), its named-tuple results (same fields, same order), and the symbols the
stand-in trades with their digits, stops levels, filling modes and spreads."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# ---- constants (values as in the MetaTrader5 package) ------------------------------------
TIMEFRAME_M1, TIMEFRAME_M5, TIMEFRAME_M15, TIMEFRAME_M30 = 1, 5, 15, 30
TIMEFRAME_H1, TIMEFRAME_H4, TIMEFRAME_D1 = 16385, 16388, 16408
TIMEFRAME_W1, TIMEFRAME_MN1 = 32769, 49153
ORDER_TYPE_BUY, ORDER_TYPE_SELL = 0, 1
TRADE_ACTION_DEAL = 1
ORDER_FILLING_FOK, ORDER_FILLING_IOC, ORDER_FILLING_RETURN = 0, 1, 2
SYMBOL_FILLING_FOK, SYMBOL_FILLING_IOC = 1, 2
ORDER_TIME_GTC = 0
TRADE_RETCODE_REQUOTE = 10004
TRADE_RETCODE_REJECT = 10006
TRADE_RETCODE_DONE = 10009
TRADE_RETCODE_INVALID = 10013
TRADE_RETCODE_INVALID_VOLUME = 10014
TRADE_RETCODE_INVALID_PRICE = 10015
TRADE_RETCODE_INVALID_STOPS = 10016
TRADE_RETCODE_TRADE_DISABLED = 10017
TRADE_RETCODE_MARKET_CLOSED = 10018
TRADE_RETCODE_NO_MONEY = 10019
TRADE_RETCODE_PRICE_CHANGED = 10020
TRADE_RETCODE_PRICE_OFF = 10021
TRADE_RETCODE_INVALID_FILL = 10030
DEAL_TYPE_BUY, DEAL_TYPE_SELL = 0, 1
DEAL_ENTRY_IN, DEAL_ENTRY_OUT = 0, 1
DEAL_REASON_CLIENT, DEAL_REASON_MOBILE, DEAL_REASON_WEB, DEAL_REASON_EXPERT = 0, 1, 2, 3
DEAL_REASON_SL, DEAL_REASON_TP, DEAL_REASON_SO = 4, 5, 6
POSITION_TYPE_BUY, POSITION_TYPE_SELL = 0, 1
RES_S_OK = 1
RES_E_FAIL = -1
RES_E_INVALID_PARAMS = -2
RES_E_NOT_FOUND = -4

_MINUTES = {
    TIMEFRAME_M1: 1,
    TIMEFRAME_M5: 5,
    TIMEFRAME_M15: 15,
    TIMEFRAME_M30: 30,
    TIMEFRAME_H1: 60,
    TIMEFRAME_H4: 240,
    TIMEFRAME_D1: 1440,
}

RATES_DTYPE = np.dtype(
    [
        ("time", "<i8"),
        ("open", "<f8"),
        ("high", "<f8"),
        ("low", "<f8"),
        ("close", "<f8"),
        ("tick_volume", "<u8"),
        ("spread", "<i4"),
        ("real_volume", "<u8"),
    ]
)


class SymbolInfo(NamedTuple):
    name: str
    visible: bool
    digits: int
    point: float
    spread: int
    trade_stops_level: int
    filling_mode: int
    trade_mode: int
    volume_min: float
    volume_max: float
    volume_step: float
    trade_tick_size: float
    trade_tick_value: float
    trade_contract_size: float
    bid: float
    ask: float
    path: str


class Tick(NamedTuple):
    time: int
    bid: float
    ask: float
    last: float
    volume: int
    time_msc: int
    flags: int
    volume_real: float


class TradeRequest(NamedTuple):
    action: int
    magic: int
    order: int
    symbol: str
    volume: float
    price: float
    stoplimit: float
    sl: float
    tp: float
    deviation: int
    type: int
    type_filling: int
    type_time: int
    expiration: int
    comment: str
    position: int
    position_by: int


class OrderSendResult(NamedTuple):
    retcode: int
    deal: int
    order: int
    volume: float
    price: float
    bid: float
    ask: float
    comment: str
    request_id: int
    retcode_external: int
    request: TradeRequest


class TradePosition(NamedTuple):
    ticket: int
    time: int
    type: int
    magic: int
    identifier: int
    volume: float
    price_open: float
    sl: float
    tp: float
    symbol: str
    comment: str


class TradeDeal(NamedTuple):
    ticket: int
    order: int
    time: int  # server time, epoch seconds, as the terminal gives it
    time_msc: int
    type: int  # DEAL_TYPE_BUY / DEAL_TYPE_SELL
    entry: int  # DEAL_ENTRY_IN / DEAL_ENTRY_OUT
    magic: int
    position_id: int
    reason: int  # DEAL_REASON_*
    volume: float
    price: float
    commission: float
    swap: float
    profit: float
    fee: float
    symbol: str
    comment: str
    external_id: str


class TradeOrder(NamedTuple):
    ticket: int
    time_setup: int
    type: int
    magic: int
    volume_initial: float
    price_open: float
    sl: float
    tp: float
    symbol: str
    comment: str


class AccountInfo(NamedTuple):
    login: int
    balance: float
    equity: float
    currency: str
    margin_free: float
    trade_allowed: bool


class TerminalInfo(NamedTuple):
    connected: bool
    trade_allowed: bool
    name: str
    path: str


# name: (digits, base price, stops level in points, filling flags, spread in points)
DEFAULT_SYMBOLS: dict[str, tuple[int, float, int, int, int]] = {
    "EURUSD": (5, 1.08, 10, SYMBOL_FILLING_FOK | SYMBOL_FILLING_IOC, 12),
    "GBPUSD": (5, 1.27, 10, SYMBOL_FILLING_FOK | SYMBOL_FILLING_IOC, 15),
    "USDJPY": (3, 151.2, 10, SYMBOL_FILLING_IOC, 14),
    "XAUUSD": (2, 2390.0, 50, 0, 30),
}
# Instrument classes beyond the defaults (docs/execution.md), for tests and --fake:
# name: (digits, base price, stops level in points, filling flags, spread in points).
INSTRUMENT_CLASSES: dict[str, tuple[int, float, int, int, int]] = {
    "EURUSD.4": (4, 1.08, 2, SYMBOL_FILLING_FOK, 2),  # a 4-digit FX quote
    "USDJPY.2": (2, 151.2, 2, SYMBOL_FILLING_FOK, 2),  # a 2-digit yen quote
    "USDHUF": (3, 365.0, 10, SYMBOL_FILLING_FOK, 300),  # exotics quoted in big units
    "USDCZK": (3, 23.1, 10, SYMBOL_FILLING_FOK, 60),
    "USDKRW": (2, 1380.0, 10, SYMBOL_FILLING_FOK, 100),
    "XAUUSD.3": (3, 2390.0, 50, SYMBOL_FILLING_FOK, 300),  # gold at 3 digits
    "XAGUSD": (3, 28.5, 20, SYMBOL_FILLING_FOK, 30),  # silver at 3 digits
    "XAGUSD.2": (2, 28.5, 2, SYMBOL_FILLING_FOK, 3),  # silver at 2 digits
    "US30": (0, 39000.0, 5, SYMBOL_FILLING_IOC, 3),  # indices at 0, 1 and 2 digits
    "DE40": (1, 18000.0, 10, SYMBOL_FILLING_IOC, 15),
    "US500": (2, 5200.0, 100, 0, 50),  # 2 digits, quoted in 0.25 steps (TICK_SIZES); exchange execution
    "BTCUSD": (2, 67000.0, 50, SYMBOL_FILLING_IOC, 50),  # crypto
}
# Symbols whose price moves in steps larger than a point (trade_tick_size).
TICK_SIZES: dict[str, float] = {"US500": 0.25}
# The comment a result carries for a retcode, as the terminal words it.
COMMENTS = {
    10004: "Requote",
    10009: "Request executed",
    10016: "Invalid stops",
    10018: "Market closed",
    10030: "Unsupported filling mode",
    10014: "Invalid volume",
    10019: "No money",
}

# What ``fake_mt5`` re-exports, as the real package exports it.
__all__ = [
    "_MINUTES",
    "AccountInfo",
    "COMMENTS",
    "DEAL_ENTRY_IN",
    "DEAL_ENTRY_OUT",
    "DEAL_REASON_CLIENT",
    "DEAL_REASON_EXPERT",
    "DEAL_REASON_MOBILE",
    "DEAL_REASON_SL",
    "DEAL_REASON_SO",
    "DEAL_REASON_TP",
    "DEAL_REASON_WEB",
    "DEAL_TYPE_BUY",
    "DEAL_TYPE_SELL",
    "DEFAULT_SYMBOLS",
    "INSTRUMENT_CLASSES",
    "ORDER_FILLING_FOK",
    "ORDER_FILLING_IOC",
    "ORDER_FILLING_RETURN",
    "ORDER_TIME_GTC",
    "ORDER_TYPE_BUY",
    "ORDER_TYPE_SELL",
    "OrderSendResult",
    "POSITION_TYPE_BUY",
    "POSITION_TYPE_SELL",
    "RATES_DTYPE",
    "RES_E_FAIL",
    "RES_E_INVALID_PARAMS",
    "RES_E_NOT_FOUND",
    "RES_S_OK",
    "SYMBOL_FILLING_FOK",
    "SYMBOL_FILLING_IOC",
    "SymbolInfo",
    "TICK_SIZES",
    "TIMEFRAME_D1",
    "TIMEFRAME_H1",
    "TIMEFRAME_H4",
    "TIMEFRAME_M1",
    "TIMEFRAME_M15",
    "TIMEFRAME_M30",
    "TIMEFRAME_M5",
    "TIMEFRAME_MN1",
    "TIMEFRAME_W1",
    "TRADE_ACTION_DEAL",
    "TRADE_RETCODE_DONE",
    "TRADE_RETCODE_INVALID",
    "TRADE_RETCODE_INVALID_FILL",
    "TRADE_RETCODE_INVALID_PRICE",
    "TRADE_RETCODE_INVALID_STOPS",
    "TRADE_RETCODE_INVALID_VOLUME",
    "TRADE_RETCODE_MARKET_CLOSED",
    "TRADE_RETCODE_NO_MONEY",
    "TRADE_RETCODE_PRICE_CHANGED",
    "TRADE_RETCODE_PRICE_OFF",
    "TRADE_RETCODE_REJECT",
    "TRADE_RETCODE_REQUOTE",
    "TRADE_RETCODE_TRADE_DISABLED",
    "TerminalInfo",
    "Tick",
    "TradeDeal",
    "TradeOrder",
    "TradePosition",
    "TradeRequest",
]
