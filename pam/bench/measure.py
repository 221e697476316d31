"""What every benchmark measures the same way: latency summaries and a process's memory."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


def quantile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, interpolated linearly between ranks (numpy's default)."""
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(samples_ms: Sequence[float], digits: int = 3) -> dict:
    """{p50_ms, p99_ms, mean_ms, max_ms, n} of latencies in milliseconds; None figures when empty."""
    if not samples_ms:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None, "n": 0}
    ordered = sorted(samples_ms)
    return {"p50_ms": round(quantile(ordered, 0.5), digits), "p99_ms": round(quantile(ordered, 0.99), digits),
            "mean_ms": round(math.fsum(ordered) / len(ordered), digits), "max_ms": round(ordered[-1], digits),
            "n": len(ordered)}


def seconds_summary(samples_s: Sequence[float], digits: int = 3) -> dict:
    """latency_summary of durations given in seconds."""
    return latency_summary([s * 1e3 for s in samples_s], digits)


def _status_field(pid: int | str, name: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return None


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident memory of a process (VmRSS), None when it is gone or /proc is absent."""
    return _status_field(pid, "VmRSS")


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """The most resident memory the process has had (VmHWM)."""
    return _status_field(pid, "VmHWM")
