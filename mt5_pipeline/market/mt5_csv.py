"""`mt5-pipeline import-csv`: MT5 history files into candles, streamed through the ingest core.

Two formats, told apart by the first line:

* MT5's "Export Bars" (and headerless MT4/MT5 history files): tab- or comma-separated,
  header ``<DATE> <TIME> <OPEN> <HIGH> <LOW> <CLOSE> <TICKVOL> <VOL> <SPREAD>``, dates
  like ``2024.01.02`` and times like ``09:30:00`` (D1 and longer files have no <TIME>).
* A plain CSV with a header of MqlRates names: ``time, open, high, low, close,
  tick_volume, spread, real_volume``; time as epoch seconds or ISO 8601.

MT5 writes UTF-16 LE with a byte-order mark as often as UTF-8; the BOM (or the zero
bytes of UTF-16 without one) decides. Times in the file are the broker's server time;
``--tz-offset H`` (hours ahead of UTC, often 2 or 3) turns them into UTC. ISO times
that carry their own zone (``Z``, ``+02:00``) are taken as they are.

The file is read in chunks (never whole), each chunk validated and stored in one
transaction through :func:`mt5_pipeline.market.ingest.ingest_candles`, so running an import
twice changes nothing and a bad line stops the import with its line number while the
chunks before it stay stored.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from mt5_pipeline.market.ingest import OPTIONAL_FIELDS, CandleValidationError, IngestResult, ingest_candles
from mt5_pipeline.settings import Settings

_MT5_NAMES = {
    "DATE": "date",
    "TIME": "clock",
    "OPEN": "open",
    "HIGH": "high",
    "LOW": "low",
    "CLOSE": "close",
    "TICKVOL": "tick_volume",
    "VOL": "real_volume",
    "SPREAD": "spread",
}
_CSV_NAMES = {
    "time": "time",
    "ts": "time",
    "datetime": "time",
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "tick_volume": "tick_volume",
    "volume": "tick_volume",
    "spread": "spread",
    "real_volume": "real_volume",
}
# Headerless MT4/MT5 history files, by field count.
_HEADERLESS = {
    9: ["date", "clock", "open", "high", "low", "close", "tick_volume", "real_volume", "spread"],
    8: ["date", "open", "high", "low", "close", "tick_volume", "real_volume", "spread"],
    7: ["date", "clock", "open", "high", "low", "close", "tick_volume"],
}
_REQUIRED = ("open", "high", "low", "close", "tick_volume")
_MT5_DATE = re.compile(r"^\d{4}\.\d{2}\.\d{2}$")
_READ_BUFFER = 1 << 20


class ImportError_(Exception):  # noqa: N801 - the CLI's name; the builtin ImportError means something else
    """The file could not be imported; the message names the line and says what was kept."""

    def __init__(self, message: str, report: ImportReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ImportReport:
    path: str
    symbol: str
    timeframe: str
    format: str = ""
    encoding: str = ""
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    chunks: int = 0
    seconds: float = 0.0
    first_ts: datetime | None = None
    last_ts: datetime | None = None

    def describe(self) -> str:
        rate = f", {self.rows_read / self.seconds:,.0f} rows/s" if self.seconds > 0 and self.rows_read else ""
        dups = f", {self.duplicates:,} repeated times (last kept)" if self.duplicates else ""
        span = (
            f", {self.first_ts:%Y-%m-%d %H:%M} .. {self.last_ts:%Y-%m-%d %H:%M} UTC"
            if self.first_ts and self.last_ts
            else ""
        )
        return (
            f"{self.symbol} {self.timeframe} from {Path(self.path).name} ({self.format}, {self.encoding}): "
            f"{self.rows_read:,} rows read in {self.chunks} chunk(s){span}: {self.inserted:,} inserted, "
            f"{self.updated:,} updated, {self.unchanged:,} unchanged{dups} in {self.seconds:.1f} s{rate}"
        )


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


class _ProgressReader(io.RawIOBase):
    """Counts the bytes read for the progress bar (the parser reads ahead; close enough)."""

    def __init__(self, raw: IO[bytes], bar: tqdm) -> None:
        self._raw = raw
        self._bar = bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer) or 0
        self._bar.update(n)
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _sniff_encoding(head: bytes) -> tuple[str, int]:
    """(codec, BOM length) of a file from its first bytes."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8", 3
    if head.startswith(codecs.BOM_UTF16_LE):
        return "utf-16-le", 2
    if head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16-be", 2
    if len(head) >= 4 and head[1] == 0 and head[3] == 0 and head[0] != 0:
        return "utf-16-le", 0
    if len(head) >= 4 and head[0] == 0 and head[2] == 0 and head[1] != 0:
        return "utf-16-be", 0
    return "utf-8", 0


@dataclass(frozen=True)
class _Layout:
    format: str  # "MT5 export" / "MqlRates CSV"
    sep: str
    names: list[str]  # our name per field ("" = ignored)
    shown: dict[str, str]  # our name -> the file's name, for messages
    header: bool


def _layout(first_line: str) -> _Layout:
    line = first_line.strip("\r\n").lstrip("\ufeff")
    sep = "\t" if "\t" in line else (";" if line.count(";") > line.count(",") else ",")
    fields = [f.strip() for f in line.split(sep)]
    if any(f.startswith("<") for f in fields):
        names = [_MT5_NAMES.get(f.strip("<>").upper(), "") for f in fields]
        shown = {name: f for name, f in zip(names, fields, strict=True) if name}
        layout = _Layout("MT5 export", sep, names, shown, True)
        missing = [f"<{k}>" for k, v in _MT5_NAMES.items() if v in ("date", *_REQUIRED) and v not in names]
    elif fields and _MT5_DATE.match(fields[0]):
        names = _HEADERLESS.get(len(fields))
        if names is None:
            raise ImportError_(
                f"line 1: a headerless MT5 history line with {len(fields)} fields; expected 7, 8 or 9: {line[:80]!r}"
            )
        layout = _Layout("MT5 history (no header)", sep, names, {n: n for n in names}, False)
        missing = []
    else:
        names = [_CSV_NAMES.get(f.lower(), "") for f in fields]
        shown = {name: f for name, f in zip(names, fields, strict=True) if name}
        layout = _Layout("MqlRates CSV", sep, names, shown, True)
        missing = [k for k in ("time", *_REQUIRED) if k not in names]
        if len(missing) > 3:
            raise ImportError_(
                "line 1: not a recognised header. Expected MT5's '<DATE>\\t<TIME>\\t<OPEN>\\t<HIGH>\\t<LOW>\\t<CLOSE>\\t<TICKVOL>\\t<VOL>\\t<SPREAD>' "
                f"or MqlRates names 'time,open,high,low,close,tick_volume,spread,real_volume'; got {line[:120]!r}"
            )
    if missing:
        raise ImportError_(f"line 1: the header lacks {', '.join(missing)}: {line[:120]!r}")
    return layout


# ---------------------------------------------------------------------------------------
# One chunk -> a frame for the ingest core
# ---------------------------------------------------------------------------------------


class _BadLines(Exception):
    def __init__(self, problems: list[tuple[int, str]], total: int) -> None:
        super().__init__(problems[0][1] if problems else "bad lines")
        self.problems = problems
        self.total = total


def _collect(problems: list[tuple[np.ndarray, Any]], lines: np.ndarray) -> None:
    """Raise _BadLines with the first few problems in line order."""
    if not problems:
        return
    found: list[tuple[int, str]] = []
    total = 0
    for rows, message in problems:
        total += len(rows)
        found += [(int(lines[r]), message(int(r))) for r in rows[:5]]
    found.sort()
    raise _BadLines(found[:5], total)


def _numbers(chunk: pd.DataFrame, name: str, shown: str, problems: list) -> np.ndarray:
    col = chunk[name]
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(np.isnan(values) & col.notna().to_numpy())
        if len(bad):
            raw = col.to_numpy(dtype=object)
            problems.append((bad, lambda r, raw=raw: f"{shown} is not a number: {str(raw[r])[:30]!r}"))
    empty = np.flatnonzero(col.isna().to_numpy())
    if len(empty):
        if name in OPTIONAL_FIELDS:
            values[empty] = 0.0
        else:
            problems.append((empty, lambda r: f"{shown} is empty"))
    return values


def _mt5_times(chunk: pd.DataFrame, layout: _Layout, problems: list) -> pd.Series:
    # Plain object strings: pandas' string dtype without pyarrow maps a Python function per value.
    date = chunk["date"].astype(object)
    if "clock" in chunk.columns:
        text = date + " " + chunk["clock"].astype(object)
        parsed = pd.to_datetime(text, format="%Y.%m.%d %H:%M:%S", errors="coerce")
        retry = parsed.isna() & text.notna()
        if retry.any():  # older exports write HH:MM
            parsed = parsed.where(~retry, pd.to_datetime(text.where(retry), format="%Y.%m.%d %H:%M", errors="coerce"))
        expected = "a date and time like 2024.01.02 09:30:00"
    else:
        text = date
        parsed = pd.to_datetime(text, format="%Y.%m.%d", errors="coerce")
        expected = "a date like 2024.01.02"
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        raw = text.to_numpy(dtype=object)
        label = layout.shown.get("date", "<DATE>") + (
            "/" + layout.shown.get("clock", "<TIME>") if "clock" in chunk.columns else ""
        )
        problems.append((bad, lambda r: f"{label} {raw[r] if isinstance(raw[r], str) else ''!r} is not {expected}"))
    return parsed


_ZONED = re.compile(r"(?:Z|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)
_DIGITS = re.compile(r"^-?\d+$")
_MAX_EPOCH_S = 10**11  # year 5138: larger numbers are not epoch seconds


def _csv_times(chunk: pd.DataFrame, layout: _Layout, offset: pd.Timedelta, problems: list) -> pd.Series:
    """UTC times of a MqlRates CSV chunk: epoch seconds or ISO 8601 (zone-less = broker time)."""
    col = chunk["time"]
    shown = layout.shown.get("time", "time")
    out = pd.Series(pd.NaT, index=chunk.index, dtype="datetime64[ns, UTC]")
    text = col.astype("string").str.strip()
    epoch = text.str.match(_DIGITS).fillna(False).to_numpy(dtype=bool)
    zoned = text.str.contains(_ZONED).fillna(False).to_numpy(dtype=bool) & ~epoch
    naive = ~epoch & ~zoned & text.notna().to_numpy()
    if epoch.any():
        seconds = pd.to_numeric(text[epoch], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        seconds[~(np.abs(seconds) < _MAX_EPOCH_S)] = np.nan  # out of range (milliseconds?): reported below
        out[epoch] = pd.to_datetime(seconds, unit="s", utc=True) - offset
    if zoned.any():
        out[zoned] = pd.to_datetime(text[zoned], format="ISO8601", utc=True, errors="coerce")
    if naive.any():
        local = pd.to_datetime(text[naive], format="ISO8601", errors="coerce")
        out[naive] = (local - offset).dt.tz_localize("UTC")
    bad = np.flatnonzero(out.isna().to_numpy())
    if len(bad):
        raw = text.to_numpy(dtype=object)
        problems.append(
            (
                bad,
                lambda r: f"{shown} {raw[r] if raw[r] is not pd.NA else ''!r} is not epoch seconds or an ISO 8601 time",
            )
        )
    return out


def _frame(chunk: pd.DataFrame, layout: _Layout, offset_hours: float, lines: np.ndarray) -> pd.DataFrame:
    """The chunk as the ingest core's frame (ts in UTC); raises _BadLines."""
    problems: list = []
    offset = pd.Timedelta(hours=offset_hours)
    if "date" in chunk.columns:
        local = _mt5_times(chunk, layout, problems)
        ts = (local - offset).dt.tz_localize("UTC")
    else:
        ts = _csv_times(chunk, layout, offset, problems)
    frame = pd.DataFrame({"ts": ts.reset_index(drop=True)})
    for name in ("open", "high", "low", "close", "tick_volume", "spread", "real_volume"):
        if name in chunk.columns:
            frame[name] = _numbers(chunk, name, layout.shown.get(name, name), problems)
        else:
            frame[name] = 0.0
    _collect(problems, lines)
    return frame


# ---------------------------------------------------------------------------------------
# The import
# ---------------------------------------------------------------------------------------


def _field_of(loc: str) -> tuple[int | None, str]:
    match = re.match(r"candles\[(\d+)\](?:\.(\w+))?$", loc)
    if match:
        return int(match.group(1)), match.group(2) or ""
    return None, loc.rsplit(".", 1)[-1]


def _chunk_failure(
    report: ImportReport, first_line: int, last_line: int, problems: list[tuple[int, str]], total: int
) -> ImportError_:
    shown = "; ".join(f"line {line}: {message}" for line, message in problems[:5])
    more = f" ({total - len(problems[:5]):,} more problems in this chunk)" if total > len(problems[:5]) else ""
    if report.chunks:
        kept = (
            f"lines {first_line:,}-{last_line:,} were not imported (the database is as it was for them); "
            f"the {report.rows_read:,} rows before line {first_line:,} ({report.chunks} chunk(s)) were imported and stay. "
        )
    else:
        kept = f"Nothing was imported (lines {first_line:,}-{last_line:,} were checked as one chunk). "
    return ImportError_(
        f"{report.path}: {shown}{more}. {kept}Fix the file and run the import again: rows already stored are left unchanged.",
        report,
    )


def import_file(
    settings: Settings,
    path: str | Path,
    *,
    symbol: str,
    timeframe: str,
    tz_offset_hours: float = 0.0,
    chunk_rows: int = 200_000,
    progress: bool = True,
    server_time_zone: str | None = None,
) -> ImportReport:
    """Import an MT5 export or MqlRates CSV file into candles; see the module docstring.

    `server_time_zone` (instead of `tz_offset_hours`): an MT5 export's times are the trade
    server's clock in this zone (mt5_pipeline.server_time), converted bar by bar with its
    daylight-saving rules; one offset is wrong for half of a long history."""
    path = Path(path)
    report = ImportReport(str(path), symbol, timeframe)
    if server_time_zone is not None:
        from mt5_pipeline.server_time import ZoneError, parse_zone

        try:
            server_time_zone = parse_zone(server_time_zone).name
        except ZoneError as exc:
            raise ImportError_(f"--server-time-zone: {exc}", report) from None
        if tz_offset_hours:
            raise ImportError_("give --server-time-zone or --tz-offset, not both", report)
    if not path.is_file():
        raise ImportError_(f"{path}: no such file", report)
    if chunk_rows <= 0:
        raise ImportError_(f"chunk_rows must be positive, got {chunk_rows}", report)
    started = time.perf_counter()
    size = path.stat().st_size
    with path.open("rb") as probe:
        encoding, bom = _sniff_encoding(probe.read(4))
    report.encoding = {"utf-8": "UTF-8", "utf-16-le": "UTF-16 LE", "utf-16-be": "UTF-16 BE"}[encoding]

    bar = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc=f"{symbol} {timeframe}",
        file=sys.stderr,
        disable=not progress,
        leave=False,
    )

    def open_text() -> io.TextIOWrapper:
        raw = io.BufferedReader(_ProgressReader(path.open("rb", buffering=0), bar), buffer_size=_READ_BUFFER)
        raw.read(bom)
        return io.TextIOWrapper(raw, encoding=encoding, newline="")

    try:
        text = open_text()
        first = text.readline()
        if not first.strip():
            text.close()
            raise ImportError_(f"{path}: the file is empty (line 1 has no header)", report)
        try:
            layout = _layout(first)
        except ImportError_ as exc:
            text.close()
            raise ImportError_(f"{path}: {exc}", report) from None
        report.format = layout.format
        if not layout.header:  # the first line is data: start again from the top
            text.close()
            bar.reset(total=size)
            text = open_text()
        with text:
            next_line = 2 if layout.header else 1
            reader = pd.read_csv(
                text,
                sep=layout.sep,
                header=None,
                # Every field named (no usecols): a line with too many fields must be an error, not trimmed.
                names=[n or f"_ignored{i}" for i, n in enumerate(layout.names)],
                dtype={n: object for n in ("date", "clock") if n in layout.names},
                chunksize=chunk_rows,
                skip_blank_lines=False,  # keeps row i on line next_line + i
                quoting=csv.QUOTE_NONE if layout.format != "MqlRates CSV" else csv.QUOTE_MINIMAL,
                engine="c",
            )
            # One chunk is stored (on a worker thread, which waits on PostgreSQL with the
            # GIL released) while the next is parsed: the file's parsing hides behind the
            # database's work instead of adding to it. Chunks are still stored in order and
            # one at a time, so a failure leaves every earlier chunk stored and no later one.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-csv") as pool:
                in_flight: tuple[Future, pd.DataFrame, np.ndarray] | None = None

                def settle() -> None:
                    nonlocal in_flight
                    if in_flight is None:
                        return
                    future, frame, lines = in_flight
                    in_flight = None
                    try:
                        result = future.result()
                    except CandleValidationError as exc:
                        raise _validation_failure(report, exc, layout, lines) from None
                    _account(report, result, frame)
                    bar.set_postfix(rows=f"{report.rows_read:,}", refresh=False)

                while True:
                    try:
                        chunk = next(reader)
                    except StopIteration:
                        break
                    except (pd.errors.ParserError, ValueError) as exc:
                        settle()
                        raise _parser_failure(report, exc, next_line) from None
                    chunk = chunk[[n for n in layout.names if n]]
                    lines = next_line + np.arange(len(chunk))
                    next_line += len(chunk)
                    blank = chunk.isna().all(axis=1).to_numpy()
                    if blank.any():
                        chunk, lines = chunk.loc[~blank], lines[~blank]
                    if chunk.empty:
                        continue
                    if server_time_zone is not None and "date" not in chunk.columns:
                        raise ImportError_(
                            "--server-time-zone is for MT5 exports (Date/Time columns in server time); this file's times say their own zone",
                            report,
                        )
                    try:
                        # With a zone the frame keeps the server's clock; ingest converts it bar by bar.
                        frame = _frame(chunk.reset_index(drop=True), layout, tz_offset_hours, lines)
                    except _BadLines as exc:
                        settle()
                        raise _chunk_failure(report, int(lines[0]), int(lines[-1]), exc.problems, exc.total) from None
                    settle()
                    future = pool.submit(
                        ingest_candles,
                        settings.database_url,
                        symbol,
                        timeframe,
                        frame,
                        utc_offset_hours=tz_offset_hours,
                        max_jump=settings.price_max_jump,
                        server_time_zone=server_time_zone,
                    )
                    in_flight = (future, frame, lines)
                settle()
    finally:
        bar.close()
        report.seconds = time.perf_counter() - started
    return report


def _account(report: ImportReport, result: IngestResult, frame: pd.DataFrame) -> None:
    report.rows_read += len(frame)
    report.inserted += result.inserted
    report.updated += result.updated
    report.unchanged += result.unchanged
    report.duplicates += result.duplicates
    report.chunks += 1
    lo, hi = frame["ts"].min().to_pydatetime(), frame["ts"].max().to_pydatetime()
    report.first_ts = lo if report.first_ts is None else min(report.first_ts, lo)
    report.last_ts = hi if report.last_ts is None else max(report.last_ts, hi)


def _validation_failure(
    report: ImportReport, exc: CandleValidationError, layout: _Layout, lines: np.ndarray
) -> ImportError_:
    problems: list[tuple[int, str]] = []
    batch_level: list[str] = []
    for error in exc.errors:
        row, field = _field_of(error.loc)
        if row is None:
            if error.loc in ("symbol", "timeframe"):
                batch_level.append(f"--{error.loc}: {error.message}")
            elif error.loc != "candles":
                batch_level.append(f"{error.loc}: {error.message}")
            continue
        name = "time" if field in ("ts", "time") else field
        shown = layout.shown.get(name) or (layout.shown.get("date", "time") if name == "time" else name)
        if name == "time" and "clock" in layout.shown:
            shown = f"{layout.shown['date']}/{layout.shown['clock']}"
        problems.append((int(lines[row]), f"{shown} {error.message}" if field else error.message))
    if batch_level:
        return ImportError_(
            f"{report.path}: " + "; ".join(batch_level) + ". Nothing from this file was imported.", report
        )
    return _chunk_failure(report, int(lines[0]), int(lines[-1]), problems, exc.total)


def _parser_failure(report: ImportReport, exc: Exception, next_line: int) -> ImportError_:
    message = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
    match = re.search(r"line (\d+)", message)
    # The tokenizer counts lines from where pandas started reading: after the header.
    where = (
        f"line {int(match.group(1)) + (1 if report.format != 'MT5 history (no header)' else 0)}: "
        if match
        else f"near line {next_line}: "
    )
    detail = re.sub(r"^Error tokenizing data\. C error: ", "", message)
    detail = re.sub(r" in line \d+", "", detail)
    if report.chunks:
        kept = (
            f"The chunk holding it was not imported (the database is as it was for it); the {report.rows_read:,} rows "
            f"before it ({report.chunks} chunk(s)) were imported and stay."
        )
    else:
        kept = "Nothing was imported."
    return ImportError_(
        f"{report.path}: {where}{detail}. {kept} Fix the line and run the import again: rows already stored are left unchanged.",
        report,
    )
