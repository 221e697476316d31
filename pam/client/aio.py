"""`AsyncClient`: the same API for asyncio (kept-alive asyncio streams), same retries and failover."""

from __future__ import annotations

import asyncio
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
    AsyncConnectionPool,
    ConnectFailed,
    ConnectionBroke,
    ReplyTimeout,
    encode,
)


class AsyncClient(ApiCalls):
    """The asyncio client: every method of `Client`, awaited.

        async with AsyncClient(["http://10.0.0.5:9001", "http://10.0.0.6:9001"]) as client:
            ranking = await client.rerank("ann", candidate_ids, top_k=50)

    A call bounded by a deadline: `await client.rerank(..., timeout=Deadline(0.05))` (every phase and
    retry together; a plain number bounds each phase). One client per event loop; neither client
    reads proxy settings from the environment (`trust_env=True` is refused).
    """

    def __init__(self, base_url: str | Sequence[str], api_key: str | None = None, timeout: float | Deadline = 10.0, *,
                 retries: int = 3, backoff: float = 0.05, max_backoff: float = 2.0, max_retry_after: float = 30.0,
                 headers: dict | None = None, max_connections: int = 100, trust_env: bool = False):
        self.pool = BasePool(base_url)
        self.policy = RetryPolicy(retries, backoff, max_backoff, max_retry_after)
        self.timeout = timeout
        if trust_env:
            raise ValueError("AsyncClient does not read proxy settings from the environment: give the "
                             "service's base URLs (trust_env=True is not supported)")
        self._headers = _core.client_headers(api_key, headers)
        self._connections = AsyncConnectionPool(max_idle=max_connections)

    async def _run(self, call: Call, timeout: float | Deadline | None = None, retries: int | None = None) -> Any:
        if timeout is None and isinstance(self.timeout, Deadline):
            timeout = self.timeout
        if not isinstance(timeout, Deadline):
            return await self._attempts(call, timeout, retries)
        deadline = timeout.started()
        try:
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + deadline.left()):
                return await self._attempts(call, deadline, retries)
        except TimeoutError as exc:
            raise Timeout(f"{call.method} {call.path}: no reply within {deadline.seconds:g} s") from exc

    async def _attempts(self, call: Call, timeout: float | Deadline | None, retries: int | None) -> Any:
        attempts = Attempts(self.pool, self.policy, retries)
        path, body, headers = encode(call, self._headers)
        timeout = self.timeout if timeout is None else timeout
        per_phase = timeout.seconds if isinstance(timeout, Deadline) else timeout
        while True:
            index, wait = attempts.next()
            if wait:
                await asyncio.sleep(wait)
            try:
                reply = await self._connections.request(self.pool.urls[index], call.method, path, body, headers,
                                                        per_phase)
            except (ConnectFailed, ConnectionBroke) as exc:
                attempts.failed_connecting(index, exc)
                continue
            except ReplyTimeout as exc:
                raise Timeout(f"{call.method} {call.path}: no reply within {per_phase:g} s ({exc})") from exc
            result = attempts.reply(index, reply, call)
            if result is not RETRY:
                return result

    async def rerank_many(self, queries: Iterable[Any], timeout: float | Deadline | None = None,
                          include: Any = None) -> list[Ranking | ApiError]:
        """The bulk endpoint (see Client.rerank_many); requests of 64 queries go concurrently."""
        timeout = self.timeout if timeout is None and isinstance(self.timeout, Deadline) else timeout
        if isinstance(timeout, Deadline):  # one budget for all the requests
            timeout = timeout.started()
        replies = await asyncio.gather(*(self._run(call, timeout) for call in _core.bulk_calls(queries, include)))
        return [r for reply in replies for r in reply]

    async def aclose(self) -> None:
        await self._connections.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
