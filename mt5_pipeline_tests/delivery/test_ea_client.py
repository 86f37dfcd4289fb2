"""The EA client against real servers on loopback: the reference EA, a server that never
finishes its answer, a TLS server with a self-signed certificate."""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from mt5_pipeline.apps.servers import free_port
from mt5_pipeline.delivery.ea_client import EAClient
from mt5_pipeline_tests.ea_server import ReferenceEA, ServerThread, make_signal


@pytest.fixture
def client_for(settings_for, sqlite_url):
    clients = []

    def build(url: str, key: str = "test-ea-key-0123456789", **overrides) -> EAClient:
        client = EAClient(settings_for(sqlite_url, ea_server_url=url, ea_api_key=key, **overrides))
        clients.append(client)
        return client

    yield build
    for c in clients:
        c.close()


def test_sends_the_signal_with_the_seeds_headers(reference_ea, client_for):
    client = client_for(reference_ea.url, reference_ea.api_key)
    signal = make_signal()
    outcome = client.send(signal)
    assert outcome.kind == "ok" and outcome.status_code == 200
    assert outcome.ticket == reference_ea.ea.by_signal[signal["signal_id"]]["ticket"]
    [(headers, body)] = reference_ea.received
    assert body == signal
    assert headers["content-type"] == "application/json"
    assert headers["x-api-key"] == reference_ea.api_key
    assert headers["idempotency-key"] == signal["signal_id"]


def test_one_pooled_connection_serves_many_requests(reference_ea, client_for):
    client = client_for(reference_ea.url, reference_ea.api_key)
    for _ in range(20):
        assert client.send(make_signal()).ok
    assert len(reference_ea.peers) == 20
    assert len(set(reference_ea.peers)) == 1  # keep-alive: one TCP connection


def test_outcomes_are_classified(reference_ea, client_for):
    client = client_for(reference_ea.url, reference_ea.api_key)
    reference_ea.app_state.status = 500
    o = client.send(make_signal())
    assert (o.kind, o.status_code) == ("retry", 500)
    reference_ea.app_state.status = 429
    assert client.send(make_signal()).kind == "retry"
    reference_ea.app_state.status = None
    reference_ea.app_state.reject = "market closed"
    o = client.send(make_signal())
    assert o.kind == "reject" and "market closed" in o.error
    reference_ea.app_state.reject = None
    # The real EA's own validation: a 4xx is a rejection with its message.
    bad = make_signal()
    bad["side"] = "HOLD"
    o = client.send(bad)
    assert (o.kind, o.status_code) == ("reject", 422) and "side: expected BUY or SELL" in o.error


def test_a_wrong_key_is_an_auth_outcome_and_the_key_is_never_logged(reference_ea, client_for, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "wrong-key-that-must-not-leak-42"
    client = client_for(reference_ea.url, secret)
    o = client.send(make_signal())
    assert (o.kind, o.status_code) == ("auth", 401)
    assert "EA_API_KEY" in o.error and secret not in o.error
    t = client.test_connection()  # the probe goes to the signals route, with the key
    assert (t["connected"], t["status_code"]) == (False, 401) and "EA_API_KEY" in t["message"]
    assert secret not in caplog.text and reference_ea.api_key not in caplog.text


def test_nothing_listening_is_a_clean_retry(client_for):
    client = client_for(f"http://127.0.0.1:{free_port()}/signals")
    o = client.send(make_signal())
    assert o.kind == "retry" and not o.ambiguous and "cannot connect" in o.error
    t = client.test_connection()
    assert t["connected"] is False and t["message"].startswith("❌")


def test_connection_test_has_the_seeds_shape(reference_ea, client_for):
    client = client_for(reference_ea.url, reference_ea.api_key)
    result = client.test_connection()
    assert {k: result[k] for k in ("connected", "ea_server", "ea_url", "message")} == {
        "connected": True,
        "ea_server": f"127.0.0.1:{reference_ea.port}",
        "ea_url": reference_ea.url,
        "message": "✅ Connected",
    }


def test_a_2xx_without_the_expected_json_is_retried_as_ambiguous(client_for):
    async def ok_text(request):
        return PlainTextResponse("OK")

    server = ServerThread(Starlette(routes=[Route("/signals", ok_text, methods=["POST"])]))
    server.start()
    try:
        o = client_for(f"{server.base_url}/signals").send(make_signal())
    finally:
        server.stop()
    assert o.kind == "retry" and o.ambiguous and "without the expected JSON" in o.error


class DripServer:
    """Accepts, reads the request, then trickles a header byte every 0.2 s and never
    finishes: each byte resets a per-read timeout, so only an overall deadline ends it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not self.stop.wait(0.2):
                    try:
                        conn.sendall(b"X")
                    except OSError:
                        break

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def test_the_overall_deadline_holds_against_a_trickling_server(client_for):
    server = DripServer()
    try:
        client = client_for(f"http://127.0.0.1:{server.port}/signals", ea_request_timeout=1)
        o = client.send(make_signal())
    finally:
        server.close()
    # Sent, then no complete answer in time: the EA may have acted, so retry same signal_id.
    assert o.kind == "retry" and o.ambiguous
    assert "no answer from the EA within 1 s" in o.error


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_verifies_certificates_and_accepts_a_ca_bundle(self_signed, client_for):
    cert, key = self_signed
    ea = ReferenceEA(server_config={"ssl_certfile": str(cert), "ssl_keyfile": str(key)})
    ea.start()
    try:
        assert ea.url.startswith("https://")
        untrusted = client_for(ea.url, ea.api_key).send(make_signal())
        assert untrusted.kind == "retry" and "CERTIFICATE_VERIFY_FAILED" in untrusted.error
        assert ea.received == []
        trusted = client_for(ea.url, ea.api_key, ea_ca_bundle=str(cert))
        assert trusted.send(make_signal()).ok
        assert trusted.test_connection()["connected"] is True
    finally:
        ea.stop()


def test_an_unreadable_ca_bundle_is_named_at_start(client_for, tmp_path):
    with pytest.raises(ValueError, match="EA_CA_BUNDLE"):
        client_for("https://127.0.0.1:8443/signals", ea_ca_bundle=str(tmp_path / "missing.pem"))


@pytest.mark.parametrize(("path", "status"), [("/signal", 404), ("/health", 405)])
def test_a_wrong_path_is_a_configuration_error_and_not_connected(reference_ea, client_for, path, status):
    client = client_for(reference_ea.base_url + path, reference_ea.api_key)
    o = client.send(make_signal())
    assert (o.kind, o.status_code, o.config_error) == ("config", status, True) and "EA_SERVER_URL" in o.error
    t = client.test_connection()
    assert (t["connected"], t["status_code"]) == (False, status)
    assert t["message"].startswith("❌ Not connected") and f"({status})" in t["message"]


@pytest.mark.parametrize("status", [403, 415])
def test_forbidden_and_unsupported_media_type_are_configuration_errors(reference_ea, client_for, status):
    reference_ea.app_state.status = status
    client = client_for(reference_ea.url, reference_ea.api_key)
    assert client.send(make_signal()).kind == "config"
    assert client.test_connection()["connected"] is False
    assert reference_ea.signal_ids() == [reference_ea.received[0][1]["signal_id"]]  # the probe is not a signal


def test_the_connection_probe_reaches_the_signals_route_and_opens_nothing(reference_ea, client_for):
    result = client_for(reference_ea.url, reference_ea.api_key).test_connection()
    assert (result["connected"], result["status_code"]) == (True, 200)
    assert reference_ea.ea.probes == 1 and reference_ea.ea.positions == {}
    assert reference_ea.probes[0]["x-api-key"] == reference_ea.api_key


def test_an_ea_without_probes_is_connected_when_it_refuses_the_empty_body(client_for):
    async def strict(request):
        return JSONResponse({"success": False, "message": "signal_id: required"}, status_code=422)

    server = ServerThread(Starlette(routes=[Route("/signals", strict, methods=["POST"])]))
    server.start()
    try:
        result = client_for(f"{server.base_url}/signals", "k").test_connection()
    finally:
        server.stop()
    assert result["connected"] is True and "does not implement probes" in result["message"]
