"""Start and stop a real tritonserver (scripts/triton-server.sh) for tests, benchmarks and the demo.

    with TritonServer(repo) as server:           # free ports on 127.0.0.1, waits for READY
        backend = TritonBackend(server.http_url)
        ...                                       # stopped on exit: SIGTERM, then SIGKILL

The server runs in its own process group (its Python-backend stubs are its children), so stop()
ends them all. Triton on CPU can hold its ports for a while after SIGTERM: always use free ports.
Standard library only (no tritonclient needed to start or probe a server).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from serving.cluster.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SCRIPT = ROOT / "scripts" / "triton-server.sh"


class TritonServerError(RuntimeError):
    """The server did not start (the message carries the tail of its log)."""


class TritonServer:
    def __init__(
        self,
        model_repository: str | os.PathLike,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        host: str = "127.0.0.1",
        log_path: str | os.PathLike | None = None,
        startup_timeout: float = 180.0,
        script: str | os.PathLike | None = None,
        extra_args: tuple[str, ...] = ("--exit-timeout-secs=5",),
    ):
        self.model_repository = Path(model_repository)
        self.host = host
        # None: pick a free port (metrics: None means no metrics endpoint, 0 a free port)
        self._auto_ports = http_port is None and grpc_port is None and metrics_port in (None, 0)
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self._auto_metrics = metrics_port == 0
        self.metrics_port = free_port(host) if metrics_port == 0 else metrics_port
        self.startup_timeout = startup_timeout
        self.script = Path(script or os.environ.get("PAM_TRITON_SCRIPT", DEFAULT_SCRIPT))
        self.extra_args = tuple(extra_args)
        self._log_path = Path(log_path) if log_path else None
        self._log_file = None
        self._process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str | None:
        return f"http://{self.host}:{self.metrics_port}/metrics" if self.metrics_port else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def start(self, attempts: int = 3) -> TritonServer:
        """Start and wait for READY. With ports of its own choosing, a port taken by someone
        else between choosing and binding is retried on fresh ports."""
        if self._process is not None:
            raise TritonServerError("already started")
        if not self.script.is_file():
            raise TritonServerError(f"{self.script} not found (set PAM_TRITON_SCRIPT)")
        if not self.model_repository.is_dir():
            raise TritonServerError(f"no model repository at {self.model_repository}")
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        for attempt in range(attempts):
            try:
                return self._start_once()
            except TritonServerError as exc:
                port_taken = "address already in use" in str(exc).lower()
                if not (self._auto_ports and port_taken) or attempt == attempts - 1:
                    raise
                self.http_port, self.grpc_port = free_port(self.host), free_port(self.host)
                if self._auto_metrics:
                    self.metrics_port = free_port(self.host)
        raise TritonServerError("unreachable")

    def _start_once(self) -> TritonServer:
        command = ["bash", str(self.script), "start", "--model-repository", str(self.model_repository),
                   "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                   "--address", self.host]
        if self.metrics_port:
            command += ["--metrics-port", str(self.metrics_port)]
        command += ["--", *self.extra_args]
        self._log_file = open(self._log_path, "wb")  # closed in stop()
        self._process = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise TritonServerError(f"tritonserver exited with {code} before READY:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        raise TritonServerError(f"tritonserver not READY after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def log_tail(self, lines: int = 12) -> str:
        """Triton's error lines (a failed model says why there), then the last lines."""
        if not self._log_path or not self._log_path.exists():
            return ""
        text = self._log_path.read_text(errors="replace").splitlines()
        errors = [line for line in text
                  if (re.match(r"E\d{4} ", line) and "CudaDriverHelper" not in line) or "UNAVAILABLE" in line]
        return "\n".join([*errors[-10:], "...", *text[-lines:]] if errors else text[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after `timeout` seconds."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if process is not None:
            _signal_group(process.pid, signal.SIGKILL)  # stubs left behind by a dead server
            _wait_group_gone(process.pid, timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Until no live process of the group is left (SIGKILL is delivered asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _live_members(pgid):
        time.sleep(0.05)


def _live_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):  # fields: state, ppid, pgrp
            members.append(int(entry))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
