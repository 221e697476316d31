"""Starting a new local Ray node, once more when its start-up times out.

Ray's head start waits 30 s for the raylet to register with the GCS, then raises a bare
`Exception` and leaves the processes it started running. A CI run saw this once, for a test's
`pam serve`, and it happens every time a port given to Ray is taken when Ray binds it (the metrics
agent fails, the raylet exits): `pam serve` chose its metrics port free a moment earlier, a race.
A healthy start takes 3-8 s here, even with the cores saturated. So this says why (the error
lines of Ray's logs), stops what the failed try left, and tries again on a freshly chosen port.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

from serving.cluster.ports import free_port

STARTUP_TIMEOUT_MESSAGE = "timed out during startup"
RAY_LOGS = ("raylet.out", "gcs_server.out", "dashboard_agent.log", "runtime_env_agent.log")
TELLING = re.compile(r"error|fail|exception|in use|refused", re.IGNORECASE)


LOOPBACK = ("127.0.0.1", "localhost")
# Ray's processes beside the GCS, the raylet and the workers: metrics and process stats, runtime
# environments, log forwarding, the autoscaler's monitor, the dashboard's head (first argument, or
# the script a Python interpreter runs)
BACKGROUND_PROCESSES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "dashboard/agent.py",
                        "runtime_env/agent/main.py", "_private/log_monitor.py", "autoscaler/_private/monitor.py",
                        "dashboard/dashboard.py")


def init_local_ray(attempts: int = 2, metrics_port: int | None = None, system_config: dict | None = None,
                   metrics_host: str = "127.0.0.1", background_niceness: int | None = 19, **kwargs) -> int:
    """`ray.init(address="local", **kwargs)`, tried up to `attempts` times; returns the port of
    Ray's Prometheus metrics. Without `metrics_port`, each try takes a port free at that moment.
    system_config: Ray's internal settings for the new node (see serving.cluster.ray_compat).
    metrics_host: Ray's metrics exporter binds either the loopback interface (127.0.0.1 /
    localhost here) or every interface (anything else); it knows no other choice.
    background_niceness: the CPU priority of Ray's background processes (lower_background_priority;
    None leaves them at this process's)."""
    import ray

    from serving.cluster.ray_compat import (
        bind_local_node_to_loopback,
        init_options,
        workers_at_driver_priority,
    )

    if metrics_host in LOOPBACK:
        bind_local_node_to_loopback()
    workers_at_driver_priority()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for attempt in range(1, attempts + 1):
        port = metrics_port or free_port("")
        before = _descendants(os.getpid())
        try:
            ray.init(address="local", **init_options(port, system_config), **kwargs)
            if background_niceness is not None:
                lower_background_priority(background_niceness)
            return port
        except Exception as error:  # Ray raises a bare Exception for this
            if STARTUP_TIMEOUT_MESSAGE not in str(error) or attempt == attempts:
                raise
            print(f"local Ray did not start (try {attempt} of {attempts}): {error}\n"
                  f"{_log_lines()}\nstopping what it started and trying again", file=sys.stderr, flush=True)
            _stop(_descendants(os.getpid()) - before)
            ray.shutdown()
    raise AssertionError("unreachable")


def lower_background_priority(niceness: int = 19, pid: int | None = None) -> list[int]:
    """Ray's background processes below `pid` (default: this driver) at CPU priority `niceness`
    (every thread: Linux keeps a nice value per thread); returns their pids.

    Their work comes in bursts (the dashboard agent collects and exports metrics for ~0.2 s of a
    core every 10 s), and on a node with few cores a burst beside a replica's requests is those
    requests' tail latency. At the lowest priority it runs in the cores' idle time instead; none
    of these processes answers a request or decides a replica's health.
    """
    lowered = []
    for child in sorted(_descendants(pid or os.getpid())):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        script = next((a for a in argv[1:] if not a.startswith("-")), "") if "python" in argv[0] else ""
        if not any(argv[0] == name or script.endswith(name) for name in BACKGROUND_PROCESSES):
            continue
        done: set[int] = set()
        for _ in range(5):  # a thread started while these were listed inherits its creator's value
            try:
                threads = {int(t) for t in os.listdir(f"/proc/{child}/task")} - done
            except OSError:
                break
            if not threads:
                break
            for thread in threads:
                try:
                    os.setpriority(os.PRIO_PROCESS, thread, niceness)
                except OSError:  # gone since, or not this user's
                    pass
            done |= threads
        lowered.append(child)
    return lowered


def _log_lines(per_log: int = 3) -> str:
    """The last lines of Ray's start-up logs that name an error (its tracebacks say little)."""
    logs = Path(os.environ.get("RAY_TMPDIR", "/tmp/ray")) / "session_latest" / "logs"
    found = []
    for name in RAY_LOGS:
        path = logs / name
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        telling = [line.strip()[:300] for line in lines if TELLING.search(line)][-per_log:]
        if telling:
            found.append(f"  {path}:\n    " + "\n    ".join(telling))
    return "\n".join(found) or f"  (no error lines in Ray's logs under {logs})"


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = entry.read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _stop(pids: set[int], grace_s: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while time.time() < deadline and any(_running(pid) for pid in pids):
            time.sleep(0.1)


def _running(pid: int) -> bool:
    """Alive and not a zombie; reaps it when it is this process's own child."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
