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


def test_the_worded_target_sets_direct_rerank_rounds_against_proxied_echo_rounds():
    from pam.bench.serve import _targets

    def rounds(echo, rerank):
        return [{"echo": {"rps": e, "p99_ms": ep}, "rerank": {"rps": r, "p99_ms": rp},
                 "rps_ratio": r / e, "p99_ratio": rp / ep} for (e, ep), (r, rp) in zip(echo, rerank, strict=True)]

    point = {"8": {"rps": 1.0, "p99_ms": 1.0}}
    http = {"proxy": {"echo": point, "rerank": point,
                      "rounds_8": rounds([(200, 60), (210, 70), (190, 80)], [(130, 90), (140, 85), (120, 95)])},
            "direct": {"echo": point, "rerank": point,
                       "rounds_8": rounds([(4000, 20), (4400, 19), (4200, 21)], [(550, 28), (600, 22), (580, 30)])}}
    t = _targets(http)
    assert t["proxy"]["rerank_over_echo_rps_at_8"] == pytest.approx(130 / 200)
    worded = t["lowered_overhead"]
    assert worded["rerank_over_echo_rps_at_8"] == pytest.approx(580 / 200)  # medians: 580 direct, 200 proxied
    assert worded["rerank_over_echo_p99_at_8"] == pytest.approx(28 / 70)
    assert worded["meets_rps_target_0.8"] and worded["meets_p99_target_1.5"]
    del http["direct"]["rounds_8"]
    assert "lowered_overhead" not in _targets(http)


def test_serve_bench_runs_quick_under_overload_uploads_and_a_hot_user():
    """The open loop at 0.5x and 2x capacity, the replica's memory around uploads and the hot user
    under both routers, at tiny sizes: each part runs and reports its figures."""
    if shutil.which("wrk") is None:
        pytest.skip("Debian's wrk is not installed (scripts/install.sh installs it)")
    out = subprocess.run([sys.executable, "-m", "pam.cli", "bench", "serve", "--quick", "--modes",
                          "overload,upload,hotuser", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    http = json.loads(out.stdout)["http"]
    for mode in ("overload", "upload", "hotuser"):
        assert "error" not in http[mode], http[mode].get("error")
    ol = http["overload"]["open_loop"]
    assert ol["capacity_rps"] > 0
    for name, factor in (("half", 0.5), ("double", 2.0)):
        point = ol[name]
        assert point["target_rate_per_s"] == pytest.approx(ol["capacity_rps"] * factor, rel=0.01)
        assert point["requests"] == point["scheduled"] == sum(point["statuses"].values()) > 0
        assert point["accepted"]["n"] == point["statuses"].get("200", 0)
    upload = http["upload"]
    assert upload["all_accepted"] and upload["size"] == [1500, 1000]
    assert [(r["file"], r["copies"]) for r in upload["runs"]] == [("photo.jpg", 1), ("photo.png", 1), ("photo.png", 2),
                                                                 ("photo.jpg", 2)]
    assert all(r["rss_before_mb"] > 0 and r["rss_peak_mb"] >= r["rss_before_mb"] for r in upload["runs"])
    hot = http["hotuser"]
    for routing in ("affinity", "spillover", "haproxy"):
        r = hot[routing]
        served = sum(c.get("hot", 0) + c.get("others", 0) for c in r["replicas"].values())
        assert served == r["statuses"].get("200", 0) > 0
        assert "?" not in r["replicas"]  # every reply named its replica
