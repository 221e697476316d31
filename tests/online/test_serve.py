"""The service on a real local Ray Serve: proxy, two replicas with multiplexed user models,
read-your-writes across replicas, concurrent ratings, a replica killed mid-stream, metrics,
autoscaling. One Ray + Serve for the module, on 127.0.0.1 and free ports."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
import requests

from serving.cluster.local_ray import init_local_ray
from serving.online.user_store import open_user_store
from tests.conftest import free_port
from tests.online.test_api import Client, expect_error, expected_scores

pytestmark = [pytest.mark.ray,
              pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field:DeprecationWarning")]
APP = "pam"


@pytest.fixture(scope="module")
def serve_env(feature_env, tmp_path_factory):
    import ray
    from ray import serve

    from serving.online.app import build_app

    metrics_port = init_local_ray(num_cpus=2, include_dashboard=False,
                                  _system_config={"metrics_report_interval_ms": 1000})
    port = free_port()
    store_url = f"sqlite:///{tmp_path_factory.mktemp('serve-users') / 'users.db'}"
    config = {"feature_root": feature_env["feature_root"], "model": feature_env["model"],
              "photos_root": feature_env["photos_root"], "user_store": store_url, "model_cache_size": 4}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({**config, "num_replicas": 2}), name=APP, route_prefix="/")
        yield {"call": Client(f"http://127.0.0.1:{port}"), "url": f"http://127.0.0.1:{port}", "env": feature_env,
               "config": config, "store_url": store_url, "metrics_port": metrics_port}
    finally:
        serve.shutdown()
        ray.shutdown()


def replica_actor_names() -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(f"SERVE_REPLICA::{APP}#"))


def running_replicas() -> int:
    from ray import serve

    deployment = serve.status().applications[APP].deployments["pam"]
    return deployment.replica_states.get("RUNNING", 0)


def wait_for(predicate, timeout: float, what: str, step: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_api_through_the_proxy(serve_env):
    call, env = serve_env["call"], serve_env["env"]
    assert call("GET", "/v1/healthz").json() == {"status": "ok"}
    assert call("GET", "/v1/readyz").json()["ready"]
    assert "/v1/users/{user_id}/rerank" in call("GET", "/v1/openapi.json").json()["paths"]
    expect_error(call("POST", "/v1/users/..%2F..%2Fetc/rerank", json={"candidates": ["x"]}), 400, "not allowed")
    expect_error(call("POST", "/v1/users/nobody/rerank", data=b"{not json"), 400, "not valid JSON")
    expect_error(call("POST", "/v1/users/nobody/rerank", data=b"x" * (9 * 1024 * 1024)), 413, "at most")
    expect_error(call("POST", "/v1/users/nobody/rerank", json={"candidates": [env["ids"][0]]}), 404, "nobody")


def test_read_your_writes_across_replicas(serve_env):
    call, env = serve_env["call"], serve_env["env"]
    assert running_replicas() == 2
    call("POST", "/v1/users/rw/album", json={"image_ids": env["ids"][:30]})
    rated = {}
    for k, image_id in enumerate(env["ids"][:16]):
        rated[image_id] = float(1 + (k * 3) % 5)
        ack = call("POST", "/v1/users/rw/ratings", json={"ratings": [{"image_id": image_id, "score": rated[image_id]}]}).json()
        # no routing header: the next request may land on the replica whose cached model is older
        reply = call("POST", "/v1/users/rw/rerank", json={"candidates": env["ids"][:30]}).json()
        assert reply["ratings_version"] >= ack["ratings_version"] and reply["n_ratings"] == k + 1
    want = dict(zip(env["ids"][:30], expected_scores(env, rated, env["ids"][:30]), strict=True))
    for _ in range(4):  # each replica answers the same
        reply = call("POST", "/v1/users/rw/rerank", json={"candidates": env["ids"][:30]}).json()
        assert reply["scores"] == pytest.approx([want[i] for i in reply["image_ids"]], abs=1e-6)


def test_multiplexed_models_more_users_than_cache(serve_env):
    call, env = serve_env["call"], serve_env["env"]
    users = [f"mx{k}" for k in range(10)]  # cache: 4 models per replica
    for k, user in enumerate(users):
        call("POST", f"/v1/users/{user}/album", json={"image_ids": env["ids"][:20]})
        call("POST", f"/v1/users/{user}/ratings", json={"ratings": [
            {"image_id": i, "score": 1 + (j + k) % 5} for j, i in enumerate(env["ids"][:8])]})
    for _ in range(2):
        for k, user in enumerate(users):
            reply = call("POST", f"/v1/users/{user}/rerank", json={"candidates": env["ids"][20:30]},
                         headers={"serve_multiplexed_model_id": user}).json()
            rated = {i: float(1 + (j + k) % 5) for j, i in enumerate(env["ids"][:8])}
            want = expected_scores(env, rated, env["ids"][20:30])
            assert sorted(reply["scores"]) == pytest.approx(sorted(want), abs=1e-6), user


def test_a_hot_user_spreads_over_both_replicas(serve_env):
    """24 clients re-rank for one user, each naming the user's model: Serve's own router would keep
    them all on the replica holding the model; the spillover router sends what that replica cannot
    start at once to the other one. Every reply names its replica."""
    call, env = serve_env["call"], serve_env["env"]
    call("POST", "/v1/users/hot/album", json={"image_ids": env["ids"][:20]})
    call("POST", "/v1/users/hot/ratings", json={"ratings": [{"image_id": i, "score": 1 + j % 5}
                                                            for j, i in enumerate(env["ids"][:8])]})
    # the user's model on one replica first, and Serve's routers told so (as for a user who was quiet)
    call("POST", "/v1/users/hot/rerank", json={"candidates": env["ids"][:40]}, headers={"serve_multiplexed_model_id": "hot"})
    time.sleep(3)
    replies: list[tuple[int, str | None]] = []

    def client():
        with requests.Session() as http:
            for _ in range(15):
                r = http.post(f"{serve_env['url']}/v1/users/hot/rerank", json={"candidates": env["ids"][:40]},
                              headers={"serve_multiplexed_model_id": "hot"}, timeout=60)
                replies.append((r.status_code, r.headers.get("x-pam-replica")))

    threads = [threading.Thread(target=client) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {status for status, _ in replies} == {200}, replies
    per_replica = {name: sum(1 for _, n in replies if n == name) for name in {n for _, n in replies}}
    assert None not in per_replica and len(per_replica) == 2, per_replica
    assert min(per_replica.values()) >= 0.1 * len(replies), per_replica


def test_spillover_ranks_keep_a_user_on_its_replicas_while_they_have_room():
    from types import SimpleNamespace

    from serving.cluster.routing import spillover_ranks

    a, b, c = (SimpleNamespace(replica_id=n, multiplexed_model_ids=m) for n, m in
               (("a", {"hot"}), ("b", set()), ("c", {"hot", "x"})))
    load = {"a": 3, "b": 0, "c": None}
    ranks = spillover_ranks([a, b, c], "hot", lambda r: load[r.replica_id], spill_at=8)
    assert {r.replica_id for r in ranks[0]} == {"a", "c"} and len(ranks) == 2 and len(ranks[1]) == 2
    load.update(a=8, c=9)  # both holders busy: first the calmer replica that lacks the model
    ranks = spillover_ranks([a, b, c], "hot", lambda r: load[r.replica_id], spill_at=8)
    assert [r.replica_id for r in ranks[0]] == ["b"] and len(ranks[1]) == 2
    load.update(b=8)  # no calmer one: any two
    ranks = spillover_ranks([a, b, c], "hot", lambda r: load[r.replica_id], spill_at=8)
    assert len(ranks) == 1 and len(ranks[0]) == 2
    assert spillover_ranks([a, b], "", lambda r: 0, 8) in ([[a, b]],)
    assert spillover_ranks([b], "nobody", lambda r: 0, 8) == [[b]]


def test_concurrent_ratings_for_one_user_lose_nothing(serve_env):
    call, env = serve_env["call"], serve_env["env"]
    call("PUT", "/v1/users/crowd")
    n_threads, per_thread = 8, 6
    errors = []

    def worker(w: int):
        client = Client(serve_env["url"])
        for i in range(per_thread):
            image_id = env["ids"][w * per_thread + i]
            r = client("POST", "/v1/users/crowd/ratings", json={"ratings": [{"image_id": image_id, "score": 1 + i % 5}],
                                                               "request_id": f"c-{w}-{i}"})
            if r.status_code != 200:
                errors.append(r.text)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    state = call("GET", "/v1/users/crowd").json()
    assert state["n_ratings"] == n_threads * per_thread and state["ratings_version"] == n_threads * per_thread


def _kill_one_replica() -> str:
    """SIGKILL the process of one replica (a crash, not a graceful stop)."""
    import ray

    name = replica_actor_names()[0]
    actor = ray.get_actor(name, namespace="serve")
    pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
    os.kill(pid, signal.SIGKILL)
    return name


def test_killed_replica_loses_no_acknowledged_rating(serve_env):
    call, env = serve_env["call"], serve_env["env"]
    ids = env["ids"]
    call("POST", "/v1/users/crash/album", json={"image_ids": ids})
    acknowledged: dict[str, float] = {}
    failures = []
    stop = threading.Event()

    def stream():
        client = Client(serve_env["url"])
        for k, image_id in enumerate(ids):
            score = float(1 + (k * 2) % 5)
            body = {"ratings": [{"image_id": image_id, "score": score}], "request_id": f"crash-{k}"}
            for _attempt in range(40):  # a client retries with the same request id until acknowledged
                try:
                    r = client("POST", "/v1/users/crash/ratings", json=body)
                except requests.RequestException as exc:
                    failures.append(type(exc).__name__)
                    time.sleep(0.25)
                    continue
                if r.status_code == 200:
                    acknowledged[image_id] = score
                    break
                failures.append(r.status_code)
                time.sleep(0.25)
            time.sleep(0.02)
        stop.set()

    thread = threading.Thread(target=stream)
    thread.start()
    wait_for(lambda: len(acknowledged) >= 8, 60, "the first ratings")
    killed = _kill_one_replica()
    thread.join(240)
    assert stop.is_set(), "the rating stream did not finish"
    assert len(acknowledged) == len(ids), f"unacknowledged after retries: {len(ids) - len(acknowledged)}"

    with open_user_store(serve_env["store_url"]) as store:  # the store holds every acknowledged rating
        snap = store.snapshot("crash")
    assert dict(zip(snap.rated_ids, snap.scores, strict=True)) == acknowledged
    assert snap.versions.ratings == len(ids)  # retries replayed, nothing written twice

    wait_for(lambda: running_replicas() == 2, 120, "Serve to replace the killed replica")
    assert killed not in replica_actor_names()
    want = dict(zip(ids, expected_scores(env, acknowledged, ids), strict=True))
    for _ in range(4):
        reply = call("POST", "/v1/users/crash/rerank", json={"candidates": ids}).json()
        assert reply["ratings_version"] == len(ids)
        assert reply["scores"] == pytest.approx([want[i] for i in reply["image_ids"]], abs=1e-6)


def test_prometheus_metrics_serve_and_per_endpoint(serve_env):
    call = serve_env["call"]
    for _ in range(3):
        call("GET", "/v1/healthz")
    url = f"http://127.0.0.1:{serve_env['metrics_port']}/metrics"

    def scraped() -> str:
        try:
            return urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError:
            return ""

    wanted = ("ray_pam_requests_total", "ray_pam_request_latency_ms_bucket", "ray_serve_num_http_requests_total")
    wait_for(lambda: all(w in scraped() for w in wanted), 60, f"metrics {wanted}", step=2)
    text = scraped()
    assert 'endpoint="/v1/users/{user_id}/rerank"' in text and 'endpoint="/v1/healthz"' in text


def test_version_switch_through_user_config(serve_env, second_version):
    """`serve deploy` with user_config {model}: each replica opens the new version, then swaps."""
    from ray import serve

    from serving.online.app import build_app

    call, env = serve_env["call"], serve_env["env"]
    call("POST", "/v1/users/ver/album", json={"image_ids": env["ids"][:10]})
    call("POST", "/v1/users/ver/ratings", json={"ratings": [{"image_id": i, "score": 2 + k % 3}
                                                            for k, i in enumerate(env["ids"][:6])]})
    assert call("POST", "/v1/users/ver/rerank", json={"candidates": env["ids"][:10]}).json()["model_version"] == "tiny-test-0"
    serve.run(build_app({**serve_env["config"], "num_replicas": 2, "user_config": {"model": second_version}}),
              name=APP, route_prefix="/")
    wait_for(lambda: all(call("GET", "/v1/info").json()["model_version"] == "tiny-test-1" for _ in range(4)), 60,
             "every replica to switch")
    reply = call("POST", "/v1/users/ver/rerank", json={"candidates": env["ids"][:10]}).json()
    assert reply["model_version"] == "tiny-test-1" and reply["personalized"] and reply["n_ratings"] == 6


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="Debian's wrk is absent (scripts/install.sh installs it)")
def test_autoscaling_adds_and_removes_a_replica_without_failed_requests(serve_env, tmp_path):
    from ray import serve

    from serving.online.app import build_app

    env = serve_env["env"]
    autoscaling = {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 1, "target_ongoing_requests": 1,
                   "upscale_delay_s": 1, "downscale_delay_s": 4, "metrics_interval_s": 0.5, "look_back_period_s": 2}
    serve.run(build_app({**serve_env["config"], "autoscaling": autoscaling}), name=APP, route_prefix="/")
    wait_for(lambda: running_replicas() == 1, 90, "one replica")
    call = serve_env["call"]
    call("POST", "/v1/users/load/album", json={"image_ids": env["ids"]})
    call("POST", "/v1/users/load/ratings", json={"ratings": [{"image_id": i, "score": 1 + k % 5}
                                                             for k, i in enumerate(env["ids"][:20])]})
    script = tmp_path / "rerank.lua"
    body = '{"candidates": [' + ",".join(f'"{i}"' for i in env["ids"]) + "]}"
    script.write_text(f"wrk.method = 'POST'\nwrk.body = '{body}'\nwrk.headers['Content-Type'] = 'application/json'\n")
    seen = []
    sampler_stop = threading.Event()

    def sample():
        while not sampler_stop.is_set():
            seen.append(running_replicas())
            time.sleep(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out = subprocess.run(["wrk", "-t1", "-c8", "-d25s", "-s", str(script), f"{serve_env['url']}/v1/users/load/rerank"],
                         capture_output=True, text=True, timeout=120).stdout
    try:
        wait_for(lambda: running_replicas() == 1, 90, "the scale-down to one replica")
    finally:
        sampler_stop.set()
        sampler.join()
    assert max(seen) == 2, f"never scaled up: {seen}"
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    requests_done = int(out.split(" requests in ")[0].split()[-1])
    assert requests_done > 50, out
    assert np.all(np.diff([s for s in seen if s]) <= 1)
