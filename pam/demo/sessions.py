"""The simulated users' sessions against the running service, over HTTP as any client would.

For each simulated user and each strategy, a fresh service user (`<worker>-active`,
`<worker>-random`) registers the worker's album, then rates one photo at a time:
- active: the photo the service suggests (GET /v1/users/{id}/next, Active-PAM);
- random: a photo the client draws at random from the unrated ones (seeded), the baseline.
The score sent is the simulated user's hidden rating of that photo. After every rating the client
re-ranks the whole album (POST /v1/users/{id}/rerank) and measures, on the photos not yet rated,
the correlation improvement rho(user, personalized) - rho(user, generic) (section 5.3's measure).
stdlib only (http.client), so the demo needs no HTTP library.
"""

from __future__ import annotations

import http.client
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import numpy as np

from personalize.metrics import spearman_rho

STRATEGIES = ("active", "random")


class ServiceError(RuntimeError):
    """A reply the client did not expect; the message holds the service's own explanation."""


class Client:
    """A JSON client on one kept-alive connection (reconnects once if the server closed it)."""

    def __init__(self, url: str, timeout: float = 60.0):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self.latencies_ms: list[float] = []

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            conn = self._connection()
            start = time.perf_counter()
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
                continue
            self.latencies_ms.append((time.perf_counter() - start) * 1e3)
            if response.status >= 400:
                try:
                    detail = json.loads(raw).get("detail", raw[:300])
                except ValueError:
                    detail = raw[:300]
                raise ServiceError(f"{method} {path} -> HTTP {response.status}: {detail}")
            return json.loads(raw) if raw else None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


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


def _improvement(reply: dict, truth: dict[str, float], rated: set[str]) -> tuple[float, float]:
    ids = [i for i in reply["image_ids"] if i not in rated]
    pos = {i: k for k, i in enumerate(reply["image_ids"])}
    y = np.array([truth[i] for i in ids])
    # the reply's order, not its scores: the shown scores are clipped to 1-5, which ties the top
    # photos, while the order comes from the unclipped predictions
    personal = np.array([-pos[i] for i in ids], dtype=np.float64)
    generic = np.array([reply["generic_scores"][pos[i]] for i in ids])
    rho_generic = spearman_rho(y, generic)
    return spearman_rho(y, personal) - rho_generic, rho_generic


def run_session(client: Client, user, strategy: str, budget: int, seed: int,
                tick: Callable[[], None] | None = None) -> SessionResult:
    """One user's session with one strategy: `budget` ratings, a re-rank after each."""
    service_user = f"{user.user_id}-{strategy}"  # Active-PAM's seed derives from it: reproducible runs
    base = f"/v1/users/{quote(service_user)}"
    try:  # a rerun starts from no ratings
        client.call("DELETE", base)
    except ServiceError as exc:
        if "HTTP 404" not in str(exc):
            raise
    truth = dict(zip(user.image_ids, user.scores.tolist(), strict=True))
    client.call("POST", f"{base}/album", {"image_ids": list(user.image_ids)})
    result = SessionResult(user.user_id, strategy, service_user)
    first = client.call("POST", f"{base}/rerank", {"candidates": list(user.image_ids)})
    result.generic_ranking = list(first["image_ids"])
    y = np.array([truth[i] for i in first["image_ids"]])
    result.generic_rho_album = spearman_rho(y, np.asarray(first["generic_scores"], dtype=np.float64))
    rng = np.random.default_rng([seed, int.from_bytes(user.user_id.encode()[-4:], "little")])
    rated: set[str] = set()
    budget = min(budget, len(user.image_ids) - 3)
    for _ in range(budget):
        if strategy == "active":
            suggestion = client.call("GET", f"{base}/next?n=1")
            if not suggestion["image_ids"]:
                break
            image_id = suggestion["image_ids"][0]
            result.phases.append(suggestion["phase"])
        else:
            unrated = [i for i in user.image_ids if i not in rated]
            image_id = unrated[int(rng.integers(len(unrated)))]
            result.phases.append("random")
        client.call("POST", f"{base}/ratings", {"ratings": [{"image_id": image_id, "score": truth[image_id]}],
                                                "request_id": f"{service_user}-{len(rated)}"})
        rated.add(image_id)
        result.rated.append(image_id)
        reply = client.call("POST", f"{base}/rerank", {"candidates": list(user.image_ids)})
        if reply["n_ratings"] != len(rated):
            raise ServiceError(f"the re-rank after {len(rated)} ratings used a model of {reply['n_ratings']} "
                               "ratings: read-your-writes is broken")
        gain, rho_generic = _improvement(reply, truth, rated)
        result.n_ratings.append(len(rated))
        result.improvement.append(gain)
        result.generic_rho.append(rho_generic)
        result.final_ranking = list(reply["image_ids"])
        result.final_scores = [float(v) for v in reply["scores"]]
        result.final_generic = [float(v) for v in reply["generic_scores"]]
        if tick is not None:
            tick()
    return result


def run_sessions(url: str, users, budget: int, seed: int,
                 tick: Callable[[], None] | None = None) -> tuple[list[SessionResult], dict]:
    client = Client(url)
    try:
        results = [run_session(client, user, strategy, budget, seed, tick)
                   for user in users for strategy in STRATEGIES]
    finally:
        client.close()
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
