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
import copy
import logging
import os
import time
from functools import cache
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import FastAPI, File, Form, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.online import api_models as m
from serving.online import taste
from serving.online.api_models import (
    THUMBNAIL_SIZES,
    ApiError,
    check_user_id,
    decode_bulk,
    decode_rerank,
    parse_json,
)
from serving.online.service import (
    LocalModelCache,
    PersonalizationService,
    ServiceConfig,
    UserModel,
    encode_json,
    model_key,
)
from serving.online.taste_models import TasteResponse

logger = logging.getLogger("pam.serve")
WEB_DIR = FilePath(__file__).resolve().parent / "web"
# Serve's limit per replica is high, so that a request waiting for its body (a slow or stalled
# client) never keeps Serve from routing others to the replica; the replica admits work itself
# once a body is in (Admission), and Serve's proxy sheds what queues beyond MAX_QUEUED_REQUESTS.
MAX_ONGOING_REQUESTS = 256  # per replica (deploy/serve.yaml says the same)
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


class JSONBytes(Response):
    media_type = "application/json"


def _error_response(exc: ApiError, headers: dict | None = None) -> Response:
    return JSONBytes(encode_json(exc.body()), status_code=exc.status, headers=headers)


def _inline_refs(schema: dict) -> dict:
    """A pydantic JSON schema with its $defs substituted in place (for openapi_extra)."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(copy.deepcopy(defs[ref.split("/")[-1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def body_doc(model) -> dict:
    """openapi_extra documenting a JSON body that the handler parses itself."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": _inline_refs(model.model_json_schema())}}}}


ERRORS = {code: {"model": m.ErrorResponse} for code in (400, 401, 404, 408, 409, 413, 422, 503)}
UserIdPath = Annotated[str, Path(min_length=1, max_length=m.MAX_USER_ID_CHARS, pattern=m.USER_ID_PATTERN,
                                 description=m.USER_ID_RULE)]
# the user routes' suffixes and their methods (a wrong method is a 405 naming them in Allow)
USER_ROUTES = {"": "GET, PUT, DELETE", "album": "GET, POST", "ratings": "POST", "next": "GET", "rerank": "POST",
               "taste": "GET"}


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
    A request waiting for its body holds no work slot, so slow clients cannot starve the others."""

    def __init__(self, app, metrics: EndpointMetrics, max_active: int = MAX_ACTIVE, max_waiting: int = MAX_WAITING):
        self.app = app
        self.metrics = metrics
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
                exc = ApiError(413, "body_too_large", f"the request body has {int(value)} bytes; "
                               f"at most {limit} are allowed here", limit=limit)
                return await _error_response(exc)(scope, receive, send)
        try:
            body = await _read_body(receive, limit)
        except ApiError as exc:
            return await _error_response(exc, {"Connection": "close"})(scope, receive, send)
        if body is None:  # the client went away
            return
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if path in UNGATED or path.startswith("/ui"):
            return await self.app(scope, replay, send)
        if self._queued >= self._max_active + self._max_waiting:
            exc = ApiError(503, "overloaded", f"this replica is at capacity ({self._max_active} requests working, "
                           f"{self._max_waiting} waiting); retry after {RETRY_AFTER_S} s", retry_after_s=RETRY_AFTER_S)
            return await _error_response(exc, {"Retry-After": str(RETRY_AFTER_S)})(scope, receive, send)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_active)
        self._queued += 1
        try:
            async with self._slots:
                await self.app(scope, replay, send)
        finally:
            self._queued -= 1


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole body, or None when the client disconnected; ApiError 413 / 408."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BODY_TIMEOUT_S
    chunks, size = [], 0
    while True:
        wait = min(BODY_IDLE_TIMEOUT_S, deadline - loop.time())
        try:
            message = await asyncio.wait_for(receive(), max(wait, 0.001))
        except TimeoutError:
            raise ApiError(408, "body_timeout", f"the request body did not arrive in time (a pause over "
                           f"{BODY_IDLE_TIMEOUT_S:g} s, or over {BODY_TIMEOUT_S:g} s in all)") from None
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the request body exceeds {limit} bytes", limit=limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def create_app(runtime, metrics: bool = False) -> FastAPI:
    """The API over `runtime`, which has `.service` (PersonalizationService) and
    `async user_model(key) -> UserModel`."""
    app = FastAPI(title="pam personalization service", version="1",
                  description="Personalized image aesthetics per user (Prior-PAM and the posterior rating "
                  "strategy when the served feature-store model version has a taste prior; PAM and Active-PAM "
                  "otherwise), over one feature-store model version. Errors are JSON objects {detail, error, ...} naming the problem.",
                  openapi_url=f"{m.API_PREFIX}/openapi.json", docs_url=f"{m.API_PREFIX}/docs", redoc_url=None)
    svc: PersonalizationService = runtime.service
    v1 = m.API_PREFIX

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            if tuple(err.get("loc", ()))[:2] == ("path", "user_id"):
                check_user_id(request.path_params.get("user_id"))  # raises the 400 that says why
            if err.get("type") == "json_invalid":
                return _error_response(ApiError(400, "malformed_json", "the request body is not valid JSON"))
            problems.append(f"{where}: {err.get('msg')}")
        return _error_response(ApiError(422, "invalid_request", "; ".join(problems), problems=problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "no_such_endpoint", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = exc.detail if exc.status_code not in (404, 405) else (
            f"{request.method} {request.url.path} is not an endpoint of this API (see {v1}/docs)")
        return _error_response(ApiError(exc.status_code, code, str(message)), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(ApiError(500, "internal_error", f"internal error: {type(exc).__name__}"))

    def tenant(request: Request) -> str:
        key = request.headers.get("x-api-key")
        if key is None:
            auth = request.headers.get("authorization", "")
            key = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        return svc.tenant_for(key)

    async def in_photo_pool(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(svc.photo_pool, fn, *args)

    async def fresh_model(tenant_name: str, user_id: str):
        """(model covering every acknowledged change, catalog), read-your-writes."""
        catalog = svc.catalog
        versions = svc.versions(tenant_name, user_id)
        model: UserModel = await runtime.user_model(model_key(tenant_name, user_id))
        if not model.covers(versions, catalog.model_version):
            model = await asyncio.to_thread(svc.ensure_fresh, model, versions, catalog)
        return model, catalog

    # ---------------------------------------------------------------- operations
    @app.get("/", include_in_schema=False)
    async def index():
        return RedirectResponse(f"{v1}/docs")

    @app.get(f"{v1}/healthz", tags=["operations"])
    async def healthz():
        """Liveness: the replica's event loop answers."""
        return JSONBytes(b'{"status":"ok"}')

    @app.get(f"{v1}/readyz", tags=["operations"], response_model=m.ReadyResponse)
    async def readyz():
        """Readiness: the user store answers and a feature-store version is loaded."""
        report = await asyncio.to_thread(svc.ready)
        return JSONBytes(encode_json(report), status_code=200 if report["ready"] else 503)

    @app.get(f"{v1}/info", tags=["operations"])
    async def info():
        return JSONBytes(encode_json(svc.info()))

    # ---------------------------------------------------------------- photos
    @app.post(f"{v1}/photos/score", tags=["photos"], response_model=m.ScoreResponse, responses=ERRORS,
              openapi_extra=body_doc(m.ScoreIdsRequest))
    async def score_ids(request: Request):
        """Generic score and features of photos by id; ids not in the store whose file is reachable
        under the photos root are scored now and kept in the store's online part."""
        t = tenant(request)
        data = parse_json(await request.body())
        if not isinstance(data, dict) or set(data) - {"image_ids", "include_features"}:
            raise ApiError(422, "invalid_body", "body must be an object {image_ids: [...], include_features?: bool}")
        include = data.get("include_features", False)
        if not isinstance(include, bool):
            raise ApiError(422, "invalid_field", "include_features must be true or false")
        result = await in_photo_pool(svc.score_ids, data.get("image_ids"), include, t)
        return JSONBytes(encode_json(result))

    @app.post(f"{v1}/photos", tags=["photos"], response_model=m.ScoreResponse, responses=ERRORS)
    async def upload_photos(request: Request, files: Annotated[list[UploadFile], File(description="photos")],
                            image_ids: Annotated[list[str] | None, Form(description="optional ids, one per file")] = None,
                            include_features: Annotated[bool, Form()] = False):
        """Upload photos (multipart): each is decoded, scored by the feature backend and kept in the
        online part of the feature store, so it can join albums and re-ranking at once. A photo that
        cannot be decoded fails its own row (all failing: 422). Default id: upload:<sha256 prefix>."""
        t = tenant(request)
        if len(files) > m.MAX_UPLOAD_FILES:
            raise ApiError(413, "too_many_items", f"{len(files)} files in one upload; at most {m.MAX_UPLOAD_FILES} "
                           "are allowed", limit=m.MAX_UPLOAD_FILES)
        if image_ids is not None and len(image_ids) != len(files):
            raise ApiError(422, "invalid_field", f"{len(image_ids)} image_ids for {len(files)} files: give one per file")
        uploads = [(f.filename or f"file {k}", await f.read(), image_ids[k] if image_ids else None)
                   for k, f in enumerate(files)]
        result = await in_photo_pool(svc.score_uploads, uploads, include_features, t)
        return JSONBytes(encode_json(result))

    @app.get(f"{v1}/photos/thumbnail", tags=["photos"], response_class=Response,
             responses={**ERRORS, 200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                                        "description": "a JPEG"}})
    async def thumbnail(request: Request,
                        image_id: Annotated[str, Query(min_length=1, max_length=m.MAX_IMAGE_ID_CHARS,
                                                       pattern=m.IMAGE_ID_PATTERN)],
                        size: Annotated[int, Query(description="the longer side",
                                                   json_schema_extra={"enum": list(THUMBNAIL_SIZES)})] = 256):
        """A JPEG thumbnail (longer side `size`) of a photo whose file the service can reach."""
        data, shared = await in_photo_pool(svc.thumbnail, image_id, size, tenant(request))
        # an uploaded photo is its tenant's: no shared cache may keep it
        cache = "public, max-age=3600" if shared and not svc.has_api_keys else "private, max-age=3600"
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": cache})

    # ---------------------------------------------------------------- users
    @app.put(f"{v1}/users/{{user_id}}", tags=["users"], response_model=m.UserState, responses={
        **ERRORS, 201: {"model": m.UserState, "description": "created"},
        200: {"model": m.UserState, "description": "the user existed"}})
    async def create_user(user_id: UserIdPath, request: Request):
        """Create a user (201), or return the existing one's state (200)."""
        t = tenant(request)
        created = await asyncio.to_thread(svc.create_user, t, user_id)
        model, _ = await fresh_model(t, user_id)
        state = await asyncio.to_thread(svc.user_state, model)
        return JSONBytes(encode_json(state), status_code=201 if created else 200)

    @app.post(f"{v1}/users/{{user_id}}/album", tags=["users"], response_model=m.AlbumResponse, responses=ERRORS,
              openapi_extra=body_doc(m.ImageIdsRequest))
    async def add_album(user_id: UserIdPath, request: Request):
        """Register or extend the user's album (creates the user). Ids must be in the feature store
        or reachable as files under the photos root (then scored now); unknown ids are listed (404)."""
        t = tenant(request)
        check_user_id(user_id)
        data = parse_json(await request.body())
        if not isinstance(data, dict) or set(data) != {"image_ids"}:
            raise ApiError(422, "invalid_body", "body must be an object {image_ids: [...]}")
        result = await asyncio.to_thread(svc.add_album, t, user_id, data["image_ids"])
        return JSONBytes(encode_json(result))

    @app.get(f"{v1}/users/{{user_id}}/album", tags=["users"], response_model=m.AlbumListing, responses=ERRORS)
    async def get_album(user_id: UserIdPath, request: Request):
        """The user's album (ids in the order added) and ratings (oldest first): what a curation
        page needs to show and re-rank the whole album."""
        t = tenant(request)
        return JSONBytes(encode_json(await asyncio.to_thread(svc.album, t, user_id)))

    @app.post(f"{v1}/users/{{user_id}}/ratings", tags=["users"], response_model=m.RatingsResponse,
              responses=ERRORS, openapi_extra=body_doc(m.RatingsRequest))
    async def add_ratings(user_id: UserIdPath, request: Request):
        """Store ratings (1-5); the reply comes after they are durable. Re-rating replaces the
        score. A request id (body `request_id` or header Idempotency-Key) makes retries idempotent;
        the same id with another payload is a 409."""
        t = tenant(request)
        check_user_id(user_id)
        data = parse_json(await request.body())
        if not isinstance(data, dict) or "ratings" not in data or set(data) - {"ratings", "request_id"}:
            raise ApiError(422, "invalid_body", "body must be an object {ratings: [{image_id, score}], request_id?}")
        request_id = data["request_id"] if "request_id" in data else request.headers.get("idempotency-key")
        result = await asyncio.to_thread(svc.add_ratings, t, user_id, data["ratings"], request_id)
        return JSONBytes(encode_json(result))

    @app.get(f"{v1}/users/{{user_id}}/next", tags=["users"], response_model=m.NextResponse, responses=ERRORS)
    async def next_photos(user_id: UserIdPath, request: Request,
                          n: Annotated[int, Query(ge=1, le=m.MAX_SUGGESTIONS)] = 1):
        """The next n album photos for the user to rate; never a photo already rated. With a taste
        prior in the served version: the posterior strategy (`strategy: posterior`), else Active-PAM
        (seeded random photos first, then eq. 6)."""
        t = tenant(request)
        check_user_id(user_id)
        model, _ = await fresh_model(t, user_id)
        return JSONBytes(encode_json(await asyncio.to_thread(svc.next_photos, model, n)))

    @app.post(f"{v1}/users/{{user_id}}/rerank", tags=["users"], response_model=m.RerankResponse,
              responses=ERRORS, openapi_extra=body_doc(m.RerankRequest))
    async def rerank(user_id: UserIdPath, request: Request):
        """Re-rank up to 1,000 candidates (ids in the store, or inline features) by the user's
        personal model (Prior-PAM when the served version has a taste prior, else PAM); a user with no
        ratings gets the generic scores (or, when the prior measured it to help, the population
        offset), with `fallback` saying so. `include: ["uncertainty"]` adds each photo's `std`."""
        t = tenant(request)
        check_user_id(user_id)
        query = decode_rerank(await request.body())
        model, catalog = await fresh_model(t, user_id)
        return JSONBytes(encode_json(svc.rerank(model, query, catalog)))

    @app.post(f"{v1}/rerank", tags=["users"], response_model=m.BulkRerankResponse, responses=ERRORS,
              openapi_extra=body_doc(m.BulkRerankRequest))
    async def rerank_bulk(request: Request):
        """Many re-rank queries in one request (up to 64). A query that fails (unknown user or
        images) gets {user_id, error, detail} in its place; the others are answered."""
        t = tenant(request)
        parsed = decode_bulk(await request.body())
        results = []
        for user_id, query in parsed:
            try:
                model, catalog = await fresh_model(t, user_id)
                results.append(svc.rerank(model, query, catalog))
            except ApiError as exc:
                results.append({"user_id": user_id, **exc.body()})
        return JSONBytes(encode_json({"results": results}))

    @app.get(f"{v1}/users/{{user_id}}/taste", tags=["users"], response_model=TasteResponse, responses=ERRORS)
    async def user_taste(user_id: UserIdPath, request: Request):
        """What the user's personal model has learnt: per attribute and content class, the change in
        the user's score per standard deviation of the feature, its uncertainty, and whether the
        ratings support it; each list sorted by |effect|."""
        t = tenant(request)
        check_user_id(user_id)
        model, catalog = await fresh_model(t, user_id)
        return JSONBytes(encode_json(await asyncio.to_thread(taste.user_taste, model, catalog)))

    @app.get(f"{v1}/users/{{user_id}}", tags=["users"], response_model=m.UserState, responses=ERRORS)
    async def user_state(user_id: UserIdPath, request: Request):
        """Ratings count, versions, whether replies are personalized, and the cross-validated gain
        over the generic model once there are enough ratings."""
        t = tenant(request)
        check_user_id(user_id)
        model, _ = await fresh_model(t, user_id)
        return JSONBytes(encode_json(await asyncio.to_thread(svc.user_state, model)))

    @app.delete(f"{v1}/users/{{user_id}}", tags=["users"], responses=ERRORS)
    async def delete_user(user_id: UserIdPath, request: Request):
        """Delete the user and everything stored for them (album, ratings, request ids)."""
        t = tenant(request)
        return JSONBytes(encode_json(await asyncio.to_thread(svc.delete_user, t, user_id)))

    @app.api_route(f"{v1}/users/{{rest:path}}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
                                                          "TRACE"], include_in_schema=False)
    async def bad_user_path(rest: str, request: Request):
        """What no route above matched: a user id holding '/' (even percent-encoded) or '..', or a
        wrong suffix. The raw path tells which."""
        raw = request.scope.get("raw_path") or request.url.path.encode()
        segment, _, suffix = raw.decode("latin-1")[len(f"{v1}/users/"):].split("?", 1)[0].partition("/")
        check_user_id(unquote(segment))
        allowed = USER_ROUTES.get(suffix)
        if allowed is not None:
            return _error_response(ApiError(405, "method_not_allowed", f"{request.method} {request.url.path} is "
                                            f"not an endpoint of this API: use {allowed} (see {v1}/docs)"), {"Allow": allowed})
        raise ApiError(404, "no_such_endpoint", f"{request.method} {request.url.path} is not an endpoint "
                       f"of this API (see {v1}/docs)")

    from serving.online.search_api import search_router

    app.include_router(search_router(runtime, ERRORS))

    if WEB_DIR.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/ui", StaticFiles(directory=WEB_DIR, html=True), name="ui")

    app.add_middleware(Admission, metrics=EndpointMetrics(metrics))
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

    async def user_model(self, key: str) -> UserModel:
        return await self.cache.aget(key)

    def close(self) -> None:
        self.service.close()


# ---------------------------------------------------------------- Ray Serve
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
            self.service = PersonalizationService(config)
            service = self.service

            async def load_user_model(model_id: str) -> UserModel:
                return await asyncio.to_thread(service.load_user_model, model_id)

            self._load = serve.multiplexed(max_num_models_per_replica=service.config.model_cache_size)(
                load_user_model)

        async def user_model(self, key: str) -> UserModel:
            return await self._load(key)

        def __serve_build_asgi_app__(self):
            return create_app(self, metrics=True)

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
    return options


SERVE_ONLY_KEYS = ("autoscaling", "num_replicas", "max_ongoing_requests", "num_cpus", "user_config")


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
    """Base URLs of this service's replicas among direct-ingress ports (they answer /v1/healthz)."""
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
            except OSError:
                continue
        if len(found) >= expect or time.time() > deadline:
            return sorted(found)
        time.sleep(0.5)
