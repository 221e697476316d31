"""The API's endpoints: one small function each, and the table (`ROUTES`) that puts them on paths.

Every endpoint runs the same pipeline: *decode* the request (the body parsed and validated once,
by serving.online.api_models), call the *service* (serving.online.service, which raises the
errors of serving.online.errors), *encode* the reply (`encode_json`). Errors become HTTP in one
place (serving.online.http_errors). A handler finds the runtime (`.service`, `.user_model(key)`)
on `request.app.state.runtime`.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import File, Form, Path, Query, Request, UploadFile
from fastapi.responses import RedirectResponse, Response

from serving.online import api_models as m
from serving.online import taste
from serving.online.errors import InvalidInput, MethodNotAllowed, NotFound, ServiceError, TooLarge
from serving.online.http_errors import JSONBytes
from serving.online.service import PersonalizationService, UserModel, encode_json, model_key
from serving.online.taste_models import TasteResponse

v1 = m.API_PREFIX
UserIdPath = Annotated[str, Path(min_length=1, max_length=m.MAX_USER_ID_CHARS, pattern=m.USER_ID_PATTERN,
                                 description=m.USER_ID_RULE)]
# the user routes' suffixes and their methods (a wrong method is a 405 naming them in Allow)
USER_ROUTES = {"": "GET, PUT, DELETE", "album": "GET, POST", "ratings": "POST", "next": "GET", "rerank": "POST",
               "taste": "GET"}


# ---------------------------------------------------------------- what every handler uses
def _service(request: Request) -> PersonalizationService:
    return request.app.state.runtime.service


def api_key(request: Request) -> str | None:
    """The key of header X-API-Key or Authorization: Bearer."""
    key = request.headers.get("x-api-key")
    if key is None:
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    return key


def _tenant(request: Request) -> str:
    return _service(request).tenant_for(api_key(request))


async def _in_photo_pool(request: Request, fn, *args):
    return await asyncio.get_running_loop().run_in_executor(_service(request).photo_pool, fn, *args)


async def _fresh_model(request: Request, tenant: str, user_id: str):
    """(model covering every acknowledged change, catalog), read-your-writes."""
    svc = _service(request)
    catalog = svc.catalog
    versions = svc.versions(tenant, user_id)
    model: UserModel = await request.app.state.runtime.user_model(model_key(tenant, user_id))
    if not model.covers(versions, catalog.model_version):
        model = await asyncio.to_thread(svc.ensure_fresh, model, versions, catalog)
    return model, catalog


def _reply(result: Any, status: int = 200) -> Response:
    return JSONBytes(encode_json(result), status_code=status)


# ---------------------------------------------------------------- operations
async def index():
    return RedirectResponse(f"{v1}/docs")


async def healthz():
    """Liveness: the replica's event loop answers."""
    return JSONBytes(b'{"status":"ok"}')


async def readyz(request: Request):
    """Readiness: the user store answers and a feature-store version is loaded."""
    report = await asyncio.to_thread(_service(request).ready)
    return _reply(report, 200 if report["ready"] else 503)


async def info(request: Request):
    return _reply(_service(request).info())


# ---------------------------------------------------------------- photos
async def score_ids(request: Request):
    """Generic score and features of photos by id; ids not in the store whose file is reachable
    under the photos root are scored now and kept in the store's online part."""
    tenant = _tenant(request)
    image_ids, include = m.decode_score_ids(await request.body())
    return _reply(await _in_photo_pool(request, _service(request).photos.score_ids, image_ids, include, tenant))


async def upload_photos(request: Request, files: Annotated[list[UploadFile], File(description="photos")],
                        image_ids: Annotated[list[str] | None, Form(description="optional ids, one per file")] = None,
                        include_features: Annotated[bool, Form()] = False):
    """Upload photos (multipart): each is decoded, scored by the feature backend and kept in the
    online part of the feature store, so it can join albums and re-ranking at once. A photo that
    cannot be decoded fails its own row (all failing: 422). Default id: upload:<sha256 prefix>."""
    tenant = _tenant(request)
    if len(files) > m.MAX_UPLOAD_FILES:
        raise TooLarge("too_many_items", f"{len(files)} files in one upload; at most {m.MAX_UPLOAD_FILES} "
                       "are allowed", limit=m.MAX_UPLOAD_FILES)
    if image_ids is not None and len(image_ids) != len(files):
        raise InvalidInput("invalid_field", f"{len(image_ids)} image_ids for {len(files)} files: give one per file")
    uploads = [(f.filename or f"file {k}", await f.read(), image_ids[k] if image_ids else None)
               for k, f in enumerate(files)]
    return _reply(await _in_photo_pool(request, _service(request).score_uploads, uploads, include_features, tenant))


async def thumbnail(request: Request,
                    image_id: Annotated[str, Query(min_length=1, max_length=m.MAX_IMAGE_ID_CHARS,
                                                   pattern=m.IMAGE_ID_PATTERN)],
                    size: Annotated[int, Query(description="the longer side",
                                               json_schema_extra={"enum": list(m.THUMBNAIL_SIZES)})] = 256):
    """A JPEG thumbnail (longer side `size`) of a photo whose file the service can reach."""
    svc = _service(request)
    data, shared = await _in_photo_pool(request, svc.thumbnail, image_id, size, _tenant(request))
    # an uploaded photo is its tenant's: no shared cache may keep it
    cache = "public, max-age=3600" if shared and not svc.has_api_keys else "private, max-age=3600"
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": cache})


# ---------------------------------------------------------------- users
async def create_user(user_id: UserIdPath, request: Request):
    """Create a user (201), or return the existing one's state (200)."""
    tenant, svc = _tenant(request), _service(request)
    created = await asyncio.to_thread(svc.create_user, tenant, user_id)
    model, _ = await _fresh_model(request, tenant, user_id)
    return _reply(await asyncio.to_thread(svc.user_state, model), 201 if created else 200)


async def add_album(user_id: UserIdPath, request: Request):
    """Register or extend the user's album (creates the user). Ids must be in the feature store
    or reachable as files under the photos root (then scored now); unknown ids are listed (404)."""
    tenant = _tenant(request)
    m.check_user_id(user_id)
    image_ids = m.decode_album(await request.body())
    return _reply(await asyncio.to_thread(_service(request).store_album, tenant, user_id, image_ids))


async def get_album(user_id: UserIdPath, request: Request):
    """The user's album (ids in the order added) and ratings (oldest first): what a curation
    page needs to show and re-rank the whole album."""
    tenant = _tenant(request)
    return _reply(await asyncio.to_thread(_service(request).album, tenant, user_id))


async def add_ratings(user_id: UserIdPath, request: Request):
    """Store ratings (1-5); the reply comes after they are durable. Re-rating replaces the
    score. A request id (body `request_id` or header Idempotency-Key) makes retries idempotent;
    the same id with another payload is a 409."""
    tenant = _tenant(request)
    m.check_user_id(user_id)
    pairs, in_body, request_id = m.decode_ratings(await request.body())
    if not in_body:
        request_id = m.check_request_id(request.headers.get("idempotency-key"))
    return _reply(await asyncio.to_thread(_service(request).store_ratings, tenant, user_id, pairs, request_id))


async def next_photos(user_id: UserIdPath, request: Request,
                      n: Annotated[int, Query(ge=1, le=m.MAX_SUGGESTIONS)] = 1):
    """The next n album photos for the user to rate; never a photo already rated. With a taste
    prior in the served version: the posterior strategy (`strategy: posterior`), else Active-PAM
    (seeded random photos first, then eq. 6)."""
    tenant = _tenant(request)
    m.check_user_id(user_id)
    model, _ = await _fresh_model(request, tenant, user_id)
    return _reply(await asyncio.to_thread(_service(request).next_photos, model, n))


async def rerank(user_id: UserIdPath, request: Request):
    """Re-rank up to 1,000 candidates (ids in the store, or inline features) by the user's
    personal model (Prior-PAM when the served version has a taste prior, else PAM); a user with no
    ratings gets the generic scores (or, when the prior measured it to help, the population
    offset), with `fallback` saying so. `include: ["uncertainty"]` adds each photo's `std`."""
    tenant = _tenant(request)
    m.check_user_id(user_id)
    query = m.decode_rerank(await request.body())
    model, catalog = await _fresh_model(request, tenant, user_id)
    return _reply(_service(request).rerank(model, query, catalog))


async def rerank_bulk(request: Request):
    """Many re-rank queries in one request (up to 64). A query that fails (unknown user or
    images) gets {user_id, error, detail} in its place; the others are answered."""
    tenant, svc = _tenant(request), _service(request)
    results = []
    for user_id, query in m.decode_bulk(await request.body()):
        try:
            model, catalog = await _fresh_model(request, tenant, user_id)
            results.append(svc.rerank(model, query, catalog))
        except ServiceError as exc:
            results.append({"user_id": user_id, **exc.body()})
    return _reply({"results": results})


async def user_taste(user_id: UserIdPath, request: Request):
    """What the user's personal model has learnt: per attribute and content class, the change in
    the user's score per standard deviation of the feature, its uncertainty, and whether the
    ratings support it; each list sorted by |effect|."""
    tenant = _tenant(request)
    m.check_user_id(user_id)
    model, catalog = await _fresh_model(request, tenant, user_id)
    return _reply(await asyncio.to_thread(taste.user_taste, model, catalog))


async def user_state(user_id: UserIdPath, request: Request):
    """Ratings count, versions, whether replies are personalized, and the cross-validated gain
    over the generic model once there are enough ratings."""
    tenant = _tenant(request)
    m.check_user_id(user_id)
    model, _ = await _fresh_model(request, tenant, user_id)
    return _reply(await asyncio.to_thread(_service(request).user_state, model))


async def delete_user(user_id: UserIdPath, request: Request):
    """Delete the user and everything stored for them (album, ratings, request ids)."""
    tenant = _tenant(request)
    return _reply(await asyncio.to_thread(_service(request).delete_user, tenant, user_id))


async def bad_user_path(rest: str, request: Request):
    """What no route above matched: a user id holding '/' (even percent-encoded) or '..', or a
    wrong suffix. The raw path tells which."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    segment, _, suffix = raw.decode("latin-1")[len(f"{v1}/users/"):].split("?", 1)[0].partition("/")
    m.check_user_id(unquote(segment))
    allowed = USER_ROUTES.get(suffix)
    if allowed is not None:
        raise MethodNotAllowed(f"{request.method} {request.url.path} is not an endpoint of this API: use "
                               f"{allowed} (see {v1}/docs)", allowed)
    raise NotFound("no_such_endpoint", f"{request.method} {request.url.path} is not an endpoint "
                   f"of this API (see {v1}/docs)")


# ---------------------------------------------------------------- the table
ERRORS = {code: {"model": m.ErrorResponse} for code in (400, 401, 404, 408, 409, 413, 422, 503)}
JPEG = {200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}, "description": "a JPEG"}}
CREATED = {201: {"model": m.UserState, "description": "created"},
           200: {"model": m.UserState, "description": "the user existed"}}
ANY_METHOD = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE")


@dataclass(frozen=True)
class Route:
    """One endpoint: method(s), path, handler, the reply's model, the body's model (parsed by the
    handler, documented here), tag, extra documented replies. The handler's docstring is its doc."""

    methods: tuple[str, ...]
    path: str
    handler: Callable
    response: Any = None
    body: type | None = None
    tag: str | None = None
    responses: dict = field(default_factory=dict)
    documented: bool = True
    response_class: type[Response] | None = None


def _route(method: str, path: str, handler: Callable, response=None, body=None, tag=None, responses=None,
           **options) -> Route:
    return Route((method,), path, handler, response, body, tag, {**ERRORS, **(responses or {})}, **options)


USERS = f"{v1}/users/{{user_id}}"
# order matters: the first match wins (a user's suffixes before the user, the catch-all last)
ROUTES: tuple[Route, ...] = (
    Route(("GET",), "/", index, documented=False),
    Route(("GET",), f"{v1}/healthz", healthz, tag="operations"),
    Route(("GET",), f"{v1}/readyz", readyz, m.ReadyResponse, tag="operations"),
    Route(("GET",), f"{v1}/info", info, tag="operations"),
    _route("POST", f"{v1}/photos/score", score_ids, m.ScoreResponse, m.ScoreIdsRequest, "photos"),
    _route("POST", f"{v1}/photos", upload_photos, m.ScoreResponse, tag="photos"),
    _route("GET", f"{v1}/photos/thumbnail", thumbnail, tag="photos", responses=JPEG, response_class=Response),
    _route("PUT", USERS, create_user, m.UserState, tag="users", responses=CREATED),
    _route("POST", f"{USERS}/album", add_album, m.AlbumResponse, m.ImageIdsRequest, "users"),
    _route("GET", f"{USERS}/album", get_album, m.AlbumListing, tag="users"),
    _route("POST", f"{USERS}/ratings", add_ratings, m.RatingsResponse, m.RatingsRequest, "users"),
    _route("GET", f"{USERS}/next", next_photos, m.NextResponse, tag="users"),
    _route("POST", f"{USERS}/rerank", rerank, m.RerankResponse, m.RerankRequest, "users"),
    _route("POST", f"{v1}/rerank", rerank_bulk, m.BulkRerankResponse, m.BulkRerankRequest, "users"),
    _route("GET", f"{USERS}/taste", user_taste, TasteResponse, tag="users"),
    _route("GET", USERS, user_state, m.UserState, tag="users"),
    _route("DELETE", USERS, delete_user, tag="users"),
    Route(ANY_METHOD, f"{v1}/users/{{rest:path}}", bad_user_path, documented=False),
)


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


def add_routes(app, routes: tuple[Route, ...] = ROUTES) -> None:
    for r in routes:
        options: dict[str, Any] = {"methods": list(r.methods), "include_in_schema": r.documented}
        if r.tag is not None:
            options["tags"] = [r.tag]
        if r.response is not None:
            options["response_model"] = r.response
        if r.responses:
            options["responses"] = r.responses
        if r.body is not None:
            options["openapi_extra"] = body_doc(r.body)
        if r.response_class is not None:
            options["response_class"] = r.response_class
        app.add_api_route(r.path, r.handler, **options)
