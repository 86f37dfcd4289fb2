"""clock: UTC times written one way everywhere (ISO 8601 with Z)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from mt5_pipeline.clock import iso_z, parse_iso


def test_iso_z_pads_the_year_to_four_digits():
    # glibc's %Y writes year 428 as "428", which no RFC 3339 reader accepts; the API
    # echoes stored times through iso_z, so a hostile but valid time must stay readable.
    early = datetime(428, 6, 25, 15, 41, 44, tzinfo=timezone.utc)
    assert iso_z(early) == "0428-06-25T15:41:44Z"
    assert parse_iso(iso_z(early)) == early


def test_iso_z_is_utc_with_z_and_drops_trailing_zeros_of_a_fraction():
    plus_two = timezone(timedelta(hours=2))
    assert iso_z(datetime(2026, 3, 29, 3, 0, tzinfo=plus_two)) == "2026-03-29T01:00:00Z"
    assert iso_z(datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=timezone.utc)) == "2026-01-02T03:04:05.12Z"
