"""What an environment variable may say: one parser per kind of value.

Each takes the raw text and returns the typed value, or raises ValueError with a message
that, prefixed with the variable's name, tells the user what to write instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from mt5_pipeline.settings.timeframes import TIMEFRAME_SECONDS

MODEL_KINDS = ("random_forest", "hist_gradient_boosting")
BASELINE_GATES = ("auc", "log_loss", "net_pips")


def parse_str(raw: str) -> str:
    return raw.strip()


def parse_int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {raw!r}") from None


def parse_niceness(raw: str) -> int:
    value = parse_int(raw)
    if not 0 <= value <= 19:
        raise ValueError(f"expected a niceness from 0 (the trade's own priority) to 19 (the lowest), got {raw!r}")
    return value


def parse_float(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"expected a finite number, got {raw!r}")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def parse_keys(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def parse_http_url(raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
    try:
        _ = parts.port  # raises on a non-numeric port
    except ValueError:
        raise ValueError(f"the port in {value!r} is not a number") from None
    return value


def parse_db_url(raw: str) -> str:
    value = raw.strip()
    if not re.match(r"^(sqlite|postgres|postgresql)(\+\w+)?://", value):
        raise ValueError("expected a SQLAlchemy URL such as sqlite:///./data/mt5.db or postgresql://user@host:5432/db")
    return value


def parse_symbol_map(parse_value: Callable[[str], Any]) -> Callable[[str], dict[str, Any]]:
    """Parse ``EURUSD=..., USDJPY=...`` into a dict keyed by upper-case symbol."""

    def parse(raw: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for item in (i.strip() for i in raw.split(",")):
            if not item:
                continue
            if "=" not in item:
                raise ValueError(f"expected SYMBOL=value items separated by commas, got {item!r}")
            symbol, value = (s.strip() for s in item.split("=", 1))
            out[symbol.upper()] = parse_value(value)
        return out

    return parse


def parse_sl_tp(raw: str) -> tuple[float, float]:
    parts = raw.split("/")
    if len(parts) != 2:
        raise ValueError(f"expected SL/TP in pips like 20/40, got {raw!r}")
    sl, tp = (parse_float(p) for p in parts)
    if sl <= 0 or tp <= 0:
        raise ValueError(f"pips must be positive, got {raw!r}")
    return sl, tp


def parse_choice(*choices: str, upper: bool = False) -> Callable[[str], str]:
    """One of a few words, case-insensitive; the value in the case the choices are written in."""
    expected = f"{', '.join(choices[:-1])} or {choices[-1]}"

    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected {expected}, got {raw!r}")
        return value

    return parse


parse_label_mode = parse_choice("horizon", "triple_barrier")
parse_env_name = parse_choice("development", "production")


def parse_opt(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An optional variable: empty means unset."""
    return lambda raw: parse(raw) if raw.strip() else None


def parse_cron(raw: str) -> str:
    value = raw.strip()
    if len(value.split()) != 5:
        raise ValueError(f"expected a 5-field cron expression like '0 3 * * *', got {raw!r}")
    return value


parse_log_level = parse_choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", upper=True)
parse_bridge_mode = parse_choice("push", "pull")


def parse_offset_hours(raw: str) -> float | None:
    """``auto`` (None: measured from the terminal) or hours such as 2, 3 or -4."""
    if raw.strip().lower() in ("", "auto"):
        return None
    value = parse_float(raw)
    if not -12 <= value <= 14:
        raise ValueError(f"expected auto or hours between -12 and 14, got {raw!r}")
    return value


def parse_server_zone(raw: str) -> str | None:
    """``auto`` (None) or a zone server_time.parse_zone reads, kept as its normal name."""
    if raw.strip().lower() in ("", "auto"):
        return None
    from mt5_pipeline.server_time import parse_zone  # numpy/pandas only when a zone is set

    return parse_zone(raw).name


def parse_model_kind(raw: str) -> str:
    value = raw.strip().lower()
    if value not in MODEL_KINDS:
        raise ValueError(f"expected one of {', '.join(MODEL_KINDS)}, got {raw!r}")
    return value


def parse_baselines(raw: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(i.strip().lower() for i in raw.split(",") if i.strip()))
    unknown = [i for i in items if i not in BASELINE_GATES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; expected some of {', '.join(BASELINE_GATES)}")
    return items


def parse_entry_policy(raw: str) -> str:
    value = raw.strip().lower()
    choices = ("one_per_symbol_timeframe", "stack", "reverse")  # execution_policy.ENTRY_POLICIES
    if value not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
    return value


def parse_timeframes(raw: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(i.strip().upper() for i in raw.split(",") if i.strip()))
    if not items:
        raise ValueError("expected at least one timeframe, e.g. M1 or M1,H1")
    unknown = [i for i in items if i not in TIMEFRAME_SECONDS]
    if unknown:
        raise ValueError(f"unknown timeframe(s) {unknown}; expected some of {', '.join(TIMEFRAME_SECONDS)}")
    return items
