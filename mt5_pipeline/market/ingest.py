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
* Storing (the upsert, the stamp, the NOTIFY for the live worker, the offset runs, the
  instrument) and the reads before a batch are :mod:`mt5_pipeline.storage.series_write`
  (on PostgreSQL one transaction under the series lock); this module validates and
  decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from mt5_pipeline.clock import from_epoch
from mt5_pipeline.market.candle_checks import (
    FUTURE_SKEW_SECONDS,
    MAX_PRICE,
    SYMBOL_PATTERN,
    TIMEFRAMES,
    aware_now,
    validate_batch,
    validate_candles,
)
from mt5_pipeline.market.candle_problems import (
    MAX_REPORTED_ERRORS,
    OPTIONAL_FIELDS,
    PRICE_FIELDS,
    VALUE_FIELDS,
    VOLUME_FIELDS,
    CandleValidationError,
    FieldError,
    Problems,
    show_number,
    show_time,
)
from mt5_pipeline.market.pips import check_instrument
from mt5_pipeline.server_time import ServerZone, parse_zone
from mt5_pipeline.storage.candles import CandleBatch
from mt5_pipeline.storage.offsets import NO_RECORD, Run, batch_runs, stored_offsets
from mt5_pipeline.storage.series_write import series_write

# The batch's rules and error types live beside it; callers import them from here, the
# market's front door.
__all__ = [
    "DEFAULT_MAX_JUMP",
    "FUTURE_SKEW_SECONDS",
    "JUMP_WINDOW",
    "MAX_PRICE",
    "MAX_REPORTED_ERRORS",
    "OPTIONAL_FIELDS",
    "PRICE_FIELDS",
    "SYMBOL_PATTERN",
    "TIMEFRAMES",
    "VALUE_FIELDS",
    "VOLUME_FIELDS",
    "CandleValidationError",
    "FieldError",
    "IngestResult",
    "ingest_candles",
    "validate_candles",
]

# A bar this many times above (or below) the level of the bars around it is a bad tick,
# not a market move: rejected (PRICE_MAX_JUMP overrides; see _jump_errors).
DEFAULT_MAX_JUMP = 10.0
# The level a bar is compared with: the median close of this many bars centred on it,
# the stored bars just before the batch included.
JUMP_WINDOW = 21

# Rows refused by a check against the stored bars: (their indices in the batch, the
# errors shown, how many in all).
Refusal = tuple[np.ndarray, list[FieldError], int]


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
    stamp_base = None if now is None else aware_now(now)
    now = aware_now(now)
    instrument_errors = [FieldError(field, message) for field, message in check_instrument(digits, point)]
    zone = parse_zone(server_time_zone) if isinstance(server_time_zone, str) else server_time_zone
    batch, problems = _validate_with_instrument(
        symbol, timeframe, candles, now, utc_offset_hours, zone, instrument_errors, partial=partial
    )
    rejected = int(problems.bad_rows(batch.received).sum()) if partial else 0
    errors = problems.report() if rejected else []
    recording = zone is not None or record_offset
    with series_write(database_url, symbol, timeframe, stamp_base=stamp_base) as write:
        later: list[Refusal] = []
        runs: list[Run] = []
        if len(batch) and (max_jump or recording):
            before = write.read(batch, JUMP_WINDOW // 2 if max_jump else 0, runs=recording)
            if max_jump:
                later.append(_jump_errors(before.closes, batch, max_jump))
            if recording:
                runs = before.runs
                later.append(_offset_errors(batch, runs))
        batch, rejected, errors = _drop_refused(batch, later, rejected, errors, partial=partial)
        write.record_instrument(digits, point)
        if len(batch) == 0:
            return IngestResult(batch.received, 0, 0, 0, None, 0, rejected, tuple(errors))
        inserted, updated, first_us = write.store(batch, clock=now)
        if recording:
            assert batch.utc_offset_s is not None
            write.record_runs(batch_runs(runs, batch.ts, batch.utc_offset_s))
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


def _drop_refused(
    batch: CandleBatch, refusals: list[Refusal], rejected: int, errors: list[FieldError], *, partial: bool
) -> tuple[CandleBatch, int, list[FieldError]]:
    """The batch without the refused rows, the count of rows refused and the errors shown
    (capped); without `partial`, the first refusal rejects the whole batch.

    Every refusal's row positions refer to `batch` as given, so the rows are dropped once,
    together: dropping one refusal's rows first would shift the next one's positions onto
    good rows. A row refused twice counts once."""
    refused = np.zeros(len(batch), dtype=bool)
    for bad, found, total in refusals:
        if not total:
            continue
        if not partial:
            raise CandleValidationError(found, total)
        refused[bad] = True
        errors = errors + found
    if refused.any():
        batch = batch.take(~refused)
        rejected += int(refused.sum())
    if len(errors) > MAX_REPORTED_ERRORS:
        errors = errors[:MAX_REPORTED_ERRORS] + [
            FieldError("candles", f"{rejected:,} rows refused in all; the first {MAX_REPORTED_ERRORS} errors are shown")
        ]
    return batch, rejected, errors


def _validate_with_instrument(
    symbol: str,
    timeframe: str,
    candles: list[dict] | pd.DataFrame,
    now: datetime,
    utc_offset_hours: float,
    zone: ServerZone | None,
    instrument_errors: list[FieldError],
    *,
    partial: bool,
) -> tuple[CandleBatch, Problems]:
    """validate_batch, with the EA's instrument problems reported first (they always
    reject the batch, a partial ingest too)."""
    try:
        batch, problems = validate_batch(
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
    return batch, problems


def _offset_errors(batch: CandleBatch, runs: list[Run]) -> Refusal:
    """Bars whose stored version was converted from server time with another offset."""
    assert batch.utc_offset_s is not None
    stored = stored_offsets(runs, batch.ts)
    bad = np.flatnonzero((stored != NO_RECORD) & (stored != batch.utc_offset_s))
    rows = batch.source_rows if batch.source_rows is not None else np.arange(len(batch))
    errors = [
        FieldError(
            f"candles[{int(rows[i])}].time",
            f"the bar at {show_time(int(batch.ts[i]))} was stored converted from server time at "
            f"UTC{int(stored[i]) / 3600:+g}; this one was "
            f"converted at UTC{int(batch.utc_offset_s[i]) / 3600:+g}, so it is a different bar an hour away: refused, "
            "the stored bar kept. "
            "The server changed its offset (daylight saving): name its time zone (BRIDGE_SERVER_TIME_ZONE, or "
            "server_time_zone)",
        )
        for i in bad[:MAX_REPORTED_ERRORS]
    ]
    return bad, errors, len(bad)


def _factor(log_ratio: float) -> str:
    # A 5e-324 price is 1e300 times below anything: exp() would overflow.
    return f"{math.exp(log_ratio):,.3g}" if log_ratio < 700 else "more than 1e300"


def _jump_errors(closes_before: np.ndarray, batch: CandleBatch, max_jump: float) -> Refusal:
    """Reject bars far from the level of their neighbours (stored bars before the batch
    included): a 1e6 in a EURUSD series is a bad tick, and would ride in every rolling
    feature for the next 50 bars. A trend, however long, moves the level with it.

    `closes_before`: the closes of the JUMP_WINDOW // 2 stored bars before the batch. The
    rolling median runs only when some step between
    consecutive closes (or a bar's own range) exceeds the square root of the factor.
    """
    limit = math.log(max_jump)
    context = np.log(closes_before)
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
                f"{show_number(price)} is {factor} times {'above' if high_side else 'below'} the level of the bars "
                "around it "
                f"({math.exp(level[i]):.6g}); more than PRICE_MAX_JUMP={max_jump:g} is taken for a bad tick",
            )
        )
    if len(bad) > MAX_REPORTED_ERRORS:
        errors.append(
            FieldError("candles", f"{len(bad) - MAX_REPORTED_ERRORS:,} more errors not shown ({len(bad):,} in all)")
        )
    return bad, errors, len(bad)
