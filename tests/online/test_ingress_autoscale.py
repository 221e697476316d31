"""The default ingress under autoscaling: a real Ray Serve in direct-ingress mode with HAProxy in
front (as `pam serve` runs it). Under wrk load Serve adds a replica, HAProxy sends it requests,
Serve removes it afterwards, and no request fails. A Ray of its own: direct ingress is set in the
environment before Ray starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("wrk") is None, reason="Debian's wrk is absent (scripts/install.sh)"),
              pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field:DeprecationWarning")]


def _running() -> int:
    from ray import serve

    return serve.status().applications["pam"].deployments["pam"].replica_states.get("RUNNING", 0)


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_haproxy_follows_autoscaled_replicas_without_a_failed_request(feature_env, tmp_path):
    import ray
    import requests
    from ray import serve

    from serving.cluster.haproxy import HAProxy, IngressConfig
    from serving.cluster.local_ray import init_local_ray
    from serving.cluster.ports import free_port, free_port_block
    from serving.online.app import MAX_ACTIVE, build_app, direct_ingress_env

    span = 4
    base = free_port_block(2 * span)
    saved = dict(os.environ)
    os.environ.update(direct_ingress_env(base, span))
    init_local_ray(num_cpus=2, include_dashboard=False)
    ingress = None
    try:
        serve_port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        autoscaling = {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 1, "target_ongoing_requests": 1,
                       "upscale_delay_s": 1, "downscale_delay_s": 4, "metrics_interval_s": 0.5,
                       "look_back_period_s": 2}
        config = {"feature_root": feature_env["feature_root"], "model": feature_env["model"],
                  "user_store": f"sqlite:///{tmp_path / 'users.db'}", "autoscaling": autoscaling}
        serve.run(build_app(config), name="pam", route_prefix="/")
        ingress = HAProxy(IngressConfig(host="127.0.0.1", port=free_port(), replica_host="127.0.0.1",
                                        replica_ports=(base, base + span), fallback_port=serve_port,
                                        max_active=MAX_ACTIVE, log_errors=True), tmp_path / "haproxy").start()
        assert len(ingress.wait_for_replicas(1, 60)) == 1
        url = f"http://127.0.0.1:{ingress.cfg.port}"
        ids = feature_env["ids"]
        requests.post(f"{url}/v1/users/load/album", json={"image_ids": ids}, timeout=30).raise_for_status()
        script = tmp_path / "rerank.lua"
        body = '{"candidates": [' + ",".join(f'"{i}"' for i in ids) + "]}"
        script.write_text(f"wrk.method = 'POST'\nwrk.body = '{body}'\nwrk.headers['Content-Type'] = 'application/json'\n")
        wrk = subprocess.Popen(["wrk", "-t1", "-c8", "-d30s", "-s", str(script), f"{url}/v1/users/load/rerank"],
                               stdout=subprocess.PIPE, text=True)
        _wait(lambda: len(ingress.wait_for_replicas(2, 0.1)) == 2, 60, "HAProxy to see a second replica")
        both = ingress.wait_for_replicas(2, 0.1)
        out, _ = wrk.communicate(timeout=90)
        _wait(lambda: _running() == 1, 90, "the scale-down to one replica")
        _wait(lambda: len(ingress.wait_for_replicas(1, 0.1)) == 1, 30, "HAProxy to leave the removed replica")
        log = (tmp_path / "haproxy" / "haproxy.log").read_text()
        assert "Non-2xx" not in out and "Socket errors" not in out, f"{out}\nHAProxy: {[x for x in log.splitlines() if 'HTTP/1.1' in x][-20:]}"
        assert int(out.split(" requests in ")[0].split()[-1]) > 50, out
        served = {r["svname"]: int(r["stot"] or 0) for r in ingress.stats()}
        assert all(served.get(name, 0) > 0 for name in both), served  # the added replica took requests
        after = requests.post(f"{url}/v1/users/load/rerank", json={"candidates": ids[:5]}, timeout=30)
        assert after.status_code == 200, after.text
    finally:
        if ingress is not None:
            ingress.stop()
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)

