"""The wire to the EA: HTTP/1.1 requests over pooled keep-alive sockets, each within one
overall deadline.

Why not httpx here: at the bar close every signal is one request, and httpx (its client,
httpcore's pool, h11) cost about 0.7 ms of CPU per request on this machine, more than the
reference EA spends answering it; this module costs about a tenth of that
(benchmarks/profile_push.py). It speaks exactly what the pusher needs: one request at a
time per connection, a body of known length out, an answer framed by Content-Length,
chunked transfer coding or the end of the connection back; TLS with the caller's
verifying context.

The deadline is overall: every connect, TLS handshake, write and read gets what is left
of it, so a server that trickles a byte at a time cannot hold a request past it.

What failed is said by the exception, because it decides whether the EA may have acted:
- :class:`ConnectFailed`: nothing reached the EA (refused, unreachable, connect or TLS
  handshake failed, every connection busy past the deadline);
- :class:`AnswerTimeout`: the deadline passed once the request was (being) sent;
- :class:`ConnectionBroke`: the connection failed or the answer was not HTTP after the
  request was (being) sent.

Idle connections are kept ``keepalive_expiry`` seconds, and one the server has closed (or
written to unasked) is dropped before it is reused, never written to.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

# An answer's head (status line and headers) larger than this is not an EA's answer.
MAX_HEAD_BYTES = 64 * 1024
RECV_BYTES = 65536


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


class _Connection:
    __slots__ = ("sock", "idle_since")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.idle_since = 0.0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def reusable(self, now: float, keepalive_expiry: float) -> bool:
        """Idle for less than the expiry, and nothing to read: a closed connection reads as
        readable (its end of file), and an answer nobody asked for means it is not in step."""
        if now - self.idle_since >= keepalive_expiry:
            return False
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
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
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = self.port == (443 if self.tls else 80)
        fixed = {"Host": host if default_port else f"{host}:{self.port}", "Accept": "*/*"}
        if parts.username is not None:  # user info in the URL is Basic auth, as httpx sent it
            creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            fixed["Authorization"] = "Basic " + base64.b64encode(creds).decode()
        fixed.update(headers or {})
        self._fixed_head = _header_lines(fixed)
        self.ssl_context = ssl_context if self.tls else None
        self.keepalive_expiry = keepalive_expiry
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closed = False

    # ---- connections ---------------------------------------------------------------------

    def _left(self, end: float) -> float:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError("overall request deadline exceeded")
        return left

    def _checkout(self, end: float) -> _Connection:
        """An idle connection that is still good, or a new one."""
        now = time.monotonic()
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if conn.reusable(now, self.keepalive_expiry):
                    return conn
                conn.close()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self._left(end))
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.ssl_context is not None:
                    sock.settimeout(self._left(end))
                    sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        except (OSError, ssl.SSLError) as exc:  # TimeoutError and ssl's errors are OSErrors
            raise ConnectFailed(_named(exc)) from exc
        return _Connection(sock)

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
        try:
            request = (
                f"{method} {self.target} HTTP/1.1\r\n".encode("ascii")
                + self._fixed_head
                + _header_lines(headers)
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body
            )
        except ValueError as exc:  # as httpx had it: a request it cannot write is a broken exchange
            raise ConnectionBroke(_named(exc)) from exc
        if not self._slots.acquire(timeout=max(0.0, end - time.monotonic())):
            raise ConnectFailed(f"PoolTimeout: every one of the connections to the EA was busy for {timeout:g} s")
        try:
            conn = self._checkout(end)
            keep = False
            try:
                sock = conn.sock
                try:
                    sock.settimeout(self._left(end))
                    sock.sendall(request)
                    answer, keep = _read_answer(sock, end, self._left)
                except TimeoutError as exc:  # socket.timeout is TimeoutError
                    raise AnswerTimeout(_named(exc)) from exc
                except (OSError, ValueError) as exc:
                    raise ConnectionBroke(_named(exc)) from exc
            finally:
                if keep:
                    self._checkin(conn)
                else:
                    conn.close()
            return answer
        finally:
            self._slots.release()


def _header_lines(headers: Mapping[str, str]) -> bytes:
    out = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or ":" in name:
            raise ValueError(f"header {name!r}: line breaks, NUL and a colon in the name are not allowed")
        out.append(f"{name}: {value}\r\n")
    return "".join(out).encode("latin-1")


class _Reader:
    """The bytes of one connection, read as they are needed, each read within the deadline."""

    __slots__ = ("sock", "end", "left", "buf", "pos")

    def __init__(self, sock: socket.socket, end: float, left: Callable[[float], float]) -> None:
        self.sock = sock
        self.end = end
        self.left = left
        self.buf = b""
        self.pos = 0

    def fill(self) -> bool:
        """Read more; False at the end of the connection."""
        self.sock.settimeout(self.left(self.end))
        got = self.sock.recv(RECV_BYTES)
        if not got:
            return False
        self.buf = self.buf[self.pos :] + got
        self.pos = 0
        return True

    def until(self, marker: bytes, limit: int, what: str) -> bytes:
        """The bytes up to ``marker`` (consumed with it)."""
        while True:
            at = self.buf.find(marker, self.pos)
            if at >= 0:
                out = self.buf[self.pos : at]
                self.pos = at + len(marker)
                return out
            if len(self.buf) - self.pos > limit:
                raise ValueError(f"{what} longer than {limit} bytes")
            if not self.fill():
                raise ConnectionResetError(
                    "the EA closed the connection without an answer"
                    if not self.buf
                    else f"the EA closed the connection in the middle of the {what}"
                )

    def exactly(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            if not self.fill():
                raise ConnectionResetError("the EA closed the connection in the middle of the body")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def rest(self) -> bytes:
        """Everything until the connection ends (an answer framed by closing)."""
        while self.fill():
            pass
        out = self.buf[self.pos :]
        self.pos = len(self.buf)
        return out

    def leftover(self) -> bool:
        return self.pos < len(self.buf)


def _read_answer(sock: socket.socket, end: float, left: Callable[[float], float]) -> tuple[Answer, bool]:
    """The answer to the request just sent, and whether the connection may serve another."""
    reader = _Reader(sock, end, left)
    while True:
        head = reader.until(b"\r\n\r\n", MAX_HEAD_BYTES, "answer's head").decode("latin-1")
        status_line, _, header_block = head.partition("\r\n")
        version, _, rest = status_line.partition(" ")
        code_text, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code_text) != 3 or not code_text.isdigit():
            raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        code = int(code_text)
        headers: dict[str, str] = {}
        for line in header_block.split("\r\n") if header_block else ():
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ValueError(f"malformed header line: {line[:80]!r}")
            key = name.lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if 100 <= code < 200:
            if code == 101:
                raise ValueError("the EA switched protocols")
            continue  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        break
    connection = headers.get("connection", "").lower()
    keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    coding = headers.get("transfer-encoding", "").lower()
    if code in (204, 304):
        body = b""
    elif coding:
        if coding.rsplit(",", 1)[-1].strip() != "chunked":
            raise ValueError(f"unsupported transfer coding {coding!r}")
        body = _chunked(reader)
    elif "content-length" in headers:
        length = headers["content-length"].split(",")[0].strip()
        if not length.isdigit():
            raise ValueError(f"bad Content-Length {headers['content-length']!r}")
        body = reader.exactly(int(length))
    else:
        body, keep = reader.rest(), False
    if reader.leftover():  # bytes beyond the answer: the connection is out of step
        keep = False
    return Answer(code, reason, headers, body), keep


def _chunked(reader: _Reader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = reader.until(b"\r\n", 1024, "chunk size").split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise ValueError(f"bad chunk size {size_line[:20]!r}") from None
        if size == 0:
            while reader.until(b"\r\n", MAX_HEAD_BYTES, "trailer"):
                pass
            return b"".join(parts)
        parts.append(reader.exactly(size))
        if reader.exactly(2) != b"\r\n":
            raise ValueError("a chunk does not end with CRLF")
