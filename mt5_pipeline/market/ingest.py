"""The ingest core: validate a batch of candles as a whole, then store it idempotently.

One function, :func:`ingest_candles`, serves ``POST /ingest`` and the MT5 history
importer alike. Validation runs column-wise over numpy arrays, so a 100,000-bar batch
costs milliseconds, and any error rejects the whole batch before the database is
touched. Storing is an upsert on (symbol, timeframe, ts): a repeated bar changes nothing
(its ``ingested_at`` stays), a bar re-sent with other values (the EA sends the forming
bar, then its final version) replaces the stored one and gets ``ingested_at = now``.

Rules worth knowing:

* Times are the bar's OPEN time in UTC, as epoch seconds or ISO 8601 with ``Z``/offset.
  The forming bar's open time is already past, so a bar opening more than
  ``FUTURE_SKEW_SECONDS`` after now is an error (usually a clock or time zone mistake).
* Alignment: M1..H1 bars open on whole multiples of their length. H4, D1, W1 and MN1
  bars open at boundaries of the broker's day, which is not UTC midnight when the server
  runs at UTC+2: ``utc_offset_hours`` says where that day starts (the importer passes
  its ``--tz-offset``). D1 opens at 00:00, H4 at 00/04/08/...:00, W1 on Sunday 00:00
  (MT5's week), MN1 on the 1st of the month 00:00 — all in that offset's local time.
* The same ts twice in one batch: the last one wins (a later line is a later version).
* ``ingested_at`` is stamped after the series lock is taken, from the database's clock,
  and is always later than every stamp already stored in the series. So a features run
  that has seen a stamp has seen every change committed before it, however long a
  commit lagged its stamp (``features.first_stale_bar`` relies on this). A caller's
  ``now`` (tests, reproducible runs) replaces the clock, not the ordering.
* ``candle_series`` counts the bars per series in the same transaction, so nothing has
  to count the candles table to report them.
* Symbols are stored as given (MT5 suffixes like ``EURUSDm`` are case-sensitive).
* The forming bar may be stored (and replaced by its final version); only closed bars
  become features, labels or signals (:mod:`mt5_pipeline.bars`).
* Storing (the upsert, the stamp, the NOTIFY for the live worker) and the read of the
  bars before a batch are :mod:`mt5_pipeline.storage.candles`; this module validates
  and decides.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from mt5_pipeline.clock import from_epoch, iso_z, resolve_now
from mt5_pipeline.market.symbols import SYMBOL_RE
from mt5_pipeline.server_time import ServerZone
from mt5_pipeline.settings import TIMEFRAME_SECONDS
from mt5_pipeline.storage.candles import CandleBatch, closes_before, store_batch

TIMEFRAMES: tuple[str, ...] = tuple(TIMEFRAME_SECONDS)
FUTURE_SKEW_SECONDS = 60
# No instrument trades above this (BTC in yen is about 1e7): anything larger is an
# encoding or unit error, and would poison every feature window it enters.
MAX_PRICE = 1e10
# A bar this many times above (or below) the level of the bars around it is a bad tick,
# not a market move: rejected (PRICE_MAX_JUMP overrides; see _jump_errors).
DEFAULT_MAX_JUMP = 10.0
# The level a bar is compared with: the median close of this many bars centred on it,
# the stored bars just before the batch included.
JUMP_WINDOW = 21
MAX_REPORTED_ERRORS = 50
SYMBOL_PATTERN = SYMBOL_RE  # one rule for bars and signals (market.symbols)

PRICE_FIELDS = ("open", "high", "low", "close")
VOLUME_FIELDS = ("tick_volume", "spread", "real_volume")
VALUE_FIELDS = PRICE_FIELDS + VOLUME_FIELDS
OPTIONAL_FIELDS = ("spread", "real_volume")  # absent or null means 0, as MT5 leaves them
# spread is an INTEGER column; the volumes are BIGINT.
_INT_MAX = {"tick_volume": 2**63 - 1, "spread": 2**31 - 1, "real_volume": 2**63 - 1}
# 1970-01-04 was a Sunday: MT5's weeks (W1 bars) open on Sunday 00:00.
_FIRST_SUNDAY = 3 * 86_400
# Epoch seconds beyond this are surely milliseconds (year 5138).
_LOOKS_LIKE_MS = 10**11


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


@dataclass(frozen=True)
class IngestResult:
    received: int
    inserted: int
    updated: int
    unchanged: int
    first_changed_ts: datetime | None  # oldest bar inserted or changed: where features must recompute from
    duplicates: int = 0  # rows that repeated an earlier ts of the same batch (the last one was kept)
    rejected: int = 0  # partial ingest: rows refused (nothing of them stored), listed in errors
    errors: tuple[FieldError, ...] = ()


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _json_type(value: Any) -> str:
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


def _num(value: float) -> str:
    value = float(value)
    return repr(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _iso(epoch_s: int) -> str:
    try:
        return iso_z(from_epoch(int(epoch_s)))
    except (OverflowError, OSError, ValueError):
        return f"epoch {int(epoch_s)}"


# Within a row, errors are listed in MqlRates field order.
_FIELD_RANK = {name: i for i, name in enumerate(("", "time", "ts", *VALUE_FIELDS))}


class _Problems:
    """Errors found column-wise, kept as row masks until the few shown are formatted."""

    def __init__(self) -> None:
        self.batch: list[FieldError] = []
        self._checks: list[tuple[np.ndarray, str, Callable[[int], str]]] = []

    def add(self, rows: np.ndarray, field: str, message: Callable[[int], str]) -> None:
        """`rows` (indices) have a problem in `field` ("" for the row itself)."""
        if len(rows):
            self._checks.append((np.asarray(rows, dtype=np.int64), field, message))

    def add_mask(self, mask: np.ndarray, field: str, message: Callable[[int], str]) -> None:
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


def _object_array(values: Sequence[Any] | np.ndarray, n: int) -> np.ndarray:
    # fromiter keeps nested lists as single objects, where np.array would try to nest them.
    return (
        values
        if isinstance(values, np.ndarray) and values.dtype == object
        else np.fromiter(values, dtype=object, count=n)
    )


def _types(objs: np.ndarray) -> np.ndarray:
    return np.fromiter(map(type, objs), dtype=object, count=len(objs))


def _exact(types: np.ndarray, *kinds: type) -> np.ndarray:
    """Rows whose type is exactly one of `kinds` (bool is not an int here)."""
    out = np.zeros(len(types), dtype=bool)
    for kind in kinds:
        out |= types == _boxed(kind)
    return out


def _boxed(kind: type) -> np.ndarray:
    boxed = np.empty((), dtype=object)
    boxed[()] = kind  # boxed, or numpy would read np.int64 as a dtype, not an object
    return boxed


def _of_kind(types: np.ndarray, base: type | tuple[type, ...]) -> np.ndarray:
    """Rows whose type is `base` or a subclass (one comparison per distinct type, not per row)."""
    out = np.zeros(len(types), dtype=bool)
    for t in set(types.tolist()):
        if issubclass(t, base):
            out |= types == _boxed(t)
    return out


_NUMBER_TYPES = (int, float, np.integer, np.floating)
_BOOL_TYPES = (bool, np.bool_)


def _numbers_from_objects(
    objs: np.ndarray, field: str, problems: _Problems, skip: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, reported mask) of a column of Python objects; unusable values are
    reported here and left NaN."""
    n = len(objs)
    types = _types(objs)
    is_num = _of_kind(types, _NUMBER_TYPES) & ~_of_kind(types, _BOOL_TYPES)
    out = np.full(n, np.nan)
    if is_num.any():
        try:
            out[is_num] = objs[is_num].astype(np.float64)
        except OverflowError:  # an integer too large for a double
            out[is_num] = np.array([float(v) if abs(v) < 1e308 else math.inf for v in objs[is_num]])
    optional = field in OPTIONAL_FIELDS
    absent = _exact(types, _Missing, type(None), type(pd.NA))
    if optional:
        out[absent] = 0.0
    else:
        missing = _exact(types, _Missing) & ~skip
        problems.add_mask(missing, field, lambda i: "field required")
        problems.add_mask(absent & ~_exact(types, _Missing) & ~skip, field, lambda i: "must be a number, got null")
    wrong = ~is_num & ~absent & ~skip
    problems.add_mask(wrong, field, lambda i: f"must be a number, got {_json_type(objs[i])}")
    return out, skip | ~is_num & ~(absent if optional else np.zeros(n, dtype=bool))


def _numbers_from_list(
    values: list, field: str, problems: _Problems, skip: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """As _numbers_from_objects, with a fast path for the usual all-numbers column."""
    kinds = set(map(type, values))
    if kinds <= {float, int}:
        try:
            return np.fromiter(values, dtype=np.float64, count=len(values)), skip
        except OverflowError:
            pass
    elif kinds == {_Missing} and field in OPTIONAL_FIELDS:
        return np.zeros(len(values)), skip
    return _numbers_from_objects(_object_array(values, len(values)), field, problems, skip)


def _times_from_list(
    values: list, column: Callable[[str], list], problems: _Problems, skip: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n = len(values)
    kinds = set(map(type, values))
    if kinds == {int}:
        try:
            seconds = np.array(values, dtype=np.float64)
        except OverflowError:  # a 400-digit "time": the object path names it
            seconds = np.full(n, np.inf)
        if (np.abs(seconds) < 2**53).all():  # exact in a double
            return seconds.astype(np.int64), np.ones(n, dtype=bool)
    objs = _object_array(values, n)
    if _Missing in kinds:  # Python callers may say ts, as the table does
        objs = np.where(_exact(_types(objs), _Missing), _object_array(column("ts"), n), objs)
    return _times_from_objects(objs, "time", problems, skip)


def _column_numbers(
    frame_col: pd.Series, field: str, problems: _Problems, skip: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    dtype = frame_col.dtype
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        values = frame_col.to_numpy(dtype=np.float64, na_value=np.nan)
        if field in OPTIONAL_FIELDS:
            values = np.where(np.isnan(values), 0.0, values)
        return values, skip  # NaN is reported by the finite-number rule
    return _numbers_from_objects(_object_array(frame_col.to_numpy(dtype=object), len(frame_col)), field, problems, skip)


_ZONE = re.compile(r"(?:Z|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)


def _times_from_objects(
    objs: np.ndarray, field: str, problems: _Problems, skip: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(epoch seconds int64, ok mask) of a column of ints, ISO strings or aware datetimes."""
    n = len(objs)
    types = _types(objs)
    ts = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    not_bool = ~_of_kind(types, _BOOL_TYPES)
    is_int = _of_kind(types, (int, np.integer)) & not_bool
    is_float = _of_kind(types, (float, np.floating))
    is_str = _exact(types, str)
    is_dt = _of_kind(types, datetime)
    nums = is_int | is_float
    if nums.any():
        values = np.full(n, np.nan)
        try:
            values[nums] = objs[nums].astype(np.float64)
        except OverflowError:
            values[nums] = np.array([float(v) if abs(v) < 1e308 else math.inf for v in objs[nums]])
        whole = nums & np.isfinite(values) & (np.abs(values) < 2**62)
        whole &= np.floor(np.where(whole, values, 0)) == np.where(whole, values, 0)
        ts[whole] = values[whole].astype(np.int64)
        if is_int.any():
            # Integers stay exact (a double would round beyond 2**53 seconds, but still).
            exact = is_int & whole
            ts[exact] = objs[exact].astype(np.int64)
        ok |= whole
        problems.add_mask(
            nums & ~whole & ~skip, field, lambda i: f"must be whole epoch seconds or an ISO 8601 time, got {objs[i]!r}"
        )
    if is_str.any():
        strings = pd.Series(objs[is_str], dtype=object)
        zoned = strings.str.strip().str.contains(_ZONE).to_numpy(dtype=bool)
        parsed = pd.to_datetime(strings.where(zoned, None), format="ISO8601", utc=True, errors="coerce")
        good = parsed.notna().to_numpy() & zoned
        where = np.flatnonzero(is_str)
        seconds = _datetimes_to_us(parsed[good]) // 1_000_000
        fractional = _datetimes_to_us(parsed[good]) % 1_000_000 != 0
        ts[where[good]] = seconds
        ok[where[good]] = ~fractional
        problems.add(
            where[good][fractional & ~skip[where[good]]],
            field,
            lambda i: f"{objs[i]!r} has fractions of a second; bars open on whole seconds",
        )
        readable = pd.to_datetime(strings.where(~zoned, None), format="ISO8601", errors="coerce").notna().to_numpy()
        naive = where[~zoned & readable & ~skip[where]]
        problems.add(naive, field, lambda i: f"{objs[i]!r} has no time zone; add Z for UTC (or an offset like +02:00)")
        bad = where[~good & ~(~zoned & readable) & ~skip[where]]
        problems.add(bad, field, lambda i: f"{objs[i]!r} is not an ISO 8601 time like 2024-10-27T03:33:00Z")
    if is_dt.any():
        where = np.flatnonzero(is_dt)
        aware = np.fromiter((objs[i].tzinfo is not None for i in where), dtype=bool, count=len(where))
        if aware.any():
            us = _datetimes_to_us(pd.to_datetime(pd.Series(objs[where[aware]], dtype=object), utc=True))
            ts[where[aware]] = us // 1_000_000
            ok[where[aware]] = us % 1_000_000 == 0
        problems.add(where[~aware & ~skip[where]], field, lambda i: "a datetime without a time zone; use UTC")
    other = ~(nums | is_str | is_dt) & ~skip
    missing = other & _exact(types, _Missing)
    problems.add_mask(missing, field, lambda i: "field required")
    problems.add_mask(
        other & ~missing, field, lambda i: f"must be epoch seconds or an ISO 8601 string, got {_json_type(objs[i])}"
    )
    return ts, ok


def _datetimes_to_us(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Epoch microseconds of tz-aware datetimes, whatever pandas' resolution (s/ms/us/ns)."""
    naive = pd.DatetimeIndex(values).tz_convert("UTC").tz_localize(None)
    return naive.to_numpy().astype("datetime64[us]").view(np.int64)


def _column_times(col: pd.Series, field: str, problems: _Problems, skip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dtype = col.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        nat = col.isna().to_numpy()
        us = np.where(nat, 0, _datetimes_to_us(col.where(~nat, pd.Timestamp(0, tz="UTC"))))
        problems.add_mask(nat & ~skip, field, lambda i: "time is missing (NaT)")
        return us // 1_000_000, ~nat & (us % 1_000_000 == 0)
    if dtype.kind == "M":
        problems.batch.append(
            FieldError(f"candles.{field}", "times must be timezone-aware (UTC); localise the column first")
        )
        return np.zeros(len(col), dtype=np.int64), np.zeros(len(col), dtype=bool)
    if dtype.kind in "iu":
        return col.to_numpy(dtype=np.int64), np.ones(len(col), dtype=bool)
    return _times_from_objects(_object_array(col.to_numpy(dtype=object), len(col)), field, problems, skip)


def _extract(candles: list[dict] | pd.DataFrame, problems: _Problems) -> tuple[int, np.ndarray, np.ndarray, dict, dict]:
    """(n, ts, ts_ok, values by field, already-reported rows by field), every type problem reported."""
    if isinstance(candles, pd.DataFrame):
        n = len(candles)
        skip = np.zeros(n, dtype=bool)
        time_field = "time" if "time" in candles.columns else "ts"
        if time_field not in candles.columns:
            problems.batch.append(FieldError("candles.time", "column required (time or ts)"))
            ts, ts_ok = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        else:
            ts, ts_ok = _column_times(candles[time_field], time_field, problems, skip)
        values, reported = {}, {}
        for field in VALUE_FIELDS:
            if field in candles.columns:
                values[field], reported[field] = _column_numbers(candles[field], field, problems, skip)
            elif field in OPTIONAL_FIELDS:
                values[field], reported[field] = np.zeros(n), skip
            else:
                problems.batch.append(FieldError(f"candles.{field}", "column required"))
                values[field], reported[field] = np.full(n, np.nan), ~skip
        return n, ts, ts_ok, values, reported

    if not isinstance(candles, list | tuple):
        problems.batch.append(
            FieldError("candles", f"expected a list of candles or a DataFrame, got {_json_type(candles)}")
        )
        empty = np.zeros(0, bool)
        return 0, np.zeros(0, np.int64), empty, {f: np.zeros(0) for f in VALUE_FIELDS}, {f: empty for f in VALUE_FIELDS}
    n = len(candles)
    rows: Sequence[Any] = candles
    skip = np.zeros(n, dtype=bool)
    if set(map(type, rows)) != {dict}:
        objs = _object_array(rows, n)
        skip = ~_of_kind(_types(objs), dict)
        problems.add_mask(skip, "", lambda i: f"expected an object with MqlRates fields, got {_json_type(objs[i])}")
        rows = [
            {} if bad else row for row, bad in zip(rows, skip.tolist(), strict=True)
        ]  # look into bad rows as empty objects

    def column(name: str) -> list:
        # C-level maps, no per-row Python code: itemgetter while every row has the field.
        try:
            return list(map(operator.itemgetter(name), rows))
        except KeyError:
            return list(map(operator.methodcaller("get", name, _MISSING), rows))

    ts, ts_ok = _times_from_list(column("time"), column, problems, skip)
    values, reported = {}, {}
    for field in VALUE_FIELDS:
        values[field], reported[field] = _numbers_from_list(column(field), field, problems, skip)
    return n, ts, ts_ok, values, reported


def _check_values(values: dict[str, np.ndarray], reported: dict[str, np.ndarray], problems: _Problems) -> None:
    o, h, lo, c = (values[f] for f in PRICE_FIELDS)
    finite = {f: np.isfinite(values[f]) for f in VALUE_FIELDS}
    for field in VALUE_FIELDS:
        v = values[field]
        problems.add_mask(
            ~finite[field] & ~reported[field], field, lambda i, v=v: f"must be a finite number, got {float(v[i])}"
        )
    problems.add_mask(finite["low"] & (lo <= 0), "low", lambda i: f"must be greater than 0, got {_num(lo[i])}")
    for field in PRICE_FIELDS:
        v = values[field]
        problems.add_mask(
            finite[field] & (v > MAX_PRICE),
            field,
            lambda i, v=v: (
                f"{_num(v[i])} is beyond any instrument's price (at most {MAX_PRICE:g}); a unit or encoding error?"
            ),
        )
    prices_ok = finite["open"] & finite["high"] & finite["low"] & finite["close"]
    top = np.maximum(o, c)
    bottom = np.minimum(o, c)
    problems.add_mask(
        prices_ok & (h < top), "high", lambda i: f"must be >= max(open, close) = {_num(top[i])}, got {_num(h[i])}"
    )
    problems.add_mask(
        prices_ok & (lo > bottom),
        "low",
        lambda i: f"must be <= min(open, close) = {_num(bottom[i])}, got {_num(lo[i])}",
    )
    # high >= low follows from the two rules above; it is checked for when they pass only
    # by accident of rounding, so say it plainly then.
    problems.add_mask(
        prices_ok & (h >= top) & (lo <= bottom) & (h < lo),
        "high",
        lambda i: f"must be >= low {_num(lo[i])}, got {_num(h[i])}",
    )
    for field in VOLUME_FIELDS:
        v = values[field]
        ok = finite[field]
        problems.add_mask(ok & (v < 0), field, lambda i, v=v: f"must be >= 0, got {_num(v[i])}")
        problems.add_mask(
            ok & (v >= 0) & (np.floor(v) != v), field, lambda i, v=v: f"must be a whole number, got {_num(v[i])}"
        )
        problems.add_mask(
            ok & (v > _INT_MAX[field]), field, lambda i, v=v, f=field: f"is too large ({_num(v[i])} > {_INT_MAX[f]})"
        )


def _check_times(
    ts: np.ndarray,
    ts_ok: np.ndarray,
    field: str,
    timeframe: str | None,
    now_s: int,
    offset_s: int | np.ndarray,
    problems: _Problems,
    zone: str = "",
) -> None:
    problems.add_mask(ts_ok & (ts < 0), field, lambda i: f"{_iso(ts[i])} is before 1970")
    future = ts_ok & (ts > now_s + FUTURE_SKEW_SECONDS)

    def future_message(i: int) -> str:
        hint = (
            " (milliseconds? send epoch seconds)"
            if ts[i] > _LOOKS_LIKE_MS
            else " (bar times are the bar's open time in UTC)"
        )
        return f"{_iso(ts[i])} is {int(ts[i] - now_s):,} s in the future; now is {_iso(now_s)}{hint}"

    problems.add_mask(future, field, future_message)
    if timeframe is None:
        return
    check = ts_ok & (ts >= 0) & ~future
    # Per bar: with the server's zone, each bar's own offset (a day starts at the server's
    # midnight, whichever offset is in force).
    local = ts + offset_s
    if zone:
        where = f" server time ({zone})"
    else:
        where = f" (broker time UTC{int(offset_s) / 3600:+g})" if offset_s else " UTC"
    if timeframe == "MN1":
        as_dt = np.where(check, local, 0).astype("datetime64[s]")
        bad = check & (as_dt.astype("datetime64[M]").astype("datetime64[s]") != as_dt)
        rule = f"MN1 bars open on the 1st of the month at 00:00{where}"
    elif timeframe == "W1":
        bad = check & ((local - _FIRST_SUNDAY) % TIMEFRAME_SECONDS["W1"] != 0)
        rule = f"W1 bars open on Sunday at 00:00{where}, as MT5's weeks do"
    else:
        seconds = TIMEFRAME_SECONDS[timeframe]
        bad = check & (local % seconds != 0)
        rule = {
            "D1": f"D1 bars open at 00:00{where}",
            "H4": f"H4 bars open at 00:00, 04:00, 08:00, ...{where}",
        }.get(timeframe, f"{timeframe} bars open on whole multiples of {seconds // 60} minute(s)")
    problems.add_mask(bad, field, lambda i: f"{_iso(ts[i])} is not a bar open time: {rule}")


def validate_candles(
    symbol: str,
    timeframe: str,
    candles: list[dict] | pd.DataFrame,
    *,
    now: datetime | None = None,
    utc_offset_hours: float = 0.0,
    server_zone: ServerZone | None = None,
) -> CandleBatch:
    """Check a batch column-wise; return it deduplicated (last wins) and sorted by ts.

    Raises CandleValidationError naming each bad row and field; nothing is stored then.
    `server_zone`: the times are the trade server's clock, converted here bar by bar
    (:mod:`mt5_pipeline.server_time`); the batch then carries each bar's offset.
    """
    batch, _ = _validate(
        symbol, timeframe, candles, now=now, utc_offset_hours=utc_offset_hours, server_zone=server_zone, partial=False
    )
    return batch


def _validate(
    symbol: str,
    timeframe: str,
    candles: list[dict] | pd.DataFrame,
    *,
    now: datetime | None,
    utc_offset_hours: float,
    server_zone: ServerZone | None,
    partial: bool,
) -> tuple[CandleBatch, _Problems]:
    """validate_candles; with `partial`, rows with problems are dropped (and left in the
    returned problems) instead of rejecting the batch. Batch-level problems always raise."""
    now = _now(now)
    problems = _Problems()
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
        problems.batch.append(FieldError("symbol", f"must be 1-32 letters, digits or . _ # -, got {symbol!r}"))
    known_tf = isinstance(timeframe, str) and timeframe in TIMEFRAME_SECONDS
    if not known_tf:
        problems.batch.append(FieldError("timeframe", f"must be one of {', '.join(TIMEFRAMES)}, got {timeframe!r}"))

    n, ts, ts_ok, values, reported = _extract(candles, problems)
    time_field = "ts" if isinstance(candles, pd.DataFrame) and "time" not in candles.columns else "time"
    _check_values(values, reported, problems)
    offsets: np.ndarray | int = round(utc_offset_hours * 3600)
    zone_name = ""
    if server_zone is not None:
        server = ts
        ts, converted = server_zone.to_utc(np.where(ts_ok, server, 0))
        skipped = ts_ok & ~converted
        problems.add_mask(
            skipped,
            time_field,
            lambda i: f"server time {_iso(server[i])} does not exist in {server_zone} (its clocks skip that hour)",
        )
        ts_ok = ts_ok & converted
        offsets = np.where(ts_ok, server - ts, 0)
        zone_name = str(server_zone)
    _check_times(
        ts, ts_ok, time_field, timeframe if known_tf else None, int(now.timestamp()), offsets, problems, zone_name
    )
    if problems.batch or not partial:
        problems.raise_if_any()
    good = ~problems.bad_rows(n) if partial else np.ones(n, dtype=bool)

    # Last one wins: a stable sort keeps input order among equal times; keep each run's last.
    order = np.argsort(ts, kind="stable")
    order = order[good[order]]
    sorted_ts = ts[order]
    keep = order[np.append(sorted_ts[1:] != sorted_ts[:-1], True)] if len(order) else order
    row_offsets = np.broadcast_to(np.asarray(offsets, dtype=np.int64), (n,))
    batch = CandleBatch(
        symbol=symbol,
        timeframe=timeframe,
        received=n,
        ts=ts[keep],
        open=values["open"][keep],
        high=values["high"][keep],
        low=values["low"][keep],
        close=values["close"][keep],
        tick_volume=values["tick_volume"][keep].astype(np.int64),
        spread=values["spread"][keep].astype(np.int64),
        real_volume=values["real_volume"][keep].astype(np.int64),
        source_rows=keep,
        utc_offset_s=row_offsets[keep].copy(),
    )
    return batch, problems


def _now(now: datetime | None) -> datetime:
    # Stricter than clock.resolve_now: a naive `now` here is a caller's mistake, not UTC.
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return resolve_now(now)


# ---------------------------------------------------------------------------------------
# Storing
# ---------------------------------------------------------------------------------------


def ingest_candles(
    database_url: str,
    symbol: str,
    timeframe: str,
    candles: list[dict] | pd.DataFrame,
    *,
    now: datetime | None = None,
    utc_offset_hours: float = 0.0,
    digits: int | None = None,
    point: float | None = None,
    max_jump: float | None = DEFAULT_MAX_JUMP,
    server_time_zone: ServerZone | str | None = None,
    record_offset: bool = False,
    partial: bool = False,
) -> IngestResult:
    """Validate `candles` and upsert them in one transaction; see the module docstring.

    `candles`: MqlRates dicts (time, open, high, low, close, tick_volume, spread?,
    real_volume?) or a DataFrame with those columns (``time`` or ``ts``).
    `utc_offset_hours`: the broker's UTC offset, for where H4/D1/W1/MN1 bars begin.
    `server_time_zone`: the times are the trade server's clock in this zone
    (:mod:`mt5_pipeline.server_time`); each bar is converted with the offset in force at
    it, and that offset is recorded. `record_offset`: the times are UTC, converted by the
    caller with `utc_offset_hours`; record that offset. Either way a bar whose stored
    version was converted with another offset is refused (it would replace a bar an hour
    away), never overwritten.
    `now`: the clock for validation and, when given, the base of the ingest stamp.
    `digits` / `point`: what the EA says about the instrument (MT5's SYMBOL_DIGITS and
    SYMBOL_POINT), kept in ``symbols`` for its pip size (mt5_pipeline.market.pips).
    `max_jump`: PRICE_MAX_JUMP; a bar further than this factor from the level of the bars
    around it is refused (None or 0: no such check).
    `partial`: store the good rows and report the bad ones (``rejected``, ``errors``)
    instead of rejecting the whole batch; problems with the batch itself (symbol,
    timeframe, instrument) still reject it.
    """
    from mt5_pipeline.market.pips import check_instrument
    from mt5_pipeline.server_time import parse_zone
    from mt5_pipeline.storage.symbols import record_instrument

    stamp_base = None if now is None else _now(now)
    now = _now(now)
    instrument_errors = [FieldError(field, message) for field, message in check_instrument(digits, point)]
    zone = parse_zone(server_time_zone) if isinstance(server_time_zone, str) else server_time_zone
    try:
        batch, problems = _validate(
            symbol,
            timeframe,
            candles,
            now=now,
            utc_offset_hours=utc_offset_hours,
            server_zone=zone,
            partial=partial and not instrument_errors,
        )
    except CandleValidationError as exc:
        if instrument_errors:
            raise CandleValidationError(instrument_errors + exc.errors, exc.total + len(instrument_errors)) from None
        raise
    if instrument_errors:
        raise CandleValidationError(instrument_errors)
    rejected = int(problems.bad_rows(batch.received).sum()) if partial else 0
    errors = problems.report() if rejected else []
    later: list[tuple[np.ndarray, list[FieldError], int]] = []
    if len(batch) and max_jump:
        later.append(_jump_errors(database_url, batch, max_jump))
    runs: list = []
    if len(batch) and (zone is not None or record_offset):
        from mt5_pipeline.storage.offsets import offset_runs

        runs = offset_runs(database_url, symbol, timeframe)
        later.append(_offset_errors(batch, runs))
    for bad, found, total in later:
        if not total:
            continue
        if not partial:
            raise CandleValidationError(found, total)
        keep = np.ones(len(batch), dtype=bool)
        keep[bad] = False
        batch = batch.take(keep)
        rejected += total
        errors = errors + found
    if len(errors) > MAX_REPORTED_ERRORS:
        errors = errors[:MAX_REPORTED_ERRORS] + [
            FieldError("candles", f"{rejected:,} rows refused in all; the first {MAX_REPORTED_ERRORS} errors are shown")
        ]
    record_instrument(database_url, symbol, digits, point)
    if len(batch) == 0:
        return IngestResult(batch.received, 0, 0, 0, None, 0, rejected, tuple(errors))
    inserted, updated, first_us = store_batch(database_url, batch, stamp_base, clock=now)
    if zone is not None or record_offset:
        from mt5_pipeline.storage.offsets import batch_runs, record_runs

        assert batch.utc_offset_s is not None
        record_runs(database_url, symbol, timeframe, batch_runs(runs, batch.ts, batch.utc_offset_s))
    unique = len(batch)
    first = from_epoch(first_us / 1_000_000) if first_us is not None else None
    duplicates = batch.received - rejected - unique
    return IngestResult(
        batch.received,
        inserted,
        updated,
        unique - inserted - updated,
        first,
        max(0, duplicates),
        rejected,
        tuple(errors),
    )


def _offset_errors(batch: CandleBatch, runs: list) -> tuple[np.ndarray, list[FieldError], int]:
    """Bars whose stored version was converted from server time with another offset."""
    from mt5_pipeline.storage.offsets import NO_RECORD, stored_offsets

    assert batch.utc_offset_s is not None
    stored = stored_offsets(runs, batch.ts)
    bad = np.flatnonzero((stored != NO_RECORD) & (stored != batch.utc_offset_s))
    rows = batch.source_rows if batch.source_rows is not None else np.arange(len(batch))
    errors = [
        FieldError(
            f"candles[{int(rows[i])}].time",
            f"the bar at {_iso(int(batch.ts[i]))} was stored converted from server time at UTC{int(stored[i]) / 3600:+g}; this one was "
            f"converted at UTC{int(batch.utc_offset_s[i]) / 3600:+g}, so it is a different bar an hour away: refused, the stored bar kept. "
            "The server changed its offset (daylight saving): name its time zone (BRIDGE_SERVER_TIME_ZONE, or server_time_zone)",
        )
        for i in bad[:MAX_REPORTED_ERRORS]
    ]
    return bad, errors, len(bad)


def _factor(log_ratio: float) -> str:
    # A 5e-324 price is 1e300 times below anything: exp() would overflow.
    return f"{math.exp(log_ratio):,.3g}" if log_ratio < 700 else "more than 1e300"


def _jump_errors(database_url: str, batch: CandleBatch, max_jump: float) -> tuple[np.ndarray, list[FieldError], int]:
    """Reject bars far from the level of their neighbours (stored bars before the batch
    included): a 1e6 in a EURUSD series is a bad tick, and would ride in every rolling
    feature for the next 50 bars. A trend, however long, moves the level with it.

    Costs one small indexed read; the rolling median runs only when some step between
    consecutive closes (or a bar's own range) exceeds the square root of the factor.
    """
    limit = math.log(max_jump)
    context = np.log(
        closes_before(database_url, batch.symbol, batch.timeframe, from_epoch(int(batch.ts[0])), JUMP_WINDOW // 2)
    )
    log_close = np.log(batch.close)
    steps = np.abs(np.diff(np.concatenate([context, log_close])))
    ranges = np.log(batch.high) - np.log(batch.low)
    # Half the limit: two consecutive steps just under it could still leave a bar past it.
    if (steps.size == 0 or steps.max() <= limit / 2) and ranges.max() <= limit / 2:
        return np.zeros(0, dtype=np.int64), [], 0
    level = (
        pd.Series(np.concatenate([context, log_close]))
        .rolling(JUMP_WINDOW, center=True, min_periods=1)
        .median()
        .to_numpy()[len(context) :]
    )
    above = np.log(batch.high) - level
    below = level - np.log(batch.low)
    bad = np.flatnonzero((above > limit) | (below > limit))
    if not len(bad):
        return bad, [], 0
    rows = batch.source_rows if batch.source_rows is not None else np.arange(len(batch))
    errors = []
    for i in bad[:MAX_REPORTED_ERRORS]:
        high_side = above[i] >= below[i]
        field, price = ("high", batch.high[i]) if high_side else ("low", batch.low[i])
        factor = _factor(above[i] if high_side else below[i])
        errors.append(
            FieldError(
                f"candles[{int(rows[i])}].{field}",
                f"{_num(price)} is {factor} times {'above' if high_side else 'below'} the level of the bars around it "
                f"({math.exp(level[i]):.6g}); more than PRICE_MAX_JUMP={max_jump:g} is taken for a bad tick",
            )
        )
    if len(bad) > MAX_REPORTED_ERRORS:
        errors.append(
            FieldError("candles", f"{len(bad) - MAX_REPORTED_ERRORS:,} more errors not shown ({len(bad):,} in all)")
        )
    return bad, errors, len(bad)
