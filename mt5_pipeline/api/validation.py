"""A request checked against its model, every problem answered at once as the 422 shape.

pydantic's own wording ("Input should be a valid integer") is replaced by the API's,
written for the person reading an EA's log; `loc` is the path as the rest of the API
writes it (`candles[3]`, `query.limit`). Errors a validator raises with its own
message (PydanticCustomError) keep that message.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mt5_pipeline.api.errors import ApiError, Detail

M = TypeVar("M", bound=BaseModel)

# Enough to fix a batch by; the answer stays small however bad the batch is.
MAX_DETAILS = 100

_MESSAGES = {
    "missing": "field required",
    "string_type": "expected a string, got {got}",
    "int_type": "expected a whole number, got {got}",
    "float_type": "expected a number, got {got}",
    "finite_number": "expected a finite number, got {got}",
    "bool_type": "expected true or false, got {got}",
    "list_type": "expected an array, got {got}",
    "dict_type": "expected an object, got {got}",
    "model_type": "expected an object, got {got}",
    "literal_error": "expected {expected}, got {got}",
    "string_too_short": "expected at least {min_length} character(s), got {got}",
    "string_too_long": "longer than {max_length} characters",
    "greater_than": "expected more than {gt}, got {got}",
    "greater_than_equal": "expected {ge} or more, got {got}",
    "less_than": "expected less than {lt}, got {got}",
    "less_than_equal": "expected {le} or less, got {got}",
}


def validate(model: type[M], data: Any, what: str, *, prefix: str = "") -> M:
    """`model` from `data`, or ApiError(422, "invalid <what>") naming each offending path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            Detail(prefix + loc(e["loc"]), message(model, e)) for e in exc.errors(include_url=False)[:MAX_DETAILS]
        ]
        raise ApiError(422, f"invalid {what}", details) from None


def loc(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def message(model: type[BaseModel], error: Any) -> str:
    template = _MESSAGES.get(error["type"])
    if error["type"] == "string_pattern_mismatch":
        # The field's description says what a valid value looks like.
        field = model.model_fields.get(str(error["loc"][0]))
        template = f"expected {field.description}, got {{got}}" if field and field.description else None
    if template is None:
        return error["msg"]
    ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in (error.get("ctx") or {}).items()}
    return template.format(got=describe(error.get("input")), **ctx)


def describe(value: Any) -> str:
    """A value as JSON would name it: "a string ('abc')", "a number (2.5)", "null", "an array"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"a string ({value if len(value) <= 24 else value[:21] + '...'!r})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
