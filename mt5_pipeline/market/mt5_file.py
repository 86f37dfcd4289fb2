"""Reading an MT5 history file: its encoding, its layout, and each chunk as the ingest core's frame.

The formats (MT5's "Export Bars", headerless MT4/MT5 history, MqlRates CSV) are
described in :mod:`mt5_pipeline.market.mt5_csv`, which drives the import. Here a chunk
of raw fields becomes a frame of UTC times and numbers; a line that cannot be read
raises :class:`BadLines` naming it.
"""

from __future__ import annotations

import codecs
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from mt5_pipeline.market.candle_problems import OPTIONAL_FIELDS

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


class LayoutError(ValueError):
    """The first line is no header this importer knows; the message says what it expected."""


class ProgressReader(io.RawIOBase):
    """Counts the bytes read for the progress bar (the parser reads ahead; close enough)."""

    def __init__(self, raw: io.RawIOBase, bar: tqdm) -> None:
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


def open_text(path: Path, encoding: str, bom: int, bar: tqdm) -> io.TextIOWrapper:
    """The file as text from its first character (past the BOM), counting bytes on `bar`."""
    raw = io.BufferedReader(ProgressReader(path.open("rb", buffering=0), bar), buffer_size=_READ_BUFFER)
    raw.read(bom)
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def sniff_encoding(head: bytes) -> tuple[str, int]:
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
class Layout:
    format: str  # "MT5 export" / "MqlRates CSV"
    sep: str
    names: list[str]  # our name per field ("" = ignored)
    shown: dict[str, str]  # our name -> the file's name, for messages
    header: bool


def read_layout(first_line: str) -> Layout:
    line = first_line.strip("\r\n").lstrip("\ufeff")
    sep = "\t" if "\t" in line else (";" if line.count(";") > line.count(",") else ",")
    fields = [f.strip() for f in line.split(sep)]
    if any(f.startswith("<") for f in fields):
        names = [_MT5_NAMES.get(f.strip("<>").upper(), "") for f in fields]
        shown = {name: f for name, f in zip(names, fields, strict=True) if name}
        layout = Layout("MT5 export", sep, names, shown, True)
        missing = [f"<{k}>" for k, v in _MT5_NAMES.items() if v in ("date", *_REQUIRED) and v not in names]
    elif fields and _MT5_DATE.match(fields[0]):
        headerless = _HEADERLESS.get(len(fields))
        if headerless is None:
            raise LayoutError(
                f"line 1: a headerless MT5 history line with {len(fields)} fields; expected 7, 8 or 9: {line[:80]!r}"
            )
        layout = Layout("MT5 history (no header)", sep, headerless, {n: n for n in headerless}, False)
        missing = []
    else:
        names = [_CSV_NAMES.get(f.lower(), "") for f in fields]
        shown = {name: f for name, f in zip(names, fields, strict=True) if name}
        layout = Layout("MqlRates CSV", sep, names, shown, True)
        missing = [k for k in ("time", *_REQUIRED) if k not in names]
        if len(missing) > 3:
            raise LayoutError(
                "line 1: not a recognised header. Expected MT5's "
                "'<DATE>\\t<TIME>\\t<OPEN>\\t<HIGH>\\t<LOW>\\t<CLOSE>\\t<TICKVOL>\\t<VOL>\\t<SPREAD>' "
                f"or MqlRates names 'time,open,high,low,close,tick_volume,spread,real_volume'; got {line[:120]!r}"
            )
    if missing:
        raise LayoutError(f"line 1: the header lacks {', '.join(missing)}: {line[:120]!r}")
    return layout


class BadLines(Exception):
    def __init__(self, problems: list[tuple[int, str]], total: int) -> None:
        super().__init__(problems[0][1] if problems else "bad lines")
        self.problems = problems
        self.total = total


def _collect(problems: list[tuple[np.ndarray, Any]], lines: np.ndarray) -> None:
    """Raise BadLines with the first few problems in line order."""
    if not problems:
        return
    found: list[tuple[int, str]] = []
    total = 0
    for rows, message in problems:
        total += len(rows)
        found += [(int(lines[r]), message(int(r))) for r in rows[:5]]
    found.sort()
    raise BadLines(found[:5], total)


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


def _mt5_times(chunk: pd.DataFrame, layout: Layout, problems: list) -> pd.Series:
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


def _csv_times(chunk: pd.DataFrame, layout: Layout, offset: pd.Timedelta, problems: list) -> pd.Series:
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
                lambda r: (
                    f"{shown} {raw[r] if isinstance(raw[r], str) else ''!r} is not epoch seconds or an ISO 8601 time"
                ),
            )
        )
    return out


def chunk_frame(chunk: pd.DataFrame, layout: Layout, offset_hours: float, lines: np.ndarray) -> pd.DataFrame:
    """The chunk as the ingest core's frame (ts in UTC); raises BadLines."""
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
