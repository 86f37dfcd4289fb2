"""Each request model through its route: every problem is a 422 detail with the path a
client knows, all of them at once, in the API's words; strict about types; and null
still means "not sent" where a field is optional."""

from __future__ import annotations

import pytest

from mt5_pipeline.api.requests import GenerateSignalRequest, IngestRequest
from mt5_pipeline.api.validation import MAX_DETAILS, loc, validate
from mt5_pipeline_tests.api_support import KEYS, api_client, bars

pytestmark = pytest.mark.anyio


@pytest.fixture
def api_settings(sqlite_url, settings_for):
    return settings_for(sqlite_url, API_KEYS=KEYS, EA_SERVER_PORT=9)


async def _send(settings, method: str, path: str, body):
    async with api_client(settings) as client:
        if method == "GET":
            return await client.get(path)
        return await client.post(path, json=body)


# (route, body or query, the error, {loc: a fragment of its message})
INVALID = {
    "ingest: everything wrong at once": (
        "POST /ingest",
        {
            "symbol": "EURUSD\n",
            "timeframe": "M2",
            "candles": [1, {}, "x"],
            "utc_offset_hours": "3",
            "digits": 9,
            "point": 2,
        },
        "invalid ingest request",
        {
            "symbol": "letters, digits or . _ # -",
            "timeframe": "'M1', 'M5'",
            "candles[0]": "expected an object, got a number (1)",
            "candles[2]": "expected an object, got a string ('x')",
            "utc_offset_hours": "expected a number, got a string ('3')",
            "digits": "expected 8 or less",
            "point": "expected 1 or less",
        },
    ),
    "ingest: nothing sent": (
        "POST /ingest",
        {},
        "invalid ingest request",
        {"symbol": "field required", "timeframe": "field required", "candles": "field required"},
    ),
    "ingest: no coercion": (
        "POST /ingest",
        {"symbol": 7, "timeframe": "M1", "candles": "[]", "utc_offset_hours": True, "digits": 2.0},
        "invalid ingest request",
        {
            "symbol": "expected a string, got a number (7)",
            "candles": "expected an array",
            "utc_offset_hours": "got a boolean",
            "digits": "expected a whole number",
        },
    ),
    "ingest: offset out of range, point against digits": (
        "POST /ingest",
        {"symbol": "XAUUSD", "timeframe": "M1", "candles": [], "utc_offset_hours": -12.5, "digits": 2, "point": 0.001},
        "invalid ingest request",
        {"utc_offset_hours": "expected -12 or more", "point": "does not match digits 2"},
    ),
    "generate-signal: everything wrong at once": (
        "POST /ea/generate-signal",
        {"symbol": "EUR/USD", "timeframe": "m1", "force": "true"},
        "invalid signal request",
        {
            "symbol": "letters, digits",
            "timeframe": "got a string ('m1')",
            "force": "expected true or false, got a string ('true')",
        },
    ),
    "generate-signal: null symbol": (
        "POST /ea/generate-signal",
        {"symbol": None},
        "invalid signal request",
        {"symbol": "expected a string, got null"},
    ),
    "ack: everything wrong at once": (
        "POST /ea/ack",
        {"signal_id": "", "ticket": 1.5, "status": "FILLED!", "message": "x" * 2001},
        "invalid ack",
        {
            "signal_id": "at least 1 character",
            "ticket": "expected a whole number, got a number (1.5)",
            "status": "letters or underscores",
            "message": "longer than 2000 characters",
        },
    ),
    "ack: no coercion": (
        "POST /ea/ack",
        {"signal_id": 5, "ticket": "7", "status": True, "message": ["x"]},
        "invalid ack",
        {
            "signal_id": "expected a string",
            "ticket": "got a string ('7')",
            "status": "got a boolean",
            "message": "got an array",
        },
    ),
    "ack: ticket beyond BIGINT": (
        "POST /ea/ack",
        {"signal_id": "a", "ticket": 2**63, "status": "FILLED"},
        "invalid ack",
        {"ticket": "expected less than"},
    ),
    "pull: everything wrong at once": (
        "GET /ea/signals?status=SENT&limit=5.0",
        None,
        "invalid query",
        {"query.status": "only PENDING can be pulled", "query.limit": "expected a whole number, got a string ('5.0')"},
    ),
    "pull: limit out of range": (
        "GET /ea/signals?limit=1001",
        None,
        "invalid query",
        {"query.limit": "expected 1000 or less, got a number (1001)"},
    ),
    "pull: negative limit": ("GET /ea/signals?limit=-1", None, "invalid query", {"query.limit": "expected 1 or more"}),
}


@pytest.mark.parametrize("case", list(INVALID))
async def test_every_problem_is_a_422_detail_in_the_apis_words(api_settings, case):
    route, body, error, expected = INVALID[case]
    method, path = route.split(" ", 1)
    response = await _send(api_settings, method, path, body)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["success"] is False and answer["error"] == error
    details = {d["loc"]: d["message"] for d in answer["details"]}
    assert set(details) == set(expected), details
    for where, fragment in expected.items():
        assert fragment in details[where], (where, details[where])
    assert not [m for m in details.values() if "Input should" in m or "pydantic" in m]


async def test_a_batch_of_non_objects_is_reported_up_to_the_limit(api_settings):
    response = await _send(
        api_settings, "POST", "/ingest", {"symbol": "EURUSD", "timeframe": "M1", "candles": [0] * (MAX_DETAILS + 50)}
    )
    assert response.status_code == 422
    details = response.json()["details"]
    assert len(details) == MAX_DETAILS
    assert [d["loc"] for d in details[:3]] == ["candles[0]", "candles[1]", "candles[2]"]


ACCEPTED = {
    # null means "not sent"; fields the API does not know are ignored; case does not matter where it never did.
    "ingest with nulls and an unknown field": (
        "POST /ingest",
        {
            "symbol": "US30.cash",
            "timeframe": "M1",
            "candles": [],
            "utc_offset_hours": None,
            "digits": None,
            "point": None,
            "pad": "x",
        },
        200,
    ),
    "ingest with an integer offset and point": (
        "POST /ingest",
        {"symbol": "XAUUSD#", "timeframe": "H1", "candles": [], "utc_offset_hours": 2, "digits": 0, "point": 1},
        200,
    ),
    "generate-signal with nulls": (
        "POST /ea/generate-signal",
        {"symbol": "EURUSD", "timeframe": None, "force": None},
        503,
    ),  # no model here
    "ack in lower case with nulls": (
        "POST /ea/ack",
        {"signal_id": "no-such-id", "ticket": None, "status": "filled", "message": None},
        404,
    ),
    "pull in lower case": ("GET /ea/signals?status=pending&limit=%201000%20", None, 200),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
async def test_what_the_api_has_always_taken_still_passes(api_settings, case):
    route, body, status = ACCEPTED[case]
    method, path = route.split(" ", 1)
    response = await _send(api_settings, method, path, body)
    assert response.status_code == status, response.text


def test_defaults_fill_what_was_not_sent():
    request = validate(GenerateSignalRequest, {"symbol": "EURUSD", "timeframe": None}, "signal request")
    assert (request.timeframe, request.force) == ("M1", False)
    candles = bars(2)
    ingest = validate(
        IngestRequest,
        {"symbol": "EURUSD", "timeframe": "M1", "candles": candles, "utc_offset_hours": 3},
        "ingest request",
    )
    assert ingest.utc_offset_hours == 3.0 and isinstance(ingest.utc_offset_hours, float)
    # The candles go to the core as they came: no copy per candle, no coercion.
    assert all(a is b for a, b in zip(ingest.candles, candles, strict=True))


def test_loc_is_written_as_the_rest_of_the_api_writes_it():
    assert loc(("symbol",)) == "symbol"
    assert loc(("candles", 3)) == "candles[3]"
    assert loc(("candles", 3, "high")) == "candles[3].high"
