"""The wire to the EA against real sockets on loopback: servers that answer in each of
HTTP/1.1's framings, close idle connections, or answer nothing."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Callable

import pytest

from mt5_pipeline.apps.servers import free_port
from mt5_pipeline.delivery.ea_http import AnswerTimeout, ConnectFailed, ConnectionBroke, Wire


class RawServer:
    """Accepts connections; for each request read (head and Content-Length body) calls
    ``answer(request_bytes, connection_number)`` and writes what it returns (None: close
    the connection without answering). Records every request and the connection it came on."""

    def __init__(self, answer: Callable[[bytes, int], bytes | None]) -> None:
        self.answer = answer
        self.requests: list[tuple[int, bytes]] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/signals?x=1"
        self.connections = 0
        self.stopped = threading.Event()
        self.sock.settimeout(0.2)
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    got = conn.recv(65536)
                    if not got:
                        return
                    buf += got
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(buf) < length:
                    buf += conn.recv(65536)
                request, buf = head + b"\r\n\r\n" + buf[:length], buf[length:]
                self.requests.append((number, request))
                reply = self.answer(request, number)
                if reply is None:
                    return
                conn.sendall(reply)
                if b"connection: close" in reply.lower():
                    return

    def close(self) -> None:
        self.stopped.set()
        self.acceptor.join(timeout=5)
        self.sock.close()


@pytest.fixture
def serve():
    servers: list[RawServer] = []
    wires: list[Wire] = []

    def build(answer: Callable[[bytes, int], bytes | None], url_suffix: str = "") -> tuple[RawServer, Wire]:
        server = RawServer(answer)
        servers.append(server)
        url = server.url.replace("http://", f"http://{url_suffix}") if url_suffix else server.url
        wire = Wire(url, ssl_context=None, max_connections=4, keepalive_expiry=4.0, headers={"X-API-Key": "k"})
        wires.append(wire)
        return server, wire

    yield build
    for w in wires:
        w.close()
    for s in servers:
        s.close()


def _ok(body: bytes = b'{"success": true}') -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_the_request_carries_its_headers_and_body_and_keep_alive_reuses_the_connection(serve):
    server, wire = serve(lambda request, n: _ok())
    for i in range(3):
        answer = wire.request("POST", b'{"n": %d}' % i, {"Idempotency-Key": f"id-{i}"}, 5)
        assert (answer.status_code, answer.json()) == (200, {"success": True})
    assert [n for n, _ in server.requests] == [1, 1, 1]
    head, _, body = server.requests[2][1].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /signals?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in lines
    assert b"X-API-Key: k" in lines and b"Idempotency-Key: id-2" in lines and b"Content-Length: 8" in lines
    assert body == b'{"n": 2}'


def test_a_chunked_answer_with_an_interim_one_before_it(serve):
    chunked = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 422 Unprocessable Entity\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n"
        b'5;ext=1\r\n{"mes\r\n10\r\nsage": "no way"}\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    server, wire = serve(lambda request, n: chunked)
    answer = wire.request("POST", b"{}", {}, 5)
    assert (answer.status_code, answer.reason_phrase) == (422, "Unprocessable Entity")
    assert answer.json() == {"message": "no way"} and answer.headers["retry-after"] == "3"
    wire.request("POST", b"{}", {}, 5)
    assert [n for n, _ in server.requests] == [1, 1]  # the chunked answer left the connection in step


def test_an_answer_framed_by_closing_and_connection_close_are_not_reused(serve):
    replies = [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nplain text, no length"] * 2
    server, wire = serve(lambda request, n: replies[n - 1])
    assert wire.request("POST", b"{}", {}, 5).text == "plain text, no length"
    assert wire.request("POST", b"{}", {}, 5).content == b"plain text, no length"
    assert server.connections == 2


def test_a_connection_the_server_closed_while_idle_is_dropped_before_use(serve):
    server, wire = serve(lambda request, n: _ok(b"%d" % n))
    assert wire.request("POST", b"{}", {}, 5).content == b"1"
    # The idle connection reads as readable, as one the server ended (uvicorn's keep-alive
    # timeout) does once its FIN arrived: it must not be written to.
    wire._idle[0].sock.shutdown(socket.SHUT_RD)
    assert wire.request("POST", b"{}", {}, 5).content == b"2"
    assert server.connections == 2


def test_an_idle_connection_past_the_keepalive_expiry_is_not_reused(serve):
    server, wire = serve(lambda request, n: _ok(b"%d" % n))
    wire.keepalive_expiry = 0.05
    assert wire.request("POST", b"{}", {}, 5).content == b"1"
    time.sleep(0.1)
    assert wire.request("POST", b"{}", {}, 5).content == b"2"


def test_user_info_in_the_url_is_sent_as_basic_auth(serve):
    server, wire = serve(lambda request, n: _ok(), url_suffix="ea%20user:p%40ss@")
    wire.request("POST", b"{}", {}, 5)
    expected = base64.b64encode(b"ea user:p@ss")
    assert b"Authorization: Basic " + expected in server.requests[0][1]


def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(serve):
    server, wire = serve(lambda request, n: _ok())
    with pytest.raises(ConnectionBroke):
        wire.request("POST", b"{}", {"Idempotency-Key": "x\r\nX-Evil: 1"}, 5)
    assert server.requests == []


def test_failures_say_whether_the_request_may_have_reached_the_ea(serve):
    nobody = Wire(f"http://127.0.0.1:{free_port()}/signals", ssl_context=None, max_connections=1, keepalive_expiry=4.0)
    with pytest.raises(ConnectFailed, match="ConnectionRefusedError"):
        nobody.request("POST", b"{}", {}, 5)
    _, closes = serve(lambda request, n: None)
    with pytest.raises(ConnectionBroke, match="RemoteDisconnected"):  # http.client's names for what went wrong
        closes.request("POST", b"{}", {}, 5)
    _, garbage = serve(lambda request, n: b"SMTP ready\r\n\r\n")
    with pytest.raises(ConnectionBroke, match="BadStatusLine"):
        garbage.request("POST", b"{}", {}, 5)
    _, short = serve(lambda request, n: b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}")
    with pytest.raises(AnswerTimeout):  # the server keeps the connection open, the body never completes
        short.request("POST", b"{}", {}, 0.5)


def test_a_body_trickled_a_byte_at_a_time_does_not_hold_the_request_past_its_deadline():
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:  # 400 bytes, one every 10 ms: each read alone is quick, the whole takes 4 s
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n")
            for _ in range(400):
                if stop.wait(0.01):
                    return
                try:
                    conn.sendall(b"x")
                except OSError:
                    return

    server = threading.Thread(target=trickle, daemon=True)
    server.start()
    wire = Wire(
        f"http://127.0.0.1:{listener.getsockname()[1]}/signals",
        ssl_context=None, max_connections=1, keepalive_expiry=4.0,
    )  # fmt: skip
    try:
        with pytest.raises(AnswerTimeout):  # without the overall deadline: the whole 400 bytes, after 4 s
            wire.request("POST", b"{}", {}, 0.5)
    finally:
        stop.set()
        server.join(timeout=5)
        wire.close()
        listener.close()
