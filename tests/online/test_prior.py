"""The service over a feature version WITH a population taste prior, through a real `pam serve`
(a subprocess on free ports, two replicas): Prior-PAM re-ranks, `next` uses the posterior strategy
and gives the same suggestions after a restart, `include: ["uncertainty"]` adds each photo's
predictive s.d. on single and bulk re-ranks, hostile `include` values get 422. In process (uvicorn,
no Ray): the same version served without its prior, a feature version without one, and a version
switch between the two behave as PAM and Active-PAM do.

The prior is fit here (personalize.prior.fit_prior, its cross-validated choice) on 40 simulated
raters of the tiny model's 48 photos: a shared offset along three features plus individual tastes
along three random directions, rounded to the 1-5 scale.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from personalize.features import pam_input
from personalize.pam import PAM
from personalize.prior import (
    PRIOR_FILE,
    PriorPAM,
    RaterData,
    TastePrior,
    feature_statistics,
    fit_prior,
)
from personalize.strategy import PosteriorStrategy
from serving import feature_table as ft
from serving.feature_table.store import FeatureStore
from serving.online.app import LocalRuntime, create_app
from tests.conftest import ROOT, free_port
from tests.online.conftest import ThreadedServer, build_feature_root
from tests.online.test_api import Client, expect_error, expected_scores

pytestmark = [pytest.mark.ray]
N_RATERS = 40


def _rows(feature_root: str, ids: list[str]) -> np.ndarray:
    """X = [x, aes_score] of ids, as the service builds it."""
    rows, missing = FeatureStore.open(feature_root).lookup(ids)
    assert not missing
    return np.hstack([pam_input(rows.attributes, rows.content), rows.aes_score.reshape(-1, 1).astype(np.float64)])


def _simulated_prior(X: np.ndarray, seed: int = 0) -> TastePrior:
    x_mean, x_scale = feature_statistics(X)
    phi = np.hstack([np.ones((X.shape[0], 1)), (X[:, :-1] - x_mean) / x_scale])
    rng = np.random.default_rng(seed)
    d = phi.shape[1]
    mu = np.zeros(d)
    mu[:4] = [0.1, 0.3, -0.2, 0.15]
    basis = rng.normal(size=(d, 3)) / np.sqrt(d)
    raters = []
    for _ in range(N_RATERS):
        theta = mu + basis @ rng.normal(size=3)
        y = np.clip(np.round(X[:, -1] + phi @ theta + rng.normal(0, 0.3, X.shape[0])), 1, 5)
        raters.append(RaterData(X, y))
    return fit_prior(raters, seed=seed)


@pytest.fixture(scope="module")
def prior_env(tmp_path_factory, tiny_onnx_model):
    """A feature root whose served version (tiny-test-0) holds a taste prior, and a second version
    (tiny-test-1, not promoted) without one."""
    from export.preprocess import decode_file
    from pam.bench.tiny_graph import build_tiny_feature_model
    from serving.scoring.backends import OnnxRuntimeBackend

    tmp = tmp_path_factory.mktemp("prior")
    env = build_feature_root(tmp, tiny_onnx_model)
    X = _rows(env["feature_root"], env["ids"])
    prior = _simulated_prior(X)
    table = ft.FeatureTable(env["feature_root"])
    prior.save(table.version(env["model_version"]).sidecar_path(PRIOR_FILE))
    other = build_tiny_feature_model(tmp / "v1" / "pam_features.onnx", "tiny-test-1", seed=1)
    backend = OnnxRuntimeBackend(other)
    features = backend.score(np.stack([decode_file(f"{env['photos_root']}/{i}") for i in env["ids"]]))
    table.write_version(ft.feature_table(env["ids"], features, "tiny-test-1"), promote=False)
    return {**env, "prior": TastePrior.load(table.version(env["model_version"]).sidecar_path(PRIOR_FILE)),
            "X": dict(zip(env["ids"], X, strict=True)), "other_model": str(other), "tmp": tmp}


class PamServe:
    """`pam serve` as a user runs it, restartable on the same user store."""

    def __init__(self, env: dict, users: str):
        self.env, self.users = env, users
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> None:
        command = [sys.executable, "-m", "pam.cli", "serve", "--features", self.env["feature_root"],
                   "--model", self.env["model"], "--photos", self.env["photos_root"], "--users", self.users,
                   "--port", str(free_port()), "--num-cpus", "2", "--replicas", "2", "--duration", "1800"]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        deadline, line = time.time() + 180, ""
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if "listening on" in line or (not line and self.proc.poll() is not None):
                break
        match = re.search(r"listening on (http://\S+)", line)
        assert match, f"no listening line; exit {self.proc.poll()}: {line}"
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep the pipe drained
        self.url, self.line = match.group(1), line

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)

    def __call__(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, self.url + path, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def served(prior_env):
    server = PamServe(prior_env, f"sqlite:///{prior_env['tmp'] / 'users.db'}")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _ok(response: requests.Response) -> dict:
    assert response.status_code in (200, 201), (response.status_code, response.text)
    return response.json()


def _rate(call, user: str, ratings: dict[str, float]) -> None:
    _ok(call("POST", f"/v1/users/{user}/ratings",
             json={"ratings": [{"image_id": i, "score": s} for i, s in ratings.items()]}))


def _truth(env: dict, ids: list[str], seed: int) -> dict[str, float]:
    """A simulated user's scores of ids, from the prior's own model of tastes."""
    prior: TastePrior = env["prior"]
    X = np.stack([env["X"][i] for i in ids])
    theta = np.random.default_rng(seed).multivariate_normal(prior.mu, prior.cov)
    y = np.clip(np.round(X[:, -1] + prior.phi(X[:, :-1]) @ theta, 1), 1, 5)
    return dict(zip(ids, y.tolist(), strict=True))


def _prior_scores(env: dict, rated: dict[str, float], candidates: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Prior-PAM's (mean, s.d.) for candidates given ratings (the prior's empty model without)."""
    model = PriorPAM(env["prior"])
    if rated:
        model.fit(np.stack([env["X"][i] for i in rated]), np.array(list(rated.values())))
    else:
        model.fit_empty(env["prior"].n_features)
    return model.predict(np.stack([env["X"][i] for i in candidates]), return_std=True)


# ---------------------------------------------------------------- pam serve with a prior
def test_no_prior_flag_reaches_the_service_config(tmp_path):
    from pam.cli import build_parser
    from pam.commands.serve import service_args
    from serving.online.app import SERVE_ONLY_KEYS
    from serving.online.service import ServiceConfig

    def replica_config(argv):
        args = service_args(build_parser("serve").parse_args(argv))
        return ServiceConfig.from_dict({k: v for k, v in args.items() if k not in SERVE_ONLY_KEYS})

    base = ["serve", "--features", str(tmp_path), "--users", f"sqlite:///{tmp_path / 'u.db'}"]
    assert replica_config(base).use_prior is True
    assert replica_config([*base, "--no-prior"]).use_prior is False


def test_info_and_readiness_say_the_prior_is_loaded(served, prior_env):
    info = _ok(served("GET", "/v1/info"))
    prior = prior_env["prior"]
    assert info["model_version"] == prior_env["model_version"]
    assert info["prior"]["model"] == "prior-pam" and info["prior"]["strategy"] == "posterior"
    assert info["prior"]["zero_ratings"] == ("population offset" if prior.use_population_offset else "generic score")
    ready = _ok(served("GET", "/v1/readyz"))
    assert ready["ready"] and ready["checks"]["prior"].startswith("loaded")
    assert "taste prior loaded" in served.line


def test_prior_pam_reranks_from_the_first_rating_and_gain_names_it(served, prior_env):
    env, call = prior_env, served
    album = env["ids"][:40]
    _ok(call("POST", "/v1/users/pia/album", json={"image_ids": album}))
    candidates = env["ids"][8:48]
    cold = _ok(call("POST", "/v1/users/pia/rerank", json={"candidates": candidates}))
    assert cold["personalized"] is False and "no ratings" in cold["fallback"]
    X = np.stack([env["X"][i] for i in candidates])
    want = X[:, -1] + (env["prior"].phi(X[:, :-1]) @ env["prior"].mu if env["prior"].use_population_offset else 0)
    by_id = dict(zip(candidates, np.clip(want, 1, 5), strict=True))
    assert ("population offset" in cold["fallback"]) == env["prior"].use_population_offset
    assert cold["scores"] == pytest.approx([by_id[i] for i in cold["image_ids"]], abs=1e-6)

    truth = _truth(env, album, seed=1)
    rated = {i: truth[i] for i in album[:12]}
    _rate(call, "pia", rated)
    reply = _ok(call("POST", "/v1/users/pia/rerank", json={"candidates": candidates}))
    assert reply["personalized"] is True and reply["fallback"] is None and reply["n_ratings"] == 12
    mean, _ = _prior_scores(env, rated, candidates)
    by_id = dict(zip(candidates, np.clip(mean, 1, 5), strict=True))
    assert reply["scores"] == pytest.approx([by_id[i] for i in reply["image_ids"]], abs=1e-6)
    pam = dict(zip(candidates, expected_scores(env, rated, candidates), strict=True))
    assert not np.allclose([pam[i] for i in reply["image_ids"]], reply["scores"], atol=1e-3)  # not PAM's

    state = _ok(call("GET", "/v1/users/pia"))
    assert state["gain"]["model"] == "prior-pam" and isinstance(state["gain"]["value"], float)
    assert "rho(model)" in state["gain"]["method"]


def test_next_uses_the_posterior_strategy_a_page_conditioned(served, prior_env):
    env, call = prior_env, served
    album = env["ids"][:48]
    _ok(call("POST", "/v1/users/nia/album", json={"image_ids": album}))
    X = np.stack([env["X"][i] for i in album])
    first = _ok(call("GET", "/v1/users/nia/next", params={"n": 6}))
    assert first["strategy"] == "posterior" and first["phase"] == "active" and first["n_ratings"] == 0
    want = PosteriorStrategy(None, X, prior=env["prior"]).suggest(6)
    assert first["image_ids"] == [album[k] for k in want]
    assert len(set(first["image_ids"])) == 6
    truth = _truth(env, album, seed=2)
    rated = {i: truth[i] for i in first["image_ids"][:4]}
    _rate(call, "nia", rated)
    page = _ok(call("GET", "/v1/users/nia/next", params={"n": 5}))
    state = PosteriorStrategy.rebuild(None, X, [(album.index(i), s) for i, s in rated.items()], prior=env["prior"])
    assert page["image_ids"] == [album[k] for k in state.suggest(5)]
    assert not set(page["image_ids"]) & set(rated) and page["n_ratings"] == 4
    # the page is conditioned: its later picks differ from the unconditioned criterion's ranking
    gains = state.gains()
    gains[state.rated_indices] = -np.inf
    assert [album[k] for k in np.argsort(-gains)[:5]] != page["image_ids"]


def test_uncertainty_is_opt_in_and_shrinks_as_ratings_accumulate(served, prior_env):
    env, call = prior_env, served
    user, album = "una", env["ids"][:48]
    _ok(call("POST", f"/v1/users/{user}/album", json={"image_ids": album}))
    candidates = album
    plain = _ok(call("POST", f"/v1/users/{user}/rerank", json={"candidates": candidates}))
    assert "std" not in plain
    truth = _truth(env, album, seed=3)
    rated: dict[str, float] = {}
    previous = None
    for n in (0, 8, 24):
        rated.update({i: truth[i] for i in album[:n]})
        if rated:
            _rate(call, user, rated)
        reply = _ok(call("POST", f"/v1/users/{user}/rerank", json={"candidates": candidates,
                                                                    "include": ["uncertainty"]}))
        std = dict(zip(reply["image_ids"], reply["std"], strict=True))
        values = np.array([std[i] for i in candidates])
        assert np.isfinite(values).all() and (values > 0).all(), values
        _, want = _prior_scores(env, rated, candidates)
        assert values == pytest.approx(want, abs=1e-6)
        if previous is not None:
            assert (values <= previous + 1e-9).all()  # never grows with a rating
            assert (values[:n] < previous[:n]).all()  # the rated photos' own shrink
        previous = values
        if n == 8:  # bulk: the same s.d. with include, none without
            bulk = _ok(call("POST", "/v1/rerank", json={"queries": [
                {"user_id": user, "candidates": candidates, "include": ["uncertainty"]},
                {"user_id": user, "candidates": candidates[:5]},
                {"user_id": user, "candidates": candidates[:5], "include": ["uncertainty", "reasons"]},
                {"user_id": "nobody-here", "candidates": candidates[:5], "include": ["uncertainty"]}]}))["results"]
            assert bulk[0]["std"] == reply["std"] and bulk[0]["image_ids"] == reply["image_ids"]
            assert "std" not in bulk[1] and len(bulk[2]["std"]) == 5 and len(bulk[2]["reasons"]["keys"]) == 5
            assert bulk[3]["error"] == "unknown_user"
            rows = FeatureStore.open(env["feature_root"]).lookup(candidates[:6])[0]
            items = [{"image_id": f"inline-{k}", "aes_score": float(rows.aes_score[k]),
                      "attributes": rows.attributes[k].tolist(), "content": rows.content[k].tolist()}
                     for k in range(6)]
            inline = _ok(call("POST", f"/v1/users/{user}/rerank", json={"items": items, "include": ["uncertainty"]}))
            for image_id, s in zip(inline["image_ids"], inline["std"], strict=True):
                assert s == pytest.approx(std[candidates[int(image_id.split("-")[1])]], abs=1e-5)
    assert previous.mean() < 0.9 * _prior_scores(env, {}, candidates)[1].mean()


@pytest.mark.parametrize("include", [
    ["uncertainty", "uncertainty"], ["reasons", "uncertainty", "reasons"], ["std"], ["Uncertainty"], "uncertainty",
    [1], [None], [["uncertainty"]], {"uncertainty": True}, True, ["uncertainty"] * 100, [""],
    ["uncertainty\u0000"]])
def test_hostile_include_values_get_422(served, prior_env, include):
    call, ids = served, prior_env["ids"]
    _ok(call("POST", "/v1/users/hostile/album", json={"image_ids": ids[:5]}))
    for path, body in (("/v1/users/hostile/rerank", {"candidates": ids[:5], "include": include}),
                       ("/v1/rerank", {"queries": [{"user_id": "hostile", "candidates": ids[:5], "include": include}]})):
        expect_error(call("POST", path, json=body), 422, "include")


def test_taste_and_reasons_work_on_prior_pam(served, prior_env):
    env, call = prior_env, served
    album = env["ids"][:48]
    _ok(call("POST", "/v1/users/tia/album", json={"image_ids": album}))
    truth = _truth(env, album, seed=4)
    _rate(call, "tia", {i: truth[i] for i in album[:20]})
    body = _ok(call("GET", "/v1/users/tia/taste"))
    assert body["n_ratings"] == 20 and len(body["attributes"]) == 10 and len(body["content"]) == 10
    assert all(np.isfinite(r["effect"]) for r in body["attributes"] + body["content"])
    reply = _ok(call("POST", "/v1/users/tia/rerank", json={"candidates": album, "top_k": 10,
                                                            "include": ["reasons", "uncertainty"]}))
    assert len(reply["reasons"]["keys"]) == len(reply["std"]) == 10


def test_openapi_documents_uncertainty_strategy_and_gain_model(served):
    doc = _ok(served("GET", "/v1/openapi.json"))
    schemas = doc["components"]["schemas"]
    include = doc["paths"]["/v1/users/{user_id}/rerank"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["properties"]["include"]
    assert include["items"]["enum"] == ["reasons", "uncertainty"] and include["uniqueItems"] is True
    assert include["maxItems"] == 2 and "uncertainty" in include["description"]
    bulk = doc["paths"]["/v1/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "uncertainty" in str(bulk)
    assert "taste prior" in schemas["RerankResponse"]["properties"]["std"]["description"]
    assert schemas["GainEstimate"]["properties"]["model"]["enum"] == ["prior-pam", "pam"]
    assert schemas["NextResponse"]["properties"]["strategy"]["enum"] == ["posterior", "active-pam"]


def test_the_client_asks_for_and_exposes_the_uncertainty(served, prior_env):
    from pam.client import ApiError as ClientApiError
    from pam.client import AsyncClient, Client

    ids = prior_env["ids"]
    with Client(served.url, timeout=60) as client:
        client.add_album("cla", ids[:20])
        client.rate("cla", {i: 1 + k % 5 for k, i in enumerate(ids[:10])})
        assert client.rerank("cla", ids[:20]).std is None  # off by default
        ranking = client.rerank("cla", ids[:20], include=["uncertainty"])
        assert len(ranking.std) == 20 and all(s > 0 for s in ranking.std)
        assert client.user("cla").gain_model == "prior-pam" and client.next("cla", 2).strategy == "posterior"
        many = client.rerank_many([("cla", ids[:20]), {"user_id": "cla", "candidates": ids[:5]}],
                                  include="uncertainty")
        assert many[0].std == ranking.std and len(many[1].std) == 5
        with pytest.raises(ClientApiError) as err:
            client.rerank("cla", ids[:5], include=["uncertainty", "uncertainty"])
        assert err.value.status == 422 and "include" in err.value.detail

    async def run():
        async with AsyncClient(served.url, timeout=60) as client:
            one = await client.rerank("cla", ids[:20], include=["uncertainty"])
            many = await client.rerank_many([("cla", ids[:20])], include=["uncertainty", "reasons"])
            return one, many[0]

    one, bulk = asyncio.run(run())
    assert one.std == ranking.std == bulk.std and len(bulk.reasons["keys"]) == 20


def test_every_replica_gives_the_same_suggestions_and_scores(served, prior_env):
    """Two replicas, no routing header: each rebuilds the user's model and strategy from the
    store, and a reply after a rating on the other replica includes it (read-your-writes)."""
    env, call = prior_env, served
    album = env["ids"][:48]
    _ok(call("POST", "/v1/users/rep/album", json={"image_ids": album}))
    truth = _truth(env, album, seed=6)
    for _ in range(4):
        pages = [_ok(call("GET", "/v1/users/rep/next", params={"n": 2})) for _ in range(4)]
        assert all(p["image_ids"] == pages[0]["image_ids"] for p in pages)
        _rate(call, "rep", {i: truth[i] for i in pages[0]["image_ids"]})
        replies = [_ok(call("POST", "/v1/users/rep/rerank", json={"candidates": album, "include": ["uncertainty"]}))
                   for _ in range(4)]
        assert all(r["n_ratings"] == replies[0]["n_ratings"] and r["std"] == replies[0]["std"]
                   and r["scores"] == replies[0]["scores"] for r in replies)
    assert replies[0]["n_ratings"] == 8


def test_suggestions_and_scores_survive_a_restart(served, prior_env):
    """Last: it restarts the server. The strategy is rebuilt from the stored ratings alone."""
    env, call = prior_env, served
    album = env["ids"][:48]
    _ok(call("POST", "/v1/users/ria/album", json={"image_ids": album}))
    truth = _truth(env, album, seed=5)
    for _ in range(3):  # rate the service's own suggestions, a page at a time
        page = _ok(call("GET", "/v1/users/ria/next", params={"n": 3}))["image_ids"]
        _rate(call, "ria", {i: truth[i] for i in page})
    before = _ok(call("GET", "/v1/users/ria/next", params={"n": 5}))
    ranked = _ok(call("POST", "/v1/users/ria/rerank", json={"candidates": album, "include": ["uncertainty"]}))
    served.stop()
    served.start()
    after = _ok(call("GET", "/v1/users/ria/next", params={"n": 5}))
    assert after["image_ids"] == before["image_ids"] and after["n_ratings"] == 9
    again = _ok(call("POST", "/v1/users/ria/rerank", json={"candidates": album, "include": ["uncertainty"]}))
    assert again["image_ids"] == ranked["image_ids"]
    assert again["scores"] == pytest.approx(ranked["scores"], abs=1e-9)
    assert again["std"] == pytest.approx(ranked["std"], abs=1e-9)


# ---------------------------------------------------------------- without a prior (in process)
@pytest.fixture(scope="module")
def local(prior_env):
    """Serve prior_env's root in process; `open(use_prior=..., model=...)` gives a client."""
    runtimes = []

    def open_api(**config):
        runtime = LocalRuntime({"feature_root": prior_env["feature_root"], "model": prior_env["model"],
                                "user_store": f"sqlite:///{prior_env['tmp'] / f'local-{len(runtimes)}.db'}",
                                **config})
        runtimes.append(runtime)
        server = ThreadedServer(create_app(runtime)).__enter__()
        runtimes.append(server)
        return Client(server.url), runtime

    yield open_api
    for item in reversed(runtimes):
        if isinstance(item, ThreadedServer):
            item.__exit__(None, None, None)
        else:
            item.close()


def _behaves_as_pam(call, env, user: str) -> None:
    album = env["ids"][:30]
    _ok(call("POST", f"/v1/users/{user}/album", json={"image_ids": album}))
    cold = _ok(call("POST", f"/v1/users/{user}/rerank", json={"candidates": album, "include": ["uncertainty"]}))
    assert cold["fallback"].startswith("generic scores") and cold["std"] is None
    assert cold["scores"] == pytest.approx(sorted((env["aes_score"][i] for i in album), reverse=True), abs=1e-6)
    page = _ok(call("GET", f"/v1/users/{user}/next", params={"n": 3}))
    assert page["strategy"] == "active-pam" and page["phase"] == "seed"
    rated = {i: float(1 + (k * 7) % 5) for k, i in enumerate(album[:12])}
    _rate(call, user, rated)
    reply = _ok(call("POST", f"/v1/users/{user}/rerank", json={"candidates": album, "include": ["uncertainty"]}))
    want = dict(zip(album, expected_scores(env, rated, album), strict=True))
    assert reply["scores"] == pytest.approx([want[i] for i in reply["image_ids"]], abs=1e-6)
    assert reply["std"] is None  # PAM has no predictive distribution
    state = _ok(call("GET", f"/v1/users/{user}"))
    assert state["gain"]["model"] == "pam" and isinstance(state["gain"]["value"], float)
    X = np.stack([env["X"][i] for i in rated])
    assert state["gain"]["value"] == pytest.approx(_pam_gain(X, np.array(list(rated.values()))), abs=1e-9)


def _pam_gain(X, y) -> float:
    from personalize.pam import estimate_gain

    return estimate_gain(X, y, min_ratings=10)


def test_the_version_served_without_its_prior_is_pam_and_active_pam(local, prior_env):
    call, _ = local(use_prior=False)
    assert call("GET", "/v1/info").json()["prior"] is None
    assert call("GET", "/v1/readyz").json()["checks"]["prior"].startswith("none")
    _behaves_as_pam(call, prior_env, "plain")


def test_a_version_switch_loads_the_new_versions_prior(local, prior_env):
    call, runtime = local()
    svc = runtime.service
    album = prior_env["ids"][:30]
    _ok(call("POST", "/v1/users/sw/album", json={"image_ids": album}))
    rated = {i: float(1 + k % 5) for k, i in enumerate(album[:12])}
    _rate(call, "sw", rated)
    assert _ok(call("GET", "/v1/users/sw"))["gain"]["model"] == "prior-pam"
    svc.switch_model(prior_env["other_model"], "tiny-test-1")  # a version without a prior
    assert call("GET", "/v1/info").json()["prior"] is None
    state = _ok(call("GET", "/v1/users/sw"))
    assert state["gain"]["model"] == "pam" and state["model_version"] == "tiny-test-1"
    assert _ok(call("GET", "/v1/users/sw/next"))["strategy"] == "active-pam"
    reply = _ok(call("POST", "/v1/users/sw/rerank", json={"candidates": album, "include": ["uncertainty"]}))
    assert reply["std"] is None and reply["model_version"] == "tiny-test-1"
    svc.switch_model(prior_env["model"], prior_env["model_version"])  # back: its prior again
    assert call("GET", "/v1/info").json()["prior"]["model"] == "prior-pam"
    assert _ok(call("GET", "/v1/users/sw"))["gain"]["model"] == "prior-pam"
    assert _ok(call("GET", "/v1/users/sw/next"))["strategy"] == "posterior"
    mean, _ = _prior_scores(prior_env, rated, album)
    reply = _ok(call("POST", "/v1/users/sw/rerank", json={"candidates": album}))
    by_id = dict(zip(album, np.clip(mean, 1, 5), strict=True))
    assert reply["scores"] == pytest.approx([by_id[i] for i in reply["image_ids"]], abs=1e-6)


def test_zero_ratings_show_the_generic_score_when_the_prior_says_the_offset_does_not_help(prior_env):
    """The prior's measured choice decides; here the flag is turned off on a copy."""
    from dataclasses import replace

    from serving.online.service import Fit
    from serving.online.user_store import Versions

    prior = prior_env["prior"]
    X = np.stack(list(prior_env["X"].values()))
    versions = Versions(ratings=0, album=1, generation="g")
    off = Fit(versions, prior_env["model_version"], None, 0, replace(prior, use_population_offset=False))
    on = Fit(versions, prior_env["model_version"], None, 0, replace(prior, use_population_offset=True))
    assert off.predict(X[:, :-1], X[:, -1]) == pytest.approx(X[:, -1])
    assert on.predict(X[:, :-1], X[:, -1]) == pytest.approx(X[:, -1] + prior.phi(X[:, :-1]) @ prior.mu)
    assert "generic" in off.fallback and "population offset" in on.fallback
    mean, std = on.predict_std(X[:, :-1], X[:, -1])
    assert mean == pytest.approx(on.predict(X[:, :-1], X[:, -1])) and (std > 0).all()
    plain = Fit(versions, prior_env["model_version"], PAM().fit(X[:10], np.arange(10) % 5 + 1.0), 10)
    assert plain.predict_std(X[:, :-1], X[:, -1])[1] is None and plain.model_name == "pam"


def test_a_version_whose_prior_is_unreadable_is_never_switched_in(prior_env, tmp_path):
    """An unreadable prior stops the switch (the served version stays, with its own prior); the
    service is not quietly served with a model other than the one its operator fit."""
    import shutil

    from serving.online.service import PersonalizationService

    root = tmp_path / "features"
    shutil.copytree(prior_env["feature_root"], root)
    table = ft.FeatureTable(str(root))
    Path(table.version("tiny-test-1").sidecar_path(PRIOR_FILE)).write_bytes(b"not an npz")
    svc = PersonalizationService({"feature_root": str(root), "user_store": f"sqlite:///{tmp_path / 'u.db'}"})
    try:
        assert svc.info()["prior"]["model"] == "prior-pam"
        with pytest.raises(ValueError, match="not a readable taste prior"):
            svc.switch_model(None, "tiny-test-1")
        assert svc.catalog.model_version == prior_env["model_version"] and svc.catalog.prior is not None
    finally:
        svc.close()
    svc = PersonalizationService({"feature_root": str(root), "user_store": f"sqlite:///{tmp_path / 'u.db'}",
                                  "use_prior": False})
    try:  # --no-prior never reads it
        assert svc.switch_model(None, "tiny-test-1") == "tiny-test-1" and svc.info()["prior"] is None
    finally:
        svc.close()


def test_a_prior_that_lost_to_pam_is_not_served(prior_env, tmp_path, monkeypatch):
    """fit_prior's cross-validation scores Prior-PAM against PAM on the same splits (`beats_pam`);
    a prior that lost is kept with its version but the service serves PAM and Active-PAM."""
    from dataclasses import replace

    from serving.online import prior_model
    from serving.online.service import PersonalizationService

    lost = replace(prior_env["prior"])
    lost.beats_pam = False
    assert prior_model.served(lost) is None and prior_model.served(prior_env["prior"]) is prior_env["prior"]
    monkeypatch.setattr(prior_model, "load_prior", lambda path: lost)
    svc = PersonalizationService({"feature_root": prior_env["feature_root"],
                                  "user_store": f"sqlite:///{tmp_path / 'u.db'}"})
    try:
        assert svc.info()["prior"] is None and svc.ready()["checks"]["prior"].startswith("not served")
        svc.create_user("default", "lost")
        model = svc.load_user_model("lost")
        assert model.fit.model_name == "pam" and model.strategy_name == "active-pam"
    finally:
        svc.close()
