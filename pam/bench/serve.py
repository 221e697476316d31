"""`pam bench serve`: the online path side by side, in one run.

1. Library: re-rank 1,000 candidates for one user in-process (version check + feature lookup +
   PAM + sort), with the handler's parse/encode, against the obvious alternatives (pydantic parse,
   json.dumps, sklearn's predict) and the FLOP limit.
2. HTTP with Debian's wrk (native, so the client does not eat the cores), 1/8/32 connections:
   a trivial echo deployment, the re-rank endpoint, and a naive FastAPI re-rank (pydantic body,
   dict reply) - first through Serve's proxy (default Serve), then with Serve's throughput-optimized
   mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1: direct ingress, the replica's own HTTP server, no proxy
   hop). Each mode runs in its own Ray, in a subprocess. A bulk endpoint reports queries/s.
3. Many users: 10,000 users with 10-100 ratings, Zipf-spread requests, a model cache smaller than
   the users: hit rate, reload cost, p99 (in-process, and through Serve's @serve.multiplexed).
4. Rating -> next suggestion round trip for one user (what a labelling UI feels).

The machine is shared while it runs: figures are noisy; ratios from one run are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pam.bench.measure import seconds_summary
from serving.cluster.ports import free_port_block

HELP = "re-rank through Ray Serve vs library call vs echo (wrk); many users; rating round trip"
VERSION = "bench-synthetic-0"
BENCH_USER = "bench"
ROUND_TRIP_USER = "rt"
FMA_PEAK_GFLOPS = 157.0  # fp32 FMA peak of the 2 cores this was written on


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk point")
    parser.add_argument("--connections", default="1,8,32", help="wrk connection counts")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--images", type=int, default=20_000, help="rows in the synthetic feature store")
    parser.add_argument("--users", type=int, default=10_000, help="users for the many-users part")
    parser.add_argument("--cache", type=int, default=1000, help="user models cached per replica")
    parser.add_argument("--bulk", type=int, default=16, help="queries per bulk request")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating echo / re-rank pairs at 8 connections (the target's ratio: their median)")
    parser.add_argument("--modes", default="proxy,direct,overload,overload_proxy,upload,hotuser",
                        help="Serve modes to measure: proxy, direct, overload (through the default HAProxy ingress: "
                        "closed loop at 8 and 64 connections, open loop at 0.5x and 2x capacity), overload_proxy "
                        "(the same through Serve's proxy), upload (replica memory), hotuser (two replicas)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that it runs")
    parser.add_argument("--plot", type=Path, help="write a PNG of req/s and p99 against connections")


# ---------------------------------------------------------------- synthetic data
def synthetic_feature_root(root: Path, n_images: int, seed: int = 0) -> list[str]:
    """A complete feature-store version of random but contract-shaped rows."""
    import numpy as np

    from serving import feature_table as ft

    rng = np.random.default_rng(seed)
    ids = [f"synthetic/{k // 1000:03d}/img_{k:07d}.jpg" for k in range(n_images)]
    logits = rng.normal(0, 1.5, (n_images, 10))
    content = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    features = {"aes_score": np.clip(rng.normal(3.0, 0.7, n_images), 1, 5),
                "aes_feat": np.abs(rng.normal(0, 40, (n_images, 176))),
                "attributes": np.tanh(rng.normal(0, 0.6, (n_images, 10))), "content": content}
    table = ft.feature_table(ids, features, VERSION)
    ft.FeatureTable(root).write_version(table, crop_policy="synthetic")
    return ids


def seed_users(store_url: str, ids: list[str], n_users: int, seed: int = 1) -> None:
    """The benchmark users: `bench` (album 500, 50 ratings), `rt` (album 500), u0..u{n-1}."""
    import numpy as np

    from serving.online.user_store import open_user_store

    rng = np.random.default_rng(seed)
    with open_user_store(store_url) as store:
        album = [ids[i] for i in rng.choice(len(ids), 500, replace=False)]
        store.add_album(BENCH_USER, album)
        store.add_ratings(BENCH_USER, [(i, float(rng.integers(1, 6))) for i in album[:50]])
        store.add_album(ROUND_TRIP_USER, album)
        users = {}
        for u in range(n_users):
            k = int(rng.integers(10, 101))
            users[f"u{u}"] = [(ids[i], float(s)) for i, s in
                              zip(rng.choice(len(ids), k, replace=False), rng.integers(1, 6, k), strict=True)]
        store.import_users(users)


def zipf_users(n_users: int, n_requests: int, s: float = 1.1, seed: int = 2) -> list[str]:
    import numpy as np

    weights = 1.0 / np.arange(1, n_users + 1) ** s
    ranks = np.random.default_rng(seed).choice(n_users, n_requests, p=weights / weights.sum())
    return [f"u{r}" for r in ranks]


# ---------------------------------------------------------------- 1, 3, 4 in-process
def library_figures(config: dict, candidates: list[str], n_users: int, cache: int, quick: bool) -> dict:
    import numpy as np

    from serving.online.api_models import decode_rerank, parse_json, parse_rerank
    from serving.online.service import (
        LocalModelCache,
        PersonalizationService,
        encode_json,
        model_key,
    )

    svc = PersonalizationService(config)
    models = LocalModelCache(svc, cache)
    body = json.dumps({"candidates": candidates}).encode()
    query = parse_rerank(parse_json(body))
    key = model_key("default", BENCH_USER)
    reps = 60 if quick else 400

    def library_call():
        catalog = svc.catalog
        model = svc.ensure_fresh(models.get(key), svc.versions("default", BENCH_USER), catalog)
        return svc.rerank(model, query, catalog)

    def handler_call():
        catalog = svc.catalog
        q = decode_rerank(body)
        model = svc.ensure_fresh(models.get(key), svc.versions("default", BENCH_USER), catalog)
        return encode_json(svc.rerank(model, q, catalog))

    def timed(fn, n=reps):
        fn()
        out = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return seconds_summary(out)

    result = library_call()
    model = models.get(key)
    catalog = svc.catalog
    rows = catalog.rows(candidates)
    from personalize.features import pam_input

    x = pam_input(rows.attributes, rows.content)
    generic = rows.aes_score.astype(np.float64)
    X = np.hstack([x, generic[:, None]])
    n_sv = int(model.pam.support_vectors_.shape[0])
    flops = 2.0 * len(candidates) * n_sv * (x.shape[1] + 1) + 4.0 * len(candidates) * n_sv
    lib = {
        "library_call": timed(library_call),
        "handler_call": timed(handler_call),
        "parts_ms": {
            "version_check": timed(lambda: svc.versions("default", BENCH_USER))["p50_ms"],
            "feature_lookup": timed(lambda: catalog.rows(candidates))["p50_ms"],
            "pam_rbf_predict": timed(lambda: model.predict(x, generic))["p50_ms"],
            "parse_pydantic_core": timed(lambda: decode_rerank(body))["p50_ms"],
            "encode_orjson": timed(lambda: encode_json(result))["p50_ms"],
        },
        "alternatives_ms": {
            "parse_json_loads_and_python_checks": timed(lambda: parse_rerank(parse_json(body)))["p50_ms"],
            "encode_json_stdlib": timed(lambda: json.dumps({**result, "scores": result["scores"].tolist(),
                                                            "generic_scores": result["generic_scores"].tolist()}))["p50_ms"],
            "sklearn_style_predict": timed(lambda: model.pam.predict(X))["p50_ms"],
        },
        "n_support_vectors": n_sv, "rbf_flops": flops,
        "rbf_at_fma_peak_us": flops / (FMA_PEAK_GFLOPS * 1e9) * 1e6,
        "target_ms": 2.0,
    }
    lib["meets_2ms_target"] = lib["library_call"]["p50_ms"] <= 2.0

    # many users: Zipf over n_users, cache smaller than the user count
    sequence = zipf_users(n_users, 600 if quick else 5000)
    many = LocalModelCache(svc, cache)
    hit_times, miss_times = [], []
    short_query = parse_rerank({"candidates": candidates})
    for user in sequence:
        t = time.perf_counter()
        loads = many.loads
        c = svc.catalog
        m = svc.ensure_fresh(many.get(user), svc.versions("default", user), c)
        encode_json(svc.rerank(m, short_query, c))
        (miss_times if many.loads > loads else hit_times).append(time.perf_counter() - t)
    total = len(sequence)
    lib["many_users"] = {"users": n_users, "requests": total, "cache_per_replica": cache, "zipf_s": 1.1,
                         "hit_rate": len(hit_times) / total, "all": seconds_summary(hit_times + miss_times),
                         "hits": seconds_summary(hit_times), "misses_incl_reload": seconds_summary(miss_times)}

    # rating -> next suggestion, for one user
    rounds = []
    rt_key = model_key("default", ROUND_TRIP_USER)
    for step in range(15 if quick else 40):
        t = time.perf_counter()
        c = svc.catalog
        m = svc.ensure_fresh(models.get(rt_key), svc.versions("default", ROUND_TRIP_USER), c)
        suggestion = svc.next_photos(m, 1)["image_ids"][0]
        svc.add_ratings("default", ROUND_TRIP_USER, [{"image_id": suggestion, "score": 1 + step % 5}], None)
        rounds.append(time.perf_counter() - t)
    lib["round_trip"] = seconds_summary(rounds)
    svc.close()
    return lib


# ---------------------------------------------------------------- 2 over HTTP (one Ray per mode)
WRK_LINE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$")


def parse_wrk(out: str) -> dict:
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    result = {"rps": 0.0, "non_2xx": 0, "socket_errors": 0}
    for line in out.splitlines():
        match = WRK_LINE.match(line)
        if match:
            result[f"p{match.group(1)}_ms"] = float(match.group(2)) * unit[match.group(3)]
        elif re.match(r"^\s*\d+ requests in ", line):
            result["requests"] = int(line.split()[0])
        elif line.startswith("Requests/sec:"):
            result["rps"] = float(line.split()[1])
        elif "Non-2xx" in line:
            result["non_2xx"] = int(line.split()[-1])
        elif line.strip().startswith("Socket errors"):
            result["socket_errors"] = sum(int(v) for v in re.findall(r"\d+", line))
    return result


def run_wrk(url: str, script: Path, connections: int, duration: float) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, timeout=duration + 60).stdout
    return parse_wrk(out)


def lua_post(path: Path, body: str, headers: dict | None = None) -> Path:
    lines = ["wrk.method = 'POST'", f"wrk.body = [==[{body}]==]", "wrk.headers['Content-Type'] = 'application/json'"]
    lines += [f"wrk.headers['{k}'] = '{v}'" for k, v in (headers or {}).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def lua_zipf(path: Path, n_users: int, body: str, s: float = 1.1) -> Path:
    path.write_text(f"""
local n, s = {n_users}, {s}
local cdf, total = {{}}, 0
for k = 1, n do total = total + 1 / (k ^ s); cdf[k] = total end
for k = 1, n do cdf[k] = cdf[k] / total end
local body = [==[{body}]==]
math.randomseed(42)
request = function()
  local r, lo, hi = math.random(), 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < r then lo = mid + 1 else hi = mid end
  end
  local user = "u" .. (lo - 1)
  return wrk.format("POST", "/v1/users/" .. user .. "/rerank",
    {{["Content-Type"] = "application/json", ["serve_multiplexed_model_id"] = user}}, body)
end
""")
    return path


def _scrape(port: int) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ray_serve_multiplexed"):
            name = line.split("{")[0].split(" ")[0]
            try:
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return totals


def overload_session(params: dict) -> dict:
    """Goodput (2xx per second) of re-rank through an ingress (mode "overload": the default,
    HAProxy in front of the replica's own port; "overload_proxy": Serve's proxy), one replica, in a
    closed loop at 8 and at 64 connections; during the 64-connection run a probe times the replies
    that are not 200 (the shed ones: 503 with Retry-After). Then the open loop at 0.5x and 2x."""
    import ray
    import requests
    from ray import serve

    from serving.cluster.local_ray import init_local_ray
    from serving.online.app import build_app

    work = Path(params["work"])
    init_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ingress = "proxy" if params["mode"] == "overload_proxy" else "haproxy"
    out: dict = {"mode": params["mode"], "ingress": ingress}
    haproxy = None
    try:
        port = free_port_block(1, start=42000)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({**params["config"], "num_replicas": 1}), name="pam", route_prefix="/")
        if ingress == "haproxy":
            from serving.cluster.haproxy import HAProxy, IngressConfig
            from serving.online.app import MAX_ACTIVE

            low = int(os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"])
            high = int(os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"])
            front = free_port_block(1, start=43000)
            config = IngressConfig(host="127.0.0.1", port=front, replica_host="127.0.0.1", replica_ports=(low, high),
                                   fallback_port=port, max_active=MAX_ACTIVE)
            haproxy = HAProxy(config, work / "haproxy").start()
            haproxy.wait_for_replicas(1)
            out["queue_timeout_ms"] = config.queue_timeout_ms
            port = front
        url = f"http://127.0.0.1:{port}/v1/users/{BENCH_USER}/rerank"
        body = json.dumps({"candidates": params["candidates"]})
        script = lua_post(work / "overload-rerank.lua", body)
        requests.post(url, data=body, timeout=60).raise_for_status()
        duration = max(params["duration"], 5)
        for connections in (8, 64):
            probe: list[tuple[int, float]] = []
            stop = threading.Event()

            def probing(stop=stop, probe=probe):
                with requests.Session() as http:
                    while not stop.is_set():
                        started = time.perf_counter()
                        reply = http.post(url, data=body, timeout=60, headers={"Content-Type": "application/json"})
                        probe.append((reply.status_code, (time.perf_counter() - started) * 1e3))

            thread = threading.Thread(target=probing, daemon=True)
            if connections > 8:
                thread.start()
            result = run_wrk(url, script, connections, duration)
            stop.set()
            if thread.is_alive():
                thread.join(60)
            total = result.get("requests", 0)
            result["goodput_rps"] = round((total - result["non_2xx"]) / duration, 1)
            shed = sorted(ms for status, ms in probe if status != 200)
            result["probe"] = {"requests": len(probe), "shed": len(shed),
                               "shed_statuses": sorted({status for status, _ in probe if status != 200}),
                               "shed_p50_ms": shed[len(shed) // 2] if shed else None,
                               "shed_p99_ms": shed[min(len(shed) - 1, int(len(shed) * 0.99))] if shed else None}
            out[str(connections)] = result
        out["goodput_ratio_64_vs_8"] = round(out["64"]["goodput_rps"] / max(out["8"]["goodput_rps"], 1e-9), 3)
        out["open_loop"] = open_loop_points(port, f"/v1/users/{BENCH_USER}/rerank", body.encode(),
                                            out["8"]["goodput_rps"], duration)
    finally:
        if haproxy is not None:
            haproxy.stop()
        serve.shutdown()
        ray.shutdown()
    return out


def open_loop_points(port: int, path: str, body: bytes, capacity: float, seconds: float) -> dict:
    """Poisson arrivals at half and at twice `capacity` (the closed-loop goodput at 8 connections);
    the issue's targets: goodput at 2x >= 0.8 of capacity, accepted p99 at 2x <= 3x that at 0.5x."""
    from pam.bench.open_loop import http_request, open_loop

    request = http_request("POST", path, f"127.0.0.1:{port}", body, {"Content-Type": "application/json"})
    out: dict = {"capacity_rps": capacity, "arrivals": "Poisson"}
    for name, factor in (("half", 0.5), ("double", 2.0)):
        out[name] = open_loop("127.0.0.1", port, [request], rate=capacity * factor, seconds=seconds, seed=7)
    half, double = out["half"], out["double"]
    out["goodput_over_capacity_at_2x"] = round(double["goodput_rps"] / max(capacity, 1e-9), 3)
    p99_half, p99_double = half["accepted"]["p99_ms"], double["accepted"]["p99_ms"]
    out["accepted_p99_2x_over_half"] = round(p99_double / p99_half, 3) if p99_half and p99_double else None
    out["meets_goodput_0.8"] = out["goodput_over_capacity_at_2x"] >= 0.8
    out["meets_p99_3x"] = out["accepted_p99_2x_over_half"] is not None and out["accepted_p99_2x_over_half"] <= 3.0
    return out


def serve_session(params: dict) -> dict:
    """One Serve mode, in this (fresh) process: deploy echo, pam, naive; wrk them."""
    if params["mode"] in ("overload", "overload_proxy"):
        return overload_session(params)
    if params["mode"] == "hotuser":
        from pam.bench.serve_hot import hot_user_session

        return hot_user_session(params)
    if params["mode"] == "upload":
        from pam.bench.serve_upload import upload_session

        return upload_session(params)
    import ray
    import requests
    from ray import serve
    from starlette.responses import Response

    from serving.cluster.local_ray import init_local_ray
    from serving.online.app import build_app

    mode, work = params["mode"], Path(params["work"])
    metrics_port = init_local_ray(num_cpus=2, include_dashboard=False,
                                  system_config={"metrics_report_interval_ms": 1000}, log_to_driver=False)
    out: dict = {"mode": mode}
    try:
        port = free_port_block(1, start=42000)
        serve.start(http_options={"host": "127.0.0.1", "port": port})

        from serving.online.app import MAX_ONGOING_REQUESTS

        class Echo:
            async def __call__(self, request):
                return Response(await request.body(), media_type="application/json")

        # the echo runs with the re-rank deployment's concurrency limit: at Serve's default (5
        # requests per replica) it was 30-40% slower here, a handicap that flattered the ratio
        echo = serve.deployment(name="echo", ray_actor_options={"num_cpus": 0.5},
                                max_ongoing_requests=MAX_ONGOING_REQUESTS)(Echo)
        serve.run(echo.bind(), name="echo", route_prefix="/echo")
        if mode == "proxy":
            serve.run(serve.deployment(name="echo_defaults", ray_actor_options={"num_cpus": 0.5})(Echo).bind(),
                      name="echo_defaults", route_prefix="/echo_defaults")
        serve.run(build_app({**params["config"], "num_replicas": 1}), name="pam", route_prefix="/")
        if mode == "proxy":
            serve.run(_naive_app(params["config"]), name="naive", route_prefix="/naive")
        bases = _endpoints(mode, port, params)
        body = json.dumps({"candidates": params["candidates"]})
        scripts = {"echo": lua_post(work / f"{mode}-echo.lua", body),
                   "rerank": lua_post(work / f"{mode}-rerank.lua", body, {"serve_multiplexed_model_id": BENCH_USER}),
                   "naive": lua_post(work / f"{mode}-naive.lua", body)}
        paths = {"echo": (bases["echo"], "/echo"), "rerank": (bases["pam"], f"/v1/users/{BENCH_USER}/rerank"),
                 "naive": (bases.get("naive"), f"/naive/v1/users/{BENCH_USER}/rerank")}
        requests.post(bases["pam"] + paths["rerank"][1], data=body, timeout=60).raise_for_status()  # warm
        for name in ("echo", "rerank", "naive"):
            base, path = paths[name]
            if base is None:
                continue
            out[name] = {}
            for c in params["connections"]:
                out[name][str(c)] = run_wrk(base + path, scripts[name], c, params["duration"])
        if mode == "proxy":
            out["echo_defaults_8"] = run_wrk(bases["echo"] + "/echo_defaults", scripts["echo"], 8, params["duration"])
        # the target's two figures side by side in time: echo and re-rank alternate at 8
        # connections, so a drift of the machine's speed falls on both
        out["rounds_8"] = []
        for _ in range(params.get("rounds", 0)):
            pair = {name: run_wrk(paths[name][0] + paths[name][1], scripts[name], 8, params["duration"])
                    for name in ("echo", "rerank")}
            pair["rps_ratio"], pair["p99_ratio"] = _ratios(pair["echo"], pair["rerank"])
            out["rounds_8"].append(pair)
        # bulk: many queries per request
        bulk_body = json.dumps({"queries": [{"user_id": BENCH_USER, "candidates": params["candidates"]}] * params["bulk"]})
        bulk = run_wrk(bases["pam"] + "/v1/rerank", lua_post(work / f"{mode}-bulk.lua", bulk_body), 8, params["duration"])
        bulk["queries_per_request"] = params["bulk"]
        bulk["queries_per_s"] = bulk["rps"] * params["bulk"]
        out["bulk_8"] = bulk
        if mode == "direct" and "8" in out["rerank"]:
            # the replica's own port: no proxy between the generator and the replica's admission
            direct_port = int(bases["pam"].rsplit(":", 1)[1])
            out["open_loop"] = open_loop_points(direct_port, paths["rerank"][1], body.encode(),
                                                out["rerank"]["8"]["rps"], max(params["duration"], 5))
        if mode == "proxy":
            out["many_users"] = _many_users_over_serve(bases["pam"], work, params, metrics_port)
            out["round_trip"] = _round_trip_http(bases["pam"], params)
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def _endpoints(mode: str, port: int, params: dict) -> dict:
    """Base URLs per app: the proxy, or each replica's own port under direct ingress."""
    import requests

    proxy = f"http://127.0.0.1:{port}"
    if mode == "proxy":
        return {"echo": proxy, "pam": proxy, "naive": proxy}
    from serving.online.app import find_replica_ports

    low = int(os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"])
    high = int(os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"])
    found = {"pam": find_replica_ports("127.0.0.1", low, high)[0]}
    deadline = time.time() + 60
    while "echo" not in found and time.time() < deadline:
        for p in range(low, high):
            try:
                if requests.post(f"http://127.0.0.1:{p}/echo", data=b'{"x":1}', timeout=2).content == b'{"x":1}':
                    found["echo"] = f"http://127.0.0.1:{p}"
            except requests.RequestException:
                continue
        time.sleep(0.5)
    if "echo" not in found:
        raise RuntimeError(f"direct ingress: the echo replica's port is not in [{low}, {high})")
    return found


def _naive_app(config: dict):
    """The obvious FastAPI re-rank: pydantic body, a dict reply through FastAPI's encoder."""
    from fastapi import FastAPI
    from ray import serve

    from serving.online.api_models import RerankRequest, RerankResponse
    from serving.online.service import PersonalizationService, model_key

    app = FastAPI()

    @serve.deployment(name="naive", ray_actor_options={"num_cpus": 0.5})
    @serve.ingress(app)
    class Naive:
        def __init__(self, config: dict):
            from serving.online.service import LocalModelCache

            self.svc = PersonalizationService(config)
            self.models = LocalModelCache(self.svc, 16)

        def rerank(self, user_id, body):
            from serving.online.api_models import RerankQuery

            catalog = self.svc.catalog
            model = self.svc.ensure_fresh(self.models.get(model_key("default", user_id)),
                                          self.svc.versions("default", user_id), catalog)
            result = self.svc.rerank(model, RerankQuery(body.candidates, body.top_k), catalog)
            return {**result, "scores": result["scores"].tolist(), "generic_scores": result["generic_scores"].tolist()}

        # real classes, not the strings `from __future__ import annotations` would leave for FastAPI
        rerank.__annotations__ = {"user_id": str, "body": RerankRequest, "return": dict}  # noqa: RUF012
        rerank = app.post("/v1/users/{user_id}/rerank", response_model=RerankResponse)(rerank)

    return Naive.bind(config)


def _many_users_over_serve(base: str, work: Path, params: dict, metrics_port: int) -> dict:
    body = json.dumps({"candidates": params["candidates"]})
    script = lua_zipf(work / "zipf.lua", params["users"], body)
    run_wrk(base, script, 8, max(params["duration"], 8))  # warm-up: fill the cache first
    time.sleep(3)
    before = _scrape(metrics_port)
    result = run_wrk(base, script, 8, max(params["duration"], 8))
    time.sleep(4)  # metrics are exported every second
    after = _scrape(metrics_port)

    def delta(name):
        return after.get(name, 0.0) - before.get(name, 0.0)

    gets = delta("ray_serve_multiplexed_get_model_requests_counter_total")
    loads = delta("ray_serve_multiplexed_models_load_counter_total")
    load_ms = delta("ray_serve_multiplexed_model_load_latency_ms_sum")
    load_n = delta("ray_serve_multiplexed_model_load_latency_ms_count")
    result.update({"users": params["users"], "cache_per_replica": params["cache"], "zipf_s": 1.1,
                   "model_requests": gets, "model_loads": loads,
                   "hit_rate": (1 - loads / gets) if gets else None,
                   "reload_mean_ms": (load_ms / load_n) if load_n else None})
    return result


def _round_trip_http(base: str, params: dict) -> dict:
    import requests

    session = requests.Session()
    samples = []
    for step in range(params["round_trips"]):
        t = time.perf_counter()
        suggestion = session.get(f"{base}/v1/users/{ROUND_TRIP_USER}/next", params={"n": 1}, timeout=30).json()
        session.post(f"{base}/v1/users/{ROUND_TRIP_USER}/ratings", timeout=30, json={
            "ratings": [{"image_id": suggestion["image_ids"][0], "score": 1 + step % 5}]}).raise_for_status()
        samples.append(time.perf_counter() - t)
    return seconds_summary(samples)


def _run_session(params: dict) -> dict:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    if params["mode"] in ("direct", "overload", "hotuser"):
        from serving.online.app import direct_ingress_env

        env.update(direct_ingress_env(free_port_block(24, start=42000), 12))
    spec = Path(params["work"]) / f"session-{params['mode']}.json"
    spec.write_text(json.dumps(params))
    proc = subprocess.run([sys.executable, "-m", "pam.bench.serve", "--session", str(spec)], env=env,
                          capture_output=True, text=True, timeout=1800)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"mode": params["mode"], "error": (proc.stderr or proc.stdout)[-3000:]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------- the benchmark
def run(args: argparse.Namespace) -> dict:
    if args.quick:
        args.images, args.users, args.cache, args.duration = 3000, 500, 50, 2.0
    connections = [int(c) for c in args.connections.split(",")]
    summary: dict = {"machine": {"cores": os.cpu_count(), "note": "shared with other work while measured"},
                     "sizes": {"candidates": args.candidates, "images": args.images, "users": args.users,
                               "cache_per_replica": args.cache, "wrk_seconds": args.duration}}
    with tempfile.TemporaryDirectory(prefix="pam-bench-serve-") as tmp:
        work = Path(tmp)
        ids = synthetic_feature_root(work / "features", args.images)
        store_url = f"sqlite:///{work / 'users.db'}"
        seed_users(store_url, ids, args.users)
        candidates = ids[-args.candidates:]
        config = {"feature_root": str(work / "features"), "user_store": store_url, "model_cache_size": args.cache}
        summary["library"] = library_figures(config, candidates, args.users, args.cache, args.quick)
        summary["http"] = {}
        if shutil.which("wrk") is None:
            summary["http"]["skipped"] = "Debian's wrk is not installed (apt-get install -y wrk)"
        else:
            # the library part's round trips changed `rt`; the HTTP part starts from its own state
            for mode in args.modes.split(","):
                params = {"mode": mode, "work": str(work), "config": config, "candidates": candidates,
                          "connections": connections, "duration": args.duration, "bulk": args.bulk,
                          "users": args.users, "cache": args.cache, "round_trips": 15 if args.quick else 40,
                          "rounds": 1 if args.quick else args.rounds, "model_version": VERSION,
                          "upload_size": [1500, 1000] if args.quick else [6000, 4000],
                          "concurrent": 2 if args.quick else 6}
                summary["http"][mode] = _run_session(params)
    summary["targets"] = _targets(summary["http"])
    if args.plot:
        _plot(summary, args.plot)
        summary["plot"] = str(args.plot)
    summary["_render"] = render_text(summary)
    return summary


def _ratios(echo: dict, rerank: dict) -> tuple[float | None, float | None]:
    """Re-rank over echo: req/s and p99 (None where the echo's figure is missing or zero)."""
    rps = rerank["rps"] / echo["rps"] if echo["rps"] else None
    p99 = rerank.get("p99_ms", 0) / echo["p99_ms"] if echo.get("p99_ms") else None
    return rps, p99


def _targets(http: dict) -> dict:
    out = {}
    for mode, res in http.items():
        if not isinstance(res, dict) or "echo" not in res or "rerank" not in res or "8" not in res["echo"]:
            continue
        rounds = [r for r in res.get("rounds_8", []) if r["rps_ratio"] is not None and r["p99_ratio"] is not None]
        if rounds:
            rps_ratio = statistics.median(r["rps_ratio"] for r in rounds)
            p99_ratio = statistics.median(r["p99_ratio"] for r in rounds)
            source = f"median of {len(rounds)} alternating echo / re-rank rounds"
        else:
            rps_ratio, p99_ratio = _ratios(res["echo"]["8"], res["rerank"]["8"])
            source = "one point of the connection sweep"
        out[mode] = {"rerank_over_echo_rps_at_8": rps_ratio, "rerank_over_echo_p99_at_8": p99_ratio,
                     "from": source, "meets_rps_target_0.8": bool(rps_ratio and rps_ratio >= 0.8),
                     "meets_p99_target_1.5": bool(p99_ratio and p99_ratio <= 1.5)}
    if "proxy" in http and "direct" in http and "rerank" in http["proxy"] and "rerank" in http["direct"]:
        out["direct_over_proxy_rerank_rps_at_8"] = http["direct"]["rerank"]["8"]["rps"] / http["proxy"]["rerank"]["8"]["rps"]
        lowered = _lowered_overhead_target(http["proxy"], http["direct"])
        if lowered:
            out["lowered_overhead"] = lowered
    return out


def _lowered_overhead_target(proxy: dict, direct: dict) -> dict | None:
    """The target as the issue words it: the re-rank, with "what lowers the overhead" applied (one
    hop fewer: direct ingress), against the trivial echo deployment behind Serve's proxy. Medians
    of each mode's rounds at 8 connections (the two modes run one after the other)."""
    echo = [r["echo"] for r in proxy.get("rounds_8", []) if r["echo"].get("rps")]
    rerank = [r["rerank"] for r in direct.get("rounds_8", []) if r["rerank"].get("rps")]
    if not echo or not rerank:
        return None
    rps = statistics.median(r["rps"] for r in rerank) / statistics.median(r["rps"] for r in echo)
    p99 = statistics.median(r.get("p99_ms", 0) for r in rerank) / statistics.median(r.get("p99_ms", 0) for r in echo)
    return {"rerank": "direct ingress", "echo": "Serve's proxy", "rerank_over_echo_rps_at_8": rps,
            "rerank_over_echo_p99_at_8": p99, "from": f"medians of {len(rerank)} and {len(echo)} rounds",
            "meets_rps_target_0.8": rps >= 0.8, "meets_p99_target_1.5": p99 <= 1.5}


def render_text(s: dict) -> str:
    lib = s["library"]
    lines = ["pam bench serve (one run, side by side; the machine is shared, so read the ratios)", "",
             f"library re-rank of {s['sizes']['candidates']} candidates (version check + lookup + PAM + sort): "
             f"p50 {lib['library_call']['p50_ms']:.3f} ms, p99 {lib['library_call']['p99_ms']:.3f} ms "
             f"(target <= 2 ms: {'met' if lib['meets_2ms_target'] else 'MISSED'}); with parse + encode: "
             f"p50 {lib['handler_call']['p50_ms']:.3f} ms",
             "  parts (p50 ms): " + ", ".join(f"{k} {v:.3f}" for k, v in lib["parts_ms"].items()),
             "  alternatives (p50 ms): " + ", ".join(f"{k} {v:.3f}" for k, v in lib["alternatives_ms"].items()),
             f"  RBF expansion: {lib['rbf_flops'] / 1e6:.2f} MFLOP ({lib['n_support_vectors']} support vectors) = "
             f"{lib['rbf_at_fma_peak_us']:.1f} us at the {FMA_PEAK_GFLOPS:.0f} GFLOP/s FMA peak: "
             "Python and memory, not arithmetic, bound the call"]
    mu = lib["many_users"]
    lines.append(f"many users in-process: {mu['users']} users, Zipf {mu['zipf_s']}, cache {mu['cache_per_replica']}: "
                 f"hit rate {mu['hit_rate']:.1%}, p99 {mu['all']['p99_ms']:.2f} ms, reload+query p50 "
                 f"{mu['misses_incl_reload']['p50_ms']:.2f} ms vs hit p50 {mu['hits']['p50_ms']:.2f} ms")
    lines.append(f"rating -> next suggestion in-process: p50 {lib['round_trip']['p50_ms']:.2f} ms, "
                 f"p99 {lib['round_trip']['p99_ms']:.2f} ms")
    for mode, res in s["http"].items():
        if not isinstance(res, dict):
            lines.append(f"http: {res}")
            continue
        if "error" in res:
            lines.append(f"http {mode}: FAILED: {res['error'][-400:]}")
            continue
        if mode == "upload":
            from pam.bench.serve_upload import render_upload

            lines += ["", "uploads through Serve's proxy (one replica)", *render_upload(res)]
            continue
        if mode == "hotuser":
            from pam.bench.serve_hot import render_hot

            lines += ["", "one hot user among many (two replicas): Serve's proxy with two routers, and HAProxy",
                      *render_hot(res)]
            continue
        title = {"proxy": "through Serve's HTTP proxy (default)",
                 "direct": "Serve throughput-optimized (direct ingress: the replica's own HTTP port)",
                 "overload": "overload through HAProxy in front of the replica's own port (default ingress, one "
                             "replica)",
                 "overload_proxy": "overload through Serve's proxy (one replica)"}.get(mode, mode)
        lines += ["", f"HTTP, {title}; wrk -t1, {s['sizes']['wrk_seconds']:.0f} s per point",
                  f"  {'endpoint':<8} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"]
        for name in ("echo", "rerank", "naive"):
            for c, r in res.get(name, {}).items():
                lines.append(f"  {name:<8} {c:>5} {r['rps']:>8.1f} {r.get('p50_ms', 0):>8.2f} "
                             f"{r.get('p99_ms', 0):>8.2f} {r['non_2xx'] + r['socket_errors']:>7}")
        if "echo_defaults_8" in res:
            e = res["echo_defaults_8"]
            lines.append(f"  echo at Serve's default concurrency limit (5 per replica), 8 conns: {e['rps']:.1f} req/s, "
                         f"p99 {e.get('p99_ms', 0):.1f} ms (the echo above runs with the re-rank's limit)")
        for k, r in enumerate(res.get("rounds_8", []), 1):
            lines.append(f"  round {k} at 8 conns: echo {r['echo']['rps']:.1f} req/s (p99 {r['echo'].get('p99_ms', 0):.1f}), "
                         f"re-rank {r['rerank']['rps']:.1f} (p99 {r['rerank'].get('p99_ms', 0):.1f}): "
                         f"ratio {r['rps_ratio']:.2f}, p99 ratio {r['p99_ratio']:.2f}")
        if "bulk_8" in res:
            b = res["bulk_8"]
            lines.append(f"  bulk ({b['queries_per_request']} queries/request, 8 conns): {b['rps']:.1f} req/s = "
                         f"{b['queries_per_s']:.0f} queries/s, p99 {b.get('p99_ms', 0):.1f} ms")
        if "many_users" in res:
            m = res["many_users"]
            hit = f"{m['hit_rate']:.1%}" if m.get("hit_rate") is not None else "n/a"
            reload = f"{m['reload_mean_ms']:.1f} ms" if m.get("reload_mean_ms") is not None else "n/a"
            lines.append(f"  many users over Serve ({m['users']} users, Zipf 1.1, @serve.multiplexed cache "
                         f"{m['cache_per_replica']}, 8 conns): {m['rps']:.1f} req/s, p99 {m.get('p99_ms', 0):.1f} ms, "
                         f"hit rate {hit}, reload {reload}")
        if "round_trip" in res:
            r = res["round_trip"]
            lines.append(f"  rating -> next suggestion over HTTP: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
        for c in ("8", "64") if mode.startswith("overload") else ():
            r, probe = res[c], res[c]["probe"]
            shed = (f"; probe: {probe['shed']} of {probe['requests']} shed ({probe['shed_statuses']}), "
                    f"p50 {probe['shed_p50_ms']} ms, p99 {probe['shed_p99_ms']} ms" if probe["requests"] else "")
            lines.append(f"  re-rank closed loop, {c} conns: goodput {r['goodput_rps']:.1f} 2xx/s of {r['rps']:.1f} req/s, "
                         f"{r['non_2xx']} non-2xx, p99 {r.get('p99_ms', 0):.1f} ms{shed}")
        if mode.startswith("overload"):
            lines.append(f"  goodput at 64 / at 8 connections: {res['goodput_ratio_64_vs_8']:.2f} (target >= 0.8)")
        if "open_loop" in res:
            lines += render_open_loop(res["open_loop"])

    for mode, t in s["targets"].items():
        if mode == "lowered_overhead":
            lines.append(f"target as worded (re-rank over {t['rerank']} vs the echo through {t['echo']}, 8 conns, "
                         f"{t['from']}): req/s {t['rerank_over_echo_rps_at_8']:.2f} "
                         f"(>= 0.8: {t['meets_rps_target_0.8']}), p99 ratio {t['rerank_over_echo_p99_at_8']:.2f} "
                         f"(<= 1.5: {t['meets_p99_target_1.5']})")
        elif isinstance(t, dict):
            lines.append(f"targets ({mode}, 8 conns, {t['from']}): re-rank/echo req/s {t['rerank_over_echo_rps_at_8']:.2f} "
                         f"(>= 0.8: {t['meets_rps_target_0.8']}), p99 ratio {t['rerank_over_echo_p99_at_8']:.2f} "
                         f"(<= 1.5: {t['meets_p99_target_1.5']})")
        else:
            lines.append(f"{mode}: {t:.2f}x")
    return "\n".join(lines)


def render_open_loop(ol: dict) -> list[str]:
    lines = [f"  re-rank open loop (Poisson arrivals, 10 s client timeout) around the capacity of "
             f"{ol['capacity_rps']:.1f} 2xx/s (closed loop, 8 conns):"]
    for name in ("half", "double"):
        r = ol[name]
        acc, rej = r["accepted"], r["rejected"]
        rejected = (f"; rejected answered in p50 {rej['p50_ms']:.1f} / p99 {rej['p99_ms']:.1f} ms"
                    if rej["n"] else "")
        lines.append(f"    {r['target_rate_per_s']:.1f}/s offered ({r['achieved_rate_per_s']:.1f}/s sent"
                     f"{'' if r['kept_up'] else ', the generator fell behind'}): goodput {r['goodput_rps']:.1f}/s, "
                     f"statuses {r['statuses']}, accepted p50 {acc['p50_ms'] or 0:.1f} / p99 {acc['p99_ms'] or 0:.1f} ms "
                     f"from the scheduled time{rejected}")
    ratio = ol["accepted_p99_2x_over_half"]
    lines.append(f"    at 2x: goodput / capacity {ol['goodput_over_capacity_at_2x']:.2f} (target >= 0.8: "
                 f"{'met' if ol['meets_goodput_0.8'] else 'NOT met'}); accepted p99 at 2x / at 0.5x "
                 f"{ratio if ratio is not None else 'n/a'} (target <= 3: {'met' if ol['meets_p99_3x'] else 'NOT met'})")
    return lines


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(10, 4))
    colors = {"echo": "tab:gray", "rerank": "tab:blue", "naive": "tab:orange"}
    styles = {"proxy": "-", "direct": "--"}
    for mode, res in summary["http"].items():
        if not isinstance(res, dict) or "error" in res:
            continue
        for name in ("echo", "rerank", "naive"):
            if name not in res:
                continue
            conns = sorted(int(c) for c in res[name])
            kwargs = {"color": colors[name], "linestyle": styles.get(mode, ":"), "marker": "o",
                      "label": f"{name} ({mode})"}
            ax_rps.plot(conns, [res[name][str(c)]["rps"] for c in conns], **kwargs)
            ax_p99.plot(conns, [res[name][str(c)].get("p99_ms", 0) for c in conns], **kwargs)
    for ax, title in ((ax_rps, "requests/s"), (ax_p99, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("wrk connections")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_rps.legend(fontsize=7)
    fig.suptitle("re-rank of 1,000 candidates vs a trivial echo, Ray Serve on 2 cores")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    cli = argparse.ArgumentParser()
    cli.add_argument("--session", type=Path, required=True)
    print(json.dumps(serve_session(json.loads(cli.parse_args().session.read_text()))))
