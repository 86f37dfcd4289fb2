"""A stand-in for the ``MetaTrader5`` package: same function names, named-tuple results,
constants and retcodes as its documentation, over a simulated market.

Tests hand an instance to the bridge where the real module would go, and
``mt5-pipeline bridge --fake`` runs on it. It is a strict peer, not a recorder: orders
are checked as a trade server would and every ``order_send`` request is kept in
``requests``.

:class:`FakeMT5` is built in layers, one concern each, each on the one before:
:mod:`~mt5_pipeline.bridge.fake_connection` (the terminal process and its IPC),
:mod:`~mt5_pipeline.bridge.fake_market` (symbols, ticks, bars in server time),
:mod:`~mt5_pipeline.bridge.fake_history` (positions, stops hit by fed bars, the deals
history) and :mod:`~mt5_pipeline.bridge.fake_orders` (``order_send`` and its checks).
The package's constants and records are in :mod:`~mt5_pipeline.bridge.fake_mt5_types`
and importable from here, as from the real module.
"""

from __future__ import annotations

from mt5_pipeline.bridge import fake_mt5_types
from mt5_pipeline.bridge.fake_mt5_types import (
    _MINUTES,
    COMMENTS,
    DEAL_ENTRY_IN,
    DEAL_ENTRY_OUT,
    DEAL_REASON_CLIENT,
    DEAL_REASON_EXPERT,
    DEAL_REASON_MOBILE,
    DEAL_REASON_SL,
    DEAL_REASON_SO,
    DEAL_REASON_TP,
    DEAL_REASON_WEB,
    DEAL_TYPE_BUY,
    DEAL_TYPE_SELL,
    DEFAULT_SYMBOLS,
    INSTRUMENT_CLASSES,
    ORDER_FILLING_FOK,
    ORDER_FILLING_IOC,
    ORDER_FILLING_RETURN,
    ORDER_TIME_GTC,
    ORDER_TYPE_BUY,
    ORDER_TYPE_SELL,
    POSITION_TYPE_BUY,
    POSITION_TYPE_SELL,
    RATES_DTYPE,
    RES_E_FAIL,
    RES_E_INVALID_PARAMS,
    RES_E_NOT_FOUND,
    RES_S_OK,
    SYMBOL_FILLING_FOK,
    SYMBOL_FILLING_IOC,
    TICK_SIZES,
    TIMEFRAME_D1,
    TIMEFRAME_H1,
    TIMEFRAME_H4,
    TIMEFRAME_M1,
    TIMEFRAME_M5,
    TIMEFRAME_M15,
    TIMEFRAME_M30,
    TIMEFRAME_MN1,
    TIMEFRAME_W1,
    TRADE_ACTION_DEAL,
    TRADE_RETCODE_DONE,
    TRADE_RETCODE_INVALID,
    TRADE_RETCODE_INVALID_FILL,
    TRADE_RETCODE_INVALID_PRICE,
    TRADE_RETCODE_INVALID_STOPS,
    TRADE_RETCODE_INVALID_VOLUME,
    TRADE_RETCODE_MARKET_CLOSED,
    TRADE_RETCODE_NO_MONEY,
    TRADE_RETCODE_PRICE_CHANGED,
    TRADE_RETCODE_PRICE_OFF,
    TRADE_RETCODE_REJECT,
    TRADE_RETCODE_REQUOTE,
    TRADE_RETCODE_TRADE_DISABLED,
    AccountInfo,
    OrderSendResult,
    SymbolInfo,
    TerminalInfo,
    Tick,
    TradeDeal,
    TradeOrder,
    TradePosition,
    TradeRequest,
)
from mt5_pipeline.bridge.fake_orders import FakeOrders


class FakeMT5(FakeOrders):
    """One simulated terminal; use an instance where ``import MetaTrader5 as mt5`` would be."""


# The real package exposes its constants as module attributes; code reads them from
# whatever stands in for the module (``mt5.ORDER_TYPE_BUY``), so the instance has them too.
for _name, _value in list(vars(fake_mt5_types).items()):
    if _name.isupper() and isinstance(_value, int) and not _name.startswith("_"):
        setattr(FakeMT5, _name, _value)

# The module stands in for MetaTrader5: its constants and records are importable from here.
__all__ = [
    "FakeMT5",
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
