"""`components` of the OpenAPI document: the schemas generated from the request and
response models, references to them, query parameters, and the security scheme.

The shapes are never written by hand: they come from the same pydantic models that
validate requests (mt5_pipeline.api.requests, mt5_pipeline.api.responses), so the
document and the validator cannot drift.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from mt5_pipeline.api import requests, responses
from mt5_pipeline.settings import Settings

REF_TEMPLATE = "#/components/schemas/{model}"
# Every body the document names; the models they contain (Candle, Signal, ...) come along.
BODY_MODELS: tuple[type[BaseModel], ...] = (
    requests.IngestRequest,
    requests.GenerateSignalRequest,
    requests.AckRequest,
    requests.TradesRequest,
    requests.ReconcileRequest,
    responses.Error,
    responses.IngestResponse,
    responses.GenerateSignalQueued,
    responses.GenerateSignalNeutral,
    responses.TestConnectionResponse,
    responses.QueueStatusResponse,
    responses.PushResponse,
    responses.AckResponse,
    responses.SignalsResponse,
    responses.TradesResponse,
    responses.OpenTradesResponse,
    responses.ReconcileResponse,
    responses.Health,
)
API_KEY_SCHEME = "ApiKeyAuth"


class _Schema(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # a property's title would only repeat its name


@functools.cache
def _generated() -> tuple[dict[type[BaseModel], dict[str, str]], dict[str, Any]]:
    refs, top = models_json_schema(
        [(m, "validation") for m in BODY_MODELS], ref_template=REF_TEMPLATE, schema_generator=_Schema
    )
    # Every key is one of BODY_MODELS, all pydantic models (the signature also allows dataclasses).
    return {model: ref for (model, _), ref in refs.items() if issubclass(model, BaseModel)}, top["$defs"]


def component_schemas() -> dict[str, Any]:
    """`components.schemas`: every body model and every model inside one, by name."""
    return copy.deepcopy(_generated()[1])


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A `$ref` to the model's schema in `components.schemas`."""
    return dict(_generated()[0][model])


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A query-string model as OpenAPI parameters, one per field."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, schema_generator=_Schema)
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema["properties"].items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in prop:
            param["description"] = prop.pop("description")
        out.append({**param, "schema": prop})
    return out


def security_schemes() -> dict[str, Any]:
    """`components.securitySchemes`: the X-API-Key header."""
    return {API_KEY_SCHEME: {"type": "apiKey", "in": "header", "name": "X-API-Key"}}


def default_security() -> list[dict[str, list[str]]]:
    """The document-wide requirement: every operation needs the key unless it says otherwise."""
    return [{API_KEY_SCHEME: []}]


def metrics_security(settings: Settings) -> list[dict[str, list[str]]]:
    """/metrics needs the key unless METRICS_PUBLIC opens it to the scraper."""
    return [] if settings.metrics_public else default_security()


def components() -> dict[str, Any]:
    return {"schemas": component_schemas(), "securitySchemes": security_schemes()}
