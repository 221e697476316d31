"""What the client raises: every failure is a PamError; the service's own errors carry its code."""

from __future__ import annotations

from typing import Any


class PamError(Exception):
    """Base class of everything the client raises."""


class ApiError(PamError):
    """The service answered with an error: `status`, its `code` (e.g. unknown_user) and `detail`.

    `body` is the whole JSON error object (some carry more: `unknown`, `limit`, `invalid`, ...)."""

    def __init__(self, status: int, code: str, detail: str, body: dict | None = None, url: str = ""):
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body if body is not None else {"detail": detail, "error": code}
        self.url = url

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    @classmethod
    def from_bulk(cls, item: dict) -> ApiError:
        """A failed query inside a bulk re-rank reply ({user_id, error, detail})."""
        return cls(0, str(item.get("error", "error")), str(item.get("detail", "")), item)


class ServiceUnavailable(ApiError):
    """429 or 503 after every retry (the service is overloaded, starting, or not ready)."""


class ConnectionFailed(PamError):
    """No base URL could be reached (refused, reset, DNS, TLS) after every retry."""

    def __init__(self, message: str, attempts: list[str]):
        super().__init__(message)
        self.attempts = attempts


class Timeout(PamError):
    """The call did not finish within its timeout (never retried: the time budget is spent)."""
