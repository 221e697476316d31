"""The clients' HTTP/1.1: pools of kept-alive connections, on sockets for the sync client and on
asyncio streams for the asyncio one; one framing of replies (length, chunks, end of connection).

Each request goes out in one write (with TCP_NODELAY) and its reply is read with a parser of a
few lines: for a re-rank of 200, ~330 us of client CPU where http.client (its email-based header
parser, buffered file reads) took 430-480 and httpx more. On asyncio, httpx's stack (anyio, httpcore, a
pure-Python parser) costs several times the CPU of a stream write and a read of the reply, and
its pool's bookkeeping grows with the requests waiting in it: a search front-end's loop fell
behind for good at 320 queries/s on 2 shared cores. httpx still encodes the multipart bodies of
uploads. Errors come out as the three kinds the retry policy tells apart: could not connect
(safe to retry), the connection broke (every call of this API is safe to repeat), and out of
time (not retried).
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import ssl
import threading
import time
from urllib.parse import urlencode, urlsplit


class ConnectFailed(OSError):
    """No connection was made (refused, unreachable, DNS, connect timeout)."""


class ConnectionBroke(OSError):
    """A connection failed while the request was sent or its reply read (reset, closed)."""


class _StaleConnection(Exception):
    """A kept-alive connection the server had closed."""


class ReplyTimeout(OSError):
    """The reply did not come within the timeout."""


class Headers(dict):
    """Response headers, keys lower-cased."""

    def get(self, key, default=None):
        return super().get(key.lower(), default)


class Reply:
    """What the parsers and the retry policy read of a response (httpx.Response's names)."""

    __slots__ = ("content", "headers", "reason_phrase", "status_code", "url")

    def __init__(self, status_code: int, reason: str, headers: Headers, content: bytes, url: str):
        self.status_code = status_code
        self.reason_phrase = reason
        self.headers = headers
        self.content = content
        self.url = url

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)

    @property
    def request(self):
        return self

    def __str__(self) -> str:
        return self.url


MAX_HEAD = 64 * 1024  # bytes of a reply's status line and headers


def _request_bytes(method: str, path: str, netloc: str, body: bytes | None, headers: dict) -> bytes:
    """Head and body in one buffer: one write, so no delayed-ACK wait between them."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {netloc}", f"Content-Length: {len(body or b'')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def _parse_head(head: bytes) -> tuple[int, str, Headers]:
    lines = head.decode("latin-1").split("\r\n")
    version, status, reason = [*lines[0].split(" ", 2), ""][:3]
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x reply: {lines[0][:80]!r}")
    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
        headers["connection"] = "close"
    return int(status), reason, headers


def _body_reads(headers: Headers):
    """A reply's body framing, without I/O: yields what to read next, ("line",) a CRLF-ended line,
    ("exactly", n) n bytes, ("rest",) all to the end of the connection; is sent the bytes read;
    returns the body. The sync and asyncio readers drive it."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((yield ("line",)).split(b";")[0], 16)
            if size == 0:
                while (yield ("line",)) != b"\r\n":  # trailers, then the empty line
                    pass
                return b"".join(chunks)
            chunks.append((yield ("exactly", size + 2))[:-2])
    if "content-length" in headers:
        return (yield ("exactly", int(headers["content-length"])))
    headers["connection"] = "close"  # the body runs to the end of the connection
    return (yield ("rest",))


class _SocketReader:
    """Buffered reads of one socket, each waiting at most `timeout` and never past `deadline`
    (time.monotonic): a reply trickled byte by byte still ends at the deadline."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray()
        self.timeout: float | None = None
        self.deadline: float | None = None
        self.received = 0  # bytes of the current reply read so far

    def arm(self) -> None:
        """Set the socket's timeout for the next send or receive."""
        wait = self.timeout
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the call's deadline passed")
            wait = left if wait is None else min(wait, left)
        self.sock.settimeout(wait)

    def _fill(self) -> bool:
        self.arm()
        data = self.sock.recv(65536)
        self.buffer += data
        self.received += len(data)
        return bool(data)

    def until(self, mark: bytes, limit: int = MAX_HEAD) -> bytes:
        start = 0
        while (at := self.buffer.find(mark, start)) < 0:
            if len(self.buffer) > limit:
                raise ValueError(f"no {mark!r} in the first {limit} bytes of the reply")
            start = max(0, len(self.buffer) - len(mark) + 1)
            if not self._fill():
                raise ConnectionResetError("the connection closed in the middle of a reply")
        out = bytes(self.buffer[:at + len(mark)])
        del self.buffer[:at + len(mark)]
        return out

    def exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise ConnectionResetError("the connection closed in the middle of a reply")
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def rest(self) -> bytes:
        while self._fill():
            pass
        out = bytes(self.buffer)
        self.buffer.clear()
        return out

    def body(self, headers: Headers) -> bytes:
        reads = _body_reads(headers)
        try:
            want = next(reads)
            while True:
                want = reads.send(self.until(b"\r\n") if want[0] == "line" else
                                  self.exactly(want[1]) if want[0] == "exactly" else self.rest())
        except StopIteration as done:
            return done.value


async def _async_body(reader: asyncio.StreamReader, headers: Headers) -> bytes:
    reads = _body_reads(headers)
    try:
        want = next(reads)
        while True:
            want = reads.send(await reader.readuntil(b"\r\n") if want[0] == "line" else
                              await reader.readexactly(want[1]) if want[0] == "exactly" else await reader.read())
    except StopIteration as done:
        return done.value


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One context for every pool (it loads the system's CA certificates once)."""
    return ssl.create_default_context()


class ConnectionPool:
    """Idle kept-alive connections per base URL, taken and given back by the calling thread."""

    def __init__(self, max_idle: int = 100):
        self.max_idle = max_idle
        self._idle: dict[str, list[_SocketReader]] = {}
        self._lock = threading.Lock()

    def request(self, base: str, method: str, path: str, body: bytes | None, headers: dict,
                timeout: float, deadline: float | None = None) -> Reply:
        """One request on a kept-alive (or new) connection. `timeout` bounds each phase (connect,
        each send and receive); `deadline` (time.monotonic), when given, the whole request."""
        try:
            return self._request(base, method, path, body, headers, timeout, deadline)
        except _StaleConnection:
            # the server closed a kept-alive connection while it sat idle (uvicorn after 5 s):
            # not a failure of the service, so a fresh connection goes at once, outside the retries
            return self._request(base, method, path, body, headers, timeout, deadline, fresh=True)

    def _connect(self, base: str, timeout: float) -> _SocketReader:
        parts = urlsplit(base)
        tls = parts.scheme == "https"
        try:
            sock = socket.create_connection((parts.hostname, parts.port or (443 if tls else 80)), timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                sock = _tls_context().wrap_socket(sock, server_hostname=parts.hostname)
        except OSError as exc:  # refused, unreachable, DNS, TLS, connect timeout
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        return _SocketReader(sock)

    def _request(self, base: str, method: str, path: str, body: bytes | None, headers: dict,
                 timeout: float, deadline: float | None, fresh: bool = False) -> Reply:
        with self._lock:
            idle = self._idle.get(base)
            conn = idle.pop() if idle and not fresh else None
        reused = conn is not None
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                if conn is not None:
                    self._give_back(base, conn)
                raise ReplyTimeout("the call's deadline passed")
            timeout = min(timeout, left)
        if conn is None:
            conn = self._connect(base, timeout)
        conn.timeout, conn.deadline, conn.received = timeout, deadline, 0
        try:
            conn.arm()
            conn.sock.sendall(_request_bytes(method, path, urlsplit(base).netloc, body, headers))
            status, reason, reply_headers = _parse_head(conn.until(b"\r\n\r\n"))
            content = conn.body(reply_headers)
        except TimeoutError as exc:
            conn.sock.close()
            raise ReplyTimeout(str(exc) or "timed out") from exc
        except (OSError, ValueError) as exc:
            conn.sock.close()
            if reused and isinstance(exc, ConnectionResetError | BrokenPipeError) and not conn.received:
                raise _StaleConnection from exc
            raise ConnectionBroke(f"the connection broke: {type(exc).__name__}: {exc}") from exc
        if reply_headers.get("connection", "").lower() == "close" or conn.buffer:
            conn.sock.close()
        else:
            self._give_back(base, conn)
        return Reply(status, reason, reply_headers, content, base + path)

    def _give_back(self, base: str, conn: _SocketReader) -> None:
        with self._lock:
            idle = self._idle.setdefault(base, [])
            if len(idle) < self.max_idle:
                idle.append(conn)
                return
        conn.sock.close()

    def close(self) -> None:
        with self._lock:
            for idle in self._idle.values():
                for conn in idle:
                    conn.sock.close()
            self._idle.clear()


class AsyncConnectionPool:
    """Idle kept-alive connections per base URL for one event loop: (reader, writer) pairs taken
    by a request and given back after its reply (no limit on connections open at once; at most
    `max_idle` kept per URL)."""

    def __init__(self, max_idle: int = 100):
        self.max_idle = max_idle
        self._idle: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def request(self, base: str, method: str, path: str, body: bytes | None, headers: dict,
                      timeout: float) -> Reply:
        """`timeout` bounds each phase: connect, send, the reply's head, its body."""
        try:
            return await self._request(base, method, path, body, headers, timeout)
        except _StaleConnection:  # as in ConnectionPool.request
            return await self._request(base, method, path, body, headers, timeout, fresh=True)

    async def _connect(self, base: str, timeout: float):
        parts = urlsplit(base)
        tls = _tls_context() if parts.scheme == "https" else None
        port = parts.port or (443 if tls else 80)
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=tls, limit=MAX_HEAD)
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def _request(self, base: str, method: str, path: str, body: bytes | None, headers: dict,
                       timeout: float, fresh: bool = False) -> Reply:
        idle = self._idle.get(base)
        conn = None
        while idle and not fresh and conn is None:
            conn = idle.pop()
            if conn[1].is_closing() or conn[0].at_eof():
                conn[1].close()
                conn = None
        reused = conn is not None
        if conn is None:
            conn = await self._connect(base, timeout)
        reader, writer = conn
        try:
            writer.write(_request_bytes(method, path, urlsplit(base).netloc, body, headers))
            async with asyncio.timeout(timeout):
                await writer.drain()
            async with asyncio.timeout(timeout):
                status, reason, reply_headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            async with asyncio.timeout(timeout):
                content = await _async_body(reader, reply_headers)
        except TimeoutError as exc:
            writer.close()
            raise ReplyTimeout("timed out") from exc
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            writer.close()
            nothing_back = isinstance(exc, asyncio.IncompleteReadError) and not exc.partial
            if reused and (nothing_back or isinstance(exc, ConnectionResetError | BrokenPipeError)):
                raise _StaleConnection from exc
            raise ConnectionBroke(f"the connection broke: {type(exc).__name__}: {exc}") from exc
        if reply_headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            kept = self._idle.setdefault(base, [])
            if len(kept) < self.max_idle:
                kept.append(conn)
            else:
                writer.close()
        return Reply(status, reason, reply_headers, content, base + path)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for _, writer in idle:
                writer.close()
        self._idle.clear()


def encode(call, default_headers: dict) -> tuple[str, bytes | None, dict]:
    """(path with query, body, headers) of a Call."""
    path = call.path + ("?" + urlencode(call.params) if call.params else "")
    headers = dict(default_headers)
    body = None
    if call.json_body is not None:
        body = json.dumps(call.json_body, separators=(",", ":")).encode()
        headers["Content-Type"] = "application/json"
    elif call.files is not None:
        import httpx

        request = httpx.Request("POST", "http://multipart.invalid/", files=call.files, data=call.data)
        body = request.read()
        headers["Content-Type"] = request.headers["Content-Type"]
    if call.user_id is not None:
        headers["serve_multiplexed_model_id"] = call.user_id
    return path, body, headers
