"""The service's errors, in the service's terms: what went wrong, never how HTTP says it.

Each error carries a machine-readable `code`, a `detail` in words and optional extra fields (the
unknown ids, a limit); `body()` is the JSON object a client receives. The kinds below are what a
caller can act on; the HTTP layer (serving.online.http_errors) maps each kind to one status.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A request the service cannot answer, and why."""

    def __init__(self, code: str, detail: str, **details: Any):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.details = details

    def body(self) -> dict:
        return {"detail": self.detail, "error": self.code, **self.details}


class MalformedRequest(ServiceError):
    """The request cannot be read at all: no body, not JSON, a user id outside the id rule."""


class Unauthorized(ServiceError):
    """No API key, or one the service does not know."""


class NotFound(ServiceError):
    """A user, photo, file or index the service does not hold."""


class UnknownUser(NotFound):
    def __init__(self, user_id: str, detail: str | None = None):
        super().__init__("unknown_user", detail or f"unknown user {user_id!r}", unknown=[user_id])
        self.user_id = user_id


class Conflict(ServiceError):
    """The request contradicts what is stored (a reused request id, an id that names a catalog photo)."""


class RequestIdConflict(Conflict):
    def __init__(self, request_id: str):
        super().__init__("request_id_conflict",
                         f"request id {request_id!r} was already used with a different payload")
        self.request_id = request_id


class TooLarge(ServiceError):
    """Past a limit on size or count; `limit` names it."""


class InvalidInput(ServiceError):
    """Well-formed but not acceptable: a field out of range, an id of the wrong shape, a photo
    that cannot be decoded."""


class TimedOut(ServiceError):
    """The request did not arrive in time (a stalled or crawling body)."""


class Unavailable(ServiceError):
    """The service cannot answer now; a retry may succeed."""

    retry_after_s: int | None = None


class Overloaded(Unavailable):
    def __init__(self, detail: str, retry_after_s: int):
        super().__init__("overloaded", detail, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class VersionSwitching(Unavailable):
    def __init__(self):
        super().__init__("version_switching", "the model version is switching; retry the request")


class MethodNotAllowed(ServiceError):
    """A path of the API asked with a method it does not take; `allow` lists those it takes."""

    def __init__(self, detail: str, allow: str):
        super().__init__("method_not_allowed", detail)
        self.allow = allow
