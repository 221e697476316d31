"""Search re-ranked per user: the engine's top N, re-ranked by the personalization service.

The pattern any engine follows (docs/search.md shows it for OpenSearch/Elasticsearch and Vespa):
retrieve the top N (the re-rank window), send the N ids to the service's re-rank (one call up to
1,000 candidates, the bulk endpoint beyond), and return the service's order. The re-rank call
has a deadline (default 50 ms): when the service is slow, down, refuses the query, or has no
model for the user yet, the answer is the engine's own order with `personalized: false` and the
reason. Personalization never makes search fail.

`PersonalSearch` is for threaded callers (the re-rank runs in the calling thread, its socket reads
bounded by the deadline); `AsyncPersonalSearch` for asyncio ones (a web framework's handlers): the
same answers, the deadline kept by the loop, no thread per query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pam.client import ApiError, AsyncClient, Client, ConnectionFailed, Deadline, PamError, Ranking
from pam.client import Timeout as ClientTimeout
from serving.search.index import Hit, PhotoIndex

DEFAULT_DEADLINE_S = 0.05
DEFAULT_WINDOW = 200
MAX_CANDIDATES = 1000


@dataclass
class SearchResult:
    query: str
    user_id: str | None
    engine: list[Hit]  # the engine's order (BM25), the whole window
    personal: list[tuple[str, float]]  # (image_id, the user's predicted score), best first; [] if not personalized
    personalized: bool
    reason: str | None  # why the engine's order was kept, when it was
    timings_ms: dict = field(default_factory=dict)
    n_ratings: int | None = None

    @property
    def image_ids(self) -> list[str]:
        """The answer: the personal order when personalized, else the engine's."""
        return [i for i, _ in self.personal] if self.personalized else [h.image_id for h in self.engine]

    def as_dict(self, show: int | None = None) -> dict:
        show = show or len(self.engine)
        return {"query": self.query, "user_id": self.user_id, "personalized": self.personalized,
                "reason": self.reason, "window": len(self.engine), "n_ratings": self.n_ratings,
                "results": self.image_ids[:show],
                "engine": [{"image_id": h.image_id, "bm25": round(h.score, 4)} for h in self.engine[:show]],
                "personal": [{"image_id": i, "score": round(s, 4)} for i, s in self.personal[:show]],
                "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()}}


def _engine_result(index: PhotoIndex, query: str, user_id: str | None, window: int, has_client: bool
                   ) -> tuple[SearchResult, list[str] | None]:
    """The engine's answer, and the ids to re-rank (None when there is nothing to personalize)."""
    start = time.perf_counter()
    hits = index.search(query, window)
    result = SearchResult(query, user_id, hits, [], False, None, {"search": (time.perf_counter() - start) * 1e3})
    if not hits:
        result.reason = "no results"
    elif user_id is None:
        result.reason = "no user"
    elif not has_client:
        result.reason = "no personalization service configured"
    else:
        return result, [h.image_id for h in hits]
    return result, None


def _failure_reason(exc: BaseException, deadline_s: float) -> str:
    if isinstance(exc, ClientTimeout):
        return f"the re-rank did not answer within {deadline_s * 1e3:g} ms"
    if isinstance(exc, ConnectionFailed):
        return f"the personalization service is unreachable ({exc.attempts[-1] if exc.attempts else exc})"
    if isinstance(exc, ApiError):
        return f"the personalization service answered {exc.status} {exc.code}: {exc.detail}"
    return f"the re-rank failed: {exc}"


def _apply(result: SearchResult, ranking: Ranking) -> None:
    result.n_ratings = ranking.n_ratings
    if not ranking.personalized:
        result.reason = ranking.fallback or "the service used the generic score"
        return
    result.personal = list(zip(ranking.image_ids, ranking.scores, strict=True))
    result.personalized = True


def _parts(user_id: str, ids: list[str]) -> list[tuple[str, list[str]]]:
    return [(user_id, ids[k:k + MAX_CANDIDATES]) for k in range(0, len(ids), MAX_CANDIDATES)]


def _merge(user_id: str, parts: list) -> Ranking:
    """One ranking from the bulk endpoint's parts (personalized scores are absolute: they merge by score)."""
    for part in parts:
        if isinstance(part, ApiError):
            raise part
    rows = sorted(((s, i, g) for p in parts for i, s, g in zip(p.image_ids, p.scores, p.generic_scores,
                                                                strict=True)), key=lambda r: -r[0])
    first = parts[0]
    return Ranking(user_id, [r[1] for r in rows], [r[0] for r in rows], [r[2] for r in rows],
                   all(p.personalized for p in parts), first.fallback, first.model_version,
                   first.ratings_version, first.n_ratings)


def _finish(result: SearchResult, start: float, searched: float, reranked: bool) -> SearchResult:
    result.timings_ms["rerank"] = (time.perf_counter() - searched) * 1e3 if reranked else 0.0
    result.timings_ms["total"] = (time.perf_counter() - start) * 1e3
    return result


class _Searcher:
    """What both variants hold: the index, the deadline, the window and the client (made here
    from base_url with the deadline as its timeout and no retries, unless one is given)."""

    _client_class: type = Client

    def __init__(self, index: PhotoIndex, base_url: str | list[str] | None, api_key: str | None = None,
                 deadline_s: float = DEFAULT_DEADLINE_S, window: int = DEFAULT_WINDOW, client=None):
        self.index = index
        self.deadline_s = deadline_s
        self.window = window
        self.client = client or (self._client_class(base_url, api_key=api_key, timeout=deadline_s, retries=0)
                                 if base_url else None)
        self._own_client = client is None

    def _parts(self, user_id: str, ids: list[str]) -> tuple[Deadline, list | None]:
        """The re-rank's deadline, started now, and the bulk endpoint's parts when ids need several."""
        return Deadline(self.deadline_s).started(), (_parts(user_id, ids) if len(ids) > MAX_CANDIDATES else None)


class PersonalSearch(_Searcher):
    """Search `index`, re-ranked for a user through the service at `base_url` (one URL or several
    direct-ingress replicas). The re-rank call gets `deadline_s` in all (pam.client.Deadline: connect,
    send and every read of the reply, in the calling thread); it is not retried (a retry would not
    fit in the deadline; the next query tries again). `client`: a pam.client.Client."""

    def search(self, query: str, user_id: str | None = None, window: int | None = None) -> SearchResult:
        start = time.perf_counter()
        result, ids = _engine_result(self.index, query, user_id, window or self.window, self.client is not None)
        searched = time.perf_counter()
        if ids is None:
            return _finish(result, start, searched, False)
        deadline, parts = self._parts(user_id, ids)
        try:
            if parts is None:
                _apply(result, self.client.rerank(user_id, ids, timeout=deadline, retries=0))
            else:
                _apply(result, _merge(user_id, self.client.rerank_many(parts, timeout=deadline)))
        except PamError as exc:
            result.reason = _failure_reason(exc, self.deadline_s)
        return _finish(result, start, searched, True)

    def close(self) -> None:
        if self._own_client and self.client is not None:
            self.client.close()

    def __enter__(self) -> PersonalSearch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncPersonalSearch(_Searcher):
    """PersonalSearch for asyncio callers: `await search(query, user_id)`. The engine's search runs
    inline (it takes well under a millisecond at a window of 200); the re-rank is awaited under the
    same Deadline (the loop keeps it), no thread per query. `client`: a pam.client.AsyncClient."""

    _client_class = AsyncClient

    async def search(self, query: str, user_id: str | None = None, window: int | None = None) -> SearchResult:
        start = time.perf_counter()
        result, ids = _engine_result(self.index, query, user_id, window or self.window, self.client is not None)
        searched = time.perf_counter()
        if ids is None:
            return _finish(result, start, searched, False)
        deadline, parts = self._parts(user_id, ids)
        try:
            if parts is None:
                _apply(result, await self.client.rerank(user_id, ids, timeout=deadline, retries=0))
            else:
                _apply(result, _merge(user_id, await self.client.rerank_many(parts, timeout=deadline)))
        except PamError as exc:
            result.reason = _failure_reason(exc, self.deadline_s)
        return _finish(result, start, searched, True)

    async def aclose(self) -> None:
        if self._own_client and self.client is not None:
            await self.client.aclose()

    async def __aenter__(self) -> AsyncPersonalSearch:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
