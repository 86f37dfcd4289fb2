"""Pip sizes: the one place a symbol's pip is decided (labels, backtest, signals).

A pip is 0.0001 for most FX pairs and 0.01 for yen pairs; anything else (metals,
indices, crypto) needs an override from ``PIP_SIZES`` (``settings.pip_sizes``).
MT5 quotes ``spread`` in points; on 5- and 3-digit quotes a point is a tenth of a pip.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_PIP = 0.0001
JPY_PIP = 0.01
POINTS_PER_PIP = 10


def pip_size(symbol: str, overrides: Mapping[str, float] | None = None) -> float:
    """Pip size of ``symbol``; an override (keyed by upper-case symbol) wins."""
    key = symbol.strip().upper()
    if overrides:
        value = overrides.get(key)
        if value is None:
            value = overrides.get(symbol)
        if value is not None:
            return float(value)
    # Broker suffixes (EURJPY.m, USDJPYpro) keep the currency codes, so a substring test is enough.
    if "JPY" in key:
        return JPY_PIP
    return DEFAULT_PIP


def point_size(symbol: str, overrides: Mapping[str, float] | None = None) -> float:
    """Size of one MT5 point (the unit of ``spread``), a tenth of a pip."""
    return pip_size(symbol, overrides) / POINTS_PER_PIP
