"""The API's guard rails: keys, production refusal, the strict body reader, the error shape."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from mt5_pipeline.api.auth import key_matches
from mt5_pipeline.api.main import create_app
from mt5_pipeline.api.routes import ROUTES
from mt5_pipeline.settings import DEV_API_KEY, SettingsError
from mt5_pipeline_tests.api_support import API_KEY, KEYS, OTHER_KEY, api_client

pytestmark = pytest.mark.anyio

PROTECTED = [
    (method, route.path) for route in ROUTES for method in sorted(route.methods - {"HEAD"}) if route.path != "/health"
]
UNAUTHORIZED = {"success": False, "error": "invalid or missing API key"}


@pytest.fixture
def api_settings(sqlite_url, settings_for):
    return settings_for(sqlite_url, API_KEYS=KEYS, EA_SERVER_PORT=9)


# ---- keys -------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_every_route_but_health_needs_a_key(api_settings, method, path):
    async with api_client(api_settings, auth=False) as client:
        missing = await client.request(method, path)
        wrong = await client.request(method, path, headers={"X-API-Key": API_KEY + "x"})
        empty = await client.request(method, path, headers={"X-API-Key": ""})
    for response in (missing, wrong, empty):
        assert response.status_code == 401
        # The same answer whatever was sent: no hint of which keys exist.
        assert response.json() == UNAUTHORIZED


async def test_health_needs_no_key(api_settings):
    async with api_client(api_settings, auth=False) as client:
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"


async def test_every_configured_key_works_for_rotation(api_settings):
    async with api_client(api_settings, auth=False) as client:
        codes = [
            (await client.get("/openapi.json", headers={"X-API-Key": key})).status_code for key in (API_KEY, OTHER_KEY)
        ]
        dev = await client.get("/openapi.json", headers={"X-API-Key": DEV_API_KEY})
    assert codes == [200, 200]
    # With API_KEYS set, the seed's example key no longer opens anything.
    assert dev.status_code == 401


async def test_seed_example_key_works_in_development_without_api_keys(sqlite_url, settings_for):
    settings = settings_for(sqlite_url)
    assert settings.api_keys == ()
    async with api_client(settings, auth=False) as client:
        response = await client.get("/openapi.json", headers={"X-API-Key": DEV_API_KEY})
    assert response.status_code == 200


async def test_failed_attempts_are_logged_with_address_never_the_key(api_settings, caplog):
    secret_attempt = "guess-" + "a" * 20
    with caplog.at_level(logging.WARNING, logger="api.auth"):
        async with api_client(api_settings, auth=False) as client:
            await client.get("/ea/queue-status", headers={"X-API-Key": secret_attempt})
            await client.get("/ea/queue-status")
    messages = [r.getMessage() for r in caplog.records if r.name == "api.auth"]
    assert len(messages) == 2
    assert all("127.0.0.1" in m for m in messages)
    assert "invalid" in messages[0] and "missing" in messages[1]
    text = caplog.text
    assert secret_attempt not in text and API_KEY not in text and OTHER_KEY not in text


def test_key_matches_only_whole_keys():
    keys = [b"alpha-key", b"beta-key"]
    assert key_matches(b"alpha-key", keys)
    assert key_matches(b"beta-key", keys)
    assert not key_matches(b"alpha", keys)
    assert not key_matches(b"alpha-key ", keys)
    assert not key_matches(b"", keys)
    assert not key_matches(None, keys)
    assert not key_matches(b"alpha-key", [])


async def test_metrics_behind_the_key_by_default_and_open_when_configured(sqlite_url, settings_for):
    closed = settings_for(sqlite_url, API_KEYS=KEYS)
    opened = settings_for(sqlite_url, API_KEYS=KEYS, METRICS_PUBLIC="true")
    assert closed.metrics_public is False
    async with api_client(closed, auth=False) as client:
        assert (await client.get("/metrics")).status_code == 401
    async with api_client(opened, auth=False) as client:
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert "ea_signals_generated_total" in response.text
        # Opening /metrics opens nothing else.
        assert (await client.get("/ea/queue-status")).status_code == 401


# ---- production refusal ------------------------------------------------------------


def test_production_refuses_to_start_without_a_key(sqlite_url, settings_for):
    dev = settings_for(sqlite_url)
    # dataclasses.replace skips Settings.check, as a caller building Settings by hand would:
    # the factory must check again.
    prod_no_key = dataclasses.replace(dev, mt5_env="production")
    with pytest.raises(SettingsError, match="API_KEYS"):
        create_app(prod_no_key)


def test_production_refuses_the_seed_example_key(sqlite_url, settings_for):
    prod_example = dataclasses.replace(settings_for(sqlite_url), mt5_env="production", api_keys=(DEV_API_KEY,))
    with pytest.raises(SettingsError, match="example key"):
        create_app(prod_example)
    prod_example_among_others = dataclasses.replace(prod_example, api_keys=("own-key-123", DEV_API_KEY))
    with pytest.raises(SettingsError, match="example key"):
        create_app(prod_example_among_others)


def test_production_starts_with_its_own_key(sqlite_url, settings_for):
    settings = settings_for(sqlite_url, MT5_ENV="production", API_KEYS="own-key-123", EA_API_KEY="ea-own-key")
    app = create_app(settings)
    assert app.state.api.settings.mt5_env == "production"


# ---- the strict body reader ----------------------------------------------------------


async def _post(settings, path: str, content: bytes, headers: dict | None = None):
    async with api_client(settings) as client:
        return await client.post(path, content=content, headers={"Content-Type": "application/json", **(headers or {})})


@pytest.mark.parametrize("path", ["/ingest", "/ea/generate-signal", "/ea/ack"])
@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"symbol": "EURUSD", ', "malformed JSON"),
        (b"", "empty"),
        (b"   ", "empty"),
        (b'{"symbol": "EUR\xff"}', "not UTF-8"),
        (b"{'symbol': 'EURUSD'}", "malformed JSON"),
    ],
)
async def test_malformed_json_is_400(api_settings, path, content, fragment):
    response = await _post(api_settings, path, content)
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False and fragment in body["error"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_refused_naming_the_path(api_settings, token):
    content = (
        (
            '{"symbol": "EURUSD", "timeframe": "M1", "candles": ['
            '{"time": 1729999980, "open": 1.1, "high": 1.2, "low": 1.0, "close": 1.1, "tick_volume": 1},'
            '{"time": 1730000040, "open": 1.1, "high": TOKEN, "low": 1.0, "close": 1.1, "tick_volume": 1}]}'
        )
        .replace("TOKEN", token)
        .encode()
    )
    response = await _post(api_settings, "/ingest", content)
    assert response.status_code == 422
    body = response.json()
    assert body["details"] == [
        {"loc": "candles[1].high", "message": f"{token} is not allowed: JSON numbers must be finite"}
    ]


async def test_duplicate_keys_are_refused_naming_the_path(api_settings):
    content = (
        b'{"symbol": "EURUSD", "timeframe": "M1", "candles": ['
        b'{"time": 1729999980, "open": 1.1, "open": 1.3, "high": 1.2, "low": 1.0, "close": 1.1, "tick_volume": 1}],'
        b' "symbol": "GBPUSD"}'
    )
    response = await _post(api_settings, "/ingest", content)
    assert response.status_code == 422
    locs = {d["loc"] for d in response.json()["details"]}
    assert locs == {"symbol", "candles[0].open"}


@pytest.mark.parametrize("content", [b"[]", b'"EURUSD"', b"42", b"null", b"true"])
async def test_body_must_be_an_object(api_settings, content):
    response = await _post(api_settings, "/ea/generate-signal", content)
    assert response.status_code == 422
    assert response.json()["details"][0]["loc"] == "body"


def _two_bars(time: str = "1730000040", open_: str = "1.1", low: str = "1.0", volume: str = "1") -> str:
    """An /ingest body of two bars, the second's time, open, low and tick volume as given."""
    return (
        '{"symbol": "EURUSD", "timeframe": "M1", "candles": [{"time": 1729999980, "open": 1.1, "high": 1.2, "low": '
        "1.0, "
        f'"close": 1.1, "tick_volume": 1}}, {{"time": {time}, "open": {open_}, "high": 1.2, "low": {low}, "close": '
        "1.1, "
        f'"tick_volume": {volume}}}]}}'
    )


_HOSTILE = {
    "subnormal": "5e-324",
    "huge float": "1e308",
    "overflowing float": "1e400",
    "400 digits": "9" * 400,
    "5000 digits": "9" * 5000,
}
# (route, body with one hole, the field the answer must name)
_HOLES = [
    ("/ingest", _two_bars(time="X"), "candles[1].time"),
    ("/ingest", _two_bars(low="X"), "candles[1].low"),
    ("/ingest", _two_bars(open_="X"), "candles[1]"),
    ("/ingest", _two_bars(volume="X"), "candles[1]"),
    ("/ingest", '{"symbol": "EURUSD", "timeframe": "M1", "utc_offset_hours": X, "candles": []}', "utc_offset_hours"),
    ("/ingest", '{"symbol": "EURUSD", "timeframe": "M1", "digits": X, "candles": []}', "digits"),
    ("/ingest", '{"symbol": "EURUSD", "timeframe": "M1", "point": X, "candles": []}', "point"),
    ("/ea/ack", '{"signal_id": "abc", "ticket": X, "status": "FILLED"}', "ticket"),
    ("/ea/generate-signal", '{"symbol": "EURUSD", "force": X}', "force"),
    ("/ea/generate-signal", '{"symbol": X}', "symbol"),
]


@pytest.mark.parametrize(("path", "template", "loc"), _HOLES, ids=[f"{p} {loc}" for p, _, loc in _HOLES])
@pytest.mark.parametrize("number", sorted(_HOSTILE), ids=sorted(_HOSTILE))
async def test_hostile_numbers_are_a_422_naming_the_field_never_a_500(api_settings, path, template, loc, number):
    """Schemathesis found these: a 5e-324 low overflowed the jump check's factor, a 400-digit
    time the float conversion, and any integer over 4,300 digits made json.loads raise a
    ValueError that is not a JSONDecodeError. Some of these are fine values for some fields
    (a subnormal UTC offset rounds to 0; an empty candles list is fine): never a 5xx, and
    when refused, the field named."""
    value = _HOSTILE[number]
    response = await _post(api_settings, path, template.replace("X", value, 1).encode())
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        assert response.status_code == 422, response.text[:300]
        assert any(d["loc"].startswith(loc) for d in response.json()["details"]), response.text[:300]
    else:
        assert (loc, number) == ("utc_offset_hours", "subnormal"), response.text[:300]


async def test_deep_nesting_is_a_400_not_a_crash(api_settings):
    response = await _post(api_settings, "/ea/ack", b"[" * 100_000 + b"]" * 100_000)
    assert response.status_code in (400, 422)


class _Chunks:
    """An async body that counts how much of it the server pulled."""

    def __init__(self, chunks: int, size: int) -> None:
        self.chunks, self.size, self.pulled = chunks, size, 0

    async def __aiter__(self):
        for _ in range(self.chunks):
            self.pulled += 1
            yield b" " * self.size


@pytest.fixture
def small_limit_settings(sqlite_url, settings_for):
    return settings_for(sqlite_url, API_KEYS=KEYS, API_MAX_BODY_BYTES=10_000)


async def test_body_over_the_declared_limit_is_413_before_reading(small_limit_settings):
    body = _Chunks(1_000, 1_000)
    async with api_client(small_limit_settings) as client:
        response = await client.post("/ingest", content=body, headers={"Content-Length": "1000000"})
    assert response.status_code == 413
    assert "API_MAX_BODY_BYTES" in response.json()["error"]
    assert body.pulled == 0


async def test_streamed_body_over_the_limit_is_cut_off_while_streaming(small_limit_settings):
    body = _Chunks(1_000, 1_000)  # chunked: no Content-Length to trust
    async with api_client(small_limit_settings) as client:
        response = await client.post("/ingest", content=body)
    assert response.status_code == 413
    # 10 KB limit, 1 KB chunks: the reader stopped at the 11th, not after the 1,000th.
    assert body.pulled <= 11


async def test_body_at_the_limit_is_read(small_limit_settings):
    payload = json.dumps({"symbol": "EURUSD", "timeframe": "M1", "candles": [], "pad": "x" * 9_000}).encode()
    assert len(payload) <= 10_000
    response = await _post(small_limit_settings, "/ingest", payload)
    assert response.status_code == 200
    assert response.json()["received"] == 0


async def test_unauthenticated_body_is_not_read(small_limit_settings):
    body = _Chunks(1_000, 1_000)
    async with api_client(small_limit_settings, auth=False) as client:
        response = await client.post("/ingest", content=body)
    assert response.status_code == 401
    assert body.pulled == 0


async def test_lying_content_length_header_is_a_400(api_settings):
    response = await _post(api_settings, "/ingest", b"{}", headers={"Content-Length": "abc"})
    assert response.status_code in (400, 413)


# ---- the error shape ------------------------------------------------------------------


async def test_unknown_route_and_wrong_method_use_the_error_shape(api_settings):
    async with api_client(api_settings) as client:
        missing = await client.get("/no/such/route")
        wrong = await client.delete("/ingest")
    assert missing.status_code == 404 and missing.json() == {"success": False, "error": "no such route"}
    assert wrong.status_code == 405 and wrong.json()["success"] is False


@pytest.mark.parametrize(
    ("path", "body", "locs"),
    [
        ("/ea/generate-signal", {}, {"symbol"}),
        ("/ea/generate-signal", {"symbol": 5, "timeframe": "M1", "force": "yes"}, {"symbol", "force"}),
        ("/ea/generate-signal", {"symbol": "EURUSD", "timeframe": "M7"}, {"timeframe"}),
        ("/ea/generate-signal", {"symbol": "EUR USD"}, {"symbol"}),
        ("/ea/generate-signal", {"symbol": "EURUSD", "force": 1}, {"force"}),
        ("/ea/ack", {}, {"signal_id", "status"}),
        ("/ea/ack", {"signal_id": "x" * 37, "status": "FILLED"}, {"signal_id"}),
        ("/ea/ack", {"signal_id": "abc", "status": "FILLED", "ticket": "123"}, {"ticket"}),
        ("/ea/ack", {"signal_id": "abc", "status": "FILLED", "ticket": -1}, {"ticket"}),
        ("/ea/ack", {"signal_id": "abc", "status": "FILLED", "ticket": True}, {"ticket"}),
        ("/ea/ack", {"signal_id": "abc", "status": "FILLED; DROP TABLE", "message": 3}, {"status", "message"}),
    ],
)
async def test_generate_signal_and_ack_requests_are_checked_field_by_field(api_settings, path, body, locs):
    async with api_client(api_settings) as client:
        response = await client.post(path, json=body)
    assert response.status_code == 422
    assert {d["loc"] for d in response.json()["details"]} == locs


@pytest.mark.parametrize(
    ("query", "locs"),
    [
        ("?status=SENT", {"query.status"}),
        ("?limit=0", {"query.limit"}),
        ("?limit=abc", {"query.limit"}),
        ("?limit=100000", {"query.limit"}),
    ],
)
async def test_pull_query_is_checked(api_settings, query, locs):
    async with api_client(api_settings) as client:
        response = await client.get("/ea/signals" + query)
    assert response.status_code == 422
    assert {d["loc"] for d in response.json()["details"]} == locs
