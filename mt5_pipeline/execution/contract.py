"""The execution contract: what the pipeline sends an EA, what an EA answers, and what
each answer does to a queued signal. Decided here, once; the API, the reference EA
(``apps/ea_sim``), the bridge and the MQL5 EA's contract test all read it from here.

- the signal body: :data:`PAYLOAD_KEYS` (the seed's keys plus ``expires_at``), checked by
  :func:`validate_signal` and turned into the typed :class:`~mt5_pipeline.execution.trade_signal.Signal`
  by :func:`parse_signal`;
- :data:`MAX_BODY_BYTES` for one signal body and :data:`SYMBOL_PATTERN` for a symbol;
- the acks: :data:`ACK_OUTCOMES` says which queue status each ack status leads to and
  :func:`queue_status_after_ack` never moves a signal backwards (docs/execution.md);
- the pip: :func:`pip_for_signal` is the stops' unit for whoever places the order:
  the signal's ``meta.pip_size`` (decided by :mod:`mt5_pipeline.market.pips`, the rule labels,
  backtest and promotion used), and only for a signal without one the same core rule
  applied to the terminal's own digits and point;
- :data:`TRANSIENT_RETCODES`: terminal answers that say "not now", never "no";
- the execution policy: :func:`policy_for_signal` is the entry rule and time exit the
  signal's ``meta.entry_policy`` / ``meta.max_hold_bars`` carry (decided by
  :mod:`mt5_pipeline.execution.execution_policy`, the backtest's policy), so the bridge and the
  MQL5 EA obey the policy the model was judged under without re-deriving it. A signal
  the policy skips is acked ``REJECTED`` with a message starting :data:`POLICY_SKIP`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeGuard

from mt5_pipeline.execution.execution_policy import ENTRY_POLICIES, ExecutionPolicy
from mt5_pipeline.execution.trade_signal import PAYLOAD_KEYS, REQUIRED_META, SIDES, Signal
from mt5_pipeline.market.pips import pip_size
from mt5_pipeline.market.symbols import SYMBOL_PATTERN, SYMBOL_RE, SYMBOL_RULE
from mt5_pipeline.settings import TIMEFRAME_SECONDS

__all__ = [
    "ACK_OUTCOMES",
    "ACK_STATUSES",
    "POLICY_SKIP",
    "MAX_BODY_BYTES",
    "PAYLOAD_KEYS",
    "SYMBOL_PATTERN",
    "SYMBOL_RE",
    "TRANSIENT_RETCODES",
    "ack_outcome",
    "parse_signal",
    "pip_for_signal",
    "policy_for_signal",
    "queue_status_after_ack",
    "validate_signal",
]

# One signal is well under a kilobyte; a 64 KiB body is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024

# ---- acks ----------------------------------------------------------------------------------
# What an EA may report, and the queue status each one leads to.
ACK_OUTCOMES: dict[str, str] = {
    "FILLED": "ACKED",  # a position or order exists; the ticket is kept
    "PLACED": "ACKED",  # exchange execution: the order is queued at the exchange
    "PARTIAL": "ACKED",  # part of the volume filled: a position exists
    "ACKED": "ACKED",  # an EA that just says it took the signal
    "REJECTED": "REJECTED",  # the terminal or the EA said no (retcode and description in the message)
    "EXPIRED": "EXPIRED",  # it arrived after expires_at and was not traded
}
ACK_STATUSES = tuple(ACK_OUTCOMES)
# How far along a queue status is. An ack moves a signal only forwards: a fill is a fact
# (a position exists) and wins over every other status; an EA's refusal wins over our own
# guesses (FAILED, EXPIRED by the pusher); an EA's expiry over nothing the EA itself said.
_RANK = {"PENDING": 0, "SENT": 1, "FAILED": 1, "EXPIRED": 2, "REJECTED": 3, "ACKED": 4}


def ack_outcome(status: str) -> str:
    """The queue status an ack status leads to; ValueError naming the field for an unknown one."""
    outcome = ACK_OUTCOMES.get(str(status).strip().upper())
    if outcome is None:
        raise ValueError(f"status: expected one of {', '.join(ACK_STATUSES)}, got {status!r}")
    return outcome


def queue_status_after_ack(current: str, ack_status: str) -> str:
    """The queue status once an ack of ``ack_status`` arrives for a signal in ``current``."""
    target = ack_outcome(ack_status)
    return target if _RANK[target] > _RANK.get(current, 0) else current


# ---- the terminal's answers -------------------------------------------------------------------
# MqlTradeResult retcodes that say "not now": the request never became an order and the
# same request may succeed a moment later. Never final while the signal has time left.
TRANSIENT_RETCODES = frozenset(
    {
        10004,  # requote (after the one immediate retry)
        10012,  # request canceled by timeout
        10020,  # prices changed (after the one immediate retry)
        10021,  # no quotes to process the request
        10024,  # too frequent requests
        10028,  # request locked for processing
        10031,  # no connection with the trade server
    }
)


# ---- the pip -------------------------------------------------------------------------------
def pip_for_signal(
    signal: Signal | Mapping[str, Any],
    digits: int | None,
    point: float | None,
    overrides: Mapping[str, float] | None = None,
) -> tuple[float, str]:
    """(pip, where it came from) for placing ``signal``'s stops.

    ``meta.pip_size`` when the signal carries one: the pip the labels, the backtest and the
    promotion gate were computed with. Otherwise (an older API, a hand-made signal) the same
    core rule (:func:`mt5_pipeline.market.pips.pip_size`) on the terminal's digits and point;
    the caller logs that it had to. Raises PipSizeUnknown when neither gives one."""
    meta = signal.meta if isinstance(signal, Signal) else (signal.get("meta") or {})
    said = meta.get("pip_size") if isinstance(meta, Mapping) else None
    if _is_number(said) and said > 0:
        return float(said), "meta.pip_size"
    symbol = signal.symbol if isinstance(signal, Signal) else signal["symbol"]
    return pip_size(symbol, overrides, (digits, point)), "local rule (the signal carries no meta.pip_size)"


# ---- the execution policy ------------------------------------------------------------------
# The ack message of a signal the policy did not trade (status REJECTED: the EA said no,
# on purpose). Read by people and by the EA contract test; the reason follows.
POLICY_SKIP = "skipped by the execution policy"


def policy_for_signal(signal: Signal | Mapping[str, Any], default: ExecutionPolicy) -> tuple[ExecutionPolicy, str]:
    """(the policy to apply to ``signal``, where it came from): the signal's
    ``meta.entry_policy`` and ``meta.max_hold_bars`` (what the pipeline decided and the
    backtest simulated); each one missing (an older API) is the executor's ``default``."""
    meta = signal.meta if isinstance(signal, Signal) else (signal.get("meta") or {})
    entry = meta.get("entry_policy") if isinstance(meta, Mapping) else None
    hold = meta.get("max_hold_bars") if isinstance(meta, Mapping) else None
    entry_said = entry if isinstance(entry, str) and entry in ENTRY_POLICIES else None
    hold_said = hold if isinstance(hold, int) and not isinstance(hold, bool) and hold >= 1 else None
    said = entry_said is not None, hold_said is not None
    policy = ExecutionPolicy(entry_said or default.entry, hold_said or default.max_hold_bars)
    return policy, "meta" if all(said) else ("local settings" if not any(said) else "meta, partly local settings")


# ---- the signal body -----------------------------------------------------------------------
def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None  # a time without a zone is ambiguous


def _meta_problems(meta: Any) -> list[str]:
    if not isinstance(meta, dict):
        return ["meta: expected an object with model, model_version and probability"]
    problems = []
    for key in REQUIRED_META:
        value = meta.get(key)
        ok = _is_number(value) and 0 <= value <= 1 if key == "probability" else isinstance(value, str) and value != ""
        if not ok:
            problems.append(
                f"meta.{key}: required, {'a number in [0, 1]' if key == 'probability' else 'a non-empty string'}"
            )
    if "pip_size" in meta and not (_is_number(meta["pip_size"]) and meta["pip_size"] > 0):
        problems.append("meta.pip_size: expected a positive number (the price size of one pip)")
    if "entry_policy" in meta and meta["entry_policy"] not in ENTRY_POLICIES:
        problems.append(f"meta.entry_policy: expected one of {', '.join(ENTRY_POLICIES)}")
    if "max_hold_bars" in meta and not (
        isinstance(meta["max_hold_bars"], int)
        and not isinstance(meta["max_hold_bars"], bool)
        and meta["max_hold_bars"] >= 1
    ):
        problems.append("meta.max_hold_bars: expected a whole number of bars, at least 1")
    return problems


def validate_signal(body: Any) -> list[str]:
    """Everything wrong with a signal body, as messages naming the field; [] if valid."""
    if not isinstance(body, dict):
        return ["body: expected a JSON object"]
    errors = [f"{key}: required" for key in PAYLOAD_KEYS if key not in body]
    if "signal_id" in body:
        try:
            if not isinstance(body["signal_id"], str):
                raise ValueError
            uuid.UUID(body["signal_id"])
        except ValueError:
            errors.append("signal_id: expected a UUID string")
    for key in ("timestamp", "expires_at"):
        if key in body and _parse_time(body[key]) is None:
            errors.append(f"{key}: expected an ISO 8601 time with a zone, e.g. 2025-10-25T10:30:00Z")
    if "symbol" in body and not (isinstance(body["symbol"], str) and SYMBOL_RE.match(body["symbol"])):
        errors.append(f"symbol: expected {SYMBOL_RULE}")
    if "timeframe" in body and body["timeframe"] not in TIMEFRAME_SECONDS:
        errors.append(f"timeframe: expected one of {', '.join(TIMEFRAME_SECONDS)}")
    if "side" in body and body["side"] not in SIDES:
        errors.append("side: expected BUY or SELL")
    if "confidence" in body and not (_is_number(body["confidence"]) and 0 < body["confidence"] <= 1):
        errors.append("confidence: expected a number in (0, 1]")
    for key in ("sl_pips", "tp_pips", "price"):
        if key in body and not (_is_number(body[key]) and body[key] > 0):
            errors.append(f"{key}: expected a positive number")
    if "meta" in body:
        errors.extend(_meta_problems(body["meta"]))
    return errors


def parse_signal(body: Any) -> tuple[Signal | None, list[str]]:
    """(the typed Signal, []) for a valid body, else (None, messages naming each field)."""
    errors = validate_signal(body)
    if errors:
        return None, errors
    try:
        return Signal.from_payload(body), []
    except ValueError as exc:  # the value's own invariants, should validation ever miss one
        return None, [str(exc)]
