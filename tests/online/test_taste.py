"""GET /v1/users/{user_id}/taste and re-rank reasons, over real HTTP (uvicorn, no Ray).

The photos are the demo's sample album (crops of the photographs shipped in the scikit-image and
scikit-learn wheels). Their feature rows: the generic score and content of the tiny contract
graph, and as attributes the pixel measures (export.pixel_attributes) that the demo's attribute
head is trained to predict; the tiny graph's own attribute outputs are random mixtures of a few
pixel statistics (correlations up to 0.9), which no model can tell apart from 20 ratings. The
feature-store manifest names two content classes.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from personalize.explain import ATTRIBUTE_WORDS, FEATURE_KEYS
from serving.online.app import LocalRuntime, create_app
from tests.online.conftest import ThreadedServer

N_PHOTOS = 120
N_USERS = 20
N_RATED = 20
MIN_HITS = 18
# a content class is planted only where the album shows it: its probability's s.d. over the album at
# least MIN_CLASS_SD. PAM's RBF kernel works on raw probabilities, so a class that tops out at 0.26
# (s.d. 0.06; most photos 0.005) barely moves the kernel: with all 120 photos rated, a planted -0.5
# per s.d. on such a class comes back at -0.04 to -0.08 (docs/personalize.md, "What PAM can learn")
MIN_CLASS_SD = 0.1
NAMES = [["tabby", "tiger cat", "Egyptian cat"], ["daisy"], *([[]] * 8)]


def _demo_feature_root(tmp: Path, model_path: Path) -> dict:
    from export.pixel_attributes import pixel_attributes_batch
    from export.preprocess import decode_file
    from pam.demo.album import sample_album
    from serving import feature_table as ft
    from serving.scoring.backends import OnnxRuntimeBackend

    album = sample_album(tmp / "album", N_PHOTOS, seed=0)
    ids = list(album.image_ids)
    backend = OnnxRuntimeBackend(model_path)
    images = np.stack([decode_file(album.path(i)) for i in ids])
    features = backend.score(images)
    features["attributes"] = pixel_attributes_batch(images).astype(np.float32)
    root = tmp / "features"
    ft.FeatureTable(str(root)).write_version(ft.feature_table(ids, features, backend.model_version),
                                             extra={"content_names": NAMES})
    return {"root": str(root), "ids": ids, "features": features, "model_version": backend.model_version}


@pytest.fixture(scope="module")
def taste_api(tmp_path_factory, tiny_onnx_model):
    tmp = tmp_path_factory.mktemp("taste")
    env = _demo_feature_root(tmp, tiny_onnx_model)
    runtime = LocalRuntime({"feature_root": env["root"], "user_store": f"sqlite:///{tmp / 'users.db'}",
                            "model_cache_size": 64})
    with ThreadedServer(create_app(runtime)) as server:
        session = requests.Session()

        def call(method, path, **kw):
            return session.request(method, server.url + path, timeout=60, **kw)

        yield call, env
    runtime.close()


def _ok(response) -> dict:
    assert response.status_code in (200, 201), (response.status_code, response.text)
    return response.json()


def test_planted_tastes_come_back_in_the_top_three_with_their_signs(taste_api):
    """20 seeded users, each with one attribute at +0.5 score per s.d. and one content class at
    -0.5, rate 20 photos (the service's suggestions); the taste endpoint must put the attribute in
    the top three attributes and the class in the top three content classes, signs right, for at
    least MIN_HITS of the 20 (chance: about 1 in 50 per user). Only features that vary over the
    album are planted (a class the trunk never predicts has no taste to find)."""
    call, env = taste_api
    f = env["features"]
    x = np.hstack([f["attributes"], f["content"]]).astype(np.float64)
    sd = x.std(0)
    attrs = [j for j in range(10) if sd[j] > 0.1]
    classes = [k for k in range(10) if sd[10 + k] >= MIN_CLASS_SD]
    assert len(attrs) >= 5 and len(classes) >= 3, (sd, "the album's features barely vary")
    by_id = {i: r for r, i in enumerate(env["ids"])}
    hits, misses = 0, []
    for u in range(N_USERS):
        rng = np.random.default_rng(1000 + u)
        ja, jc = int(rng.choice(attrs)), int(rng.choice(classes))
        z = (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)
        truth = np.clip(f["aes_score"].astype(np.float64) + 0.5 * z[:, ja] - 0.5 * z[:, 10 + jc]
                        + rng.normal(0, 0.25, len(x)), 1.0, 5.0)
        user = f"planted-{u}"
        _ok(call("POST", f"/v1/users/{user}/album", json={"image_ids": env["ids"]}))
        for _ in range(N_RATED):
            (photo,) = _ok(call("GET", f"/v1/users/{user}/next", params={"n": 1}))["image_ids"]
            score = round(float(truth[by_id[photo]]), 2)
            _ok(call("POST", f"/v1/users/{user}/ratings", json={"ratings": [{"image_id": photo, "score": score}]}))
        body = _ok(call("GET", f"/v1/users/{user}/taste"))
        assert body["n_ratings"] == N_RATED and body["model_version"] == env["model_version"]
        top_a = {r["key"]: r["effect"] for r in body["attributes"][:3]}
        top_c = {r["key"]: r["effect"] for r in body["content"][:3]}
        ok = top_a.get(FEATURE_KEYS[ja], 0) > 0 and top_c.get(str(jc), 0) < 0
        hits += ok
        if not ok:
            misses.append((FEATURE_KEYS[ja], jc, list(top_a), list(top_c)))
    assert hits >= MIN_HITS, (hits, misses)


def test_taste_reply_shape_names_and_sorting(taste_api):
    call, env = taste_api
    user = "shape-user"
    assert call("GET", f"/v1/users/{user}/taste").status_code == 404  # unknown until an album
    _ok(call("POST", f"/v1/users/{user}/album", json={"image_ids": env["ids"][:60]}))
    empty = _ok(call("GET", f"/v1/users/{user}/taste"))
    assert empty["n_ratings"] == 0
    assert all(r["effect"] == 0 and r["std"] is None and not r["supported"] for r in empty["attributes"])
    ratings = [{"image_id": i, "score": float(1 + (k * 7) % 5)} for k, i in enumerate(env["ids"][:15])]
    _ok(call("POST", f"/v1/users/{user}/ratings", json={"ratings": ratings}))
    body = _ok(call("GET", f"/v1/users/{user}/taste"))
    assert set(body) == {"user_id", "n_ratings", "model_version", "attributes", "content"}
    assert body["user_id"] == user and body["n_ratings"] == 15
    for block, keys in (("attributes", set(FEATURE_KEYS[:10])), ("content", {str(k) for k in range(10)})):
        rows = body[block]
        assert {r["key"] for r in rows} == keys
        assert all(set(r) == {"key", "name", "effect", "std", "supported"} for r in rows)
        effects = [abs(r["effect"]) for r in rows]
        assert effects == sorted(effects, reverse=True)
        assert all(r["std"] is not None and r["std"] >= 0 for r in rows)
    names = {r["key"]: r["name"] for r in body["attributes"] + body["content"]}
    assert names["VC"] == ATTRIBUTE_WORDS["VC"] == "vivid colour" and names["RoT"] == "rule of thirds"
    assert names["0"] == "tabby, tiger cat, Egyptian cat" and names["1"] == "daisy"
    assert names["2"] == "content class 2"  # a class without names is numbered


def test_taste_rejects_bad_requests_and_survives_concurrent_ratings(taste_api):
    call, env = taste_api
    for bad in ("..", "a" * 200, "bad%20id", "-lead"):
        r = call("GET", f"/v1/users/{bad}/taste")
        assert r.status_code in (400, 404) and r.json()["detail"], (bad, r.text)
    r = call("POST", "/v1/users/planted-0/taste", json={})
    assert r.status_code in (404, 405) and "not an endpoint" in r.json()["detail"]
    user = "busy-user"
    _ok(call("POST", f"/v1/users/{user}/album", json={"image_ids": env["ids"]}))

    def rate(k):
        return call("POST", f"/v1/users/{user}/ratings",
                    json={"ratings": [{"image_id": env["ids"][k], "score": float(1 + k % 5)}]}).status_code

    def taste(_):
        r = call("GET", f"/v1/users/{user}/taste")
        return r.status_code, r.json()["n_ratings"]

    with ThreadPoolExecutor(8) as pool:
        rated = list(pool.map(rate, range(30)))
        tastes = list(pool.map(taste, range(16)))
    assert set(rated) == {200} and {s for s, _ in tastes} == {200}
    final = _ok(call("GET", f"/v1/users/{user}/taste"))
    assert final["n_ratings"] == 30  # read-your-writes: every acknowledged rating is in it


def test_rerank_reasons_are_opt_in_single_and_bulk(taste_api):
    call, env = taste_api
    user = "reasons-user"
    _ok(call("POST", f"/v1/users/{user}/album", json={"image_ids": env["ids"]}))
    cands = env["ids"][:50]
    plain = _ok(call("POST", f"/v1/users/{user}/rerank", json={"candidates": cands}))
    assert "reasons" not in plain
    cold = _ok(call("POST", f"/v1/users/{user}/rerank", json={"candidates": cands, "include": ["reasons"]}))
    assert cold["reasons"]["keys"] == [[]] * 50  # no ratings: nothing personal to explain
    ratings = [{"image_id": i, "score": float(1 + (k * 3) % 5)} for k, i in enumerate(env["ids"][60:90])]
    _ok(call("POST", f"/v1/users/{user}/ratings", json={"ratings": ratings}))
    reply = _ok(call("POST", f"/v1/users/{user}/rerank", json={"candidates": cands, "include": ["reasons"],
                                                               "top_k": 20}))
    reasons = reply["reasons"]
    assert len(reasons["keys"]) == len(reasons["contributions"]) == len(reply["image_ids"]) == 20
    assert all(len(k) == 3 and set(k) <= set(FEATURE_KEYS) for k in reasons["keys"])
    assert all(abs(c[0]) >= abs(c[1]) >= abs(c[2]) for c in reasons["contributions"])
    assert reasons["names"]["VC"] == "vivid colour" and reasons["names"]["0"].startswith("tabby")
    assert reply["scores"] == plain["scores"][:0] + reply["scores"]  # same reply otherwise
    f = env["features"]
    rows = [env["ids"].index(i) for i in cands[:5]]
    items = [{"image_id": f"inline-{r}", "aes_score": float(f["aes_score"][r]),
              "attributes": f["attributes"][r].tolist(), "content": f["content"][r].tolist()} for r in rows]
    inline = _ok(call("POST", f"/v1/users/{user}/rerank", json={"items": items, "include": ["reasons"]}))
    by_id = dict(zip(reply["image_ids"], reasons["keys"], strict=True))
    for image_id, keys in zip(inline["image_ids"], inline["reasons"]["keys"], strict=True):
        original = cands[rows.index(int(image_id.split("-")[1]))]
        if original in by_id:
            assert keys == by_id[original]  # the same features explain the same photo inline
    bulk = _ok(call("POST", "/v1/rerank", json={"queries": [
        {"user_id": user, "candidates": cands[:10], "include": ["reasons"]},
        {"user_id": user, "candidates": cands[:10]},
        {"user_id": "nobody-here", "candidates": cands[:10], "include": ["reasons"]}]}))["results"]
    assert len(bulk[0]["reasons"]["keys"]) == 10 and "reasons" not in bulk[1] and bulk[2]["error"] == "unknown_user"
    for bad in (["why"], "reasons", [1], ["reasons"] * 5):
        r = call("POST", f"/v1/users/{user}/rerank", json={"candidates": cands, "include": bad})
        assert r.status_code == 422 and "include" in r.json()["detail"], (bad, r.text)
    r = call("POST", "/v1/rerank", json={"queries": [{"user_id": user, "candidates": cands, "include": ["x"]}]})
    assert r.status_code == 422 and "include" in r.json()["detail"]


def test_openapi_documents_taste_and_include(taste_api):
    call, _ = taste_api
    schema = call("GET", "/v1/openapi.json").json()
    get = schema["paths"]["/v1/users/{user_id}/taste"]["get"]
    ref = get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert set(schema["components"]["schemas"][ref]["properties"]) == {
        "user_id", "n_ratings", "model_version", "attributes", "content"}
    body = json.dumps(schema["paths"]["/v1/users/{user_id}/rerank"]["post"]["requestBody"])
    assert '"include"' in body and "reasons" in body
    assert "include" in json.dumps(schema["paths"]["/v1/rerank"]["post"]["requestBody"])
