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
from mt5_pipeline.bridge.fake_mt5_types import *  # noqa: F403
from mt5_pipeline.bridge.fake_mt5_types import __all__ as _TYPE_NAMES
from mt5_pipeline.bridge.fake_orders import FakeOrders


class FakeMT5(FakeOrders):
    """One simulated terminal; use an instance where ``import MetaTrader5 as mt5`` would be."""


# The real package exposes its constants as module attributes; code reads them from
# whatever stands in for the module (``mt5.ORDER_TYPE_BUY``), so the instance has them too.
for _name, _value in list(vars(fake_mt5_types).items()):
    if _name.isupper() and isinstance(_value, int) and not _name.startswith("_"):
        setattr(FakeMT5, _name, _value)

# The module stands in for MetaTrader5: its constants and records are importable from here.
__all__ = ["FakeMT5", *_TYPE_NAMES]
