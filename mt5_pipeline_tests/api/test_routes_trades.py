"""Trades come back: POST /ea/trades, GET /ea/trades, POST /ea/reconcile, and what /health
and /metrics show of them, through the real app on PostgreSQL and SQLite."""

from __future__ import annotations

import pytest

from mt5_pipeline.signals import queue
from mt5_pipeline.storage.trades import get_trades
from mt5_pipeline_tests.api_support import KEYS, api_client, make_signal

pytestmark = pytest.mark.anyio

MAGIC = 250101


@pytest.fixture
def trade_settings(db_url, settings_for):
    return settings_for(db_url, API_KEYS=KEYS, EA_PUSH_ENABLED="false")


def _open(ticket: int, signal_id: str | None, **extra) -> dict:
    report = {
        "ticket": ticket,
        "symbol": "EURUSD",
        "side": "BUY",
        "volume": 0.1,
        "open_time": "2024-10-27T03:35:00Z",
        "open_price": 1.08012,
        "sl": 1.07812,
        "tp": 1.08412,
        "magic": MAGIC,
        "account": 5000001,
        **extra,
    }
    if signal_id is not None:
        report["signal_id"] = signal_id
    return report


def _close(ticket: int, signal_id: str | None, **extra) -> dict:
    closing = {
        "close_time": 1730000000 + 3600,
        "close_price": 1.08412,
        "exit_reason": "tp",
        "profit": 40.0,
        "swap": -0.5,
        "commission": -0.7,
    }
    return _open(ticket, signal_id, **{**closing, **extra})


async def test_open_then_close_upsert_one_row_and_a_repeat_changes_nothing(trade_settings, db_url):
    signal = make_signal(version="v-live-1")
    signal["meta"]["pip_size"] = 0.0001
    assert queue.enqueue(db_url, signal)
    sid = signal["signal_id"]
    async with api_client(trade_settings) as client:
        first = await client.post("/ea/trades", json={"trades": [_open(101, sid)]})
        assert first.status_code == 200, first.text
        assert first.json()["inserted"] == 1 and first.json()["trades"][0]["status"] == "open"
        listed = (await client.get("/ea/trades", params={"magic": MAGIC})).json()["trades"]
        assert [t["ticket"] for t in listed] == [101]
        assert listed[0]["model_version"] == "v-live-1" and listed[0]["timeframe"] == "M1"

        closed = await client.post("/ea/trades", json={"trades": [_close(101, sid)]})
        body = closed.json()
        assert body["updated"] == 1 and body["trades"][0]["status"] == "closed"
        again = (await client.post("/ea/trades", json={"trades": [_close(101, sid)]})).json()
        assert again["unchanged"] == 1 and again["updated"] == 0
        # A late open report never reopens the closed trade.
        late = (await client.post("/ea/trades", json={"trades": [_open(101, sid)]})).json()
        assert late["unchanged"] == 1 and late["trades"][0]["status"] == "closed"
        assert (await client.get("/ea/trades")).json()["trades"] == []

    row = get_trades(db_url, [101])[101]
    assert row["pips"] == pytest.approx(40.0)  # (1.08412 - 1.08012) / 0.0001, computed by the API
    assert row["exit_reason"] == "tp" and row["swap"] == -0.5 and row["commission"] == -0.7
    assert row["unknown_signal"] is False


async def test_unknown_signal_is_kept_and_flagged(trade_settings, db_url):
    async with api_client(trade_settings) as client:
        response = await client.post(
            "/ea/trades", json={"trades": [_close(202, "no-such-signal"), _close(203, None, side="SELL")]}
        )
    body = response.json()
    assert response.status_code == 200 and body["flagged"] == 2 and body["inserted"] == 2
    rows = get_trades(db_url, [202, 203])
    assert rows[202]["unknown_signal"] is True and rows[202]["model_version"] is None
    assert rows[203]["pips"] == pytest.approx(-40.0)  # a SELL that the price rose against


@pytest.mark.parametrize(
    "change, loc",
    [
        ({"side": "LONG"}, "trades[0].side"),
        ({"volume": 0}, "trades[0].volume"),
        ({"open_time": "yesterday"}, "trades[0].open_time"),
        ({"exit_reason": "panic"}, "trades[0].exit_reason"),
        ({"close_price": None}, "trades[0].close_price"),
        ({"close_time": "2020-01-01T00:00:00Z"}, "trades[0].close_time"),
        ({"ticket": "101"}, "trades[0].ticket"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field_and_stores_nothing(sqlite_url, settings_for, change, loc):
    settings = settings_for(sqlite_url, API_KEYS=KEYS, EA_PUSH_ENABLED="false")
    report = {**_close(301, None), **change}
    async with api_client(settings) as client:
        response = await client.post("/ea/trades", json={"trades": [report]})
    assert response.status_code == 422, response.text
    assert loc in [d["loc"] for d in response.json()["details"]]
    assert get_trades(sqlite_url, [301]) == {}


async def test_reconcile_records_unknown_positions_and_reports_missing_ones(trade_settings, db_url):
    async with api_client(trade_settings) as client:
        await client.post("/ea/trades", json={"trades": [_open(401, None), _open(402, None)]})
        terminal = [
            {
                "ticket": 402,
                "symbol": "EURUSD",
                "side": "BUY",
                "volume": 0.1,
                "open_time": "2024-10-27T03:35:00Z",
                "open_price": 1.08012,
            },
            {
                "ticket": 403,
                "symbol": "EURUSD",
                "side": "SELL",
                "volume": 0.2,
                "open_time": "2024-10-27T03:40:00Z",
                "open_price": 1.08,
            },
        ]
        response = await client.post("/ea/reconcile", json={"magic": MAGIC, "account": 5000001, "positions": terminal})
        body = response.json()
        assert response.status_code == 200, response.text
        assert body["in_sync"] is False and body["unknown"] == [403] and body["missing"] == [401]
        health = (await client.get("/health")).json()
        assert health["reconciliation"]["state"] == "differences"
        assert health["reconciliation"]["unknown_positions"] == 1 and health["reconciliation"]["missing_positions"] == 1
        assert health["status"] == "degraded"
        assert {p["symbol"]: p["open"] for p in health["open_positions"]} == {"EURUSD": 3}
        metrics = (await client.get("/metrics")).text
        assert 'mt5_open_positions{symbol="EURUSD"} 3.0' in metrics
        assert 'mt5_reconciliation_differences{kind="missing"} 1.0' in metrics

        # The bridge reports 401's close from the deals history: the next pass is in sync.
        await client.post(
            "/ea/trades", json={"trades": [_close(401, None, exit_reason="sl", close_price=1.07812, profit=-20.0)]}
        )
        terminal[1]["magic"] = MAGIC
        again = (
            await client.post("/ea/reconcile", json={"magic": MAGIC, "account": 5000001, "positions": terminal})
        ).json()
        assert again["in_sync"] is True and again["unknown"] == [] and again["missing"] == []
        health = (await client.get("/health")).json()
        assert health["reconciliation"]["state"] == "in_sync"
        metrics = (await client.get("/metrics")).text
        assert 'mt5_realised_pips{symbol="EURUSD"} -20.0' in metrics
    assert get_trades(db_url, [403])[403]["unknown_signal"] is True


async def test_bad_reconcile_input_names_the_field(sqlite_url, settings_for):
    settings = settings_for(sqlite_url, API_KEYS=KEYS, EA_PUSH_ENABLED="false")
    async with api_client(settings) as client:
        response = await client.post("/ea/reconcile", json={"magic": -1, "positions": [{"ticket": 1}]})
        query = await client.get("/ea/trades", params={"magic": "abc"})
    assert response.status_code == 422
    locs = {d["loc"] for d in response.json()["details"]}
    assert {"magic", "positions[0].symbol"} <= locs
    assert query.status_code == 422 and query.json()["details"][0]["loc"] == "query.magic"
