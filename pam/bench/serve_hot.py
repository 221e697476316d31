"""`pam bench serve --modes hotuser`: one hot user among many, two replicas, three routers.

Clients send `serve_multiplexed_model_id: <user>`, so Serve routes a user to the replica that
holds the user's model. Here one user sends most of the re-ranks (a labelling session, a batch
client) while many others send the rest. Two replicas, measured with each router in turn, at the
same Poisson arrivals: through Serve's proxy, Serve's own router (affinity: a user stays on its
replica until that replica's queue is full) and the service's (spillover: serving.cluster.routing);
and the default ingress, HAProxy's bounded-load consistent hashing on the user's path.
Per replica (each reply names its replica in X-Pam-Replica): the hot user's and the others'
requests; per class: statuses and latency from the scheduled time.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter, defaultdict
from pathlib import Path

from pam.bench.measure import latency_summary

HOT_SHARE = 0.8
ROUTERS = ("affinity", "spillover", "haproxy")


def mixed_requests(port: int, body: bytes, hot: str, users: int, n: int = 2000, seed: int = 5) -> tuple[list, list]:
    """(raw requests, user of each): HOT_SHARE of them for `hot`, the rest spread over u0..u{users-1}."""
    from pam.bench.open_loop import http_request

    rng = random.Random(seed)
    who = [hot if rng.random() < HOT_SHARE else f"u{rng.randrange(users)}" for _ in range(n)]
    requests = [http_request("POST", f"/v1/users/{user}/rerank", f"127.0.0.1:{port}", body,
                             {"Content-Type": "application/json", "serve_multiplexed_model_id": user})
                for user in who]
    return requests, who


def _measure(port: int, requests: list, who: list, hot: str, rate: float, seconds: float,
             connections: int = 0) -> dict:
    """Open loop at `rate`, or closed loop over `connections` when given."""
    from pam.bench.open_loop import closed_loop, open_loop
    from serving.online.app import REPLICA_HEADER

    per_replica: dict[str, Counter] = defaultdict(Counter)
    latency: dict[str, list[float]] = {"hot": [], "others": []}
    statuses: dict[str, Counter] = {"hot": Counter(), "others": Counter()}

    def on_reply(k: int, status: int, headers: dict, ms: float):
        kind = "hot" if who[k % len(who)] == hot else "others"
        statuses[kind][str(status)] += 1
        if 200 <= status < 300:
            latency[kind].append(ms)
            per_replica[headers.get(REPLICA_HEADER, "?")[:8]][kind] += 1

    if connections:
        total = closed_loop("127.0.0.1", port, requests, connections, seconds, on_reply=on_reply)
        total["kept_up"] = True
    else:
        total = open_loop("127.0.0.1", port, requests, rate=rate, seconds=seconds, seed=11, on_reply=on_reply)
    replicas = {name: dict(counts) for name, counts in sorted(per_replica.items())}
    hot_counts = sorted((c.get("hot", 0) for c in per_replica.values()), reverse=True)
    return {"offered_rps": round(rate, 1) if not connections else None, "connections": connections or None,
            "goodput_rps": total["goodput_rps"], "statuses": total["statuses"],
            "kept_up": total["kept_up"], "replicas": replicas,
            "hot_share_on_busiest_replica": round(hot_counts[0] / max(sum(hot_counts), 1), 3) if hot_counts else None,
            "hot": {"statuses": dict(statuses["hot"]), **latency_summary(latency["hot"])},
            "others": {"statuses": dict(statuses["others"]), **latency_summary(latency["others"])}}


def hot_user_session(params: dict) -> dict:
    import ray
    import requests as http
    from ray import serve

    from pam.bench.serve import BENCH_USER, lua_post, run_wrk
    from serving.cluster.local_ray import init_local_ray
    from serving.cluster.ports import free_port_block
    from serving.online.app import build_app

    work = Path(params["work"])
    init_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out: dict = {"mode": "hotuser", "replicas": 2, "hot_share": HOT_SHARE, "hot_user": BENCH_USER,
                 "background_users": params["users"]}
    try:
        port = free_port_block(1, start=42000)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        body = json.dumps({"candidates": params["candidates"]})
        requests, who = mixed_requests(port, body.encode(), BENCH_USER, params["users"])
        url = f"http://127.0.0.1:{port}/v1/users/{BENCH_USER}/rerank"
        seconds = max(params["duration"], 3)
        for routing in ROUTERS:
            # an app of its own per router: a proxy builds a deployment's router once, and a
            # redeploy under the same name would keep the first router
            app = f"pam-{routing}"
            serve.run(build_app({**params["config"], "num_replicas": 2,
                                 "routing": "spillover" if routing == "haproxy" else routing}),
                      name=app, route_prefix="/")
            target, haproxy = port, None
            if routing == "haproxy":
                from serving.cluster.haproxy import HAProxy, IngressConfig
                from serving.online.app import MAX_ACTIVE

                low = int(os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"])
                high = int(os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"])
                haproxy = HAProxy(IngressConfig(host="127.0.0.1", port=free_port_block(1, start=43000),
                                                replica_host="127.0.0.1", replica_ports=(low, high),
                                                fallback_port=port, max_active=MAX_ACTIVE), work / "haproxy-hot").start()
                haproxy.wait_for_replicas(2)
                target = haproxy.cfg.port
            if "capacity_rps" not in out:
                # one background user, closed loop at 8 connections: the re-rank's req/s through
                # the proxy here; the mix is offered at that rate
                script = lua_post(work / "hot-capacity.lua", body, {"serve_multiplexed_model_id": "u1"})
                out["capacity_rps"] = run_wrk(url.replace(f"/{BENCH_USER}/", "/u1/"), script, 8, seconds)["rps"]
            others = [k for k, user in enumerate(who) if user != BENCH_USER][:100]
            _measure(target, [requests[k] for k in others], [who[k] for k in others], BENCH_USER,
                     rate=out["capacity_rps"] / 2, seconds=1.0)  # background users' models loaded
            # the hot user's model on one replica, and the routers told so: a user who was quiet
            http.post(url.replace(f":{port}/", f":{target}/"), data=body, timeout=60,
                      headers={"serve_multiplexed_model_id": BENCH_USER}).raise_for_status()
            time.sleep(3)
            out[routing] = _measure(target, requests, who, BENCH_USER, rate=out["capacity_rps"], seconds=seconds)
            # many requests in flight at once: 32 clients, each sending its next request on a reply
            out[f"{routing}_closed_32"] = _measure(target, requests, who, BENCH_USER, rate=0, seconds=seconds,
                                                   connections=32)
            if haproxy is not None:
                haproxy.stop()
            serve.delete(app)
            time.sleep(1)
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def render_hot(res: dict) -> list[str]:
    lines = [f"  {res['hot_share']:.0%} of re-ranks from one user, the rest from {res['background_users']} users, "
             f"Poisson at {res['capacity_rps']:.1f}/s (one user's closed-loop req/s at 8 conns); the hot user's model "
             "on one replica at the start"]
    for routing in [*ROUTERS, *(f"{r}_closed_32" for r in ROUTERS)]:
        r = res.get(routing)
        if r is None:
            continue
        if routing == f"{ROUTERS[0]}_closed_32":
            lines.append("  the same mix from 32 connections in a closed loop:")
        spread = ", ".join(f"{name}: {c.get('hot', 0)} hot + {c.get('others', 0)} others"
                           for name, c in r["replicas"].items())
        lines.append(f"    {routing.split('_')[0]:<9} goodput {r['goodput_rps']:.1f}/s {r['statuses']}; per replica {spread}; "
                     f"hot user's share on its busiest replica {r['hot_share_on_busiest_replica']}")
        lines.append(f"    {'':<9} hot user p50 {r['hot']['p50_ms'] or 0:.1f} / p99 {r['hot']['p99_ms'] or 0:.1f} ms, "
                     f"others p50 {r['others']['p50_ms'] or 0:.1f} / p99 {r['others']['p99_ms'] or 0:.1f} ms")
    return lines
