"""The HAProxy ingress (serving/cluster/haproxy.py) with the real HAProxy binary in front of small
real HTTP servers standing in for replicas (no Ray): the bounded queue and its 503, stalled
clients, replicas appearing and leaving, one user's requests kept on one replica until it is busy."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from serving.cluster.haproxy import HAProxy, IngressConfig, haproxy_binary, render
from serving.cluster.ports import free_port, free_port_block


def _binary() -> str:
    try:
        return haproxy_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


class Replica:
    """An HTTP/1.1 server on one port: `/-/healthz` answers 200; anything else sleeps `delay_s`
    and answers its own port (JSON), with the request's body length."""

    def __init__(self, port: int, delay_s: float = 0.0):
        self.port, self.delay_s, self.served, self.healthy = port, delay_s, 0, True
        replica = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/-/healthz":
                    return self._reply(200 if replica.healthy else 503, {"ok": replica.healthy})
                self._work(0)

            def do_POST(self):
                self._work(len(self.rfile.read(int(self.headers.get("Content-Length", 0)))))

            def _work(self, size: int):
                time.sleep(replica.delay_s)
                replica.served += 1
                self._reply(200, {"port": replica.port, "body": size})

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *args: None  # HAProxy closing idle connections is not news
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def drain(self, seconds: float):
        """As Serve removes a replica: fail health checks for a while, still serving, then stop."""
        self.healthy = False
        time.sleep(seconds)
        self.stop()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ports():
    low = free_port_block(4)
    return low, low + 4


def _config(ports, **kw) -> IngressConfig:
    return IngressConfig(host="127.0.0.1", port=free_port(), replica_host="127.0.0.1", replica_ports=ports, **kw)


def test_the_configuration_passes_haproxys_own_check(tmp_path, ports):
    binary = _binary()
    import subprocess

    cfg = _config(ports, fallback_port=free_port())
    (tmp_path / "h.cfg").write_text(render(cfg, tmp_path))
    check = subprocess.run([binary, "-c", "-f", str(tmp_path / "h.cfg")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    with pytest.raises(ValueError, match="balance_factor"):
        _config(ports, balance_factor=100)
    with pytest.raises(ValueError, match="replica_ports"):
        _config((5, 5))


def test_queue_is_bounded_and_excess_gets_a_fast_503(tmp_path, ports):
    """One replica taking 200 ms per request, 2 at once, a 30 ms queue: of 12 concurrent requests
    2 are served and the rest are answered 503 (JSON, Retry-After) after about the queue time."""
    _binary()
    replica = Replica(ports[0], delay_s=0.2)
    try:
        with HAProxy(_config(ports, max_active=2, queue_timeout_ms=30), tmp_path) as ingress:
            assert ingress.wait_for_replicas(1, 10) == [f"r{ports[0]}"]
            url = f"http://127.0.0.1:{ingress.cfg.port}/v1/users/u1/rerank"

            def one(_):
                started = time.perf_counter()
                reply = requests.post(url, json={"candidates": ["a"]}, timeout=10)
                return reply, time.perf_counter() - started

            with ThreadPoolExecutor(12) as pool:
                results = list(pool.map(one, range(12)))
        ok = [r for r, _ in results if r.status_code == 200]
        shed = [(r, s) for r, s in results if r.status_code == 503]
        assert len(ok) + len(shed) == 12 and 2 <= len(ok) <= 4, [r.status_code for r, _ in results]
        for reply, seconds in shed:
            assert reply.headers["Retry-After"] == "1"
            assert reply.json()["error"] == "overloaded" and "30 ms" in reply.json()["detail"]
            assert seconds < 0.19  # answered at the queue's limit, before any replica freed up
    finally:
        replica.stop()


def test_a_stalled_client_gets_408_and_holds_no_replica(tmp_path, ports):
    """64 connections send headers and one byte of a 10 kB body; the one replica slot stays free
    for others, and the stalled ones get the service's 408 once the request timeout passes."""
    _binary()
    replica = Replica(ports[0])
    try:
        with HAProxy(_config(ports, max_active=1, request_timeout_s=2), tmp_path) as ingress:
            ingress.wait_for_replicas(1, 10)
            stalled = []
            for _ in range(64):
                sock = socket.create_connection(("127.0.0.1", ingress.cfg.port), timeout=10)
                sock.sendall(b"POST /v1/users/u/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 10000\r\n\r\n{")
                stalled.append(sock)
            time.sleep(0.3)
            reply = requests.post(f"http://127.0.0.1:{ingress.cfg.port}/v1/users/v/rerank", json={}, timeout=2)
            assert reply.status_code == 200 and replica.served == 1
            answer = stalled[0].recv(4096).decode("latin-1")
            assert answer.startswith("HTTP/1.1 408") and "body_timeout" in answer, answer
            for sock in stalled:
                sock.close()
    finally:
        replica.stop()


def test_replicas_that_come_and_go_are_followed_without_a_failed_request(tmp_path, ports):
    """A replica started after HAProxy is taken in within a couple of seconds; one that drains and
    stops (as Serve removes one) is left, and requests meanwhile never fail."""
    _binary()
    first = Replica(ports[0])
    second = None
    stop = threading.Event()
    statuses: list[int] = []
    seen: set[int] = set()
    try:
        with HAProxy(_config(ports), tmp_path) as ingress:
            ingress.wait_for_replicas(1, 10)

            def load():
                with requests.Session() as http:
                    k = 0
                    while not stop.is_set():
                        k += 1
                        reply = http.get(f"http://127.0.0.1:{ingress.cfg.port}/v1/users/u{k % 50}/x", timeout=10)
                        statuses.append(reply.status_code)
                        if reply.status_code == 200:
                            seen.add(reply.json()["port"])

            thread = threading.Thread(target=load)
            thread.start()
            time.sleep(0.5)
            second = Replica(ports[0] + 2)
            deadline = time.time() + 10
            while ports[0] + 2 not in seen and time.time() < deadline:
                time.sleep(0.1)
            assert ports[0] + 2 in seen, "the new replica never got a request"
            first.drain(1.5)
            first = None
            time.sleep(2.0)
            before = second.served
            time.sleep(0.5)
            stop.set()
            thread.join(10)
            assert second.served > before  # still served, by the one left
            assert ingress.servers()[f"r{ports[0]}"] != "L7OK"
        assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    finally:
        stop.set()
        for replica in (first, second):
            if replica is not None:
                replica.stop()


def test_one_users_requests_stay_on_one_replica_until_it_is_busy(tmp_path, ports):
    _binary()
    replicas = [Replica(ports[0], 0.05), Replica(ports[0] + 1, 0.05)]
    try:
        with HAProxy(_config(ports), tmp_path) as ingress:
            assert len(ingress.wait_for_replicas(2, 10)) == 2
            base = f"http://127.0.0.1:{ingress.cfg.port}"
            with requests.Session() as http:
                alone = {http.get(f"{base}/v1/users/hot/rerank", timeout=5).json()["port"] for _ in range(10)}
            assert len(alone) == 1  # one at a time: always the same replica
            with ThreadPoolExecutor(8) as pool:
                crowd = list(pool.map(lambda _: requests.get(f"{base}/v1/users/hot/rerank", timeout=10), range(64)))
            assert {r.status_code for r in crowd} == {200}
            assert {r.json()["port"] for r in crowd} == {ports[0], ports[0] + 1}  # a crowd spills to the other
    finally:
        for replica in replicas:
            replica.stop()


def test_its_metrics_count_the_requests_and_the_refused(tmp_path, ports):
    _binary()
    replica = Replica(ports[0], delay_s=0.1)
    try:
        with HAProxy(_config(ports, max_active=1, queue_timeout_ms=20, metrics_port=free_port()), tmp_path) as ingress:
            ingress.wait_for_replicas(1, 10)
            url = f"http://127.0.0.1:{ingress.cfg.port}/v1/users/u/rerank"
            with ThreadPoolExecutor(6) as pool:
                statuses = [r.status_code for r in pool.map(lambda _: requests.get(url, timeout=10), range(6))]
            text = requests.get(f"http://127.0.0.1:{ingress.cfg.metrics_port}/metrics", timeout=5).text
        assert 503 in statuses and 200 in statuses
        served = [line for line in text.splitlines()
                  if line.startswith("haproxy_server_http_responses_total") and f'server="r{ports[0]}"' in line
                  and 'code="2xx"' in line and 'proxy="replicas"' in line]
        assert served and float(served[0].rsplit(" ", 1)[1]) >= statuses.count(200), served
        assert "haproxy_backend_current_queue" in text
        refused = [line for line in text.splitlines() if line.startswith("haproxy_frontend_http_responses_total")
                   and 'code="5xx"' in line and 'proxy="api"' in line]
        assert refused and float(refused[0].rsplit(" ", 1)[1]) >= statuses.count(503), refused
    finally:
        replica.stop()


def test_without_a_binary_the_error_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("PAM_HAPROXY", str(tmp_path / "missing-haproxy"))
    with pytest.raises(FileNotFoundError, match=r"PAM_HAPROXY=.*missing-haproxy is not an executable"):
        HAProxy(_config((30000, 30004)), Path(tmp_path))
