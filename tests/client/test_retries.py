"""Retries, Retry-After, failover and spreading against real HTTP servers on 127.0.0.1: a reverse
proxy in front of the real service that answers 503 / 429 / 4xx, drops replies or stalls, and
ports where nothing listens."""

from __future__ import annotations

import asyncio
import time

import pytest

from pam.client import ApiError, AsyncClient, Client, Deadline, ServiceUnavailable, Timeout
from tests.client.servers import FlakyProxy, TrickleServer
from tests.conftest import free_port


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_is_honoured_then_the_call_succeeds(service, status):
    with FlakyProxy(service["url"], fail_first=2, status=status, retry_after="0.3") as proxy, \
            Client(proxy.url, retries=3) as client:
        client.add_album("r-after", service["ids"][:6])
        times = [t for t, _, _ in proxy.seen]
    assert proxy.count == 3
    assert times[1] - times[0] >= 0.29 and times[2] - times[1] >= 0.29  # waited as told


def test_503_without_retry_after_backs_off_with_jitter_and_gives_up(service):
    with FlakyProxy(service["url"], fail_first=100, status=503) as proxy, \
            Client(proxy.url, retries=4, backoff=0.02, max_backoff=0.2) as client:
        start = time.monotonic()
        with pytest.raises(ServiceUnavailable) as err:
            client.health()
        took = time.monotonic() - start
    assert proxy.count == 5 and err.value.status == 503 and err.value.code == "overloaded"
    assert took < 2.0


def test_a_retry_after_beyond_the_limit_is_raised_at_once(service):
    with FlakyProxy(service["url"], fail_first=100, status=503, retry_after="120") as proxy, \
            Client(proxy.url, retries=5, max_retry_after=10) as client, pytest.raises(ServiceUnavailable):
        client.health()
    assert proxy.count == 1


@pytest.mark.parametrize("status", [400, 401, 404, 409, 413, 422])
def test_a_4xx_is_never_retried(service, status):
    with FlakyProxy(service["url"], fail_first=100, status=status) as proxy, \
            Client(proxy.url, retries=5) as client, pytest.raises(ApiError) as err:
        client.rerank("anyone", service["ids"][:3])
    assert proxy.count == 1 and err.value.status == status and not isinstance(err.value, ServiceUnavailable)


def test_failover_skips_a_refusing_url_and_a_503_one_without_waiting(service):
    dead = f"http://127.0.0.1:{free_port()}"
    with FlakyProxy(service["url"], fail_first=100, status=503, retry_after="30") as busy, \
            FlakyProxy(service["url"]) as good, Client([dead, busy.url, good.url], retries=3) as client:
        client.add_album("r-fail", service["ids"][:8])
        start = time.monotonic()
        for _ in range(20):
            assert client.rerank("r-fail", service["ids"][:8]).image_ids
        took = time.monotonic() - start
    assert took < 10  # nobody waited for busy's Retry-After: 30
    assert good.count >= 21 and busy.count <= 2  # busy is held back for 30 s after its first 503


def test_calls_spread_over_healthy_urls(service):
    with FlakyProxy(service["url"]) as a, FlakyProxy(service["url"]) as b, Client([a.url, b.url]) as client:
        for _ in range(20):
            client.health()
    assert a.count == b.count == 10


def test_a_lost_reply_is_retried_with_the_same_request_id(service):
    """The proxy forwards the first rating and drops the reply (the service committed it): the
    retry carries the same request id, so the service replays its acknowledgement."""
    with Client(service["url"]) as direct:
        direct.add_album("r-lost", service["ids"][:8])
    with FlakyProxy(service["url"], fail_first=1, drop=True) as proxy, Client(proxy.url, retries=2) as client:
        ack = client.rate("r-lost", [(service["ids"][0], 4)])
    assert proxy.count == 2
    assert ack.replayed is True and ack.n_ratings == 1


def test_a_timeout_is_raised_and_not_retried(service):
    with FlakyProxy(service["url"], fail_first=1, stall_s=1.5) as proxy, \
            Client(proxy.url, timeout=0.2, retries=3) as client:
        start = time.monotonic()
        with pytest.raises(Timeout):
            client.health()
        assert time.monotonic() - start < 1.0
        assert client.health(), "the next call goes through"  # the stall was the first request only


def test_a_trickled_reply_passes_a_per_phase_timeout_but_not_a_deadline():
    """Each byte comes within the 0.2 s timeout, so a plain timeout lets the reply take its 1.6 s;
    Deadline(0.2) ends the call at 0.2 s: per call or as the client's default, sync and asyncio."""
    with TrickleServer() as slow:
        with Client(slow.url, timeout=0.2, retries=0) as client:
            start = time.monotonic()
            assert client.health()["status"] == "ok"
            assert time.monotonic() - start > 1.0
            start = time.monotonic()
            with pytest.raises(Timeout):
                client._run(_health_call(), Deadline(0.2))
            assert time.monotonic() - start < 0.4
        with Client(slow.url, timeout=Deadline(0.2), retries=0) as client:
            start = time.monotonic()
            with pytest.raises(Timeout):
                client.health()
            assert time.monotonic() - start < 0.4

        async def on_asyncio():
            async with AsyncClient(slow.url, timeout=Deadline(0.2), retries=0) as aclient:
                began = time.monotonic()
                with pytest.raises(Timeout):
                    await aclient.health()
                return time.monotonic() - began

        assert asyncio.run(on_asyncio()) < 0.4


def _health_call():
    """GET /v1/healthz as a Call: health() takes no timeout of its own."""
    from pam.client._core import Call, _json

    return Call("GET", "/v1/healthz", _json)


def test_a_deadline_bounds_connect_and_retries_and_leaves_the_connection_clean(service):
    with pytest.raises(ValueError):
        Deadline(0)
    with FlakyProxy(service["url"], fail_first=1000, status=503) as refusing, \
            Client(refusing.url, retries=5, backoff=0.2) as client:
        start = time.monotonic()
        with pytest.raises((Timeout, ServiceUnavailable)):
            client.rerank("dl-user", ["a.jpg"], timeout=Deadline(0.15))
        assert time.monotonic() - start < 0.4  # no backoff that does not fit
    with Client(service["url"], retries=0) as client:
        assert client._run(_health_call(), Deadline(0.5))["status"] == "ok"
        time.sleep(0.6)  # that deadline has passed; the kept-alive connection must not remember it
        assert client._run(_health_call(), 5.0)["status"] == "ok"
        assert client._connections._idle  # and it was reused, not replaced


def test_async_client_retries_and_fails_over(service):
    dead = f"http://127.0.0.1:{free_port()}"

    async def main(url):
        async with AsyncClient([dead, url], retries=3) as client:
            return [await client.health() for _ in range(6)]

    with FlakyProxy(service["url"], fail_first=2, status=429, retry_after="0.1") as proxy:
        assert asyncio.run(main(proxy.url)) == [{"status": "ok"}] * 6
    assert proxy.count == 8


def test_a_kept_alive_connection_the_server_closed_is_not_a_failure(service):
    """uvicorn closes a connection idle for 5 s; the next call, even with no retries left to it,
    goes out on a fresh connection instead of failing (sync and asyncio)."""

    async def main():
        async with AsyncClient(service["url"], retries=0) as aclient:
            with Client(service["url"], retries=0) as client:
                first = [client.health(), await aclient.health()]
                await asyncio.sleep(6.5)
                return [*first, client.health(), await aclient.health()]

    assert asyncio.run(main()) == [{"status": "ok"}] * 4


REPLIES = {
    "chunked, with a trailer": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
                               b"7\r\n{\"statu\r\n9\r\ns\": \"ok\"}\r\n0\r\nX-Trailer: 1\r\n\r\n",
    "HTTP/1.0, to the end of the connection": b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n"
                                              b'{"status": "ok"}',
    "kept alive": b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{\"status\": \"ok\"}",
}


@pytest.mark.parametrize("client_kind", ["sync", "asyncio"])
@pytest.mark.parametrize("kind", list(REPLIES))
def test_both_clients_read_every_framing_of_a_reply(kind, client_kind):
    """Replies framed by chunks (trailers skipped), by the end of the connection, or by length;
    three calls in a row, on kept-alive connections where the reply allows."""
    connections = []

    async def main():
        async def answer(reader, writer):
            connections.append(writer)
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                                       if line.lower().startswith(b"content-length")), b"0"))
                    await reader.readexactly(length)
                    writer.write(REPLIES[kind])
                    await writer.drain()
                    if b"HTTP/1.0" in REPLIES[kind]:
                        writer.close()
                        return
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server:
            if client_kind == "sync":
                with Client(url, retries=0) as client:
                    return await asyncio.to_thread(lambda: [client.health() for _ in range(3)])
            async with AsyncClient(url, retries=0) as client:
                return [await client.health() for _ in range(3)]

    assert asyncio.run(main()) == [{"status": "ok"}] * 3
    assert len(connections) == (3 if "HTTP/1.0" in kind else 1)
