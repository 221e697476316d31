"""The clients' HTTP/1.1: pools of kept-alive connections, the standard library's http.client for
the sync client and asyncio streams for the asyncio one.

Measured against httpx for the same re-rank request, http.client costs less per call (and sends
headers and body in one write, with TCP_NODELAY). On asyncio, httpx's stack (anyio, httpcore, a
pure-Python parser) costs several times the CPU of a stream write and a read of the reply, and
its pool's bookkeeping grows with the requests waiting in it: a search front-end's loop fell
behind for good at 320 queries/s on 2 shared cores. httpx still encodes the multipart bodies of
uploads. Errors come out as the three kinds the retry policy tells apart: could not connect
(safe to retry), the connection broke (every call of this API is safe to repeat), and out of
time (not retried).
"""

from __future__ import annotations

import asyncio
import http.client
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


class _DeadlineIO:
    """A socket whose every send and receive waits at most until `deadline` (time.monotonic), and
    at most `phase_timeout` each: a reply trickled byte by byte still ends at the deadline."""

    deadline: float | None = None
    phase_timeout: float | None = None

    def _arm(self) -> None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the call's deadline passed")
            self.settimeout(left if self.phase_timeout is None else min(left, self.phase_timeout))

    def recv_into(self, *args, **kwargs):
        self._arm()
        return super().recv_into(*args, **kwargs)

    def recv(self, *args, **kwargs):
        self._arm()
        return super().recv(*args, **kwargs)

    def sendall(self, *args, **kwargs):
        self._arm()
        return super().sendall(*args, **kwargs)

    def send(self, *args, **kwargs):
        self._arm()
        return super().send(*args, **kwargs)


class _DeadlineSocket(_DeadlineIO, socket.socket):
    pass


class _DeadlineSSLSocket(_DeadlineIO, ssl.SSLSocket):
    pass


class _Connection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        plain = self.sock
        self.sock = _DeadlineSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        self.sock.settimeout(self.timeout)


class _TLSConnection(http.client.HTTPSConnection):
    pass  # its context's sslsocket_class is _DeadlineSSLSocket


class ConnectionPool:
    """Idle kept-alive connections per base URL, taken and given back by the calling thread."""

    def __init__(self, max_idle: int = 100):
        self.max_idle = max_idle
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def _new(self, base: str, timeout: float) -> http.client.HTTPConnection:
        parts = urlsplit(base)
        if parts.scheme != "https":
            return _Connection(parts.hostname, parts.port, timeout=timeout)
        if self._tls is None:
            self._tls = ssl.create_default_context()
            self._tls.sslsocket_class = _DeadlineSSLSocket
        return _TLSConnection(parts.hostname, parts.port, timeout=timeout, context=self._tls)

    def request(self, base: str, method: str, path: str, body: bytes | None, headers: dict,
                timeout: float, deadline: float | None = None) -> Reply:
        """One request on a kept-alive (or new) connection. `timeout` bounds each phase; `deadline`
        (time.monotonic), when given, the whole request."""
        try:
            return self._request(base, method, path, body, headers, timeout, deadline)
        except _StaleConnection:
            # the server closed a kept-alive connection while it sat idle (uvicorn after 5 s):
            # not a failure of the service, so a fresh connection goes at once, outside the retries
            return self._request(base, method, path, body, headers, timeout, deadline, fresh=True)

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
            conn = self._new(base, timeout)
            try:
                conn.connect()
            except TimeoutError as exc:
                conn.close()
                if deadline is not None and deadline <= time.monotonic():
                    raise ReplyTimeout(f"no connection before the call's deadline ({exc})") from exc
                raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
            except OSError as exc:
                conn.close()
                raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        else:
            conn.timeout = timeout
            conn.sock.settimeout(timeout)
        conn.sock.deadline, conn.sock.phase_timeout = deadline, timeout
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            content = response.read()
        except TimeoutError as exc:
            conn.close()
            raise ReplyTimeout(str(exc) or "timed out") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if reused and isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError):
                raise _StaleConnection from exc
            raise ConnectionBroke(f"the connection broke: {type(exc).__name__}: {exc}") from exc
        reply = Reply(response.status, response.reason, Headers((k.lower(), v) for k, v in response.getheaders()),
                      content, base + path)
        if response.will_close:
            conn.close()
        else:
            self._give_back(base, conn)
        return reply

    def _give_back(self, base: str, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(base, [])
            if len(idle) < self.max_idle:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            for idle in self._idle.values():
                for conn in idle:
                    conn.close()
            self._idle.clear()


class AsyncConnectionPool:
    """Idle kept-alive connections per base URL for one event loop: (reader, writer) pairs taken
    by a request and given back after its reply (no limit on connections open at once; at most
    `max_idle` kept per URL)."""

    def __init__(self, max_idle: int = 100):
        self.max_idle = max_idle
        self._idle: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        self._tls: ssl.SSLContext | None = None

    async def request(self, base: str, method: str, path: str, body: bytes | None, headers: dict,
                      timeout: float) -> Reply:
        """`timeout` bounds each phase: connect, send, the reply's head, its body."""
        try:
            return await self._request(base, method, path, body, headers, timeout)
        except _StaleConnection:  # as in ConnectionPool.request
            return await self._request(base, method, path, body, headers, timeout, fresh=True)

    async def _connect(self, base: str, timeout: float):
        parts = urlsplit(base)
        tls = None
        if parts.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        port = parts.port or (443 if tls else 80)
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=tls, limit=1 << 20)
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
        parts = urlsplit(base)
        head = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body or b'')}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
            async with asyncio.timeout(timeout):
                await writer.drain()
            async with asyncio.timeout(timeout):
                status, reason, reply_headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            async with asyncio.timeout(timeout):
                content = await _read_body(reader, reply_headers)
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


async def _read_body(reader: asyncio.StreamReader, headers: Headers) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append(await reader.readexactly(size + 2))
            if size == 0:
                await _skip_trailers(reader, chunks.pop())
                return b"".join(c[:-2] for c in chunks)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    headers["connection"] = "close"  # the body runs to the end of the connection
    return await reader.read()


async def _skip_trailers(reader: asyncio.StreamReader, after_last: bytes) -> None:
    line = after_last
    while line != b"\r\n":
        line = await reader.readuntil(b"\r\n")


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
