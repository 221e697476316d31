"""The simulated users' sessions against the running service, over HTTP as any client would.

For each simulated user and each strategy, a fresh service user (`<worker>-active`,
`<worker>-random`) registers the worker's album, then rates one photo at a time:
- active: the photo the service suggests (GET /v1/users/{id}/next, Active-PAM);
- random: a photo the client draws at random from the unrated ones (seeded), the baseline.
The score sent is the simulated user's hidden rating of that photo. After every rating the client
re-ranks the whole album (POST /v1/users/{id}/rerank) and measures, on the photos not yet rated,
the correlation improvement rho(user, personalized) - rho(user, generic) (section 5.3's measure).
It talks to the service through pam.client, as an integrator would.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pam.client import ApiError, Client
from personalize.metrics import spearman_rho

STRATEGIES = ("active", "random")


class ServiceError(RuntimeError):
    """A reply the session did not expect (the service broke a promise of its API)."""


class TimedClient:
    """pam.client.Client that records each call's latency (the report's request figures)."""

    def __init__(self, client: Client):
        self.client = client
        self.latencies_ms: list[float] = []

    def __getattr__(self, name: str):
        method = getattr(self.client, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.latencies_ms.append((time.perf_counter() - start) * 1e3)

        return timed


@dataclass
class SessionResult:
    user: str  # the simulated user (panel worker)
    strategy: str
    service_user: str
    n_ratings: list[int] = field(default_factory=list)
    improvement: list[float] = field(default_factory=list)  # on the photos not rated yet
    generic_rho: list[float] = field(default_factory=list)
    rated: list[str] = field(default_factory=list)  # in rating order
    final_ranking: list[str] = field(default_factory=list)  # the whole album, personalized, best first
    generic_ranking: list[str] = field(default_factory=list)
    final_scores: list[float] = field(default_factory=list)  # in final_ranking order
    final_generic: list[float] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    generic_rho_album: float = float("nan")  # rho(user, generic) over the whole album

    def as_dict(self) -> dict:
        return {"user": self.user, "strategy": self.strategy, "service_user": self.service_user,
                "n_ratings": self.n_ratings, "improvement": self.improvement, "generic_rho": self.generic_rho,
                "rated": self.rated, "phases": self.phases, "generic_rho_album": self.generic_rho_album}


def _improvement(reply, truth: dict[str, float], rated: set[str]) -> tuple[float, float]:
    ids = [i for i in reply.image_ids if i not in rated]
    pos = {i: k for k, i in enumerate(reply.image_ids)}
    y = np.array([truth[i] for i in ids])
    # the reply's order, not its scores: the shown scores are clipped to 1-5, which ties the top
    # photos, while the order comes from the unclipped predictions
    personal = np.array([-pos[i] for i in ids], dtype=np.float64)
    generic = np.array([reply.generic_scores[pos[i]] for i in ids])
    rho_generic = spearman_rho(y, generic)
    return spearman_rho(y, personal) - rho_generic, rho_generic


def run_session(client: Client | TimedClient, user, strategy: str, budget: int, seed: int,
                tick: Callable[[], None] | None = None) -> SessionResult:
    """One user's session with one strategy: `budget` ratings, a re-rank after each."""
    service_user = f"{user.user_id}-{strategy}"  # Active-PAM's seed derives from it: reproducible runs
    try:  # a rerun starts from no ratings
        client.delete_user(service_user)
    except ApiError as exc:
        if exc.status != 404:
            raise
    truth = dict(zip(user.image_ids, user.scores.tolist(), strict=True))
    client.add_album(service_user, list(user.image_ids))
    result = SessionResult(user.user_id, strategy, service_user)
    first = client.rerank(service_user, list(user.image_ids))
    result.generic_ranking = list(first.image_ids)
    y = np.array([truth[i] for i in first.image_ids])
    result.generic_rho_album = spearman_rho(y, np.asarray(first.generic_scores, dtype=np.float64))
    rng = np.random.default_rng([seed, int.from_bytes(user.user_id.encode()[-4:], "little")])
    rated: set[str] = set()
    budget = min(budget, len(user.image_ids) - 3)
    for _ in range(budget):
        if strategy == "active":
            suggestion = client.next(service_user, n=1)
            if not suggestion.image_ids:
                break
            image_id = suggestion.image_ids[0]
            result.phases.append(suggestion.phase)
        else:
            unrated = [i for i in user.image_ids if i not in rated]
            image_id = unrated[int(rng.integers(len(unrated)))]
            result.phases.append("random")
        client.rate(service_user, [(image_id, truth[image_id])], request_id=f"{service_user}-{len(rated)}")
        rated.add(image_id)
        result.rated.append(image_id)
        reply = client.rerank(service_user, list(user.image_ids))
        if reply.n_ratings != len(rated):
            raise ServiceError(f"the re-rank after {len(rated)} ratings used a model of {reply.n_ratings} "
                               "ratings: read-your-writes is broken")
        gain, rho_generic = _improvement(reply, truth, rated)
        result.n_ratings.append(len(rated))
        result.improvement.append(gain)
        result.generic_rho.append(rho_generic)
        result.final_ranking = list(reply.image_ids)
        result.final_scores = [float(v) for v in reply.scores]
        result.final_generic = [float(v) for v in reply.generic_scores]
        if tick is not None:
            tick()
    return result


def run_sessions(url: str, users, budget: int, seed: int,
                 tick: Callable[[], None] | None = None) -> tuple[list[SessionResult], dict]:
    with Client(url, timeout=60.0) as http:
        client = TimedClient(http)
        results = [run_session(client, user, strategy, budget, seed, tick)
                   for user in users for strategy in STRATEGIES]
    lat = np.array(client.latencies_ms)
    stats = {"requests": int(lat.size),
             "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
             "p99_ms": float(np.percentile(lat, 99)) if lat.size else None}
    return results, stats


def mean_curves(results: list[SessionResult]) -> dict:
    """{strategy: {"n_ratings": [...], "mean": [...], "per_user": {user: [...]}}} over users."""
    out = {}
    for strategy in STRATEGIES:
        mine = [r for r in results if r.strategy == strategy and r.n_ratings]
        if not mine:
            continue
        length = min(len(r.n_ratings) for r in mine)
        values = np.array([r.improvement[:length] for r in mine], dtype=np.float64)
        with warnings.catch_warnings():  # a step where every user's rho is undefined stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(values, axis=0)
        out[strategy] = {"n_ratings": mine[0].n_ratings[:length],
                         "mean": mean.tolist(),
                         "per_user": {r.user: r.improvement[:length] for r in mine}}
    return out
