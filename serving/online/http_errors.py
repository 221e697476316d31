"""Errors to HTTP: the one place that knows which status each kind of service error gets.

Every error reply is the error's body ({"detail": ..., "error": code, ...}) as JSON. Validation
errors of path and query parameters (FastAPI's) and Starlette's own 404/405 get the same shape.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.online import errors
from serving.online.api_models import API_PREFIX, check_user_id
from serving.online.service import encode_json

logger = logging.getLogger("pam.serve")

STATUS: dict[type[errors.ServiceError], int] = {
    errors.MalformedRequest: 400,
    errors.Unauthorized: 401,
    errors.NotFound: 404,
    errors.MethodNotAllowed: 405,
    errors.TimedOut: 408,
    errors.Conflict: 409,
    errors.TooLarge: 413,
    errors.InvalidInput: 422,
    errors.Unavailable: 503,
}


class JSONBytes(Response):
    media_type = "application/json"


def status_of(kind: type[errors.ServiceError]) -> int:
    """The status of a kind of error: that of its nearest ancestor in STATUS (500 for none)."""
    for ancestor in kind.__mro__:
        status = STATUS.get(ancestor)
        if status is not None:
            return status
    return 500


def error_response(exc: errors.ServiceError, headers: dict | None = None, status: int | None = None) -> Response:
    headers = dict(headers or {})
    if isinstance(exc, errors.MethodNotAllowed):
        headers["Allow"] = exc.allow
    if isinstance(exc, errors.Unavailable) and exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONBytes(encode_json(exc.body()), status_code=status or status_of(type(exc)), headers=headers or None)


async def service_error(request: Request, exc: errors.ServiceError) -> Response:
    return error_response(exc)


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's checks of path and query parameters, in the service's words."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        if tuple(err.get("loc", ()))[:2] == ("path", "user_id"):
            check_user_id(request.path_params.get("user_id"))  # raises the error that says why
        if err.get("type") == "json_invalid":
            return error_response(errors.MalformedRequest("malformed_json", "the request body is not valid JSON"))
        problems.append(f"{where}: {err.get('msg')}")
    return error_response(errors.InvalidInput("invalid_request", "; ".join(problems), problems=problems))


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    code = {404: "no_such_endpoint", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = exc.detail if exc.status_code not in (404, 405) else (
        f"{request.method} {request.url.path} is not an endpoint of this API (see {API_PREFIX}/docs)")
    return error_response(errors.ServiceError(code, str(message)), getattr(exc, "headers", None),
                          status=exc.status_code)


async def internal_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(errors.ServiceError("internal_error", f"internal error: {type(exc).__name__}"), status=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
