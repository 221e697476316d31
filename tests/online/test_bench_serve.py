"""`pam bench serve --quick` through Serve's proxy: the benchmark runs end to end and reports
the target's ratio from its alternating rounds (timings are not asserted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_serve_bench_runs_quick_through_the_proxy():
    if shutil.which("wrk") is None:
        pytest.skip("Debian's wrk is not installed (scripts/install.sh installs it)")
    out = subprocess.run([sys.executable, "-m", "pam.cli", "bench", "serve", "--quick", "--modes", "proxy",
                          "--connections", "8", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["library"]["library_call"]["p50_ms"] > 0
    proxy = summary["http"]["proxy"]
    assert "error" not in proxy, proxy.get("error")
    for name in ("echo", "rerank", "naive"):
        assert proxy[name]["8"]["rps"] > 0 and proxy[name]["8"]["non_2xx"] == 0, (name, proxy[name])
    assert proxy["echo_defaults_8"]["rps"] > 0 and len(proxy["rounds_8"]) == 1
    target = summary["targets"]["proxy"]
    assert target["from"] == "median of 1 alternating echo / re-rank rounds"
    assert target["rerank_over_echo_rps_at_8"] == proxy["rounds_8"][0]["rps_ratio"]
