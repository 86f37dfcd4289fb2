"""The native EA (mql5/MT5PipelineEA.mq5) against the API contract.

MQL5 cannot be compiled on these machines, so this reads the source: every route it
calls, every header it sends and every JSON field it writes or reads must exist in the
API's served /openapi.json with that name and type. A mutated copy shows the check bites.
"""

from __future__ import annotations

import re

import anyio
import pytest

from mt5_pipeline_tests import ROOT
from mt5_pipeline_tests.api_support import api_client

EA = ROOT / "mql5" / "MT5PipelineEA.mq5"

# Which function builds (or reads) which schema of the document.
BUILDS = {
    "CandleJson": "Candle", "IngestBody": "IngestRequest", "AckBody": "AckRequest",
    "TradeJson": "TradeReport", "TradesBody": "TradesRequest", "PositionJson": "TerminalPosition",
    "ReconcileBody": "ReconcileRequest",
}  # fmt: skip
READS = {
    "PollSignals": "SignalsResponse", "HandleSignal": "Signal", "SignalPipSize": "SignalMeta",
    "SendClosedBars": "IngestResponse", "SignalPolicy": "SignalMeta", "Reconcile": "ReconcileResponse",
}  # fmt: skip
# A variable holding a body built by a builder: the ack outbox keeps AckBody's text, the
# trade reports outbox TradesBody's.
CARRIED = {"body": "AckBody", "trades": "TradesBody"}
# Helper -> the JSON types a property may have for it.
WRITE_TYPES = {
    "JStr": {"string"},
    "JNum": {"number"},
    "JInt": {"integer", "number"},
    "JArr": {"array"},
    "JBool": {"boolean"},
    "JNull": None,
}
READ_TYPES = {
    "JsonString": {"string"},
    "JsonNumber": {"number", "integer"},
    "JsonArray": {"array"},
    "JsonObject": {"object"},
    "JsonTickets": {"array"},
}
FUNCTION = re.compile(r"^(?:string|int|void|double|long|ulong|datetime|bool)\s+(\w+)\(", re.M)


@pytest.fixture(scope="module")
def openapi(tmp_path_factory) -> dict:
    from mt5_pipeline.settings import Settings
    from mt5_pipeline.storage import migrate

    db = tmp_path_factory.mktemp("mql5") / "mt5.db"
    migrate.upgrade(f"sqlite:///{db}")
    settings = Settings.from_env({"DATABASE_URL": f"sqlite:///{db}", "API_KEYS": "test-key-one"}, env_file=None)

    async def fetch():
        async with api_client(settings) as client:
            response = await client.get("/openapi.json")
            assert response.status_code == 200
            return response.json()

    return anyio.run(fetch)


def functions(source: str) -> dict[str, str]:
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("//"))
    starts = [(m.start(), m.group(1)) for m in FUNCTION.finditer(code)]
    return {
        name: code[pos : (starts[i + 1][0] if i + 1 < len(starts) else len(code))]
        for i, (pos, name) in enumerate(starts)
    }


def resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def types_of(doc: dict, schema: dict) -> set[str]:
    """JSON types a value may have (OpenAPI 3.1: an optional field is anyOf [..., {"type": "null"}])."""
    schema = resolve(doc, schema)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return set().union(*(types_of(doc, s) for s in schema[key]))
    kind = schema.get("type")
    return set(kind) if isinstance(kind, list) else {kind} if kind else set()


# What a field's problem says: the function builds a body with it, or reads it from one.
SAYS = {
    "builds": ("{field} is not a field of {schema}", "{field} sent as {helper} but {schema}.{field} is {types}"),
    "reads": ("reads {field}, not a field of {schema}", "reads {field} with {helper} but {schema}.{field} is {types}"),
}


def field_problem(doc: dict, verb: str, helper: str, field: str, schema: str) -> str | None:
    """What is wrong with a field a function writes or reads with `helper`, against `schema`."""
    prop = doc["components"]["schemas"][schema]["properties"].get(field)
    absent, clash = SAYS[verb]
    if prop is None:
        return absent.format(field=field, schema=schema)
    types = types_of(doc, prop)
    allowed = (WRITE_TYPES if verb == "builds" else READ_TYPES)[helper]
    if allowed is None:  # JNull: the field must take null
        return None if "null" in types else f"{field} sent as null but {schema}.{field} is not nullable"
    if types & allowed:
        return None
    return clash.format(field=field, helper=helper, schema=schema, types=types)


def contract_problems(source: str, doc: dict) -> list[str]:
    problems: list[str] = []
    schemas = doc["components"]["schemas"]
    funcs = functions(source)

    # JSON fields written and read, per function.
    for name, body in funcs.items():
        writes = re.findall(r"\b(J(?:Str|Num|Int|Null|Arr|Bool))\(\"(\w+)\"", body)
        reads = re.findall(r"\b(Json(?:String|Number|Array|Object|Tickets))\(\w+,\s*\"(\w+)\"", body)
        for verb, used, schema_of in (("builds", writes, BUILDS), ("reads", reads, READS)):
            if used and name not in schema_of:
                problems.append(f"{name} {verb} JSON but is not mapped to a schema")
                continue
            for helper, field in used:
                problem = field_problem(doc, verb, helper, field, schema_of[name])
                if problem is not None:
                    problems.append(f"{name}: {problem}")
        if name in BUILDS:
            missing = set(schemas[BUILDS[name]].get("required", [])) - {f for _, f in writes}
            if missing:
                problems.append(f"{name}: required fields of {BUILDS[name]} never sent: {sorted(missing)}")

    # Routes, query parameters, request and response bodies.
    calls = re.findall(r"ApiRequest\(\"(\w+)\",\s*\"([^\"]+)\"(?:\s*\+[^,]+)?,\s*(\w+|\"\")", source)
    if not calls:
        problems.append("no ApiRequest calls found")
    for method, target, body_func in calls:
        path, _, query = target.partition("?")
        op = doc["paths"].get(path, {}).get(method.lower())
        if op is None:
            problems.append(f"{method} {path} is not in /openapi.json")
            continue
        params = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "query"}
        for pair in filter(None, query.split("&")):
            key, _, value = pair.partition("=")
            if key not in params:
                problems.append(f"{method} {path}: query parameter {key} is not in /openapi.json")
                continue
            schema = params[key]["schema"]
            allowed = schema.get("enum", [schema["const"]] if "const" in schema else None)
            if allowed is not None and value not in allowed:
                problems.append(f"{method} {path}: {key}={value} is not one of {allowed}")
            if schema.get("type") == "integer" and not (
                value.isdigit() and schema.get("minimum", 0) <= int(value) <= schema.get("maximum", 2**63)
            ):
                problems.append(f"{method} {path}: {key}={value} is not an integer in range")
        if body_func != '""':
            ref = (
                op.get("requestBody", {})
                .get("content", {})
                .get("application/json", {})
                .get("schema", {})
                .get("$ref", "")
            )
            if not ref.endswith("/" + BUILDS.get(CARRIED.get(body_func, body_func), "?")):
                problems.append(
                    f"{method} {path}: body built by {body_func}, but the route takes {ref or 'no JSON body'}"
                )
        elif method == "GET":
            ref = op["responses"]["200"]["content"]["application/json"]["schema"].get("$ref", "")
            if not ref.endswith("/" + READS["PollSignals"]):
                problems.append(f"{method} {path}: answer is {ref}, the EA reads it as {READS['PollSignals']}")
    items = schemas[READS["PollSignals"]]["properties"]["signals"]["items"]["$ref"]
    if not items.endswith("/" + READS["HandleSignal"]):
        problems.append(f"signals[] are {items}, the EA reads them as {READS['HandleSignal']}")

    # Headers: Content-Type (the routes take JSON) and the API key header of the security scheme.
    key_headers = {s["name"].lower() for s in doc["components"]["securitySchemes"].values() if s.get("in") == "header"}
    headers = [
        line.split(":", 1)[0]
        for literal in re.findall(r'"((?:[^"\\]|\\.)*)"', funcs.get("ApiRequest", ""))
        for line in literal.split("\\r\\n")
        if re.match(r"^[A-Za-z][A-Za-z0-9-]*: ", line)
    ]
    for header in headers:
        if header.lower() != "content-type" and header.lower() not in key_headers:
            problems.append(f"header {header} is not the API's key header {sorted(key_headers)}")
    if not any(h.lower() in key_headers for h in headers):
        problems.append("ApiRequest sends no API key header")
    return problems


def test_every_route_header_and_field_the_ea_uses_is_in_the_served_openapi(openapi):
    source = EA.read_text()
    assert contract_problems(source, openapi) == []
    # It really uses the routes of its job.
    calls = set(re.findall(r"ApiRequest\(\"(\w+)\",\s*\"([^\"?]+)", source))
    assert calls == {
        ("POST", "/ingest"),
        ("GET", "/ea/signals"),
        ("POST", "/ea/ack"),
        ("POST", "/ea/trades"),
        ("POST", "/ea/reconcile"),
    }


@pytest.mark.parametrize(
    "old, new, complaint",
    [
        ('JStr("status", status)', 'JStr("state", status)', "state is not a field of AckRequest"),
        ('JStr("status", status)', 'JNull("status")', "status sent as null but AckRequest.status is not nullable"),
        ('JInt("tick_volume", r.tick_volume)', 'JStr("tick_volume", "57")', "tick_volume sent as JStr"),
        ('"/ea/ack"', '"/ea/acknowledge"', "POST /ea/acknowledge is not in /openapi.json"),
        ('JsonNumber(obj, "sl_pips")', 'JsonNumber(obj, "stop_pips")', "reads stop_pips"),
        ("X-API-Key: ", "X-Api-Token: ", "header X-Api-Token"),
        ("status=PENDING", "status=SENT", "status=SENT is not one of"),
        ('JInt("digits", _Digits)', 'JInt("digit", _Digits)', "digit is not a field of IngestRequest"),
        ('JsonNumber(meta, "pip_size")', 'JsonNumber(meta, "pipsize")', "reads pipsize, not a field of SignalMeta"),
        ('JInt("retcode", retcode)', 'JStr("retcode", "10018")', "retcode sent as JStr"),
        ('JStr("exit_reason", ExitReason(', 'JStr("reason", ExitReason(', "reason is not a field of TradeReport"),
        ('JsonString(meta, "entry_policy")', 'JsonString(meta, "policy")', "reads policy, not a field of SignalMeta"),
        (
            'JsonTickets(response, "missing"',
            'JsonTickets(response, "gone"',
            "reads gone, not a field of ReconcileResponse",
        ),
        ('"/ea/reconcile"', '"/ea/reconciliation"', "POST /ea/reconciliation is not in /openapi.json"),
        (
            'JInt("magic", InpMagic) + "," + JInt("account"',
            'JInt("account"',
            "required fields of ReconcileRequest never sent: ['magic']",
        ),
    ],
)
def test_the_contract_check_catches_a_drift(openapi, old, new, complaint):
    source = EA.read_text()
    assert old in source
    problems = contract_problems(source.replace(old, new), openapi)
    assert any(complaint in p for p in problems), problems


def test_the_header_says_plainly_it_was_not_compiled_here():
    head = "\n".join(EA.read_text().splitlines()[:12])
    assert "NOT COMPILED BY THE PROJECT" in head and "never been compiled" in head


def mql_function(name: str) -> str:
    return functions(EA.read_text())[name]


def transliterate(body: str):
    """A Python function from an MQL function made only of `if(cond) return expr;` and
    `return expr;` lines (the fallback pip rule): read, not compiled, but executed."""
    lines = []
    for line in body.splitlines()[1:]:
        line = line.strip()
        if line in ("{", "}", ""):
            continue
        m = re.fullmatch(r"if\((.+)\) return (.+);", line) or re.fullmatch(r"()return (.+);", line)
        assert m, f"the fallback pip rule is no longer plain enough to check: {line!r}"
        cond, expr = m.groups()
        cond = cond.replace("||", " or ").replace("&&", " and ")
        lines.append(f"    if {cond}: return {expr}" if cond else f"    return {expr}")
    namespace: dict = {}
    exec("def rule(digits, point):\n" + "\n".join(lines), namespace)
    return namespace["rule"]


def test_the_eas_fallback_pip_is_the_cores_rule_for_every_instrument_class():
    from mt5_pipeline.market import pips
    from mt5_pipeline_tests.execution.test_contract import INSTRUMENTS

    rule = transliterate(mql_function("LocalPipSize"))
    for row in INSTRUMENTS:
        digits, point = int(row["digits"]), float(row["point"])
        assert rule(digits, point) == pytest.approx(float(row["pip"])), row
        assert rule(digits, point) == pytest.approx(pips.pip_from_instrument(digits, point))
    # The check bites: the old gold guess (2 digits and not yen: 10 points) disagrees.
    mutated = mql_function("LocalPipSize").replace(
        "   return point;", "   if(digits == 2) return point * 10;\n   return point;"
    )
    assert transliterate(mutated)(2, 0.01) != pytest.approx(0.01)


def test_the_ea_places_stops_in_the_signals_own_pip_on_the_tick_grid():
    handle = mql_function("HandleSignal")
    assert 'SignalPipSize(JsonObject(obj, "meta"))' in handle
    # The terminal's own rule only when the signal has none, and said so in the log.
    fallback = handle[handle.index("if(pip <= 0)") :]
    assert fallback.index("LocalPipSize(") < fallback.index("PrintFormat(") < fallback.index("}")
    assert 'JsonNumber(meta, "pip_size")' in mql_function("SignalPipSize")
    stops = mql_function("Stops")
    assert (
        "SYMBOL_TRADE_TICK_SIZE" in stops and "ToTick(price - sign * slPips * pip" in stops and "PipSize" not in stops
    )
    assert "ToTick(buy ? tick.ask : tick.bid" in handle


def test_the_ea_trades_only_its_own_symbol_and_timeframe():
    handle = mql_function("HandleSignal")
    guard = handle[: handle.index("Claim(")]
    assert "symbol != _Symbol" in guard and 'JsonString(obj, "timeframe") != TimeframeName()' in guard


def test_the_dedupe_is_claimed_atomically_across_charts():
    take = mql_function("TakeLock")
    assert "GlobalVariableSetOnCondition(lock, me, 0)" in take
    claim = mql_function("Claim")
    # Check and claim happen between taking and releasing the symbol's lock.
    assert (
        claim.index("TakeLock(")
        < claim.index("GlobalVariableCheck(key)")
        < claim.index("Remember(key, OUTCOME_SENDING")
        < claim.index("ReleaseLock(")
    )
    handle = mql_function("HandleSignal")
    assert "if(!Claim(" in handle and "GlobalVariableCheck" not in handle
    # Another chart's order in flight is left alone: only a stale marker is looked up.
    assert "SENDING_STALE_SECONDS" in claim and "FindPlaced(" in claim


def test_filling_falls_back_to_return_and_volume_respects_min_and_step():
    handle = mql_function("HandleSignal")
    assert (
        "if(!g_trade.SetTypeFillingBySymbol(symbol))" in handle
        and "g_trade.SetTypeFilling(ORDER_FILLING_RETURN);" in handle
    )
    assert "TRADE_RETCODE_INVALID_FILL" in handle
    volume = mql_function("Volume")
    assert "SYMBOL_VOLUME_MIN" in volume and "SYMBOL_VOLUME_STEP" in volume and "MathFloor(InpLots / step" in volume
    assert "volume <= 0" in handle


def test_the_transient_retcodes_are_the_contracts_and_leave_nothing_final():
    from mt5_pipeline.execution import contract

    listed = {int(c) for c in re.findall(r"case (\d+):", mql_function("IsTransient"))}
    assert listed == set(contract.TRANSIENT_RETCODES)
    handle = mql_function("HandleSignal")
    branch = handle[
        handle.index("IsTransient(retcode)") : handle.index("else\n     {\n      Remember(key, OUTCOME_REJECTED")
    ]
    assert (
        "GlobalVariableDel(key)" in branch
        and "FindPlaced(" in branch
        and 'SendAck(signalId, 0, "REJECTED"' not in branch
    )


def test_a_rejection_with_retcode_0_is_not_stored_as_minus_zero():
    source = EA.read_text()
    assert "-(double)retcode" not in source
    assert "Remember(key, OUTCOME_REJECTED - (double)retcode);" in mql_function("HandleSignal")
    values = {name: float(v) for name, v in re.findall(r"#define (OUTCOME_\w+)\s+(-?\d+)", source)}
    # Every encoding is distinct from the others for any retcode 0..99999 and any time.
    assert values["OUTCOME_REJECTED"] - 0 != values["OUTCOME_EXPIRED"]
    assert values["OUTCOME_REJECTED"] - 99_999 > values["OUTCOME_SENDING"]
    assert values["OUTCOME_INVALID"] > values["OUTCOME_REJECTED"]
    # ...and decoded with the same constant.
    assert "OUTCOME_REJECTED - outcome" in mql_function("AckStored")


def test_acks_go_through_a_persisted_outbox_that_outlives_the_signals_pending_state():
    send = mql_function("SendAck")
    assert send.index("OutboxAppend(AckBody(") < send.index("FlushOutbox()")
    assert "FILE_READ | FILE_WRITE" in mql_function("OutboxAppend")
    flush = mql_function("FlushOutbox")
    assert 'ApiRequest("POST", "/ea/ack", body' in flush and "keep[k] = body" in flush
    timer = mql_function("OnTimer")
    assert timer.index("FlushOutbox()") < timer.index("PollSignals()")  # not tied to the signal being pulled again


def test_the_ea_describes_its_instrument_with_its_bars():
    ingest = mql_function("IngestBody")
    assert 'JInt("digits", _Digits)' in ingest and 'JNum("point", _Point, _Digits)' in ingest


def test_the_ea_keeps_the_bridges_comment_rule():
    source = EA.read_text()
    assert "StringSubstr(signalId, 0, 31)" in source
    from mt5_pipeline.bridge import orders

    assert orders.COMMENT_MAX == 31


# ---- the execution policy, trades coming back, reconciliation (docs/trades.md) ------------


def test_the_ea_obeys_the_policy_the_signal_carries_with_the_cores_names():
    from mt5_pipeline.execution.contract import POLICY_SKIP
    from mt5_pipeline.execution.execution_policy import ENTRY_POLICIES, EXIT_REASONS

    source = EA.read_text()
    policy = mql_function("SignalPolicy")
    assert 'JsonString(meta, "entry_policy")' in policy and 'JsonNumber(meta, "max_hold_bars")' in policy
    # The policy names it knows are exactly the core's; the inputs only stand in for a signal without them.
    named = set(re.findall(r'entryPolicy [!=]= "(\w+)"', policy + mql_function("PolicyEntry")))
    assert named == set(ENTRY_POLICIES)
    assert re.search(r'input string InpEntryPolicy\s*= "one_per_symbol_timeframe"', source)
    assert re.search(r"input int\s+InpMaxHoldBars\s*= 60;", source)  # LABEL_MAX_HOLD_BARS's default
    entry = mql_function("PolicyEntry")
    assert entry.count(POLICY_SKIP) == 2  # one_per_symbol_timeframe, and reverse with a same-side signal
    assert "ClosePosition(tickets[i], WHY_OPPOSITE)" in entry
    handle = mql_function("HandleSignal")
    # Decided before any order is built; a skip is final (stored, acked REJECTED saying why), "not now" is not.
    assert handle.index("PolicyEntry(") < handle.index("g_trade.Buy(")
    skip = handle[handle.index("if(verdict == 0)") : handle.index("if(verdict < 0)")]
    assert "Remember(key, OUTCOME_SKIPPED)" in skip and 'SendAck(signalId, 0, "REJECTED", why' in skip
    later = handle[handle.index("if(verdict < 0)") : handle.index("SetTypeFillingBySymbol")]
    assert "GlobalVariableDel(key)" in later and "SendAck" not in later
    assert "RememberPosition(ticket, " in handle and "RememberPosition(found, " in handle
    # Every exit reason it reports is one the API takes.
    reasons = set(re.findall(r'return "(\w+)";', mql_function("ExitReason"))) | set(
        re.findall(r'"(time|opposite_signal)"', mql_function("ExitReason"))
    )
    assert reasons <= set(EXIT_REASONS) and {"sl", "tp", "time", "opposite_signal", "manual"} == reasons


def test_the_ea_closes_at_the_time_exit_when_a_bar_closes_counting_bars_not_minutes():
    exits = mql_function("TimeExits")
    assert "Bars(_Symbol, _Period, entryBar, newestClosed)" in exits and "held >= hold" in exits
    assert "ClosePosition(tickets[i], WHY_TIME)" in exits
    # The entry bar is the signal's bar + one bar (execution_policy.entry_bar).
    assert "IsoToTime(signalTime) + ServerOffsetSeconds() + PeriodSeconds(_Period)" in mql_function("RememberPosition")
    assert "TimeExits();" in mql_function("OnTick") and "TimeExits();" in mql_function("OnTimer")
    # Why is written before the close is sent.
    close = mql_function("ClosePosition")
    assert close.index('GlobalVariableSet(PosKey(ticket, "why")') < close.index("PositionClose(")


def test_trades_are_reported_from_the_deals_history_through_a_persisted_outbox():
    report = mql_function("ReportTrades")
    assert "HistorySelect(" in report and "DEAL_POSITION_ID" in report and "FlushTrades()" in report
    trade = mql_function("TradeJson")
    assert "HistorySelectByPosition(ticket)" in trade and "DEAL_ENTRY_IN" in trade and "DEAL_ENTRY_OUT" in trade
    for part in ("DEAL_PROFIT", "DEAL_SWAP", "DEAL_COMMISSION", "ServerToUtc("):
        assert part in trade, part
    assert "FILE_READ | FILE_WRITE" in mql_function("QueueTrade")
    flush = mql_function("FlushTrades")
    assert 'ApiRequest("POST", "/ea/trades", trades' in flush and "keep[k] = line" in flush


def test_the_ea_reconciles_at_start_and_every_minute_and_never_closes_for_it():
    reconcile = mql_function("Reconcile")
    assert reconcile.index("ReportTrades()") < reconcile.index('"/ea/reconcile"')
    assert "QueueTrade(missing[k])" in reconcile
    assert "PositionClose" not in reconcile and "ClosePosition" not in reconcile
    assert "Reconcile();" in mql_function("OnInit")
    timer = mql_function("OnTimer")
    assert "g_lastReconcile >= RECONCILE_SECONDS" in timer
    assert re.search(r"#define RECONCILE_SECONDS 60\b", EA.read_text())
