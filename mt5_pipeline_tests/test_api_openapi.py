"""The OpenAPI document: valid, complete, served with /docs, and true enough that a
schemathesis run over it finds no server error."""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timezone

import anyio
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance
from schemathesis.specs.openapi.definitions import OPENAPI_30_VALIDATOR

from mt5_pipeline.api.main import create_app
from mt5_pipeline.api.openapi import build_openapi
from mt5_pipeline.api.routes import ROUTES
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


def test_schema_validates_against_openapi_3_0(api_settings):
    spec = _served(api_settings)
    errors = [f"{e.instance_path}: {e.message}" for e in OPENAPI_30_VALIDATOR.iter_errors(spec)]
    assert errors == []
    # And a deliberately broken copy fails, so the validator is really looking.
    broken = {**spec, "paths": {"/x": {"get": {"responses": "nope"}}}}
    assert not OPENAPI_30_VALIDATOR.is_valid(broken)


def test_schema_describes_every_route_and_nothing_else(api_settings):
    spec = _served(api_settings)
    served = {(path, method.lower()) for route in ROUTES for path in [route.path] for method in route.methods - {"HEAD"}}
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
    assert closed["components"]["securitySchemes"]["ApiKeyAuth"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
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
    from mt5_pipeline.ingest import ingest_candles

    settings = settings_for(db_url, API_KEYS=KEYS, EA_SERVER_URL=reference_ea.url, EA_API_KEY=reference_ea.api_key, EA_REQUEST_TIMEOUT=2)
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

        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
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
            assert status < 500 or status in allowed_5xx, f"{case.method} {case.path} -> {status}: {response.text[:500]}"
            # And the document tells the truth: the status, content type and body are as described.
            case.validate_response(response, checks=[status_code_conformance, content_type_conformance, response_schema_conformance])

        try:
            check()
        except Unsatisfiable:  # negative mode: an operation with nothing to make invalid
            continue
    assert seen, "no request was made"
