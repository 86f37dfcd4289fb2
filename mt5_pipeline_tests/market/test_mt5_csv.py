"""The MT5 history importer on real-format files, and `mt5-pipeline import-csv` as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from mt5_pipeline.market.mt5_csv import ImportError_, import_file
from mt5_pipeline.storage.candles import read_candles

HEADER = "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>"
START = datetime(2024, 1, 2, 9, 30)  # broker time, as MT5 writes it


def mt5_lines(n: int, start: datetime = START) -> list[str]:
    """Lines as MT5's "Export Bars" writes them for M1."""
    out = []
    for i in range(n):
        t = start + timedelta(minutes=i)
        o = 1.09500 + 0.00010 * (i % 7)
        c = o + 0.00003 * ((i % 3) - 1)
        out.append(
            f"{t:%Y.%m.%d}\t{t:%H:%M:%S}\t{o:.5f}\t{max(o, c) + 0.00005:.5f}\t{min(o, c) - 0.00004:.5f}\t{c:.5f}"
            f"\t{40 + i % 50}\t0\t{i % 4}"
        )
    return out


def write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    text = "\r\n".join(lines) + "\r\n"  # MT5 writes CRLF
    if encoding == "utf-16":
        path.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))  # MT5's UTF-16 LE with BOM
    else:
        path.write_text(text, encoding=encoding, newline="")
    return path


def test_mt5_export_imports_and_a_second_run_changes_nothing(settings, tmp_path):
    path = write(tmp_path / "EURUSD_M1.csv", [HEADER, *mt5_lines(25)])
    report = import_file(settings, path, symbol="EURUSD", timeframe="M1", chunk_rows=10, progress=False)
    assert (report.rows_read, report.inserted, report.updated, report.unchanged, report.chunks) == (25, 25, 0, 0, 3)
    assert report.format == "MT5 export" and report.encoding == "UTF-8"
    assert "25 rows read" in report.describe() and "25 inserted" in report.describe()
    frame = read_candles(settings.database_url, "EURUSD", "M1")
    assert len(frame) == 25
    assert frame["ts"].iloc[0] == pd.Timestamp("2024-01-02 09:30", tz="UTC")
    assert (frame.iloc[0]["open"], frame.iloc[0]["tick_volume"], frame.iloc[1]["spread"]) == (1.095, 40, 1)
    again = import_file(settings, path, symbol="EURUSD", timeframe="M1", chunk_rows=10, progress=False)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 25)
    pd.testing.assert_frame_equal(read_candles(settings.database_url, "EURUSD", "M1"), frame)


def test_utf16_export_with_bom_gives_the_same_bars(settings, tmp_path):
    lines = [HEADER, *mt5_lines(12)]
    import_file(settings, write(tmp_path / "a.csv", lines), symbol="EURUSD", timeframe="M1", progress=False)
    report = import_file(
        settings, write(tmp_path / "b.csv", lines, "utf-16"), symbol="GBPUSD", timeframe="M1", progress=False
    )
    assert report.encoding == "UTF-16 LE" and report.inserted == 12
    utf8, utf16 = (
        read_candles(settings.database_url, s, "M1").drop(columns="ingested_at") for s in ("EURUSD", "GBPUSD")
    )
    pd.testing.assert_frame_equal(utf8, utf16)


def test_tz_offset_turns_broker_time_into_utc(settings, tmp_path):
    path = write(tmp_path / "a.csv", [HEADER, *mt5_lines(3)])
    report = import_file(settings, path, symbol="EURUSD", timeframe="M1", tz_offset_hours=2, progress=False)
    frame = read_candles(settings.database_url, "EURUSD", "M1")
    assert list(frame["ts"]) == [pd.Timestamp("2024-01-02 07:30", tz="UTC") + pd.Timedelta(minutes=i) for i in range(3)]
    assert report.first_ts == datetime(2024, 1, 2, 7, 30, tzinfo=timezone.utc)


def test_daily_export_without_time_column_aligns_to_the_broker_day(settings, tmp_path):
    lines = ["<DATE>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>"]
    lines += [f"2024.01.{d:02d}\t1.10000\t1.10500\t1.09500\t1.10200\t{50000 + d}\t0\t5" for d in (2, 3, 4)]
    path = write(tmp_path / "EURUSD_D1.csv", lines)
    report = import_file(settings, path, symbol="EURUSD", timeframe="D1", tz_offset_hours=2, progress=False)
    assert report.inserted == 3
    frame = read_candles(settings.database_url, "EURUSD", "D1")
    assert frame["ts"].iloc[0] == pd.Timestamp("2024-01-01 22:00", tz="UTC")  # broker midnight at UTC+2


def test_a_bad_line_is_reported_by_number_and_its_chunk_is_not_stored(settings, tmp_path):
    lines = [HEADER, *mt5_lines(30)]
    fields = lines[23].split("\t")  # file line 24
    fields[4] = "1.19999"  # <LOW> above open and close
    lines[23] = "\t".join(fields)
    path = write(tmp_path / "bad.csv", lines)
    with pytest.raises(ImportError_) as info:
        import_file(settings, path, symbol="EURUSD", timeframe="M1", chunk_rows=10, progress=False)
    message = str(info.value)
    assert "line 24: <LOW> must be <= min(open, close)" in message
    assert "lines 22-31 were not imported" in message and "20 rows before line 22" in message
    frame = read_candles(settings.database_url, "EURUSD", "M1")
    assert len(frame) == 20  # the first two chunks stay, the third is not stored at all
    assert info.value.report is not None and info.value.report.rows_read == 20


@pytest.mark.parametrize(
    "line, words",
    [
        ("2024.01.02\t09:40:00\t1.09500\tabc\t1.09490\t1.09500\t40\t0\t1", "line 12: <HIGH> is not a number: 'abc'"),
        (
            "2024.13.02\t09:40:00\t1.09500\t1.09600\t1.09490\t1.09500\t40\t0\t1",
            "line 12: <DATE>/<TIME> '2024.13.02 09:40:00' is not a date and time",
        ),
        ("2024.01.02\t09:40:00\t1.09500\t1.09600\t1.09490\t1.09500\t40\t0\t1\t7", "line 12: Expected 9 fields, saw 10"),
        ("2024.01.02\t09:40:00\t1.09500\t\t1.09490\t1.09500\t40\t0\t1", "line 12: <HIGH> is empty"),
        (
            "2024.01.02\t09:40:30\t1.09500\t1.09600\t1.09490\t1.09500\t40\t0\t1",
            "line 12: <DATE>/<TIME> 2024-01-02T09:40:30Z is not a bar open time",
        ),
    ],
)
def test_each_kind_of_bad_line_names_its_line(settings, tmp_path, line, words):
    lines = [HEADER, *mt5_lines(20)]
    lines[11] = line
    path = write(tmp_path / "bad.csv", lines)
    with pytest.raises(ImportError_) as info:
        import_file(settings, path, symbol="EURUSD", timeframe="M1", progress=False)
    assert words in str(info.value)
    assert "Nothing was imported" in str(info.value)
    assert read_candles(settings.database_url, "EURUSD", "M1").empty


def test_blank_lines_are_skipped_without_shifting_line_numbers(settings, tmp_path):
    lines = [HEADER, *mt5_lines(6)]
    lines.insert(3, "")  # file line 4
    fields = lines[6].split("\t")  # file line 7
    fields[6] = "-1"
    lines[6] = "\t".join(fields)
    path = write(tmp_path / "blank.csv", lines)
    with pytest.raises(ImportError_, match=r"line 7: <TICKVOL> must be >= 0"):
        import_file(settings, path, symbol="EURUSD", timeframe="M1", progress=False)


def test_mqlrates_csv_with_epoch_and_iso_times(settings, tmp_path):
    path = tmp_path / "rates.csv"
    path.write_text(
        "time,open,high,low,close,tick_volume,spread,real_volume\n"
        "1704187800,1.1,1.2,1.0,1.1,5,1,0\n"  # 2024-01-02 09:30 broker time
        "2024-01-02 09:31:00,1.1,1.2,1.0,1.1,5,1,0\n"  # broker time too
        "2024-01-02T07:32:00Z,1.1,1.2,1.0,1.1,5,1,0\n"  # carries its own zone
    )
    report = import_file(settings, path, symbol="EURUSD", timeframe="M1", tz_offset_hours=2, progress=False)
    assert report.format == "MqlRates CSV" and report.inserted == 3
    frame = read_candles(settings.database_url, "EURUSD", "M1")
    assert list(frame["ts"]) == [pd.Timestamp("2024-01-02 07:30", tz="UTC") + pd.Timedelta(minutes=i) for i in range(3)]


def test_unrecognised_files_are_refused_clearly(settings, tmp_path):
    odd = tmp_path / "odd.csv"
    odd.write_text("when;price\n2024;1.1\n")
    with pytest.raises(ImportError_, match="not a recognised header"):
        import_file(settings, odd, symbol="EURUSD", timeframe="M1", progress=False)
    with pytest.raises(ImportError_, match="no such file"):
        import_file(settings, tmp_path / "missing.csv", symbol="EURUSD", timeframe="M1", progress=False)
    partial = write(tmp_path / "partial.csv", ["<DATE>\t<TIME>\t<OPEN>\t<CLOSE>", "2024.01.02\t09:30:00\t1.1\t1.1"])
    with pytest.raises(ImportError_, match="lacks <HIGH>, <LOW>, <TICKVOL>"):
        import_file(settings, partial, symbol="EURUSD", timeframe="M1", progress=False)
    good = write(tmp_path / "good.csv", [HEADER, *mt5_lines(2)])
    with pytest.raises(ImportError_, match="--symbol"):
        import_file(settings, good, symbol="EUR USD", timeframe="M1", progress=False)


def cli(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mt5-pipeline")
    return subprocess.run([str(exe), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_import_csv_command_end_to_end(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MODEL_DIR")}
    env.update(DATABASE_URL=url, MODEL_DIR=str(tmp_path / "models"))
    upgrade = cli("db", "upgrade", env=env, cwd=tmp_path)
    assert upgrade.returncode == 0, upgrade.stderr

    path = write(tmp_path / "EURUSD_M1.csv", [HEADER, *mt5_lines(40)], "utf-16")
    done = cli(
        "import-csv",
        str(path),
        "--symbol",
        "EURUSD",
        "--timeframe",
        "M1",
        "--tz-offset",
        "2",
        "--chunk-rows",
        "15",
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "40 rows read in 3 chunk(s)" in done.stdout and "40 inserted" in done.stdout
    frame = read_candles(url, "EURUSD", "M1")
    assert len(frame) == 40 and frame["ts"].iloc[0] == pd.Timestamp("2024-01-02 07:30", tz="UTC")

    lines = [HEADER, *mt5_lines(40, START + timedelta(hours=1))]
    lines[33] = lines[33].replace("\t0\t", "\t-3\t")  # <VOL> negative on file line 34
    bad = write(tmp_path / "bad.csv", lines)
    failed = cli(
        "import-csv",
        str(bad),
        "--symbol",
        "EURUSD",
        "--timeframe",
        "M1",
        "--chunk-rows",
        "15",
        "--no-progress",
        env=env,
        cwd=tmp_path,
    )
    assert failed.returncode == 1
    assert "line 34: <VOL> must be >= 0" in failed.stderr and "30 rows before line 32" in failed.stderr
    assert len(read_candles(url, "EURUSD", "M1")) == 70
