"""The demo's HTTP sessions against the service's real FastAPI app (in-process runtime, served by
uvicorn on 127.0.0.1; the Ray Serve path runs in the demo smoke test): ratings go in one by one,
the improvement is measured on the photos not rated yet, exactly as PAM predicts."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pam.client import Client
from pam.demo.panel import SimulatedUser
from pam.demo.sessions import mean_curves, run_session, run_sessions
from personalize.features import AES_FEAT_DIM, N_ATTRIBUTES, N_CONTENT, pam_input
from personalize.metrics import spearman_rho
from personalize.pam import PAM
from tests.conftest import free_port

N = 30


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    import uvicorn

    from serving import feature_table as ft
    from serving.online.app import LocalRuntime, create_app

    tmp = tmp_path_factory.mktemp("sessions")
    rng = np.random.default_rng(5)
    ids = [f"s/{k:02d}.jpg" for k in range(N)]
    features = {"aes_score": rng.uniform(1.5, 4.5, N), "aes_feat": rng.gamma(2.0, 5.0, (N, AES_FEAT_DIM)),
                "attributes": np.tanh(rng.normal(0, 0.7, (N, N_ATTRIBUTES))),
                "content": rng.dirichlet(np.ones(N_CONTENT), N)}
    root = tmp / "features"
    ft.FeatureTable(root).write_version(ft.feature_table(ids, features, "sessions-test-0"))
    runtime = LocalRuntime({"feature_root": str(root), "user_store": f"sqlite:///{tmp / 'users.db'}"})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(runtime), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    # a user who likes the first attribute and dislikes content cluster 0, on top of the generic score
    stored = {k: np.asarray(v, np.float32).astype(np.float64) for k, v in features.items()}  # as the store holds them
    x = pam_input(stored["attributes"], stored["content"])
    taste = features["aes_score"] + 1.2 * x[:, 0] - 2.0 * x[:, N_ATTRIBUTES]
    scores = np.clip(np.rint(taste), 1, 5)
    X = np.hstack([x, stored["aes_score"][:, None]])
    try:
        yield {"url": f"http://127.0.0.1:{port}", "user": SimulatedUser("W0001", ids, scores), "X": X,
               "ids": ids, "runtime": runtime}
    finally:
        server.should_exit = True
        thread.join(10)
        runtime.close()


def test_an_active_session_rates_what_the_service_suggests(service):
    client = Client(service["url"])
    result = run_session(client, service["user"], "active", budget=14, seed=0)
    client.close()
    assert result.n_ratings == list(range(1, 15))
    assert len(set(result.rated)) == 14
    assert result.phases[:10] == ["seed"] * 10 and set(result.phases[10:]) == {"active"}
    assert np.isfinite(result.improvement[-1]) and np.isfinite(result.generic_rho_album)
    # the last step, recomputed: PAM on the 14 ratings, rho on the 16 photos not rated
    index = {i: k for k, i in enumerate(service["ids"])}
    y = service["user"].scores
    rated = [index[i] for i in result.rated]
    unrated = [k for k in range(N) if k not in set(rated)]
    pred = PAM().fit(service["X"][rated], y[rated]).predict(service["X"])
    expected = spearman_rho(y[unrated], pred[unrated]) - spearman_rho(y[unrated], service["X"][unrated, -1])
    assert result.improvement[-1] == pytest.approx(expected, abs=1e-6)
    by_id = dict(zip(result.final_ranking, result.final_scores, strict=True))
    assert np.allclose([by_id[i] for i in service["ids"]], pred, atol=1e-5)


def test_random_sessions_are_seeded_and_both_strategies_make_curves(service):
    results, latency = run_sessions(service["url"], [service["user"]], budget=6, seed=3)
    assert [r.strategy for r in results] == ["active", "random"]
    assert latency["requests"] == (3 + 3 * 6) + (3 + 2 * 6) and latency["p50_ms"] > 0
    again, _ = run_sessions(service["url"], [service["user"]], budget=6, seed=3)
    assert again[1].rated == results[1].rated  # the random baseline is reproducible
    assert again[0].rated == results[0].rated  # Active-PAM's seed derives from the user id
    curves = mean_curves(results)
    assert set(curves) == {"active", "random"} and curves["random"]["n_ratings"] == list(range(1, 7))
