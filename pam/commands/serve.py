"""`pam serve`: the personalization service on a local Ray Serve (SQLite user store by default).

Starts Ray on this machine, the `pam` application and its ingress on --host:--port (HAProxy in
front of the replicas by default; see serving/cluster/haproxy.py), prints
where it listens (stderr, at once), and serves until Ctrl-C / SIGTERM (or --duration seconds).
Then it shuts Serve and Ray down and prints its summary (with --json: one JSON object).
Never imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

HELP = "Run the personalization service (Ray Serve): re-rank, ratings, Active-PAM, photo scoring"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", required=True, help="feature-store root (a `pam features` output; local or s3://)")
    parser.add_argument("--model", help="the exported ONNX model (scores uploaded and unseen photos; its "
                        "model_version selects the store's version). Without it: CURRENT, no scoring")
    parser.add_argument("--users", default="sqlite:///pam-users.db",
                        help="user store: sqlite:///PATH (default ./pam-users.db) or postgresql://...")
    parser.add_argument("--photos", help="photos root: image_id -> file, for thumbnails and scoring unseen ids")
    parser.add_argument("--thumbnails", help="where thumbnails of uploaded photos are kept "
                        "(default: next to a SQLite user store)")
    parser.add_argument("--api-keys", type=Path, help="JSON file {\"api key\": \"tenant\"}; without it the API is open")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (0: any free port)")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=1)
    scale.add_argument("--autoscale", metavar="MIN:MAX", help="autoscaling replicas, e.g. 1:2")
    parser.add_argument("--cache-size", type=int, default=1024, help="user models cached per replica")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    parser.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics port (0: a free one)")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="where the metrics port listens: 127.0.0.1 (default; Ray's exporter then binds the "
                        "loopback interface only) or 0.0.0.0 (every interface; Ray knows no choice between). The "
                        "metrics carry no user data but need no key")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--w-aes", type=float, default=None,
                        help="Active-PAM's balance in v = [w_aes * aes_feat, aes_score] (default: the paper's "
                        "0.001; `pam export` reports the value that balances the two parts for its trunk)")
    parser.add_argument("--no-prior", action="store_true",
                        help="PAM and Active-PAM even when the served feature version has a taste prior "
                        "(`pam fit-prior`); by default the prior makes Prior-PAM and the posterior strategy")
    parser.add_argument("--ingress", choices=("haproxy", "proxy", "direct"), default="haproxy",
                        help="haproxy (default): HAProxy on --host:--port in front of each replica's own HTTP port "
                        "(Serve's direct ingress): bounded queueing with fast 503s, slow clients held off the "
                        "replicas, autoscaled replicas taken in by health checks. proxy: Serve's Python proxy. "
                        "direct: Serve's proxy plus each replica's own port on --host (printed), for clients that "
                        "spread calls over replicas themselves (a fixed replica count)")
    parser.add_argument("--queue-timeout-ms", type=int, default=30,
                        help="haproxy ingress: the longest a request waits for a free replica before its 503")


def service_args(args: argparse.Namespace) -> dict:
    config: dict = {"feature_root": args.features, "user_store": args.users, "model_cache_size": args.cache_size}
    if args.model:  # a local file becomes absolute (replicas run elsewhere); a triton+grpc:// spec stays
        local = "://" not in args.model and not args.model.startswith("onnx:")
        config["model"] = str(Path(args.model).resolve()) if local else args.model
    if args.w_aes is not None:
        if not args.w_aes > 0:
            raise SystemExit(f"pam serve: --w-aes must be > 0, got {args.w_aes}")
        config["w_aes"] = args.w_aes
    if args.no_prior:
        config["use_prior"] = False
    if args.photos:
        config["photos_root"] = str(Path(args.photos).resolve())
    thumbnails = args.thumbnails
    if thumbnails is None and args.users.startswith("sqlite:///"):
        thumbnails = str(Path(args.users[len("sqlite:///"):]).resolve().parent / "pam-thumbnails")
    if thumbnails:
        config["thumbnail_dir"] = thumbnails
    if args.api_keys:
        config["api_keys"] = json.loads(args.api_keys.read_text())
    if args.users.startswith("sqlite:///"):  # replicas run elsewhere: make the path absolute
        config["user_store"] = "sqlite:///" + str(Path(args.users[len("sqlite:///"):]).resolve())
    if args.autoscale:
        low, _, high = args.autoscale.partition(":")
        config["autoscaling"] = {"min_replicas": int(low), "max_replicas": int(high or low),
                                 "target_ongoing_requests": 2, "upscale_delay_s": 3, "downscale_delay_s": 30}
    else:
        config["num_replicas"] = args.replicas
    return config


def run(args: argparse.Namespace) -> dict:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from serving.cluster.haproxy import HAProxy, IngressConfig
    from serving.cluster.local_ray import init_local_ray
    from serving.cluster.ports import free_port, free_port_block
    from serving.online.app import MAX_ACTIVE, build_app, direct_ingress_env, find_replica_ports

    started = time.time()
    replica_urls: list[str] = []
    span = max(12, int(args.autoscale.split(":")[-1]) if args.autoscale else args.replicas)  # ports, one per replica
    expect = args.replicas if not args.autoscale else int(args.autoscale.split(":")[0])
    # haproxy: Serve's proxy and the replicas' ports stay on the loopback interface; HAProxy owns --host:--port
    inner_host = "127.0.0.1" if args.ingress == "haproxy" else args.host
    if args.ingress != "proxy":
        direct_base = free_port_block(2 * span, inner_host)
        os.environ.update(direct_ingress_env(direct_base, span))
    metrics_host = "127.0.0.1" if args.metrics_host in ("127.0.0.1", "localhost") else "0.0.0.0"
    metrics_port = init_local_ray(metrics_port=args.metrics_port, metrics_host=metrics_host, num_cpus=args.num_cpus,
                                  include_dashboard=False, configure_logging=False, log_to_driver=False)
    # chosen after Ray's start: Ray's own processes bind ephemeral ports while it starts, and a
    # port picked free before that could be one of theirs by the time Serve's proxy binds it
    port = args.port or free_port(args.host)
    serve_port = free_port(inner_host) if args.ingress == "haproxy" else port
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ingress, ingress_metrics = None, None
    try:
        serve.start(http_options={"host": inner_host, "port": serve_port})
        serve.run(build_app(service_args(args)), name="pam", route_prefix="/")
        if args.ingress == "haproxy":
            ingress_metrics_port = free_port(metrics_host)
            ingress_metrics = f"http://{metrics_host}:{ingress_metrics_port}/metrics"
            ingress = HAProxy(IngressConfig(host=args.host, port=port, replica_host=inner_host,
                                            replica_ports=(direct_base, direct_base + span), fallback_port=serve_port,
                                            max_active=MAX_ACTIVE, queue_timeout_ms=args.queue_timeout_ms,
                                            metrics_host=metrics_host,
                                            metrics_port=ingress_metrics_port),
                              Path(tempfile.mkdtemp(prefix="pam-haproxy-"))).start()
            replica_urls = [f"http://{inner_host}:{name[1:]}" for name in ingress.wait_for_replicas(expect)]
        elif args.ingress == "direct":
            replica_urls = find_replica_ports(args.host, direct_base, direct_base + span, expect=expect)
        url = f"http://{args.host}:{port}"
        info = json.loads(_get(f"{url}/v1/info"))
        print(f"pam serve: listening on {url}  (API docs {url}/v1/docs, Prometheus metrics "
              f"http://{metrics_host}:{metrics_port}/metrics); model version {info['model_version']}, "
              f"{info['feature_rows']} feature rows, {_models(info)}. Ctrl-C stops it.", file=sys.stderr, flush=True)
        if args.ingress == "direct":
            print(f"pam serve: direct ingress (no proxy hop): {' '.join(replica_urls)}", file=sys.stderr, flush=True)
        if ingress_metrics:
            print(f"pam serve: HAProxy's metrics (queues, 503s, per replica): {ingress_metrics}", file=sys.stderr,
                  flush=True)
        stop.wait(args.duration)
    finally:
        if ingress is not None:
            ingress.stop()
        serve.shutdown()
        ray.shutdown()
    return {"url": f"http://{args.host}:{port}", "docs": f"http://{args.host}:{port}/v1/docs",
            "metrics": f"http://{metrics_host}:{metrics_port}/metrics", "model_version": info["model_version"],
            "feature_rows": info["feature_rows"], "user_store": info["user_store"], "prior": info.get("prior"),
            "ingress": args.ingress, "ingress_metrics": ingress_metrics, "replicas": replica_urls, "served_s": round(time.time() - started, 1)}


def _models(info: dict) -> str:
    if info.get("prior"):
        return "taste prior loaded (Prior-PAM, posterior strategy)"
    return "no taste prior (PAM, Active-PAM)"


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


def render(summary: dict) -> str:
    return (f"pam serve stopped after {summary['served_s']} s: served {summary['url']} "
            f"(model version {summary['model_version']}, {summary['feature_rows']} feature rows, "
            f"{summary['user_store']})")
