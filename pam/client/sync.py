"""`Client`: the API over kept-alive http.client connections, with retries and failover."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from pam.client import _core
from pam.client._core import (
    RETRY,
    ApiCalls,
    Attempts,
    BasePool,
    Call,
    Deadline,
    RetryPolicy,
)
from pam.client.errors import ApiError, Timeout
from pam.client.models import Ranking
from pam.client.transport import (
    ConnectFailed,
    ConnectionBroke,
    ConnectionPool,
    ReplyTimeout,
    encode,
)


class Client(ApiCalls):
    """A client of the personalization service.

        client = Client("http://127.0.0.1:8000", api_key=None, timeout=10.0)
        client.rate("ann", [("a.jpg", 4), ("b.jpg", 2)])
        ranking = client.rerank("ann", candidate_ids)     # ranking.image_ids, ranking.scores

    `base_url` may be a list (direct-ingress replicas): calls are spread over them and fail over to
    another when one refuses, resets, or answers 429/503. `timeout` (seconds) bounds each phase
    of a call (connect, send, wait for each read of the reply); a call may override it, or give
    `timeout=Deadline(seconds)` to bound the whole call (every phase and retry together).
    Thread-safe; reuses connections; close it (or use `with`) when done.
    """

    def __init__(self, base_url: str | Sequence[str], api_key: str | None = None, timeout: float | Deadline = 10.0, *,
                 retries: int = 3, backoff: float = 0.05, max_backoff: float = 2.0, max_retry_after: float = 30.0,
                 headers: dict | None = None, max_connections: int = 100):
        self.pool = BasePool(base_url)
        self.policy = RetryPolicy(retries, backoff, max_backoff, max_retry_after)
        self.timeout = timeout
        self._headers = _core.client_headers(api_key, headers)
        self._connections = ConnectionPool(max_idle=max_connections)

    def _run(self, call: Call, timeout: float | Deadline | None = None, retries: int | None = None) -> Any:
        attempts = Attempts(self.pool, self.policy, retries)
        path, body, headers = encode(call, self._headers)
        timeout = self.timeout if timeout is None else timeout
        deadline = timeout.started() if isinstance(timeout, Deadline) else None
        per_phase = timeout.seconds if deadline else timeout
        while True:
            index, wait = attempts.next()
            if deadline and wait >= deadline.left():
                raise Timeout(f"{call.method} {call.path}: no time left for a retry within {deadline.seconds:g} s")
            if wait:
                time.sleep(wait)
            try:
                reply = self._connections.request(self.pool.urls[index], call.method, path, body, headers, per_phase,
                                                  deadline.until if deadline else None)
            except (ConnectFailed, ConnectionBroke) as exc:
                attempts.failed_connecting(index, exc)
                continue
            except ReplyTimeout as exc:
                raise Timeout(f"{call.method} {call.path}: no reply within {per_phase:g} s ({exc})") from exc
            result = attempts.reply(index, reply, call)
            if result is not RETRY:
                return result

    def rerank_many(self, queries: Iterable[Any], timeout: float | Deadline | None = None,
                    include: Any = None) -> list[Ranking | ApiError]:
        """The bulk endpoint: (user_id, candidates[, top_k]) tuples or {user_id, candidates|items,
        top_k?, include?} dicts -> one Ranking per query, in order; a query that failed (unknown user
        or images) gets its ApiError in its place. More than 64 queries go in several requests.
        include: opt-in reply parts (e.g. ["uncertainty"]) for every query that names none."""
        out: list[Ranking | ApiError] = []
        timeout = self.timeout if timeout is None else timeout
        if isinstance(timeout, Deadline):  # one budget for all the requests
            timeout = timeout.started()
        for call in _core.bulk_calls(queries, include):
            out.extend(self._run(call, timeout))
        return out

    def close(self) -> None:
        self._connections.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
