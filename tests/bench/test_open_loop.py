"""The open-loop generator against a real HTTP server on 127.0.0.1: it sends by the clock,
counts latency from each request's scheduled time, sorts replies by status and says whether it
kept up."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pam.bench.open_loop import arrivals, http_request, open_loop


class SlowServer:
    """HTTP/1.1 keep-alive server in a thread: each reply after `delay_s`; the path /shed gets a 503."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    async def _client(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                await reader.readexactly(length)
                shed = head.startswith(b"POST /shed")
                if not shed:
                    await asyncio.sleep(self.delay_s)
                status = b"503 Service Unavailable" if shed else b"200 OK"
                body = b'{"ok":true}'
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode()
                             + b"\r\nRetry-After: 1\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def _serve(self):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self):
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_arrivals_are_constant_or_poisson_at_the_rate():
    assert arrivals(10, 1.0, poisson=False) == [k / 10 for k in range(10)]
    times = arrivals(1000, 5.0, poisson=True, seed=3)
    assert 4700 < len(times) < 5300 and times == sorted(times) and times[-1] < 5.0
    assert arrivals(0, 5.0) == []


def test_latency_runs_from_the_scheduled_time_when_the_server_falls_behind():
    """One connection, 50 ms per reply, 100 requests/s offered: replies queue behind each other,
    and the latency says so (from the schedule), while the time on the wire stays ~50 ms."""
    with SlowServer(0.05) as server:
        request = http_request("POST", "/ok", "127.0.0.1", b'{"x": 1}', {"Content-Type": "application/json"})
        r = open_loop("127.0.0.1", server.port, [request], rate=100, seconds=0.3, poisson=False, max_connections=1)
    assert r["requests"] == 30 and r["statuses"] == {"200": 30}
    assert r["accepted"]["n"] == 30 and r["rejected"]["n"] == 0
    # the 30th request was scheduled at 0.29 s and could not start before 29 replies of >= 50 ms
    assert r["accepted"]["max_ms"] >= 29 * 50 - 290 - 1
    assert r["accepted_service_ms"]["p50_ms"] >= 49
    assert r["peak_connections"] == 1


def test_statuses_are_counted_and_the_rejected_are_timed_apart():
    with SlowServer(0.01) as server:
        ok = http_request("POST", "/ok", "127.0.0.1", b"{}")
        shed = http_request("POST", "/shed", "127.0.0.1", b"{}")
        r = open_loop("127.0.0.1", server.port, [ok, shed, shed], rate=150, seconds=0.4, poisson=False)
    assert r["requests"] == 60
    assert r["statuses"] == {"200": 20, "503": 40}
    assert r["accepted"]["n"] == 20 and r["rejected"]["n"] == 40
    assert r["goodput_rps"] == pytest.approx(20 / 0.4, rel=0.1)  # over the time to the last reply
    assert set(r) >= {"achieved_rate_per_s", "send_lag_ms", "late_sends", "kept_up"}


def test_a_refused_connection_is_an_error_not_a_hang():
    r = open_loop("127.0.0.1", 9, [http_request("GET", "/", "x")], rate=20, seconds=0.2, poisson=False,
                  timeout_s=5)
    assert r["requests"] == 4 and r["goodput_rps"] == 0
    assert sum(r["statuses"].values()) == 4 and not set(r["statuses"]) & {"200", "503", "429"}


def test_closed_loop_keeps_one_request_per_connection_in_flight():
    from pam.bench.open_loop import closed_loop

    seen = []
    with SlowServer(0.05) as server:
        request = http_request("POST", "/ok", "127.0.0.1", b"{}")
        r = closed_loop("127.0.0.1", server.port, [request], connections=2, seconds=0.5,
                        on_reply=lambda k, status, headers, ms: seen.append((k, status)))
    # each connection waits >= 50 ms per reply: at most 2 x (0.5 / 0.05 + 1) requests in 0.5 s
    assert 2 <= r["requests"] <= 22 and r["statuses"] == {"200": r["requests"]}
    assert sorted(k for k, _ in seen) == list(range(r["requests"]))
    assert r["accepted"]["p50_ms"] >= 49
