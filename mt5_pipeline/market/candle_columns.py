"""A candle batch as typed columns: MqlRates dicts or a DataFrame in, numpy arrays out.

Each column is converted at once (C-level maps and numpy, no per-row Python code on the
usual all-numbers path), and every value that cannot be a number or a bar time is
reported to the batch's :class:`~mt5_pipeline.market.candle_problems.Problems` with its
row. Times come out as epoch seconds (int64) with a mask of the usable ones; prices and
volumes as float64, NaN where unusable. Rules on the values themselves (high >= low,
alignment, ...) are :mod:`mt5_pipeline.market.candle_checks`.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from mt5_pipeline.market.candle_problems import OPTIONAL_FIELDS, VALUE_FIELDS, FieldError, Problems, describe_type


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


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
    objs: np.ndarray, field: str, problems: Problems, skip: np.ndarray
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
    problems.add_mask(wrong, field, lambda i: f"must be a number, got {describe_type(objs[i])}")
    return out, skip | ~is_num & ~(absent if optional else np.zeros(n, dtype=bool))


def _numbers_from_list(values: list, field: str, problems: Problems, skip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    values: list, column: Callable[[str], list], problems: Problems, skip: np.ndarray
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
    frame_col: pd.Series, field: str, problems: Problems, skip: np.ndarray
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
    objs: np.ndarray, field: str, problems: Problems, skip: np.ndarray
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
        other & ~missing, field, lambda i: f"must be epoch seconds or an ISO 8601 string, got {describe_type(objs[i])}"
    )
    return ts, ok


def _datetimes_to_us(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """Epoch microseconds of tz-aware datetimes, whatever pandas' resolution (s/ms/us/ns)."""
    naive = pd.DatetimeIndex(values).tz_convert("UTC").tz_localize(None)
    return naive.to_numpy().astype("datetime64[us]").view(np.int64)


def _column_times(col: pd.Series, field: str, problems: Problems, skip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def extract_columns(
    candles: list[dict] | pd.DataFrame, problems: Problems
) -> tuple[int, np.ndarray, np.ndarray, dict, dict]:
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
            FieldError("candles", f"expected a list of candles or a DataFrame, got {describe_type(candles)}")
        )
        empty = np.zeros(0, bool)
        return 0, np.zeros(0, np.int64), empty, {f: np.zeros(0) for f in VALUE_FIELDS}, {f: empty for f in VALUE_FIELDS}
    n = len(candles)
    rows: Sequence[Any] = candles
    skip = np.zeros(n, dtype=bool)
    if set(map(type, rows)) != {dict}:
        objs = _object_array(rows, n)
        skip = ~_of_kind(_types(objs), dict)
        problems.add_mask(skip, "", lambda i: f"expected an object with MqlRates fields, got {describe_type(objs[i])}")
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
