"""The part of the ``MetaTrader5`` package the bridge calls, as types.

The package ships no type information, and the bridge runs against it or against the
in-repo double (:mod:`mt5_pipeline.bridge.fake_mt5`); both are described here by
structure (Protocols), so neither has to name the other. Only the fields the bridge reads
are listed; fields some builds lack are read with ``getattr`` and a default instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, TypedDict

import numpy as np


class SymbolInfo(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def visible(self) -> bool: ...
    @property
    def digits(self) -> int: ...
    @property
    def point(self) -> float: ...


class Tick(Protocol):
    @property
    def time(self) -> int: ...
    @property
    def bid(self) -> float: ...
    @property
    def ask(self) -> float: ...


class OrderSendResult(Protocol):
    @property
    def retcode(self) -> int: ...
    @property
    def deal(self) -> int: ...
    @property
    def order(self) -> int: ...
    @property
    def volume(self) -> float: ...
    @property
    def price(self) -> float: ...


class TradePosition(Protocol):
    @property
    def ticket(self) -> int: ...
    @property
    def time(self) -> int: ...
    @property
    def type(self) -> int: ...
    @property
    def magic(self) -> int: ...
    @property
    def volume(self) -> float: ...
    @property
    def price_open(self) -> float: ...
    @property
    def sl(self) -> float: ...
    @property
    def tp(self) -> float: ...
    @property
    def symbol(self) -> str: ...
    @property
    def comment(self) -> str: ...


class TradeOrder(Protocol):
    """A history order (``history_orders_get``)."""

    @property
    def ticket(self) -> int: ...
    @property
    def magic(self) -> int: ...
    @property
    def symbol(self) -> str: ...
    @property
    def comment(self) -> str: ...


class TradeDeal(Protocol):
    @property
    def ticket(self) -> int: ...
    @property
    def time(self) -> int: ...  # server time, epoch seconds
    @property
    def type(self) -> int: ...
    @property
    def entry(self) -> int: ...
    @property
    def magic(self) -> int: ...
    @property
    def position_id(self) -> int: ...
    @property
    def reason(self) -> int: ...
    @property
    def volume(self) -> float: ...
    @property
    def price(self) -> float: ...
    @property
    def commission(self) -> float: ...
    @property
    def swap(self) -> float: ...
    @property
    def profit(self) -> float: ...
    @property
    def symbol(self) -> str: ...


class AccountInfo(Protocol):
    @property
    def login(self) -> int: ...
    @property
    def balance(self) -> float: ...


class _OrderRequired(TypedDict):
    action: int
    symbol: str
    volume: float
    type: int
    price: float
    deviation: int
    magic: int
    comment: str
    type_time: int
    type_filling: int


class OrderRequest(_OrderRequired, total=False):
    """``order_send``'s MqlTradeRequest: stops on an opening order, ``position`` on a closing one."""

    sl: float
    tp: float
    position: int


class MT5Functions(Protocol):
    """The package's functions the bridge calls (its arguments positional, as the package takes them)."""

    def initialize(self, path: str = ..., /, **kwargs: Any) -> bool: ...
    def shutdown(self) -> None: ...
    def last_error(self) -> tuple[int, str]: ...
    def terminal_info(self) -> object | None: ...
    def account_info(self) -> AccountInfo | None: ...
    def symbol_info(self, symbol: str, /) -> SymbolInfo | None: ...
    def symbol_select(self, symbol: str, enable: bool, /) -> bool: ...
    def symbol_info_tick(self, symbol: str, /) -> Tick | None: ...
    def copy_rates_from_pos(self, symbol: str, timeframe: int, start_pos: int, count: int, /) -> np.ndarray | None: ...
    def order_send(self, request: OrderRequest, /) -> OrderSendResult | None: ...
    def positions_get(
        self, *, symbol: str | None = None, ticket: int | None = None
    ) -> tuple[TradePosition, ...] | None: ...
    def history_orders_get(
        self, date_from: datetime | int | None, date_to: datetime | int | None, /
    ) -> tuple[TradeOrder, ...] | None: ...
    def history_deals_get(
        self, date_from: int | None = None, date_to: int | None = None, /, *, position: int | None = None
    ) -> tuple[TradeDeal, ...] | None: ...


class MT5(MT5Functions, Protocol):
    """The package (or its double): the functions and the constants the bridge reads by name.
    ``TIMEFRAME_*`` and ``SYMBOL_FILLING_*`` are read with ``getattr`` instead."""

    POSITION_TYPE_BUY: int
    ORDER_TYPE_BUY: int
    ORDER_TYPE_SELL: int
    ORDER_TIME_GTC: int
    ORDER_FILLING_FOK: int
    ORDER_FILLING_IOC: int
    ORDER_FILLING_RETURN: int
    TRADE_ACTION_DEAL: int
    DEAL_TYPE_BUY: int
    DEAL_ENTRY_IN: int
    DEAL_REASON_SL: int
    DEAL_REASON_TP: int
    DEAL_REASON_EXPERT: int
