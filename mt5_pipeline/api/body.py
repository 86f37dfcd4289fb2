"""A strict JSON body reader.

Neither Starlette nor uvicorn limits request bodies, so the limit is enforced here twice:
by the declared Content-Length (413 before a byte of the body is read) and while
streaming (413 as soon as the running total passes the limit, for chunked bodies or a
Content-Length that lies). The body is never read whole before that check.

Python's `json` silently accepts what JSON does not allow, or what a trading feed must
not guess about: `NaN`, `Infinity`, `-Infinity` and duplicate object keys (the last one
would win). Those are refused with 422 naming each path; text that is not JSON at all
is a 400.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from mt5_pipeline.api.errors import ApiError, Detail

# Below this size parsing on the event loop is cheaper than a thread hop.
_THREAD_PARSE_BYTES = 64 * 1024


class _NonFinite:
    """Stand-in for NaN/Infinity so the reader can name where they were."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        self.token = token


class _HugeInt:
    """Stand-in for an integer longer than Python converts from text (sys.get_int_max_str_digits)."""

    __slots__ = ("digits",)

    def __init__(self, token: str) -> None:
        self.digits = len(token.lstrip("-"))


def _int_or_huge(token: str) -> int | _HugeInt:
    try:
        return int(token)
    except ValueError:
        return _HugeInt(token)


class _DupDict(dict[str, Any]):
    """An object that had a key more than once (the first value is kept, for the path)."""

    duplicates: list[str]


class _Strict:
    """json.loads hooks that note problems during the fast C parse; the tree is walked
    for their paths only when something was noted."""

    def __init__(self) -> None:
        self.suspect = False

    def pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        self.suspect = True
        seen: set[str] = set()
        dups: list[str] = []
        first = _DupDict()
        for key, value in pairs:
            if key in seen:
                if key not in dups:
                    dups.append(key)
            else:
                seen.add(key)
                first[key] = value
        first.duplicates = dups
        return first

    def constant(self, token: str) -> _NonFinite:
        self.suspect = True
        return _NonFinite(token)


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def _problems(node: Any, at: str, out: list[Detail], limit: int = 100) -> None:
    if len(out) >= limit:
        return
    if isinstance(node, _NonFinite):
        out.append(Detail(at or "body", f"{node.token} is not allowed: JSON numbers must be finite"))
    elif isinstance(node, _HugeInt):
        out.append(Detail(at or "body", f"an integer of {node.digits:,} digits is too large for any field"))
    elif isinstance(node, dict):
        for key in getattr(node, "duplicates", ()):
            out.append(Detail(_path(at, key), "duplicate key: each key may appear once per object"))
        for key, value in node.items():
            _problems(value, _path(at, key), out, limit)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _problems(value, _path(at, i), out, limit)


def parse_strict(raw: bytes) -> Any:
    """Parse JSON text, refusing NaN/Infinity and duplicate keys (ApiError 400/422)."""
    if not raw.strip():
        raise ApiError(400, "request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not UTF-8 (byte {exc.start})") from None
    hooks = _Strict()
    try:
        value = json.loads(text, object_pairs_hook=hooks.pairs, parse_constant=hooks.constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None
    except ValueError:
        # Valid JSON, but an integer over Python's digit limit (4,300): parse again, slowly,
        # only now, with a hook that keeps such numbers as markers to name their path.
        hooks = _Strict()
        hooks.suspect = True
        try:
            value = json.loads(
                text, object_pairs_hook=hooks.pairs, parse_constant=hooks.constant, parse_int=_int_or_huge
            )
        except (ValueError, RecursionError):
            raise ApiError(422, "request body has a number too large to read") from None
    if hooks.suspect:
        found: list[Detail] = []
        _problems(value, "", found)
        if found:
            raise ApiError(422, "request body has values JSON or this API does not allow", found)
    return value


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refusing (413) anything over max_bytes before reading it whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
        if length > max_bytes:
            raise _too_large(max_bytes)
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client disconnected while sending the body") from None
    return b"".join(chunks)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        f"request body over the limit of {max_bytes} bytes (API_MAX_BODY_BYTES); send fewer candles per request",
    )


async def read_json(request: Request, max_bytes: int) -> Any:
    raw = await read_body(request, max_bytes)
    if len(raw) > _THREAD_PARSE_BYTES:
        return await run_in_threadpool(parse_strict, raw)
    return parse_strict(raw)


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    value = await read_json(request, max_bytes)
    if not isinstance(value, dict):
        raise ApiError(
            422, "request body must be a JSON object", [Detail("body", f"expected an object, got {json_type(value)}")]
        )
    return value


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
