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

import csv
import io
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mt5_pipeline.market.candle_problems import CandleValidationError
from mt5_pipeline.market.ingest import IngestResult, ingest_candles
from mt5_pipeline.market.mt5_file import (
    BadLines,
    Layout,
    LayoutError,
    chunk_frame,
    open_text,
    read_layout,
    sniff_encoding,
)
from mt5_pipeline.server_time import ZoneError, parse_zone
from mt5_pipeline.settings import Settings

_ENCODING_NAMES = {"utf-8": "UTF-8", "utf-16-le": "UTF-16 LE", "utf-16-be": "UTF-16 BE"}


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
    server_time_zone = _zone_name(server_time_zone, tz_offset_hours, report)
    if not path.is_file():
        raise ImportError_(f"{path}: no such file", report)
    if chunk_rows <= 0:
        raise ImportError_(f"chunk_rows must be positive, got {chunk_rows}", report)
    started = time.perf_counter()
    size = path.stat().st_size
    with path.open("rb") as probe:
        encoding, bom = sniff_encoding(probe.read(4))
    report.encoding = _ENCODING_NAMES[encoding]
    bar = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc=f"{symbol} {timeframe}",
        file=sys.stderr,
        disable=not progress,
        leave=False,
    )
    try:
        text, layout = _open_at_data(path, encoding, bom, bar, report)
        report.format = layout.format
        with text:
            chunks = _ChunkImport(settings, report, layout, bar, tz_offset_hours, server_time_zone)
            chunks.run(text, chunk_rows)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - started
    return report


def _zone_name(server_time_zone: str | None, tz_offset_hours: float, report: ImportReport) -> str | None:
    """The server's zone in its normal name (None: none given); ImportError_ when unreadable."""
    if server_time_zone is None:
        return None
    try:
        name = parse_zone(server_time_zone).name
    except ZoneError as exc:
        raise ImportError_(f"--server-time-zone: {exc}", report) from None
    if tz_offset_hours:
        raise ImportError_("give --server-time-zone or --tz-offset, not both", report)
    return name


def _open_at_data(
    path: Path, encoding: str, bom: int, bar: tqdm, report: ImportReport
) -> tuple[io.TextIOWrapper, Layout]:
    """The file's text positioned at its first data line, and its layout (read from line 1)."""
    text = open_text(path, encoding, bom, bar)
    first = text.readline()
    if not first.strip():
        text.close()
        raise ImportError_(f"{path}: the file is empty (line 1 has no header)", report)
    try:
        layout = read_layout(first)
    except LayoutError as exc:
        text.close()
        raise ImportError_(f"{path}: {exc}", report) from None
    if not layout.header:  # the first line is data: start again from the top
        text.close()
        bar.reset(total=path.stat().st_size)
        text = open_text(path, encoding, bom, bar)
    return text, layout


class _ChunkImport:
    """The file's chunks, each validated and stored in one transaction through the ingest core.

    One chunk is stored (on a worker thread, which waits on PostgreSQL with the GIL
    released) while the next is parsed: the file's parsing hides behind the database's
    work instead of adding to it. Chunks are still stored in order and one at a time, so
    a failure leaves every earlier chunk stored and no later one.
    """

    def __init__(
        self,
        settings: Settings,
        report: ImportReport,
        layout: Layout,
        bar: tqdm,
        tz_offset_hours: float,
        server_time_zone: str | None,
    ) -> None:
        self.settings = settings
        self.report = report
        self.layout = layout
        self.bar = bar
        self.tz_offset_hours = tz_offset_hours
        self.server_time_zone = server_time_zone
        self.next_line = 2 if layout.header else 1
        self.in_flight: tuple[Future[IngestResult], pd.DataFrame, np.ndarray] | None = None

    def run(self, text: io.TextIOWrapper, chunk_rows: int) -> None:
        layout = self.layout
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
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-csv") as pool:
            while True:
                try:
                    chunk = next(reader)
                except StopIteration:
                    break
                except (pd.errors.ParserError, ValueError) as exc:
                    self.settle()
                    raise _parser_failure(self.report, exc, self.next_line) from None
                self.submit(pool, chunk)
            self.settle()

    def submit(self, pool: ThreadPoolExecutor, chunk: pd.DataFrame) -> None:
        """Parse `chunk` into the ingest core's frame, wait for the chunk before it, store this one."""
        report = self.report
        chunk = chunk[[n for n in self.layout.names if n]]
        lines = self.next_line + np.arange(len(chunk))
        self.next_line += len(chunk)
        blank = chunk.isna().all(axis=1).to_numpy()
        if blank.any():
            chunk, lines = chunk.loc[~blank], lines[~blank]
        if chunk.empty:
            return
        if self.server_time_zone is not None and "date" not in chunk.columns:
            raise ImportError_(
                "--server-time-zone is for MT5 exports (Date/Time columns in server time); this file's times say "
                "their own zone",
                report,
            )
        try:
            # With a zone the frame keeps the server's clock; ingest converts it bar by bar.
            frame = chunk_frame(chunk.reset_index(drop=True), self.layout, self.tz_offset_hours, lines)
        except BadLines as exc:
            self.settle()
            raise _chunk_failure(report, int(lines[0]), int(lines[-1]), exc.problems, exc.total) from None
        self.settle()
        future = pool.submit(
            ingest_candles,
            self.settings.database_url,
            report.symbol,
            report.timeframe,
            frame,
            utc_offset_hours=self.tz_offset_hours,
            max_jump=self.settings.price_max_jump,
            server_time_zone=self.server_time_zone,
        )
        self.in_flight = (future, frame, lines)

    def settle(self) -> None:
        """Wait for the chunk being stored and count it; ImportError_ when it was refused."""
        if self.in_flight is None:
            return
        future, frame, lines = self.in_flight
        self.in_flight = None
        try:
            result = future.result()
        except CandleValidationError as exc:
            raise _validation_failure(self.report, exc, self.layout, lines) from None
        _account(self.report, result, frame)
        self.bar.set_postfix(rows=f"{self.report.rows_read:,}", refresh=False)


# ---------------------------------------------------------------------------------------
# Failures: which line, what was wrong, what stays stored
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
            f"the {report.rows_read:,} rows before line {first_line:,} ({report.chunks} chunk(s)) were imported and "
            "stay. "
        )
    else:
        kept = f"Nothing was imported (lines {first_line:,}-{last_line:,} were checked as one chunk). "
    return ImportError_(
        f"{report.path}: {shown}{more}. {kept}Fix the file and run the import again: rows already stored are left "
        "unchanged.",
        report,
    )


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
    report: ImportReport, exc: CandleValidationError, layout: Layout, lines: np.ndarray
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
        f"{report.path}: {where}{detail}. {kept} Fix the line and run the import again: rows already stored are left "
        "unchanged.",
        report,
    )
