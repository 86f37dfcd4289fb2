"""The wire to the EA: HTTP/1.1 requests through the standard library's ``http.client``
over pooled keep-alive connections, each request within one overall deadline.

``http.client`` (HTTPConnection, HTTPSConnection with the caller's verifying SSLContext)
writes the request and parses the answer: status line, headers, a body framed by
Content-Length, chunked transfer coding or the end of the connection; it skips 100 Continue
(another interim answer, which no EA sends, comes back as the answer, ``unexpected`` to the
EA client, and its connection is closed). What is ours is policy, not protocol: the pool,
the deadline, and what a failure means.

Why http.client and not httpx: at the bar close every signal is one request, and httpx
(its client, httpcore's pool, h11) cost 0.94 ms of client CPU per request to the reference
EA on this machine, more than the EA spends answering it (about 0.29 ms); ``http.client``
costs 0.37 ms in the same run (``benchmarks/profile_push.py --client``). A hand-written
HTTP/1.1 parser in its place cost about half of that (0.17-0.20 ms, alternated with this
module): not worth parsing HTTP ourselves in a trading tool. Most of the difference is
http.client's header parsing (through the email package, about 0.09 ms per answer).

The deadline is overall: connecting gets what is left of it (the TCP connect and then the
TLS handshake each get what was left when connecting began, so a slow handshake can run
past it by at most the connect's time; nothing has been sent then), the request's write
gets what is left, and so does every read of the answer, so a server that trickles a byte
at a time cannot hold a request past it.

What failed is said by the exception, because it decides whether the EA may have acted:
- :class:`ConnectFailed`: nothing reached the EA (refused, unreachable, connect or TLS
  handshake failed, the deadline passed before sending, every connection busy past the
  deadline);
- :class:`AnswerTimeout`: the deadline passed once the request was (being) sent;
- :class:`ConnectionBroke`: the connection failed or the answer was not HTTP after the
  request was (being) sent, or the request could not be written (a line break in a header).

Idle connections are kept ``keepalive_expiry`` seconds, and one the server has closed (or
written to unasked) is dropped before it is reused, never written to.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit


class WireError(Exception):
    """A request that got no answer; the message starts with the underlying error's name."""


class ConnectFailed(WireError):
    """Nothing reached the EA."""


class AnswerTimeout(WireError):
    """The deadline passed after the request was (being) sent: the EA may have acted."""


class ConnectionBroke(WireError):
    """The connection failed, or the answer was not HTTP, after the request was (being) sent."""


def _named(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"


@dataclass(frozen=True)
class Answer:
    """The EA's answer: status, headers (names in lower case) and the whole body."""

    status_code: int
    reason_phrase: str
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.content)


class _Deadline:
    """The end of the request a connection is serving."""

    __slots__ = ("end",)

    def __init__(self) -> None:
        self.end = 0.0

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("overall request deadline exceeded")
        return left


class _ReadWithin(io.RawIOBase):
    """The socket as http.client reads an answer from it: every read waits at most what
    is left of the deadline (a per-read timeout alone would restart with each byte)."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        super().__init__()
        self._sock = sock
        # socket.makefile's own reader: it keeps the socket open while the answer is read
        # (http.client closes the connection before reading an answer framed by closing).
        self._reader = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int | None:
        self._sock.settimeout(self._deadline.left())
        return self._reader.readinto(b)

    def close(self) -> None:
        self._reader.close()
        super().close()


class _AnswerSource:
    """What HTTPResponse is given in place of the socket: it only calls makefile("rb")."""

    __slots__ = ("sock", "deadline")

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self.sock = sock
        self.deadline = deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        # Bytes the server sent beyond the answer stay in this buffer and go with it: they
        # are never taken for the next answer, and any that come later make the idle
        # connection readable, so it is dropped (_Connection.reusable).
        return io.BufferedReader(_ReadWithin(self.sock, self.deadline))


def _responses_within(deadline: _Deadline) -> type[http.client.HTTPResponse]:
    """A response_class for an HTTPConnection: http.client's own HTTPResponse, reading
    within ``deadline``."""

    def response(
        sock: socket.socket, debuglevel: int = 0, method: str | None = None, url: str | None = None
    ) -> http.client.HTTPResponse:
        source = cast(socket.socket, _AnswerSource(sock, deadline))
        return http.client.HTTPResponse(source, debuglevel, method, url)

    return cast("type[http.client.HTTPResponse]", response)


class _Connection:
    """One HTTP(S)Connection of the pool, with the deadline its reads obey."""

    __slots__ = ("http", "deadline", "idle_since")

    def __init__(self, conn: http.client.HTTPConnection, deadline: _Deadline) -> None:
        self.http = conn
        self.deadline = deadline
        self.idle_since = 0.0

    @property
    def sock(self) -> socket.socket | None:
        return self.http.sock

    def close(self) -> None:
        try:
            self.http.close()
        except OSError:
            pass

    def reusable(self, now: float, keepalive_expiry: float) -> bool:
        """Idle for less than the expiry, and nothing to read: a closed connection reads as
        readable (its end of file), and an answer nobody asked for means it is not in step."""
        sock = self.http.sock
        if sock is None or now - self.idle_since >= keepalive_expiry:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable


class Wire:
    """Requests to one origin (scheme, host, port) over up to ``max_connections``
    keep-alive connections. Thread-safe: each request has a connection to itself."""

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None,
        max_connections: int,
        keepalive_expiry: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # http.client writes Host itself; the rest go with every request.
        self._fixed = {"Accept": "*/*"}
        if parts.username is not None:  # user info in the URL is Basic auth, as httpx sent it
            creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._fixed["Authorization"] = "Basic " + base64.b64encode(creds).decode()
        self._fixed.update(headers or {})
        self.ssl_context = ssl_context if self.tls else None
        self.keepalive_expiry = keepalive_expiry
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closed = False

    # ---- connections ---------------------------------------------------------------------

    def _checkout(self) -> _Connection:
        """An idle connection that is still good, or a new one (connected when used)."""
        now = time.monotonic()
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if conn.reusable(now, self.keepalive_expiry):
                    return conn
                conn.close()
        http_conn: http.client.HTTPConnection
        if self.ssl_context is not None:
            http_conn = http.client.HTTPSConnection(self.host, self.port, context=self.ssl_context)
        else:
            http_conn = http.client.HTTPConnection(self.host, self.port)
        deadline = _Deadline()
        http_conn.response_class = _responses_within(deadline)
        return _Connection(http_conn, deadline)

    def _checkin(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ---- one request -----------------------------------------------------------------------

    def request(self, method: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Answer:
        """Send ``method`` with ``body`` to the URL, headers beside the fixed ones; the
        whole answer, within ``timeout`` seconds overall."""
        end = time.monotonic() + timeout
        if not self._slots.acquire(timeout=max(0.0, end - time.monotonic())):
            raise ConnectFailed(f"PoolTimeout: every one of the connections to the EA was busy for {timeout:g} s")
        try:
            conn = self._checkout()
            conn.deadline.end = end
            keep = False
            try:
                answer, keep = self._exchange(conn.http, conn.deadline, method, body, headers)
            finally:
                if keep:
                    self._checkin(conn)
                else:
                    conn.close()
            return answer
        finally:
            self._slots.release()

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        deadline: _Deadline,
        method: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> tuple[Answer, bool]:
        """The answer, and whether the connection may serve another request."""
        try:  # http.client only buffers the head here; it refuses line breaks in a header
            conn.putrequest(method, self.target, skip_accept_encoding=True)
            for name, value in self._fixed.items():
                conn.putheader(name, value)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
        except (ValueError, http.client.HTTPException) as exc:  # as httpx had it: a request it cannot write is broken
            raise ConnectionBroke(_named(exc)) from exc
        try:
            if conn.sock is None:
                conn.timeout = deadline.left()
                conn.connect()
            conn.sock.settimeout(deadline.left())
        except OSError as exc:  # TimeoutError and ssl's errors are OSErrors
            raise ConnectFailed(_named(exc)) from exc
        try:
            conn.endheaders(body)  # head and body in one write
            response = conn.getresponse()
            content = response.read()
        except TimeoutError as exc:  # socket.timeout is TimeoutError
            raise AnswerTimeout(_named(exc)) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionBroke(_named(exc)) from exc
        answer_headers: dict[str, str] = {}
        for name, value in response.getheaders():
            key = name.lower()
            answer_headers[key] = f"{answer_headers[key]}, {value}" if key in answer_headers else value
        # http.client skips 100 Continue only: after another interim answer (103 Early
        # Hints) the final one is still to come on this connection, so it cannot be reused.
        keep = conn.sock is not None and response.status >= 200
        return Answer(response.status, response.reason, answer_headers, content), keep
