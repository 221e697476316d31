"""Search re-ranked per user: the engine's top N, re-ranked by the personalization service.

The pattern any engine follows (docs/search.md shows it for OpenSearch/Elasticsearch and Vespa):
retrieve the top N (the re-rank window), send the N ids to the service's re-rank (one call up to
1,000 candidates, the bulk endpoint beyond), and return the service's order. The re-rank call
has a deadline (default 50 ms): when the service is slow, down, refuses the query, or has no
model for the user yet, the answer is the engine's own order with `personalized: false` and the
reason. Personalization never makes search fail.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from pam.client import ApiError, Client, ConnectionFailed, PamError, Ranking
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


class PersonalSearch:
    """Search `index`, re-ranked for a user through the service at `base_url` (one URL or several
    direct-ingress replicas). The re-rank call gets `deadline_s` in all; it is not retried (a
    retry would not fit in the deadline; the next query tries again)."""

    def __init__(self, index: PhotoIndex, base_url: str | list[str] | None, api_key: str | None = None,
                 deadline_s: float = DEFAULT_DEADLINE_S, window: int = DEFAULT_WINDOW, client: Client | None = None):
        self.index = index
        self.deadline_s = deadline_s
        self.window = window
        self.client = client or (Client(base_url, api_key=api_key, timeout=deadline_s, retries=0)
                                 if base_url else None)
        self._own_client = client is None
        # the deadline is kept by waiting on a worker: an HTTP timeout bounds each phase of a call,
        # not the call, and a service that trickles bytes could pass each phase's limit
        self._workers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="pam-rerank")

    def search(self, query: str, user_id: str | None = None, window: int | None = None) -> SearchResult:
        start = time.perf_counter()
        hits = self.index.search(query, window or self.window)
        searched = time.perf_counter()
        timings = {"search": (searched - start) * 1e3}
        result = SearchResult(query, user_id, hits, [], False, None, timings)
        if not hits:
            result.reason = "no results"
        elif user_id is None:
            result.reason = "no user"
        elif self.client is None:
            result.reason = "no personalization service configured"
        else:
            self._personalize(result, [h.image_id for h in hits])
        timings["rerank"] = (time.perf_counter() - searched) * 1e3 if user_id and hits and self.client else 0.0
        timings["total"] = (time.perf_counter() - start) * 1e3
        return result

    def _personalize(self, result: SearchResult, ids: list[str]) -> None:
        future = self._workers.submit(self._rerank, result.user_id, ids)
        try:
            ranking = future.result(timeout=self.deadline_s)
        except FutureTimeout:
            future.cancel()
            result.reason = f"the re-rank did not answer within {self.deadline_s * 1e3:g} ms"
            return
        except ClientTimeout:
            result.reason = f"the re-rank did not answer within {self.deadline_s * 1e3:g} ms"
            return
        except ConnectionFailed as exc:
            result.reason = f"the personalization service is unreachable ({exc.attempts[-1] if exc.attempts else exc})"
            return
        except ApiError as exc:
            result.reason = f"the personalization service answered {exc.status} {exc.code}: {exc.detail}"
            return
        except PamError as exc:
            result.reason = f"the re-rank failed: {exc}"
            return
        result.n_ratings = ranking.n_ratings
        if not ranking.personalized:
            result.reason = ranking.fallback or "the service used the generic score"
            return
        result.personal = list(zip(ranking.image_ids, ranking.scores, strict=True))
        result.personalized = True

    def _rerank(self, user_id: str, ids: list[str]) -> Ranking:
        if len(ids) <= MAX_CANDIDATES:
            return self.client.rerank(user_id, ids, timeout=self.deadline_s, retries=0)
        parts = self.client.rerank_many([(user_id, ids[k:k + MAX_CANDIDATES])
                                         for k in range(0, len(ids), MAX_CANDIDATES)], timeout=self.deadline_s)
        for part in parts:
            if isinstance(part, ApiError):
                raise part
        # personalized scores are absolute: the parts merge by score
        rows = sorted(((s, i, g) for p in parts for i, s, g in zip(p.image_ids, p.scores, p.generic_scores,
                                                                    strict=True)), key=lambda r: -r[0])
        first = parts[0]
        return Ranking(user_id, [r[1] for r in rows], [r[0] for r in rows], [r[2] for r in rows],
                       all(p.personalized for p in parts), first.fallback, first.model_version,
                       first.ratings_version, first.n_ratings)

    def close(self) -> None:
        self._workers.shutdown(wait=False, cancel_futures=True)
        if self._own_client and self.client is not None:
            self.client.close()

    def __enter__(self) -> PersonalSearch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
