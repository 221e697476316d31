"""An open-loop HTTP load generator: requests are sent by the clock, not when a reply comes back.

Arrivals are scheduled up front (constant rate or Poisson) and each request's latency runs from
its scheduled time, so a client or server that falls behind shows as latency instead of a lower
offered rate (no coordinated omission). Raw HTTP/1.1 over asyncio streams with a keep-alive
connection pool: a few tens of microseconds of client CPU per request. The generator also says
whether it kept up: achieved vs target send rate and how late sends left. `closed_loop` is the
same client with a fixed number of connections, each waiting for its reply.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections import Counter, deque
from collections.abc import Sequence

from pam.bench.measure import latency_summary

LATE_MS = 10.0  # a send that leaves this much after its scheduled time counts as late


def http_request(method: str, path: str, host: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    """The bytes of one HTTP/1.1 keep-alive request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def arrivals(rate: float, seconds: float, poisson: bool = True, seed: int = 0) -> list[float]:
    """Send times in seconds from the start: Poisson (exponential gaps) or evenly spaced."""
    if rate <= 0 or seconds <= 0:
        return []
    if not poisson:
        return [k / rate for k in range(int(rate * seconds))]
    rng, t, out = random.Random(seed), 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append(t)


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, headers


class _Pool:
    """Keep-alive connections to one host; at most `limit` open, the rest wait for one."""

    def __init__(self, host: str, port: int, limit: int):
        self.host, self.port, self.limit = host, port, limit
        self.idle: deque = deque()
        self.opened = 0
        self.peak = 0
        self.freed = asyncio.Condition()

    async def take(self):
        async with self.freed:
            while not self.idle and self.opened >= self.limit:
                await self.freed.wait()
            if self.idle:
                return self.idle.pop()
            self.opened += 1
            self.peak = max(self.peak, self.opened)
        try:
            return await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        except BaseException:
            await self.drop(None)
            raise

    async def give(self, conn) -> None:
        async with self.freed:
            self.idle.append(conn)
            self.freed.notify()

    async def drop(self, conn) -> None:
        if conn is not None:
            conn[1].close()
        async with self.freed:
            self.opened -= 1
            self.freed.notify()

    def close(self) -> None:
        while self.idle:
            self.idle.pop()[1].close()


async def _run(host: str, port: int, requests: Sequence[bytes], times: list[float], max_connections: int,
               timeout_s: float, on_reply=None) -> dict:
    pool = _Pool(host, port, max_connections)
    # (status or error name, ms from schedule, ms from send, generator lag ms, s from start to the end)
    records: list[tuple] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def one(k: int, at: float):
        scheduled = start + at
        began = loop.time()  # the generator's own lag: when it got to this arrival
        conn, sent = None, None
        try:
            async with asyncio.timeout(timeout_s):
                conn = await pool.take()
                sent = loop.time()
                conn[1].write(requests[k % len(requests)])
                status, headers = await _read_reply(conn[0])
            done = loop.time()
            if headers.get("connection", "").lower() == "close":
                await pool.drop(conn)
            else:
                await pool.give(conn)
            if on_reply is not None:
                on_reply(k, status, headers, (done - scheduled) * 1e3)
            records.append((status, (done - scheduled) * 1e3, (done - sent) * 1e3, (began - scheduled) * 1e3, done - start))
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            if conn is not None:
                await pool.drop(conn)
            records.append((type(exc).__name__, (loop.time() - scheduled) * 1e3, None, (began - scheduled) * 1e3,
                            loop.time() - start))

    tasks = []
    for k, at in enumerate(times):
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(k, at)))
    dispatched = loop.time()
    await asyncio.gather(*tasks)
    pool.close()
    return {"records": records, "dispatch_s": dispatched - start, "peak_connections": pool.peak}


def open_loop(url_host: str, port: int, requests: Sequence[bytes], rate: float, seconds: float,
              poisson: bool = True, seed: int = 0, max_connections: int = 512, timeout_s: float = 10.0,
              on_reply=None) -> dict:
    """Offer `rate` requests/s for `seconds` (requests taken in turn from `requests`) and summarize:
    goodput (2xx replies per second from the start to the last reply), status counts (200, 429, 503, other, plus client
    errors by name), latency of accepted requests from their scheduled time, how fast the rejected
    ones were answered, and whether the generator kept up (achieved vs target send rate)."""
    times = arrivals(rate, seconds, poisson, seed)
    if not times:
        return {"target_rate_per_s": rate, "requests": 0}
    wall = time.perf_counter()
    collecting = gc.isenabled()
    gc.disable()  # a full collection mid-run would show as the server's latency
    try:
        raw = asyncio.run(_run(url_host, port, requests, times, max_connections, timeout_s, on_reply))
    finally:
        if collecting:
            gc.enable()
    wall = time.perf_counter() - wall
    records = raw["records"]
    statuses: Counter = Counter()
    for status, *_ in records:
        key = str(status) if status in (200, 429, 503) else ("other_2xx" if isinstance(status, int) and
                                                              200 <= status < 300 else
                                                              (f"http_{status}" if isinstance(status, int) else status))
        statuses[key] += 1
    ok = [r for r in records if isinstance(r[0], int) and 200 <= r[0] < 300]
    shed = [r for r in records if r[0] in (429, 503)]
    lags = [r[3] for r in records]
    # the 2xx replies over the time from the first arrival to the last reply: replies that queue
    # past the offered span count at the rate they were really served
    span = max(seconds, max(r[4] for r in records))
    return {
        "target_rate_per_s": round(rate, 2), "poisson": poisson, "offered_s": seconds,
        "seconds_to_last_reply": round(span, 3),
        "requests": len(records),
        "scheduled": len(times),
        "achieved_rate_per_s": round(len(times) / max(raw["dispatch_s"], seconds, 1e-9), 2),
        "send_lag_ms": latency_summary(lags),
        "late_sends": sum(lag > LATE_MS for lag in lags),
        "kept_up": sum(lag > LATE_MS for lag in lags) <= 0.01 * len(lags),
        "goodput_rps": round(len(ok) / span, 2),
        "statuses": dict(sorted(statuses.items())),
        "accepted": latency_summary([r[1] for r in ok]),
        "accepted_service_ms": latency_summary([r[2] for r in ok]),
        "rejected": latency_summary([r[2] for r in shed]),
        "peak_connections": raw["peak_connections"],
        "wall_s": round(wall, 3),
    }


async def _closed(host: str, port: int, requests: Sequence[bytes], connections: int, seconds: float,
                  timeout_s: float, on_reply) -> list[tuple]:
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    records: list[tuple] = []
    turn = iter(range(1 << 62))

    async def worker():
        conn = None
        while loop.time() < stop:
            k = next(turn)
            sent = loop.time()
            try:
                async with asyncio.timeout(timeout_s):
                    if conn is None:
                        conn = await asyncio.open_connection(host, port, limit=1 << 22)
                    conn[1].write(requests[k % len(requests)])
                    status, headers = await _read_reply(conn[0])
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                if conn is not None:
                    conn[1].close()
                conn = None
                records.append((type(exc).__name__, (loop.time() - sent) * 1e3))
                continue
            ms = (loop.time() - sent) * 1e3
            if headers.get("connection", "").lower() == "close":
                conn[1].close()
                conn = None
            if on_reply is not None:
                on_reply(k, status, headers, ms)
            records.append((status, ms))
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return records


def closed_loop(host: str, port: int, requests: Sequence[bytes], connections: int, seconds: float,
                timeout_s: float = 10.0, on_reply=None) -> dict:
    """`connections` clients, each sending its next request when the last reply is in (requests
    taken in turn from `requests`), for `seconds`: replies per second by status, latency of 2xx."""
    records = asyncio.run(_closed(host, port, requests, connections, seconds, timeout_s, on_reply))
    statuses = Counter(str(status) for status, _ in records)
    ok = [ms for status, ms in records if isinstance(status, int) and 200 <= status < 300]
    return {"connections": connections, "seconds": seconds, "requests": len(records),
            "goodput_rps": round(len(ok) / seconds, 2), "statuses": dict(sorted(statuses.items())),
            "accepted": latency_summary(ok)}
