"""The OpenAPI document: valid, complete, served with /docs, and true enough that a
schemathesis run over it finds no server error."""

from __future__ import annotations

import json
import re
import warnings
from datetime import datetime, timezone

import anyio
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import BaseModel
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from mt5_pipeline.api import requests, responses
from mt5_pipeline.api.main import create_app
from mt5_pipeline.api.openapi import build_openapi
from mt5_pipeline.api.routes import ROUTES
from mt5_pipeline.settings import TIMEFRAME_SECONDS
from mt5_pipeline_tests.api_support import AUTH, KEYS, api_client, bars
from mt5_pipeline_tests.ea_server import reference_ea  # noqa: F401  (fixture)


@pytest.fixture
def api_settings(sqlite_url, settings_for):
    return settings_for(sqlite_url, API_KEYS=KEYS, EA_SERVER_PORT=9)


def _get(settings, path: str):
    async def go():
        async with api_client(settings) as client:
            return await client.get(path)

    return anyio.run(go)


def _served(api_settings) -> dict:
    response = _get(api_settings, "/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_schema_validates_against_openapi_3_1(api_settings):
    spec = _served(api_settings)
    assert spec["openapi"] == "3.1.0"
    errors = [f"{e.instance_path}: {e.message}" for e in OPENAPI_31_VALIDATOR.iter_errors(spec)]
    assert errors == []
    # And a deliberately broken copy fails, so the validator is really looking.
    broken = {**spec, "paths": {"/x": {"get": {"responses": "nope"}}}}
    assert not OPENAPI_31_VALIDATOR.is_valid(broken)
    # OpenAPI 3.1's own schema does not look inside schema objects: each one must be
    # valid JSON Schema 2020-12 (the dialect 3.1 uses and pydantic emits).
    for schema in spec["components"]["schemas"].values():
        jsonschema_rs.meta.validate({"$schema": "https://json-schema.org/draft/2020-12/schema", **schema})
    for param in spec["paths"]["/ea/signals"]["get"]["parameters"]:
        jsonschema_rs.meta.validate({"$schema": "https://json-schema.org/draft/2020-12/schema", **param["schema"]})
    with pytest.raises(jsonschema_rs.ValidationError):
        jsonschema_rs.meta.validate({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "nope"})


def test_schema_describes_every_route_and_nothing_else(api_settings):
    spec = _served(api_settings)
    served = {
        (path, method.lower()) for route in ROUTES for path in [route.path] for method in route.methods - {"HEAD"}
    }
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert documented == served
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["responses"], f"{method} {path} has no responses"
            assert "200" in op["responses"], f"{method} {path} does not document its success"
            if method == "post" and path != "/ea/push-signals":
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                assert schema["$ref"].startswith("#/components/schemas/")


def test_every_ref_resolves(api_settings):
    spec = _served(api_settings)
    refs: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert refs
    names = set(spec["components"]["schemas"])
    assert {r.rsplit("/", 1)[-1] for r in refs} <= names


def test_security_matches_the_settings(sqlite_url, settings_for):
    closed = build_openapi(settings_for(sqlite_url))
    opened = build_openapi(settings_for(sqlite_url, METRICS_PUBLIC="true"))
    assert closed["components"]["securitySchemes"]["ApiKeyAuth"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    assert closed["paths"]["/health"]["get"]["security"] == []
    assert closed["paths"]["/metrics"]["get"]["security"] == [{"ApiKeyAuth": []}]
    assert opened["paths"]["/metrics"]["get"]["security"] == []


def test_docs_page_shows_every_route_without_a_cdn(api_settings):
    page = _get(api_settings, "/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for route in ROUTES:
        assert f"<code>{route.path}</code>" in page.text
    assert "<script src=" not in page.text  # nothing fetched from elsewhere


def test_seed_error_codes_are_documented(api_settings):
    spec = _served(api_settings)
    gen = spec["paths"]["/ea/generate-signal"]["post"]["responses"]
    assert {"200", "400", "401", "404", "409", "413", "422", "503"} <= set(gen)
    ingest = spec["paths"]["/ingest"]["post"]["responses"]
    assert {"200", "400", "401", "413", "422", "503"} <= set(ingest)
    assert "Retry-After" in ingest["503"]["headers"]


# ---- one declaration: the models, the document and the validator ------------------------


def _models() -> dict[str, type[BaseModel]]:
    """Every model the API declares, by name."""
    return {
        name: obj
        for module in (requests, responses)
        for name, obj in vars(module).items()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == module.__name__
        and not name.startswith("_")
    }


def test_the_components_are_exactly_the_models(api_settings):
    spec = _served(api_settings)
    components = spec["components"]["schemas"]
    models = _models()
    # Every model is a component, but the query string: that one is the parameters.
    assert set(components) == set(models) - {"PullQuery", "OpenTradesQuery"}
    for name, schema in components.items():
        fields = models[name].model_fields
        assert set(schema["properties"]) == set(fields), name
        assert set(schema.get("required", [])) == {n for n, f in fields.items() if f.is_required()}, name
    params = spec["paths"]["/ea/signals"]["get"]["parameters"]
    assert {p["name"] for p in params} == set(requests.PullQuery.model_fields)
    assert all(p["in"] == "query" and not p["required"] for p in params)
    # Each body a route takes or answers is the component of its model.
    ops = spec["paths"]
    assert ops["/ingest"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/IngestRequest"
    }
    assert ops["/ea/ack"]["post"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AckResponse"
    }
    assert components["IngestRequest"]["properties"]["candles"]["items"] == {"$ref": "#/components/schemas/Candle"}
    # Nothing is declared and left unused.
    text = json.dumps(spec)
    assert [name for name in components if f'"#/components/schemas/{name}"' not in text] == []


def test_the_limits_in_the_document_are_the_validators(api_settings):
    spec = _served(api_settings)
    schemas = spec["components"]["schemas"]
    ingest, ack = schemas["IngestRequest"]["properties"], schemas["AckRequest"]["properties"]
    assert ingest["timeframe"]["enum"] == list(TIMEFRAME_SECONDS)
    assert schemas["GenerateSignalRequest"]["properties"]["timeframe"]["default"] == "M1"
    assert ingest["utc_offset_hours"]["anyOf"][0] == {"type": "number", "minimum": -12, "maximum": 14}
    assert ack["signal_id"]["maxLength"] == requests.SIGNAL_ID_MAX
    assert ack["message"]["anyOf"][0]["maxLength"] == requests.ACK_MESSAGE_MAX
    limit = next(p for p in spec["paths"]["/ea/signals"]["get"]["parameters"] if p["name"] == "limit")["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, requests.MAX_PULL_LIMIT, 100)


REFUSED_SYMBOLS = ["EURUSD\n", "EUR/USD", "X" * 33, "", "EUR USD", "\nEURUSD", "EURUSD€"]
ACCEPTED_SYMBOLS = ["XAUUSD#", "US30.cash", "EURUSD.m", "EURUSD", "BTC-USD", "EUR_USD", "X" * 32]


def test_symbol_rule_is_the_same_in_the_document_the_validator_and_the_core(api_settings):
    """One rule, three places that apply it: the pattern the document states (read as
    re.fullmatch would), the API's validator behind the route, and the ingest core."""
    from mt5_pipeline.market.ingest import CandleValidationError, validate_candles

    spec = _served(api_settings)
    schemas = spec["components"]["schemas"]
    patterns = {schemas[name]["properties"]["symbol"]["pattern"] for name in ("IngestRequest", "GenerateSignalRequest")}
    assert len(patterns) == 1
    pattern = patterns.pop()

    async def post_all():
        async with api_client(api_settings) as client:
            return {
                symbol: (
                    await client.post("/ingest", json={"symbol": symbol, "timeframe": "M1", "candles": bars(1)}),
                    await client.post("/ea/generate-signal", json={"symbol": symbol}),
                )
                for symbol in REFUSED_SYMBOLS + ACCEPTED_SYMBOLS
            }

    answers = anyio.run(post_all)
    for symbol in REFUSED_SYMBOLS + ACCEPTED_SYMBOLS:
        accepted = symbol in ACCEPTED_SYMBOLS
        assert bool(re.fullmatch(pattern, symbol)) is accepted, symbol
        try:
            validate_candles(symbol, "M1", bars(1))
            core_accepts = True
        except CandleValidationError as exc:
            core_accepts = "symbol" not in {e.loc for e in exc.errors}
        assert core_accepts is accepted, symbol
        ingest, signal = answers[symbol]
        if accepted:
            assert ingest.status_code == 200, (symbol, ingest.text)
            assert signal.status_code != 422, (symbol, signal.text)  # 404/503 here: no features, no model
        else:
            for response in (ingest, signal):
                assert response.status_code == 422, (symbol, response.text)
                assert [d["loc"] for d in response.json()["details"]] == ["symbol"], symbol


def test_timestamps_are_written_as_the_core_writes_them():
    """Datetimes in an answer come out as clock.iso_z, like the signals' timestamp and expires_at."""
    from mt5_pipeline.api.errors import dumps
    from mt5_pipeline.clock import iso_z

    whole = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
    fraction = datetime(2024, 3, 1, 12, 0, 0, 120000, tzinfo=timezone.utc)
    naive = datetime(2024, 3, 1, 12, 0)
    assert json.loads(dumps({"a": whole, "b": fraction, "c": naive})) == {
        "a": "2024-03-01T12:00:00Z",
        "b": "2024-03-01T12:00:00.12Z",
        "c": "2024-03-01T12:00:00Z",
    }
    assert iso_z(fraction) == "2024-03-01T12:00:00.12Z"


# ---- schemathesis over the schema -------------------------------------------------------


@pytest.fixture
def api_schema(db_url, settings_for, reference_ea):  # noqa: F811
    """The live app on both backends, with candles stored so the routes have something to work on."""
    from mt5_pipeline.market.ingest import ingest_candles

    settings = settings_for(
        db_url, API_KEYS=KEYS, EA_SERVER_URL=reference_ea.url, EA_API_KEY=reference_ea.api_key, EA_REQUEST_TIMEOUT=2
    )
    ingest_candles(db_url, "EURUSD", "M1", bars(60))
    app = create_app(settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # starlette's TestClient, used inside schemathesis
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)
    yield schema
    app.state.api.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_no_server_error_for_any_generated_request(api_schema, mode):
    """schemathesis generates requests from the schema (valid ones, then invalid ones) for
    every operation; none may get a 5xx other than the documented 503s."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    # schemathesis leaves out the schema's own route (/openapi.json); every other one is here.
    assert {op.path for op in operations} == {r.path for r in ROUTES} - {"/openapi.json"}
    seen: dict[str, set[int]] = {}
    for operation in operations:

        @settings(
            max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case):
            # Our key, whatever the negative mode did to the security header: the bodies are the target.
            headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "x-api-key"}
            headers.update(AUTH)
            response = case.call(headers=headers)
            status = response.status_code
            seen.setdefault(f"{case.method} {case.path}", set()).add(status)
            # 503 is documented for /ea/generate-signal (no model here); nothing else may be a 5xx.
            allowed_5xx = {503} if case.path == "/ea/generate-signal" else set()
            assert status < 500 or status in allowed_5xx, (
                f"{case.method} {case.path} -> {status}: {response.text[:500]}"
            )
            # And the document tells the truth: the status, content type and body are as described.
            case.validate_response(
                response, checks=[status_code_conformance, content_type_conformance, response_schema_conformance]
            )

        try:
            check()
        except Unsatisfiable:  # negative mode: an operation with nothing to make invalid
            continue
    assert seen, "no request was made"
