"""Real HTTP servers on 127.0.0.1 for the client's failure tests: a reverse proxy in front of the
real service that answers the first requests with an error (or drops them, or stalls them)."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


class _LocalServer:
    """A threaded HTTP server on 127.0.0.1 for `handler`, serving inside `with`."""

    def _listen(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class FlakyProxy(_LocalServer):
    """Forwards to `upstream` except for the first `fail_first` requests, which get `status` (with
    `retry_after` when given), or are forwarded and then dropped without a reply (`drop=True`: the
    service did the work, the client never heard back), or stall `stall_s` before the answer."""

    def __init__(self, upstream: str | None, fail_first: int = 0, status: int = 503, retry_after: str | None = None,
                 drop: bool = False, stall_s: float = 0.0):
        self.upstream = urlsplit(upstream) if upstream else None
        self.fail_first, self.status, self.retry_after = fail_first, status, retry_after
        self.drop, self.stall_s = drop, stall_s
        self.seen: list[tuple[float, str, str]] = []  # (monotonic time, method, path)
        self.lock = threading.Lock()
        outer = self

        class Handler(_QuietHandler):
            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    outer.seen.append((time.monotonic(), self.command, self.path))
                    failing = len(outer.seen) <= outer.fail_first
                if failing and outer.stall_s:
                    time.sleep(outer.stall_s)
                if failing and not outer.drop:
                    payload = (b'{"detail":"the flaky proxy says no","error":"%s"}'
                               % (b"overloaded" if outer.status in (429, 503) else b"flaky_error"))
                    self.send_response(outer.status)
                    if outer.retry_after is not None:
                        self.send_header("Retry-After", outer.retry_after)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                status, headers, data = outer.forward(self.command, self.path, body, self.headers)
                if failing:  # drop: the upstream did the work; close without a reply
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self._listen(Handler)

    def forward(self, method: str, path: str, body: bytes, headers) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            keep = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
            conn.request(method, path, body=body or None, headers=keep)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    @property
    def count(self) -> int:
        return len(self.seen)



class TrickleServer(_LocalServer):
    """Answers every request 200 with a JSON body sent one byte every `gap_s` (each read of the
    reply comes quickly; the whole reply takes len(body) * gap_s)."""

    def __init__(self, body: bytes = b'{"status":"ok","pad":"' + b"x" * 60 + b'"}', gap_s: float = 0.02):
        self.body, self.gap_s = body, gap_s
        outer = self

        class Handler(_QuietHandler):
            def _handle(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.flush()
                try:
                    for k in range(len(outer.body)):
                        self.wfile.write(outer.body[k:k + 1])
                        self.wfile.flush()
                        time.sleep(outer.gap_s)
                except OSError:  # the client gave up
                    self.close_connection = True

            do_GET = do_POST = _handle

        self._listen(Handler)

