"""POST /ingest through the real app and the ingest core, on both backends."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from mt5_pipeline.storage.engine import get_engine
from mt5_pipeline.storage.schema import candles as candles_table
from mt5_pipeline_tests.api_support import KEYS, TcpProxy, api_client, bars

pytestmark = pytest.mark.anyio


@pytest.fixture
def api_settings(db_url, settings_for):
    return settings_for(db_url, API_KEYS=KEYS, EA_SERVER_PORT=9)


def stored(url: str, symbol: str = "EURUSD") -> list[dict]:
    t = candles_table
    with get_engine(url).connect() as conn:
        rows = conn.execute(select(t).where(t.c.symbol == symbol).order_by(t.c.ts)).mappings().all()
    return [dict(r) for r in rows]


def body(candles: list[dict], symbol: str = "EURUSD", timeframe: str = "M1") -> dict:
    return {"symbol": symbol, "timeframe": timeframe, "candles": candles}


async def test_ingest_inserts_then_counts_resends(api_settings, db_url):
    sent = bars(30)
    async with api_client(api_settings) as client:
        first = await client.post("/ingest", json=body(sent))
        again = await client.post("/ingest", json=body(sent))
        changed = copy.deepcopy(sent)
        changed[-1]["close"] = round(changed[-1]["close"] + 0.00001, 5)
        changed[-1]["high"] = round(max(changed[-1]["high"], changed[-1]["close"]), 5)
        third = await client.post("/ingest", json=body(changed))
    assert first.status_code == 200, first.text
    assert first.json() == {"success": True, "received": 30, "inserted": 30, "updated": 0, "unchanged": 0}
    assert again.json() == {"success": True, "received": 30, "inserted": 0, "updated": 0, "unchanged": 30}
    assert third.json() == {"success": True, "received": 30, "inserted": 0, "updated": 1, "unchanged": 29}
    rows = stored(db_url)
    assert len(rows) == 30
    assert rows[-1]["close"] == pytest.approx(changed[-1]["close"])
    assert rows[0]["ts"].replace(tzinfo=timezone.utc) == datetime.fromtimestamp(sent[0]["time"], timezone.utc)


async def test_ingest_takes_iso_times_and_optional_fields(api_settings, db_url):
    sent = bars(3)
    for candle in sent:
        candle["time"] = datetime.fromtimestamp(candle["time"], timezone.utc).isoformat().replace("+00:00", "Z")
        del candle["spread"], candle["real_volume"]
    async with api_client(api_settings) as client:
        response = await client.post("/ingest", json=body(sent))
    assert response.status_code == 200, response.text
    assert response.json()["inserted"] == 3
    assert [r["spread"] for r in stored(db_url)] == [0, 0, 0]


async def test_empty_batch_is_fine(api_settings):
    async with api_client(api_settings) as client:
        response = await client.post("/ingest", json=body([]))
    assert response.json() == {"success": True, "received": 0, "inserted": 0, "updated": 0, "unchanged": 0}


def _bad(mutate) -> list[dict]:
    candles = bars(5)
    mutate(candles)
    return candles


BAD_BATCHES = {
    "wrong type": (lambda c: c[3].update(high="1.2"), "candles[3].high"),
    "missing field": (lambda c: c[2].pop("close"), "candles[2].close"),
    "negative price": (lambda c: c[1].update(low=-1.0), "candles[1].low"),
    "zero price": (lambda c: c[1].update(open=0.0), "candles[1]"),
    "inverted prices": (lambda c: c[4].update(high=c[4]["low"] - 0.001), "candles[4]"),
    "misaligned time": (lambda c: c[0].update(time=c[0]["time"] + 30), "candles[0].time"),
    "future time": (lambda c: c[4].update(time=c[4]["time"] + 3600), "candles[4].time"),
    "overflowing number": (lambda c: c[2].update(high=float("inf")), "candles[2].high"),
    "unparseable time": (lambda c: c[2].update(time="yesterday"), "candles[2].time"),
    "negative volume": (lambda c: c[3].update(tick_volume=-5), "candles[3].tick_volume"),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCHES))
async def test_bad_candles_are_422_naming_the_path(api_settings, db_url, case):
    mutate, loc = BAD_BATCHES[case]
    candles = _bad(mutate)
    # inf cannot be written as JSON; 1e400 is what a client would send, and Python reads it as inf.
    raw = json.dumps(body(candles)).replace("Infinity", "1e400").encode()
    async with api_client(api_settings) as client:
        response = await client.post("/ingest", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["success"] is False
    locs = [d["loc"] for d in answer["details"]]
    assert any(loc_ == loc or loc_.startswith(loc + ".") for loc_ in locs), locs
    assert stored(db_url) == []


@pytest.mark.parametrize(
    ("envelope", "locs"),
    [
        ({"timeframe": "M1", "candles": []}, {"symbol"}),
        ({"symbol": "EURUSD", "timeframe": "M2", "candles": []}, {"timeframe"}),
        ({"symbol": "EURUSD", "timeframe": "M1"}, {"candles"}),
        ({"symbol": "EURUSD", "timeframe": "M1", "candles": {"time": 1}}, {"candles"}),
        (
            {"symbol": ["EURUSD"], "timeframe": 1, "candles": [1, "x"]},
            {"symbol", "timeframe", "candles[0]", "candles[1]"},
        ),
    ],
)
async def test_bad_envelope_is_422(api_settings, envelope, locs):
    async with api_client(api_settings) as client:
        response = await client.post("/ingest", json=envelope)
    assert response.status_code == 422
    assert {d["loc"] for d in response.json()["details"]} == locs


async def test_rejected_batch_stores_nothing_and_touches_nothing(api_settings, db_url):
    earlier = bars(20)
    async with api_client(api_settings) as client:
        assert (await client.post("/ingest", json=body(earlier[:10]))).status_code == 200
        before = stored(db_url)
        # Re-sends of stored bars with new values, new bars, and one bad bar at the end.
        batch = copy.deepcopy(earlier)
        for candle in batch[:10]:
            candle["close"] = candle["open"]
        batch[-1]["low"] = batch[-1]["high"] + 0.01
        response = await client.post("/ingest", json=body(batch))
    assert response.status_code == 422
    assert [d["loc"].startswith("candles[19]") for d in response.json()["details"]] == [True] * len(
        response.json()["details"]
    )
    assert stored(db_url) == before  # same rows, same values, same ingested_at


async def test_default_body_limit_takes_100k_candles(api_settings):
    one = json.dumps(bars(1)[0] | {"time": 1_799_999_940, "tick_volume": 123456}, separators=(", ", ": "))
    hundred_k = len('{"symbol": "EURUSD", "timeframe": "M1", "candles": []}') + 100_000 * (len(one) + 2)
    assert api_settings.api_max_body_bytes > hundred_k


@pytest.fixture
def pg_behind_proxy(pg_url):
    url = make_url(pg_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
    proxy.stop()


async def test_database_down_is_503_then_serves_again(pg_behind_proxy, settings_for, pg_url):
    proxy, proxied_url = pg_behind_proxy
    settings = settings_for(proxied_url, API_KEYS=KEYS)
    async with api_client(settings) as client:
        assert (await client.post("/ingest", json=body(bars(5)))).status_code == 200
        proxy.stop()  # the database goes away; pooled connections are cut
        down = [
            await client.post("/ingest", json=body(bars(5))),
            await client.get("/ea/queue-status"),
            await client.get("/ea/signals"),
            await client.post("/ea/ack", json={"signal_id": "x", "status": "FILLED"}),
        ]
        health = await client.get("/health")
        proxy.start()  # back, on the same address
        back = await client.post("/ingest", json=body(bars(6)))
        status = await client.get("/ea/queue-status")
    for response in down:
        assert response.status_code == 503, (response.request.url, response.text)
        assert response.json() == {"success": False, "error": "database unavailable; retry later"}
        assert int(response.headers["Retry-After"]) > 0
        assert "postgres" not in response.text and str(proxy.port) not in response.text
    assert health.status_code == 503 and health.json()["database"] == "unavailable"
    assert back.status_code == 200, back.text
    assert back.json()["inserted"] == 1
    assert status.status_code == 200
    assert len(stored(pg_url)) == 6


async def test_ingest_keeps_the_eas_digits_and_point_for_the_pip(api_settings, db_url):
    from mt5_pipeline.market.pips import PipSizeUnknown, pip_size_for

    gold = bars(5, start_price=2034.12, step=0.37)
    for candle in gold:
        for name in ("open", "high", "low", "close"):
            candle[name] = round(candle[name], 2)
    async with api_client(api_settings) as client:
        bad = await client.post("/ingest", json={**body(gold, "XAUUSD"), "digits": 2.5, "point": -1})
        wrong = await client.post("/ingest", json={**body(gold, "XAUUSD"), "digits": 2, "point": 0.001})
        with pytest.raises(PipSizeUnknown):
            pip_size_for(api_settings, db_url, "XAUUSD")
        good = await client.post("/ingest", json={**body(gold, "XAUUSD"), "digits": 2, "point": 0.01})
        index = await client.post("/ingest", json={**body(gold, "US30"), "digits": 1})
    assert bad.status_code == 422
    assert {d["loc"] for d in bad.json()["details"]} == {"digits", "point"}
    assert wrong.status_code == 422 and wrong.json()["details"][0]["loc"] == "point"
    assert "does not match digits 2" in wrong.json()["details"][0]["message"]
    assert good.status_code == 200 and index.status_code == 200
    assert pip_size_for(api_settings, db_url, "XAUUSD") == pytest.approx(0.01)
    assert pip_size_for(api_settings, db_url, "US30") == pytest.approx(0.1)
    assert len(stored(db_url, "XAUUSD")) == 5


async def test_an_absurd_price_is_a_422_naming_the_row_and_nothing_is_stored(api_settings, db_url):
    sent = bars(10)
    sent[7] = {**sent[7], "high": 1e308}
    async with api_client(api_settings) as client:
        response = await client.post("/ingest", json=body(sent))
    assert response.status_code == 422
    assert response.json()["details"][0]["loc"] == "candles[7].high"
    assert "beyond any instrument's price" in response.json()["details"][0]["message"]
    assert stored(db_url) == []
