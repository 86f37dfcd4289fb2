"""How a candle batch's problems are collected and reported: by field, in row order, capped.

Checks run column-wise and find problems as row masks; only the few that are shown
are formatted into :class:`FieldError` messages (a 100,000-bar batch of bad times
formats 50 messages, not 100,000). Any problem rejects the whole batch with a
:class:`CandleValidationError`, unless the caller asked for a partial ingest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mt5_pipeline.clock import from_epoch, iso_z

MAX_REPORTED_ERRORS = 50

PRICE_FIELDS = ("open", "high", "low", "close")
VOLUME_FIELDS = ("tick_volume", "spread", "real_volume")
VALUE_FIELDS = PRICE_FIELDS + VOLUME_FIELDS
OPTIONAL_FIELDS = ("spread", "real_volume")  # absent or null means 0, as MT5 leaves them


@dataclass(frozen=True)
class FieldError:
    loc: str  # "symbol", "timeframe", "candles[3].high", "candles[3]", "candles.open" (a missing column)
    message: str


class CandleValidationError(ValueError):
    """The whole batch was rejected and nothing stored.

    ``errors`` lists the first MAX_REPORTED_ERRORS problems in row order, then (when
    there were more) one entry with loc "candles" counting the rest; ``total`` counts all.
    """

    def __init__(self, errors: list[FieldError], total: int | None = None) -> None:
        self.errors = errors
        self.total = total if total is not None else len(errors)
        first = errors[0] if errors else FieldError("candles", "invalid")
        more = f" (and {self.total - 1} more)" if self.total > 1 else ""
        super().__init__(f"invalid candle batch, nothing stored: {first.loc}: {first.message}{more}")


def describe_type(value: Any) -> str:
    if value is None or value is pd.NA or value is pd.NaT:
        return "null"
    if isinstance(value, bool | np.bool_):
        return "a boolean"
    if isinstance(value, str):
        shown = value if len(value) <= 24 else value[:21] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, int | float | np.number):
        return f"a number ({value!r})"
    return f"a {type(value).__name__}"


def show_number(value: float) -> str:
    value = float(value)
    return repr(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def show_time(epoch_s: int) -> str:
    try:
        return iso_z(from_epoch(int(epoch_s)))
    except (OverflowError, OSError, ValueError):
        return f"epoch {int(epoch_s)}"


# Within a row, errors are listed in MqlRates field order.
_FIELD_RANK = {name: i for i, name in enumerate(("", "time", "ts", *VALUE_FIELDS))}


class Problems:
    """Errors found column-wise, kept as row masks until the few shown are formatted."""

    def __init__(self) -> None:
        self.batch: list[FieldError] = []
        self._checks: list[tuple[np.ndarray, str, Callable[[int], str]]] = []

    def add(self, rows: np.ndarray, field: str, message: Callable[[int], str]) -> None:
        """`rows` (indices) have a problem in `field` ("" for the row itself)."""
        if len(rows):
            self._checks.append((np.asarray(rows, dtype=np.int64), field, message))

    def add_mask(self, mask: np.ndarray, field: str, message: Callable[[int], str]) -> None:
        # Most checks find nothing: any() costs a fraction of flatnonzero (28 checks per batch).
        if mask.any():
            self.add(np.flatnonzero(mask), field, message)

    @property
    def total(self) -> int:
        return len(self.batch) + sum(len(rows) for rows, _, _ in self._checks)

    def raise_if_any(self, limit: int = MAX_REPORTED_ERRORS) -> None:
        total = self.total
        if total:
            raise CandleValidationError(self.report(limit), total)

    def bad_rows(self, n: int) -> np.ndarray:
        """Mask of the rows with at least one problem (batch-level problems excluded)."""
        mask = np.zeros(n, dtype=bool)
        for rows, _, _ in self._checks:
            mask[rows] = True
        return mask

    def report(self, limit: int = MAX_REPORTED_ERRORS) -> list[FieldError]:
        """The first `limit` problems in row order, then one entry counting the rest."""
        total = self.total
        shown = list(self.batch[:limit])
        if self._checks and len(shown) < limit:
            rows = np.concatenate([r for r, _, _ in self._checks])
            which = np.concatenate([np.full(len(r), i) for i, (r, _, _) in enumerate(self._checks)])
            rank = np.concatenate([np.full(len(r), _FIELD_RANK.get(f, 99)) for r, f, _ in self._checks])
            take = np.lexsort((which, rank, rows))[: limit - len(shown)]
            for k in take:
                row, check = int(rows[k]), int(which[k])
                _, field, message = self._checks[check]
                loc = f"candles[{row}].{field}" if field else f"candles[{row}]"
                shown.append(FieldError(loc, message(row)))
        if total > len(shown):
            shown.append(FieldError("candles", f"{total - len(shown):,} more errors not shown ({total:,} in all)"))
        return shown
