"""Pip sizes: the one place a symbol's pip is decided (labels, backtest, promotion,
signals' ``meta.pip_size``, and through it the stops the bridge and the EA place).

Where a pip comes from, first match wins (docs/execution.md has the table):

1. ``PIP_SIZES`` (``settings.pip_sizes``), e.g. ``XAUUSD=0.1``: the operator's word;
2. what the terminal says about the instrument: ``digits`` / ``point`` sent with
   ``POST /ingest`` (the bridge and the MQL5 EA send them), kept in the ``symbols``
   table. A pip is MQL's usual ``point * 10`` on 3- and 5-digit quotes (a fractional
   pip) and one point otherwise, for every instrument: EURUSD 1.08123 -> 0.0001, USDJPY
   151.234 -> 0.01, USDHUF 365.123 -> 0.01, USDKRW 1380.12 -> 0.01, XAUUSD 2034.56 ->
   0.01, US30 39012 -> 1, BTCUSD 67012.34 -> 0.01;
3. a currency pair (two ISO currency codes, any broker suffix) the terminal has not
   described yet: 0.0001, yen pairs 0.01 (right for the majors; an exotic quote such as
   USDHUF needs 2 or 1);

Anything else (metals, indices, crypto, CFDs) has no pip until 1 or 2 gives one:
:class:`PipSizeUnknown` names the setting. An FX default for gold would put a 20-pip
stop $0.002 away.

MT5 quotes ``spread`` in points; a point is a tenth of a pip on 5- and 3-digit quotes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy.exc import OperationalError, ProgrammingError

from mt5_pipeline.storage.symbols import instrument

DEFAULT_PIP = 0.0001
JPY_PIP = 0.01
POINTS_PER_PIP = 10
MAX_DIGITS = 8
# A point below the finest step any quote has (1e-8) would make a nonsense pip (a 5e-324
# point passed (0, 1] before); the margin keeps 1e-8 itself, stored as a float, inside.
_SMALLEST_POINT = 10.0**-MAX_DIGITS * (1 - 1e-9)

# ISO 4217 codes of currencies brokers quote as FX pairs. Metals (XAU, XAG, XPT, XPD)
# and crypto (BTC, ETH) are deliberately absent: they are not priced in FX pips.
CURRENCIES = frozenset(
    (
        "USD EUR GBP JPY CHF AUD NZD CAD SEK NOK DKK PLN HUF CZK TRY ZAR MXN SGD HKD CNH CNY RUB ILS THB INR KRW BRL"
    ).split()
)
_LEADING = re.compile(r"^[^A-Z]*")


class PipSizeUnknown(ValueError):
    """No pip size for a symbol that is not a currency pair; the message says how to give one."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        super().__init__(
            f"no pip size for {symbol}: it is not a currency pair, so the FX pip (0.0001) would be wrong. "
            f"Set PIP_SIZES={symbol.upper()}=<size of one pip> (e.g. PIP_SIZES=XAUUSD=0.1), "
            f"or have the EA send its digits/point with POST /ingest"
        )


def currency_pair(symbol: str) -> tuple[str, str] | None:
    """The two currencies of an FX symbol (``EURUSD.m`` -> EUR, USD), or None."""
    letters = _LEADING.sub("", symbol.strip().upper())
    base, quote = letters[:3], letters[3:6]
    if base in CURRENCIES and quote in CURRENCIES and base != quote:
        return base, quote
    return None


def pip_from_instrument(digits: int | None, point: float | None) -> float | None:
    """MQL's convention from the terminal's SYMBOL_DIGITS / SYMBOL_POINT (either may be missing)."""
    if point is None:
        if digits is None:
            return None
        point = 10.0 ** -int(digits)
    elif digits is None:
        digits = max(0, round(-math.log10(point)))
    pip = float(point) * (POINTS_PER_PIP if int(digits) in (3, 5) else 1)
    return round(pip, int(digits) + 1)  # 0.001 * 10 is 0.010000000000000002


def pip_size(
    symbol: str, overrides: Mapping[str, float] | None = None, instrument: tuple[int | None, float | None] | None = None
) -> float:
    """Pip size of ``symbol``: an override (keyed by upper-case symbol), else the terminal's
    (digits, point), else the FX name rule; raises PipSizeUnknown when none applies."""
    key = symbol.strip().upper()
    if overrides:
        value = overrides.get(key)
        if value is None:
            value = overrides.get(symbol)
        if value is not None:
            return float(value)
    # Digits before the name: a 3-digit USDHUF is not a 5-digit EURUSD.
    from_terminal = pip_from_instrument(*instrument) if instrument is not None else None
    if from_terminal is not None:
        return from_terminal
    pair = currency_pair(symbol)
    if pair is not None:
        return JPY_PIP if "JPY" in pair else DEFAULT_PIP
    raise PipSizeUnknown(symbol)


def point_size(
    symbol: str, overrides: Mapping[str, float] | None = None, instrument: tuple[int | None, float | None] | None = None
) -> float:
    """Size of one MT5 point (the unit of ``spread``): the EA's, else a tenth of a pip."""
    if instrument is not None and instrument[1] is not None:
        return float(instrument[1])
    if instrument is not None and instrument[0] is not None:
        return 10.0 ** -int(instrument[0])
    return pip_size(symbol, overrides) / POINTS_PER_PIP


# ---- what the EA says about an instrument (the `symbols` table) ---------------------------


def check_instrument(digits: Any, point: Any) -> list[tuple[str, str]]:
    """(field, message) for each problem with an EA's digits / point; both optional."""
    problems = []
    if digits is not None and (
        isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= MAX_DIGITS
    ):
        problems.append(
            (
                "digits",
                f"expected a whole number of decimals from 0 to {MAX_DIGITS} (MT5's SYMBOL_DIGITS), got {digits!r}",
            )
        )
        digits = None
    if point is not None:
        if (
            isinstance(point, bool)
            or not isinstance(point, int | float)
            or not math.isfinite(point)
            or not _SMALLEST_POINT <= point <= 1
        ):
            problems.append(
                (
                    "point",
                    f"expected the price step, a number from {10.0**-MAX_DIGITS:g} to 1 (MT5's SYMBOL_POINT), got "
                    f"{point!r}",
                )
            )
        elif digits is not None and not math.isclose(point, 10.0**-digits, rel_tol=1e-6):
            problems.append(("point", f"{point!r} does not match digits {digits} (expected {10.0**-digits:g})"))
    return problems


def _overridden(settings: Any, symbol: str) -> bool:
    overrides = settings.pip_sizes or {}
    return symbol.strip().upper() in overrides or symbol in overrides


def pip_size_for(settings: Any, database_url: str | None, symbol: str) -> float:
    """The pip of `symbol` from PIP_SIZES, the terminal's digits/point, or the FX rule.

    Raises PipSizeUnknown (a ValueError naming PIP_SIZES) for a symbol that has none:
    signals, labels and the backtest refuse such a symbol rather than guess. Reads the
    database (one row) unless PIP_SIZES names the symbol.
    """
    if _overridden(settings, symbol):
        return pip_size(symbol, settings.pip_sizes)
    return pip_size(symbol, settings.pip_sizes, _described(settings, database_url, symbol))


def _described(settings: Any, database_url: str | None, symbol: str) -> tuple[int | None, float | None] | None:
    """The terminal's (digits, point) for `symbol`; for a currency pair, None also when the
    database has no schema yet (a backtest on a bare file): its name rule still applies."""
    if currency_pair(symbol) is None:
        return instrument(database_url or settings.database_url, symbol)
    try:
        return instrument(database_url or settings.database_url, symbol)
    except (OperationalError, ProgrammingError) as exc:
        # Only a missing table: an unreachable database must not quietly change a pip.
        if "no such table" in str(exc) or "does not exist" in str(exc):
            return None
        raise


def point_size_for(settings: Any, database_url: str | None, symbol: str) -> float:
    """One MT5 point of `symbol` (spreads are in points), by the same sources."""
    if _overridden(settings, symbol):
        return point_size(symbol, settings.pip_sizes)
    return point_size(symbol, settings.pip_sizes, _described(settings, database_url, symbol))
