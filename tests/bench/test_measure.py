"""The one latency summary every benchmark reports with, and the /proc memory readers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pam.bench.measure import latency_summary, peak_rss_bytes, quantile, rss_bytes, seconds_summary


def test_quantiles_match_numpys_linear_interpolation():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100, 1001):
        values = rng.exponential(5.0, n).tolist()
        ordered = sorted(values)
        for q in (0.0, 0.5, 0.9, 0.99, 1.0):
            assert quantile(ordered, q) == pytest.approx(float(np.quantile(values, q)))


def test_summary_in_ms_and_from_seconds():
    s = latency_summary([4.0, 1.0, 3.0, 2.0])
    assert s == {"p50_ms": 2.5, "p99_ms": 3.97, "mean_ms": 2.5, "max_ms": 4.0, "n": 4}
    assert seconds_summary([0.004, 0.001, 0.003, 0.002]) == s
    assert latency_summary([]) == {"p50_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None, "n": 0}


def test_memory_of_this_process_and_of_a_gone_one():
    ballast = bytearray(64 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page
    assert rss_bytes() >= 64 * 1024 * 1024
    assert peak_rss_bytes(os.getpid()) >= rss_bytes()
    assert rss_bytes(2**22 + 12345) is None
