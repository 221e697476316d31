"""What the sync and asyncio clients share: the calls of the API, the base URLs with spreading and
failover, the retry policy, and turning replies into objects or errors. Only the sending differs."""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pam.client.errors import ApiError, ConnectionFailed, PamError, ServiceUnavailable
from pam.client.models import Album, PhotoScore, Ranking, RatingsAck, Suggestions, UserState
from pam.client.transport import Reply

API = "/v1"
MAX_CANDIDATES = 1000  # per re-rank query (the service's limit)
MAX_BULK_QUERIES = 64  # per bulk request (the service's limit); rerank_many splits longer lists
RETRY_STATUSES = frozenset({429, 503})


@dataclass(slots=True)
class Call:
    """One API call: what to send, and how to read a 2xx reply."""

    method: str
    path: str
    parse: Callable[[Reply], Any]
    json_body: Any = None
    params: dict | None = None
    files: Any = None
    data: Any = None
    user_id: str | None = None  # routes Serve's proxy to a replica holding the user's model
    raw_ok: frozenset = frozenset()  # error statuses returned as replies, not raised (readyz: 503)


@dataclass(frozen=True, slots=True)
class Deadline:
    """A timeout for a whole call: `timeout=Deadline(0.05)` bounds connect, send, every read of the
    reply and any retry together (a plain number bounds each phase alone, so a service that trickles
    its reply could take longer). `until` (time.monotonic) is fixed when the call starts, or by
    `started()` for several calls that share one budget."""

    seconds: float
    until: float | None = None

    def __post_init__(self):
        if not self.seconds > 0:
            raise ValueError(f"a deadline must be > 0 seconds, got {self.seconds!r}")

    def started(self) -> Deadline:
        return self if self.until is not None else Deadline(self.seconds, time.monotonic() + self.seconds)

    def left(self) -> float:
        """Seconds left (<= 0 once passed); a deadline not yet started has all of them."""
        return self.seconds if self.until is None else self.until - time.monotonic()


@dataclass(slots=True)
class RetryPolicy:
    """Retries on connection errors, 429 and 503, never on another status. Waits are full jitter,
    uniform(0, min(max_backoff, backoff * 2**attempt)); a Retry-After of the replying URL is
    honoured (that URL is not used again before it, another URL may be), up to max_retry_after."""

    retries: int = 3
    backoff: float = 0.05
    max_backoff: float = 2.0
    max_retry_after: float = 30.0

    def jitter(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.max_backoff, self.backoff * (2 ** attempt)))


class BasePool:
    """Base URLs (direct-ingress replicas, or one proxy): round robin from a random start, so
    several clients spread their load. A URL that failed to connect is tried after the others
    for COOL_OFF_S; one that answered 429/503 with Retry-After is not retried before that time
    (another URL may be). The first attempt of a call never waits."""

    COOL_OFF_S = 2.0  # after a connection error

    def __init__(self, base_urls: str | Sequence[str]):
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("give at least one base URL")
        self.urls = [u.rstrip("/") for u in urls]
        for u in self.urls:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"base URL {u!r} must start with http:// or https://")
        self._next = random.randrange(len(self.urls))
        self._down_until = [0.0] * len(self.urls)  # connection errors: prefer the others
        self._wait_until = [0.0] * len(self.urls)  # Retry-After: do not retry it before
        self._lock = threading.Lock()

    def pick(self, avoid: int | None = None, retry: bool = False) -> tuple[int, float]:
        """(index of the URL to use, seconds to wait before using it)."""
        with self._lock:
            now = time.monotonic()
            n = len(self.urls)
            order = [(self._next + k) % n for k in range(n)]
            self._next = (self._next + 1) % n
            if avoid is not None and n > 1:  # a retry goes elsewhere when it can
                order.remove(avoid)
                order.append(avoid)
            index = min(order, key=lambda i: max(self._wait_until[i], self._down_until[i], now))
            wait = self._wait_until[index] - now if retry else 0.0
            return index, max(0.0, wait)

    def hold(self, index: int, seconds: float, down: bool = False) -> None:
        with self._lock:
            until = time.monotonic() + seconds
            if down:
                self._down_until[index] = max(self._down_until[index], until)
            else:
                self._wait_until[index] = max(self._wait_until[index], until)

    def ok(self, index: int) -> None:
        if self._down_until[index] or self._wait_until[index]:
            with self._lock:
                self._down_until[index] = self._wait_until[index] = 0.0


def retry_after(response: Reply) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def api_error(response: Reply) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"detail": response.text[:500] or response.reason_phrase, "error": "http_error"}
    cls = ServiceUnavailable if response.status_code in RETRY_STATUSES else ApiError
    return cls(response.status_code, str(body.get("error", "http_error")), str(body.get("detail", "")), body,
               str(response.request.url))


class Attempts:
    """The state of one call's retries: which URL next, how long to wait, when to give up."""

    def __init__(self, pool: BasePool, policy: RetryPolicy, retries: int | None):
        self.pool = pool
        self.policy = policy
        self.retries = policy.retries if retries is None else retries
        self.attempt = 0
        self.last: int | None = None
        self.failures: list[str] = []

    def next(self) -> tuple[int, float]:
        index, wait = self.pool.pick(avoid=self.last, retry=self.attempt > 0)
        if self.attempt and not wait:  # a retry: jitter, so clients that failed together spread out
            wait = self.policy.jitter(self.attempt - 1)
        self.last = index
        return index, wait

    def failed_connecting(self, index: int, exc: Exception) -> None:
        """Raise when no retry is left; otherwise count it."""
        self.failures.append(f"{self.pool.urls[index]}: {type(exc).__name__}: {exc}")
        self.pool.hold(index, BasePool.COOL_OFF_S, down=True)
        self.attempt += 1
        if self.attempt > self.retries:
            raise ConnectionFailed(f"could not reach the service after {self.attempt} attempts: "
                                   + "; ".join(self.failures[-3:]), self.failures) from exc

    def reply(self, index: int, response: Reply, call: Call) -> Any:
        """The parsed reply, an ApiError raised, or RETRY."""
        status = response.status_code
        if status < 400 or status in call.raw_ok:
            self.pool.ok(index)
            return call.parse(response)
        if status in RETRY_STATUSES and self.attempt < self.retries:
            after = retry_after(response)
            if after is not None and after > self.policy.max_retry_after:
                raise api_error(response)
            self.pool.hold(index, after if after is not None else self.policy.jitter(self.attempt))
            self.failures.append(f"{self.pool.urls[index]}: HTTP {status}")
            self.attempt += 1
            return RETRY
        raise api_error(response)


RETRY = object()


def _json(response: Reply) -> Any:
    return json.loads(response.content) if response.content else None


def _user_path(user_id: str) -> str:
    if not isinstance(user_id, str) or not user_id:
        raise PamError(f"user id must be a non-empty string, got {user_id!r}")
    return f"{API}/users/{quote(user_id, safe='')}"


def _ratings(ratings: Any) -> list[dict]:
    """(image_id, score) pairs, {image_id, score} dicts, or a {image_id: score} mapping."""
    if isinstance(ratings, dict):
        ratings = list(ratings.items())
    out = []
    for r in ratings:
        if isinstance(r, dict):
            out.append({"image_id": r["image_id"], "score": r["score"]})
        else:
            image_id, score = r
            out.append({"image_id": image_id, "score": score})
    return out


def _include(include: Any) -> list[str] | None:
    """Opt-in reply parts: an option name or a sequence of them (the service checks the names)."""
    if include is None:
        return None
    if isinstance(include, str):
        return [include]
    return list(include)


def rerank_body(candidates: Any, top_k: int | None, include: Any = None) -> dict:
    """Ids (strings) -> {candidates}; dicts or PhotoScore objects with features -> {items}."""
    candidates = list(candidates)
    if candidates and not isinstance(candidates[0], str):
        items = [c.as_item() if isinstance(c, PhotoScore) else c for c in candidates]
        body: dict = {"items": items}
    else:
        body = {"candidates": candidates}
    if top_k is not None:
        body["top_k"] = top_k
    include = _include(include)
    if include is not None:
        body["include"] = include
    return body


def _bulk_query(query: Any, include: Any = None) -> dict:
    if isinstance(query, dict):
        if "user_id" not in query:
            raise PamError("a bulk query needs a user_id")
        if include is not None and "include" not in query:
            return {**query, "include": _include(include)}
        return query
    user_id, candidates, *rest = query
    return {"user_id": user_id, **rerank_body(candidates, rest[0] if rest else None, include)}


def _bulk_results(response: Reply) -> list[Ranking | ApiError]:
    return [ApiError.from_bulk(r) if "error" in r else Ranking.from_json(r) for r in _json(response)["results"]]


def _upload_parts(photos: Iterable[Any]) -> list:
    files = []
    for k, photo in enumerate(photos):
        if isinstance(photo, bytes | bytearray):
            files.append(("files", (f"photo-{k}.jpg", bytes(photo), "application/octet-stream")))
        elif isinstance(photo, tuple):
            name, data = photo
            files.append(("files", (name, bytes(data), "application/octet-stream")))
        else:  # a path
            from pathlib import Path

            path = Path(photo)
            files.append(("files", (path.name, path.read_bytes(), "application/octet-stream")))
    if not files:
        raise PamError("give at least one photo to upload")
    return files


class ApiCalls:
    """The API's methods, written once: each builds a Call and hands it to `self._run`, which
    returns the result (Client) or an awaitable of it (AsyncClient)."""

    def _run(self, call: Call, timeout: float | Deadline | None = None, retries: int | None = None):
        raise NotImplementedError

    # ------------------------------------------------------------ operations
    def health(self):
        """Liveness: {"status": "ok"}."""
        return self._run(Call("GET", f"{API}/healthz", _json))

    def ready(self):
        """Readiness report {ready, checks}; a service that is not ready answers it too (503)."""
        return self._run(Call("GET", f"{API}/readyz", _json, raw_ok=frozenset({503})), retries=0)

    def info(self):
        """Model version, feature rows, backend, user store."""
        return self._run(Call("GET", f"{API}/info", _json))

    # ------------------------------------------------------------ photos
    def score(self, image_ids: Sequence[str], include_features: bool = False, timeout: float | Deadline | None = None):
        """Generic scores (and features) of photos by id -> list[PhotoScore]; ids the store lacks
        but whose file the service can reach are scored now."""
        return self._run(Call("POST", f"{API}/photos/score", lambda r: [PhotoScore.from_json(p) for p in
                                                                         _json(r)["results"]],
                              {"image_ids": list(image_ids), "include_features": include_features}), timeout)

    def upload(self, photos: Iterable[Any], image_ids: Sequence[str] | None = None, include_features: bool = False,
               timeout: float | Deadline | None = None):
        """Upload photos (bytes, (name, bytes) or paths): scored and kept by the service ->
        list[PhotoScore] (default ids upload:<sha256 prefix>, so a retry stores nothing twice)."""
        data: dict = {"include_features": "true" if include_features else "false"}
        if image_ids is not None:
            data["image_ids"] = list(image_ids)
        return self._run(Call("POST", f"{API}/photos", lambda r: [PhotoScore.from_json(p) for p in
                                                                   _json(r)["results"]],
                              files=_upload_parts(photos), data=data), timeout)

    def thumbnail(self, image_id: str, size: int = 256):
        """JPEG bytes of a photo's thumbnail (longer side 64, 128, 256 or 512)."""
        return self._run(Call("GET", f"{API}/photos/thumbnail", lambda r: r.content,
                              params={"image_id": image_id, "size": size}))

    # ------------------------------------------------------------ users
    def create_user(self, user_id: str):
        """Create the user (UserState.created True) or return its state."""
        return self._run(Call("PUT", _user_path(user_id),
                              lambda r: UserState.from_json(_json(r), created=r.status_code == 201), user_id=user_id))

    def add_album(self, user_id: str, image_ids: Sequence[str]):
        """Register or extend the user's album (creates the user) -> {added, album_size, ...}."""
        return self._run(Call("POST", f"{_user_path(user_id)}/album", _json, {"image_ids": list(image_ids)},
                              user_id=user_id))

    def album(self, user_id: str):
        """The album and the ratings -> Album."""
        return self._run(Call("GET", f"{_user_path(user_id)}/album", lambda r: Album.from_json(_json(r)),
                              user_id=user_id))

    def rate(self, user_id: str, ratings: Any, request_id: str | None = None, timeout: float | Deadline | None = None):
        """Store ratings (1-5): (image_id, score) pairs, {image_id, score} dicts or a mapping.
        A request id is generated when none is given, and every retry of this call sends the same
        one, so a rating is never applied twice -> RatingsAck (after the ratings are durable)."""
        request_id = request_id or uuid.uuid4().hex
        return self._run(Call("POST", f"{_user_path(user_id)}/ratings",
                              lambda r: RatingsAck.from_json(_json(r), request_id),
                              {"ratings": _ratings(ratings), "request_id": request_id}, user_id=user_id), timeout)

    def next(self, user_id: str, n: int = 1):
        """The next n photos for the user to rate (Active-PAM) -> Suggestions."""
        return self._run(Call("GET", f"{_user_path(user_id)}/next", lambda r: Suggestions.from_json(_json(r)),
                              params={"n": n}, user_id=user_id))

    def rerank(self, user_id: str, candidates: Sequence[Any], top_k: int | None = None,
               timeout: float | Deadline | None = None, retries: int | None = None, include: Any = None):
        """Re-rank up to 1,000 candidates for the user -> Ranking (.image_ids, .scores best first).
        Candidates are image ids, or dicts / PhotoScore objects with inline features. include:
        opt-in parts of the reply, e.g. ["uncertainty"] (Ranking.std) or ["reasons"]."""
        return self._run(Call("POST", f"{_user_path(user_id)}/rerank", lambda r: Ranking.from_json(_json(r)),
                              rerank_body(candidates, top_k, include), user_id=user_id), timeout, retries)

    def user(self, user_id: str):
        """The user's state -> UserState."""
        return self._run(Call("GET", _user_path(user_id), lambda r: UserState.from_json(_json(r)), user_id=user_id))

    def taste(self, user_id: str):
        """What the user's model has learnt: {user_id, n_ratings, model_version, attributes, content},
        each list of {key, name, effect, std, supported} sorted by |effect|."""
        return self._run(Call("GET", _user_path(user_id) + "/taste", _json, user_id=user_id))

    def delete_user(self, user_id: str):
        """Delete the user and everything stored for them."""
        return self._run(Call("DELETE", _user_path(user_id), _json, user_id=user_id))


def bulk_calls(queries: Iterable[Any], include: Any = None) -> list[Call]:
    """`rerank_many`'s requests: (user_id, candidates[, top_k]) tuples or {user_id, candidates |
    items, top_k?, include?} dicts, 64 per request; `include` for every query that names none."""
    bodies = [_bulk_query(q, include) for q in queries]
    return [Call("POST", f"{API}/rerank", _bulk_results, {"queries": bodies[k:k + MAX_BULK_QUERIES]})
            for k in range(0, len(bodies), MAX_BULK_QUERIES)]


def client_headers(api_key: str | None, headers: dict | None) -> dict:
    out = {"Accept": "application/json", "User-Agent": "pam-client/1"}
    if api_key:
        out["X-API-Key"] = api_key
    out.update(headers or {})
    return out
