"""The HTTP API (FastAPI) and its Ray Serve deployment.

`create_app(runtime)` builds the FastAPI app over a runtime that holds a PersonalizationService and
hands out per-user models; `PamDeployment` is that runtime inside a Serve replica, where user models
come from `@serve.multiplexed` (model id = user id; clients may send the header
`serve_multiplexed_model_id: <user id>` so the proxy routes them to a replica that has the model).
Every endpoint does its work in this one deployment: no handle calls, one hop from the proxy.

`build_app(args)` is the import path `serve run deploy/serve.yaml` and `pam serve` use.
"""

from __future__ import annotations

import asyncio
import os
import time
from functools import cache
from pathlib import Path as FilePath
from typing import Any

from fastapi import FastAPI

from serving.cluster.memory import freeze_startup_heap
from serving.online import api_models as m
from serving.online import http_errors, routes
from serving.online.errors import Overloaded, TimedOut, TooLarge
from serving.online.http_errors import error_response
from serving.online.loop_lag import LoopLag
from serving.online.service import (
    LocalModelCache,
    PersonalizationService,
    ServiceConfig,
    UserModel,
)

WEB_DIR = FilePath(__file__).resolve().parent / "web"
# Serve's limit per replica is high, so that a request waiting for its body (a slow or stalled
# client) never keeps Serve from routing others to the replica; the replica admits work itself
# once a body is in (Admission), and Serve's proxy sheds what queues beyond MAX_QUEUED_REQUESTS.
MAX_ONGOING_REQUESTS = 256  # per replica; deploy/*.yaml state both limits (tests/online/test_deploy.py checks)
MAX_QUEUED_REQUESTS = 512  # in each proxy, beyond what the replicas accept: 503
MAX_ACTIVE = 8  # requests a replica works on at once, once their bodies are in
MAX_WAITING = 24  # admitted requests waiting for a work slot; beyond: 503 with Retry-After
RETRY_AFTER_S = 1
BODY_IDLE_TIMEOUT_S = 5.0  # the longest pause between two parts of a body: 408 after it
BODY_TIMEOUT_S = 60.0  # the longest time a whole body may take (64 MiB at ~1 MB/s)
# endpoints that never wait for admission: probes and documents
UNGATED = frozenset({f"{m.API_PREFIX}/healthz", f"{m.API_PREFIX}/readyz", f"{m.API_PREFIX}/info",
                     f"{m.API_PREFIX}/openapi.json", f"{m.API_PREFIX}/docs", "/"})
LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


class EndpointMetrics:
    """Per-endpoint request counts and latencies, exported with Serve's own metrics (Prometheus)."""

    def __init__(self, enabled: bool):
        self._enabled = enabled
        if enabled:
            from ray.serve import metrics

            self._count = metrics.Counter("pam_requests", description="requests per endpoint and status",
                                          tag_keys=("endpoint", "method", "status"))
            self._latency = metrics.Histogram("pam_request_latency_ms", description="latency per endpoint (ms)",
                                              boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("endpoint", "method"))
            self.record = self._record
        else:
            self.record = lambda endpoint, method, status, ms: None

    def _record(self, endpoint: str, method: str, status: int, ms: float) -> None:
        self._count.inc(tags={"endpoint": endpoint, "method": method, "status": str(status)})
        self._latency.observe(ms, tags={"endpoint": endpoint, "method": method})


class Admission:
    """ASGI middleware in front of every endpoint: reads the whole body first (413 past the size
    limit, 408 when it stalls or crawls), then admits the request to work (at most MAX_ACTIVE at
    once and MAX_WAITING waiting; beyond that 503 with Retry-After at once), and records metrics.
    While the event loop has a standing delay (`lag`) a request gets 503 at its turn, before its
    body is read: work already taken in (a burst of big uploads being parsed) is finished, not
    thrown away. A request waiting for its body holds no work slot, so slow clients cannot starve
    the others."""

    def __init__(self, app, metrics: EndpointMetrics, max_active: int = MAX_ACTIVE, max_waiting: int = MAX_WAITING,
                 lag: LoopLag | None = None):
        self.app = app
        self.metrics = metrics
        self._lag = lag
        self._max_active = max_active
        self._max_waiting = max_waiting
        self._slots: asyncio.Semaphore | None = None
        self._queued = 0  # admitted, working or waiting for a slot

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.record(endpoint, scope.get("method", ""), status, (time.perf_counter() - start) * 1e3)

    async def _handle(self, scope, receive, send):
        path = scope["path"]
        limit = m.MAX_UPLOAD_BYTES if path == f"{m.API_PREFIX}/photos" else m.MAX_JSON_BYTES
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                exc = TooLarge("body_too_large", f"the request body has {int(value)} bytes; "
                               f"at most {limit} are allowed here", limit=limit)
                return await error_response(exc)(scope, receive, send)
        gated = not (path in UNGATED or path.startswith("/ui"))
        if gated and self._lag is not None:  # at the request's turn, before its body costs anything
            self._lag.start()
            await asyncio.sleep(0)  # behind the work queued ahead of it on the loop: that is its turn
            held = self._lag.standing_delay_s()
            if held:
                exc = Overloaded(f"this replica has been more than {self._lag.target_s * 1e3:g} ms behind its "
                                 f"requests for {held * 1e3:.0f} ms; retry after {RETRY_AFTER_S} s", RETRY_AFTER_S)
                return await error_response(exc)(scope, receive, send)
        try:
            body = await _read_body(receive, limit)
        except (TooLarge, TimedOut) as exc:
            return await error_response(exc, {"Connection": "close"})(scope, receive, send)
        if body is None:  # the client went away
            return
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if not gated:
            return await self.app(scope, replay, send)
        if self._queued >= self._max_active + self._max_waiting:
            exc = Overloaded(f"this replica is at capacity ({self._max_active} requests working, "
                             f"{self._max_waiting} waiting); retry after {RETRY_AFTER_S} s", RETRY_AFTER_S)
            return await error_response(exc)(scope, receive, send)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_active)
        self._queued += 1
        try:
            async with self._slots:
                await self.app(scope, replay, send)
        finally:
            self._queued -= 1


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole body, or None when the client disconnected; TooLarge or TimedOut."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BODY_TIMEOUT_S
    chunks, size = [], 0
    while True:
        wait = min(BODY_IDLE_TIMEOUT_S, deadline - loop.time())
        try:
            message = await asyncio.wait_for(receive(), max(wait, 0.001))
        except TimeoutError:
            raise TimedOut("body_timeout", f"the request body did not arrive in time (a pause over "
                           f"{BODY_IDLE_TIMEOUT_S:g} s, or over {BODY_TIMEOUT_S:g} s in all)") from None
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge("body_too_large", f"the request body exceeds {limit} bytes", limit=limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def create_app(runtime, metrics: bool = False) -> FastAPI:
    """The API over `runtime`, which has `.service` (PersonalizationService) and
    `async user_model(key) -> UserModel`: the routes of serving.online.routes, errors mapped by
    serving.online.http_errors, Admission in front."""
    app = FastAPI(title="pam personalization service", version="1",
                  description="Personalized image aesthetics per user (Prior-PAM and the posterior rating "
                  "strategy when the served feature-store model version has a taste prior; PAM and Active-PAM "
                  "otherwise), over one feature-store model version. Errors are JSON objects {detail, error, ...} naming the problem.",
                  openapi_url=f"{m.API_PREFIX}/openapi.json", docs_url=f"{m.API_PREFIX}/docs", redoc_url=None)
    app.state.runtime = runtime
    http_errors.install(app)
    routes.add_routes(app)

    from serving.online.search_api import search_router

    app.include_router(search_router(runtime, routes.ERRORS))

    if WEB_DIR.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/ui", StaticFiles(directory=WEB_DIR, html=True), name="ui")

    config = runtime.service.config
    lag = (LoopLag(config.queue_delay_target_ms / 1e3, config.queue_delay_interval_ms / 1e3)
           if config.queue_delay_target_ms > 0 else None)
    app.add_middleware(Admission, metrics=EndpointMetrics(metrics), lag=lag)
    build_openapi = app.openapi

    def openapi() -> dict:
        """FastAPI's document plus what its form parameters cannot say (the upload's limits)."""
        if app.openapi_schema is None:
            schema = build_openapi()
            upload = schema["components"]["schemas"].get("Body_upload_photos_v1_photos_post")
            if upload is not None:
                upload["properties"]["files"].update(minItems=1, maxItems=m.MAX_UPLOAD_FILES)
                ids = upload["properties"]["image_ids"]
                ids.pop("anyOf", None)
                ids.update(type="array", maxItems=m.MAX_UPLOAD_FILES, items={
                    "type": "string", "minLength": 1, "maxLength": m.MAX_IMAGE_ID_CHARS,
                    "pattern": m.IMAGE_ID_PATTERN}, description="optional ids, one per file")
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


class LocalRuntime:
    """The app's runtime outside Serve (tests, the library benchmark): an in-process LRU of models."""

    def __init__(self, config: ServiceConfig | dict):
        self.service = PersonalizationService(config)
        self.cache = LocalModelCache(self.service, self.service.config.model_cache_size)
        freeze_startup_heap()

    async def user_model(self, key: str) -> UserModel:
        return await self.cache.aget(key)

    def close(self) -> None:
        self.service.close()


# ---------------------------------------------------------------- Ray Serve
REPLICA_HEADER = "x-pam-replica"


class ReplicaHeader:
    """ASGI middleware: every reply names the replica that answered it (Serve's replica id), so
    clients and benchmarks can see how requests spread over replicas."""

    def __init__(self, app, replica: str):
        self.app = app
        self._header = (REPLICA_HEADER.encode(), replica.encode("ascii", "replace"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self._header]}
            await send(message)

        await self.app(scope, receive, named)


@cache
def _deployment():
    """The Serve deployment class (built on first use, so importing this module needs no Ray)."""
    from ray import serve

    @serve.deployment(name="pam", max_ongoing_requests=MAX_ONGOING_REQUESTS, max_queued_requests=MAX_QUEUED_REQUESTS,
                      ray_actor_options={"num_cpus": 0.5},
                      health_check_period_s=10, health_check_timeout_s=30)
    @serve.ingress()
    class PamDeployment:
        def __init__(self, config: dict):
            from serving.cluster.memory import return_freed_memory

            return_freed_memory()  # big uploads' buffers go back to the system once freed
            self.service = PersonalizationService(config)
            service = self.service

            async def load_user_model(model_id: str) -> UserModel:
                return await asyncio.to_thread(service.load_user_model, model_id)

            self._load = serve.multiplexed(max_num_models_per_replica=service.config.model_cache_size)(
                load_user_model)

        async def user_model(self, key: str) -> UserModel:
            return await self._load(key)

        def __serve_build_asgi_app__(self):
            app = create_app(self, metrics=True)
            app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)
            freeze_startup_heap()  # the replica's start-up is done: its service, catalog and app
            return app

        def reconfigure(self, user_config: dict) -> None:
            """Serve's user_config: {model, model_version?} switches every replica's version atomically."""
            user_config = expand_env(dict(user_config or {}))
            model = user_config.get("model", self.service.config.model)
            version = user_config.get("model_version")
            if model != self.service.config.model or (version and version != self.service.catalog.model_version):
                self.service.switch_model(model, version)

        def check_health(self) -> None:
            self.service.users.ping()

    return PamDeployment


def deployment_options(args: dict) -> dict:
    """Serve options from `pam serve` flags / config args: replicas or autoscaling."""
    options: dict[str, Any] = {}
    if args.get("autoscaling"):
        options["autoscaling_config"] = dict(args["autoscaling"])
    elif "num_replicas" in args:
        options["num_replicas"] = int(args["num_replicas"])
    if "max_ongoing_requests" in args:
        options["max_ongoing_requests"] = int(args["max_ongoing_requests"])
    if "num_cpus" in args:
        options["ray_actor_options"] = {"num_cpus": float(args["num_cpus"])}
    if "user_config" in args:
        options["user_config"] = dict(args["user_config"])
    options.update(routing_options(args.get("routing", "spillover"), args.get("spill_at", MAX_ACTIVE)))
    return options


def routing_options(routing: str, spill_at: int = MAX_ACTIVE) -> dict:
    """"spillover" (default): a user's requests stay on the replicas that hold the user's model
    while one has fewer than `spill_at` in flight, and spread beyond (serving.cluster.routing);
    "affinity": Serve's own router, which keeps a user on one replica until its queue is full."""
    if routing == "affinity":
        return {}
    if routing != "spillover":
        raise ValueError(f"routing must be 'spillover' or 'affinity', not {routing!r}")
    from ray.serve.config import RequestRouterConfig

    from serving.cluster.routing import ROUTER_PATH

    return {"request_router_config": RequestRouterConfig(request_router_class=ROUTER_PATH,
                                                         request_router_kwargs={"spill_at": int(spill_at)})}


SERVE_ONLY_KEYS = ("autoscaling", "num_replicas", "max_ongoing_requests", "num_cpus", "user_config", "routing",
                   "spill_at")


def expand_env(value):
    """${VAR} / $VAR in config strings (Serve config files carry no environment of their own)."""
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    if isinstance(value, str) and "$" in value:
        expanded = os.path.expandvars(value)
        if "$" in expanded:
            raise ValueError(f"config value {value!r} names an environment variable that is not set")
        return expanded
    return value


def build_app(args: dict):
    """Serve application builder: args = ServiceConfig fields + optional Serve options;
    ${VAR} in string values is taken from the environment."""
    args = expand_env(dict(args))
    options = deployment_options(args)
    config = ServiceConfig.from_dict({k: v for k, v in args.items() if k not in SERVE_ONLY_KEYS})
    deployment = _deployment()
    if options:
        deployment = deployment.options(**options)
    return deployment.bind(config.to_dict())


# ---------------------------------------------------------------- Serve's direct ingress (experimental)
def direct_ingress_env(base_port: int, span: int = 12) -> dict[str, str]:
    """Environment for Serve's throughput-optimized mode: each ingress replica serves HTTP on its own
    port in [base_port, base_port + span) (bound to http_options' host), skipping the proxy hop.
    Must be in the environment before ray.init (the controller and replicas read it at start)."""
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(base_port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(base_port + span),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(base_port + span),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(base_port + 2 * span),
            # the 30 s default drain waits for an external load balancer to stop sending; none here
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


def find_replica_ports(host: str, low: int, high: int, expect: int = 1, timeout_s: float = 60) -> list[str]:
    """Base URLs of this service's replicas among direct-ingress ports (they answer /v1/healthz).
    Another process may hold a port of the range (Ray binds ports of its own while it starts): what
    answers anything else, or not in HTTP at all, is not a replica."""
    import http.client
    import urllib.request

    found: set[str] = set()
    deadline = time.time() + timeout_s
    while True:
        for port in range(low, high):
            base = f"http://{host}:{port}"
            try:
                with urllib.request.urlopen(f"{base}{m.API_PREFIX}/healthz", timeout=2) as response:
                    if response.read() == b'{"status":"ok"}':
                        found.add(base)
            except (OSError, http.client.HTTPException, ValueError):
                continue
        if len(found) >= expect or time.time() > deadline:
            return sorted(found)
        time.sleep(0.5)
