"""The HTTP API end to end (real HTTP through uvicorn, no Ray), on SQLite and PostgreSQL.

The same FastAPI app runs inside Serve replicas (test_serve.py covers what Serve adds: the proxy,
multiplexed models, replicas, crashes, autoscaling).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests
from PIL import Image

from personalize.features import pam_input
from personalize.pam import PAM
from serving.feature_table.store import FeatureStore
from serving.online.app import LocalRuntime, create_app
from tests.online.conftest import ThreadedServer


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request, feature_env, tmp_path_factory):
    if request.param == "sqlite":
        store_url = f"sqlite:///{tmp_path_factory.mktemp('users') / 'users.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        server.drop_all()
        store_url = server.url
    config = {"feature_root": feature_env["feature_root"], "model": feature_env["model"], "user_store": store_url,
              "photos_root": feature_env["photos_root"],
              "thumbnail_dir": str(tmp_path_factory.mktemp("thumbs")), "model_cache_size": 8}
    runtime = LocalRuntime(config)
    with ThreadedServer(create_app(runtime)) as server:
        yield Client(server.url), feature_env, runtime
    runtime.close()


class Client:
    def __init__(self, base: str):
        self.base = base
        self.http = requests.Session()

    def __call__(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.http.request(method, self.base + path, timeout=30, **kwargs)


def expect_error(response: requests.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body.get("detail"), str) and body.get("error"), body
    for word in words:
        assert word.lower() in json.dumps(body).lower(), (word, body)
    return body


def expected_scores(env, rated: dict[str, float], candidates: list[str]) -> np.ndarray:
    """What the reply shows: a PAM fit's predictions, clipped to the 1-5 rating scale."""
    store = FeatureStore.open(env["feature_root"])
    rated_ids = sorted(rated)
    rows, _ = store.lookup(rated_ids)
    X = np.hstack([pam_input(rows.attributes, rows.content), rows.aes_score.reshape(-1, 1).astype(np.float64)])
    model = PAM().fit(X, [rated[i] for i in rated_ids])
    cand, _ = store.lookup(candidates)
    Xc = np.hstack([pam_input(cand.attributes, cand.content), cand.aes_score.reshape(-1, 1).astype(np.float64)])
    return np.clip(model.predict(Xc), 1, 5)


def test_openapi_health_readiness(api):
    call, env, _ = api
    schema = call("GET", "/v1/openapi.json").json()
    for path in ("/v1/users/{user_id}/rerank", "/v1/users/{user_id}/ratings", "/v1/users/{user_id}/next",
                 "/v1/photos", "/v1/photos/score", "/v1/photos/thumbnail", "/v1/rerank", "/v1/healthz"):
        assert path in schema["paths"], path
    body = schema["paths"]["/v1/users/{user_id}/rerank"]["post"]["requestBody"]["content"]["application/json"]
    assert "candidates" in body["schema"]["properties"]
    assert call("GET", "/v1/healthz").json() == {"status": "ok"}
    ready = call("GET", "/v1/readyz").json()
    assert ready["ready"] and ready["checks"]["user_store"] == "ok"
    assert call("GET", "/v1/info").json()["model_version"] == env["model_version"]


def test_rerank_falls_back_then_personalizes_with_every_acknowledged_rating(api):
    call, env, _ = api
    album = env["ids"][:30]
    assert call("POST", "/v1/users/ann/album", json={"image_ids": album}).json()["album_size"] == 30
    candidates = env["ids"][10:40]
    generic = call("POST", "/v1/users/ann/rerank", json={"candidates": candidates}).json()
    assert generic["personalized"] is False and "no ratings" in generic["fallback"]
    by_generic = sorted(candidates, key=lambda i: -env["aes_score"][i])
    assert generic["image_ids"] == by_generic
    assert generic["scores"] == pytest.approx(sorted((env["aes_score"][i] for i in candidates), reverse=True), abs=1e-6)

    rated = {i: float(1 + (k * 7) % 5) for k, i in enumerate(album[:12])}
    ack = call("POST", "/v1/users/ann/ratings",
               json={"ratings": [{"image_id": i, "score": s} for i, s in rated.items()]}).json()
    assert ack["n_ratings"] == 12 and ack["replayed"] is False
    reply = call("POST", "/v1/users/ann/rerank", json={"candidates": candidates}).json()
    assert reply["personalized"] is True and reply["fallback"] is None
    assert reply["ratings_version"] == ack["ratings_version"]  # read-your-writes
    want = dict(zip(candidates, expected_scores(env, rated, candidates), strict=True))
    assert reply["scores"] == pytest.approx([want[i] for i in reply["image_ids"]], abs=1e-6)
    assert reply["scores"] == sorted(reply["scores"], reverse=True)

    # a re-rating replaces the score, and the very next reply uses it
    rated[album[0]] = 5.0 if rated[album[0]] != 5.0 else 1.0
    call("POST", "/v1/users/ann/ratings", json={"ratings": [{"image_id": album[0], "score": rated[album[0]]}]})
    reply = call("POST", "/v1/users/ann/rerank", json={"candidates": candidates, "top_k": 5}).json()
    want = dict(zip(candidates, expected_scores(env, rated, candidates), strict=True))
    assert len(reply["image_ids"]) == 5
    assert reply["scores"] == pytest.approx(sorted(want.values(), reverse=True)[:5], abs=1e-6)


def test_inline_features_rerank_matches_ids(api):
    call, env, _ = api
    call("POST", "/v1/users/ivy/album", json={"image_ids": env["ids"][:20]})
    call("POST", "/v1/users/ivy/ratings", json={"ratings": [{"image_id": i, "score": 1 + k % 5}
                                                            for k, i in enumerate(env["ids"][:10])]})
    scored = call("POST", "/v1/photos/score", json={"image_ids": env["ids"][20:30]}).json()["results"]
    items = [{k: r[k] for k in ("image_id", "aes_score", "attributes", "content")} for r in scored]
    inline = call("POST", "/v1/users/ivy/rerank", json={"items": items}).json()
    by_id = call("POST", "/v1/users/ivy/rerank", json={"candidates": env["ids"][20:30]}).json()
    assert inline["image_ids"] == by_id["image_ids"]
    assert inline["scores"] == pytest.approx(by_id["scores"], abs=1e-5)  # float32 features via JSON


def test_bulk_rerank_answers_each_query(api):
    call, env, _ = api
    call("POST", "/v1/users/bo/album", json={"image_ids": env["ids"][:12]})
    reply = call("POST", "/v1/rerank", json={"queries": [
        {"user_id": "bo", "candidates": env["ids"][:5]},
        {"user_id": "nobody-here", "candidates": env["ids"][:5]},
        {"user_id": "bo", "candidates": env["ids"][5:9], "top_k": 2},
    ]}).json()["results"]
    assert len(reply[0]["image_ids"]) == 5 and len(reply[2]["image_ids"]) == 2
    assert reply[1]["error"] == "unknown_user" and "nobody-here" in reply[1]["detail"]


def test_next_photos_never_repeats_a_rated_one(api):
    call, env, _ = api
    album = env["ids"][:25]
    call("POST", "/v1/users/cy/album", json={"image_ids": album})
    first = call("GET", "/v1/users/cy/next", params={"n": 4}).json()
    assert first["phase"] == "seed" and len(first["image_ids"]) == 4 and set(first["image_ids"]) <= set(album)
    again = call("GET", "/v1/users/cy/next", params={"n": 4}).json()
    assert again["image_ids"] == first["image_ids"]  # seeded by the user id: reproducible
    rated: set[str] = set()
    for step in range(8):
        batch = call("GET", "/v1/users/cy/next", params={"n": 3}).json()["image_ids"]
        assert batch and not set(batch) & rated, (step, batch)
        call("POST", "/v1/users/cy/ratings", json={"ratings": [{"image_id": i, "score": 1 + len(rated) % 5}
                                                               for i in batch]})
        rated |= set(batch)
    later = call("GET", "/v1/users/cy/next", params={"n": 1}).json()
    assert later["phase"] == "active" and later["n_ratings"] == 24
    last = call("GET", "/v1/users/cy/next", params={"n": 5}).json()
    assert len(last["image_ids"]) == 1 and not set(last["image_ids"]) & rated
    call("POST", "/v1/users/cy/ratings", json={"ratings": [{"image_id": last["image_ids"][0], "score": 3}]})
    assert call("GET", "/v1/users/cy/next", params={"n": 2}).json() | {"image_ids": []} == \
        call("GET", "/v1/users/cy/next", params={"n": 2}).json() | {"image_ids": []}
    assert call("GET", "/v1/users/cy/next").json()["phase"] == "done"


def test_album_listing_shows_ids_in_order_and_ratings_oldest_first(api):
    call, env, _ = api
    album = env["ids"][30:36]
    call("POST", "/v1/users/al/album", json={"image_ids": album[:4]})
    call("POST", "/v1/users/al/album", json={"image_ids": album[3:]})  # extends; the repeat is not added twice
    call("POST", "/v1/users/al/ratings", json={"ratings": [{"image_id": album[2], "score": 5}]})
    call("POST", "/v1/users/al/ratings", json={"ratings": [{"image_id": album[0], "score": 1}]})
    listing = call("GET", "/v1/users/al/album").json()
    assert listing["image_ids"] == album
    assert listing["ratings"] == [{"image_id": album[2], "score": 5}, {"image_id": album[0], "score": 1}]
    assert listing["ratings_version"] == call("GET", "/v1/users/al").json()["ratings_version"]
    expect_error(call("GET", "/v1/users/nobody-here/album"), 404, "nobody-here")
    expect_error(call("GET", "/v1/users/..%2Fetc/album"), 400)


def test_ratings_are_idempotent_with_a_request_id(api):
    call, env, _ = api
    call("PUT", "/v1/users/dee")
    body = {"ratings": [{"image_id": env["ids"][0], "score": 4}], "request_id": "retry-1"}
    first = call("POST", "/v1/users/dee/ratings", json=body).json()
    second = call("POST", "/v1/users/dee/ratings", json=body).json()
    assert second["replayed"] is True and second["ratings_version"] == first["ratings_version"]
    expect_error(call("POST", "/v1/users/dee/ratings",
                      json={"ratings": [{"image_id": env["ids"][0], "score": 2}], "request_id": "retry-1"}),
                 409, "retry-1")
    header = {"Idempotency-Key": "hdr-7"}
    a = call("POST", "/v1/users/dee/ratings", json={"ratings": [{"image_id": env["ids"][1], "score": 2}]},
             headers=header).json()
    b = call("POST", "/v1/users/dee/ratings", json={"ratings": [{"image_id": env["ids"][1], "score": 2}]},
             headers=header).json()
    assert (a["replayed"], b["replayed"]) == (False, True)
    assert call("GET", "/v1/users/dee").json()["n_ratings"] == 2


def test_user_state_gain_and_delete(api):
    call, env, _ = api
    created = call("PUT", "/v1/users/eve")
    assert created.status_code == 201 and created.json()["n_ratings"] == 0
    assert call("PUT", "/v1/users/eve").status_code == 200
    call("POST", "/v1/users/eve/album", json={"image_ids": env["ids"][:30]})
    call("POST", "/v1/users/eve/ratings", json={"ratings": [{"image_id": i, "score": 1 + k % 5}
                                                            for k, i in enumerate(env["ids"][:5])]})
    state = call("GET", "/v1/users/eve").json()
    assert state["n_ratings"] == 5 and state["personalized"] and state["gain"]["value"] is None
    rng = np.random.default_rng(3)
    call("POST", "/v1/users/eve/ratings", json={"ratings": [{"image_id": i, "score": int(rng.integers(1, 6))}
                                                            for i in env["ids"][5:25]]})
    state = call("GET", "/v1/users/eve").json()
    assert state["n_ratings"] == 25 and isinstance(state["gain"]["value"], float)
    assert state["model_version"] == env["model_version"] and state["album_size"] == 30

    assert call("DELETE", "/v1/users/eve").json() == {"user_id": "eve", "deleted": True}
    expect_error(call("GET", "/v1/users/eve"), 404, "eve")
    expect_error(call("DELETE", "/v1/users/eve"), 404, "eve")
    call("PUT", "/v1/users/eve")  # the same id again starts from nothing, cache or not
    state = call("GET", "/v1/users/eve").json()
    assert state["n_ratings"] == 0 and state["album_size"] == 0 and not state["personalized"]


def test_score_by_id_scores_reachable_files_online(api):
    call, env, _runtime = api
    known = call("POST", "/v1/photos/score", json={"image_ids": env["ids"][:2], "include_features": True}).json()
    assert [r["source"] for r in known["results"]] == ["store", "store"]
    assert len(known["results"][0]["aes_feat"]) == 176
    assert known["results"][0]["aes_score"] == pytest.approx(env["aes_score"][env["ids"][0]], abs=1e-6)
    new_id = env["extra"][0]
    first = call("POST", "/v1/photos/score", json={"image_ids": [new_id]}).json()["results"][0]
    assert first["source"] in ("scored", "store")  # the other engine's module may have scored it
    assert call("POST", "/v1/photos/score", json={"image_ids": [new_id]}).json()["results"][0]["source"] == "store"
    broken = call("POST", "/v1/photos/score", json={"image_ids": ["extra/broken.jpg", env["ids"][3]]}).json()
    assert broken["results"][0]["source"] == "failed" and broken["results"][0]["error"]
    assert broken["results"][1]["source"] == "store"
    body = expect_error(call("POST", "/v1/photos/score", json={"image_ids": ["nope/x.jpg", env["ids"][0]]}),
                        404, "nope/x.jpg")
    assert body["unknown"] == ["nope/x.jpg"]
    # a scored file can join an album without a batch run
    assert call("POST", "/v1/users/fin/album", json={"image_ids": [env["extra"][1], env["ids"][0]]}).json()[
        "album_size"] == 2


def _jpeg(color, size=(300, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


def test_upload_scores_keeps_and_serves_thumbnails(api):
    call, _env, _ = api
    files = [("files", ("red.jpg", _jpeg((200, 30, 30)), "image/jpeg")),
             ("files", ("bad.jpg", b"GIF89a-not-really", "image/jpeg"))]
    reply = call("POST", "/v1/photos", files=files).json()
    good, bad = reply["results"]
    assert good["image_id"].startswith("upload:") and good["source"] in ("scored", "store")
    assert bad["source"] == "failed" and "bad.jpg" in bad["error"]
    again = call("POST", "/v1/photos", files=files[:1]).json()["results"][0]
    assert again["source"] == "store" and again["aes_score"] == pytest.approx(good["aes_score"])
    named = call("POST", "/v1/photos", files=[("files", ("g.jpg", _jpeg((10, 200, 10)), "image/jpeg"))],
                 data={"image_ids": "mine/green.jpg"}).json()["results"][0]
    assert named["image_id"] == "mine/green.jpg"
    call("POST", "/v1/users/gus/album", json={"image_ids": [good["image_id"], "mine/green.jpg"]})
    call("POST", "/v1/users/gus/ratings", json={"ratings": [{"image_id": "mine/green.jpg", "score": 5}]})
    ranked = call("POST", "/v1/users/gus/rerank", json={"candidates": [good["image_id"], "mine/green.jpg"]}).json()
    assert ranked["personalized"]
    thumb = call("GET", "/v1/photos/thumbnail", params={"image_id": good["image_id"], "size": 128})
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 128
    expect_error(call("POST", "/v1/photos", files=files[1:]), 422, "bad.jpg")


def test_thumbnails_of_files_and_path_escapes(api):
    call, env, _ = api
    ok = call("GET", "/v1/photos/thumbnail", params={"image_id": env["ids"][0]})
    assert ok.status_code == 200 and Image.open(io.BytesIO(ok.content)).size == (256, 192)
    for escape in ("../features/CURRENT", "/etc/passwd", "album/../../features/CURRENT", "album\\..\\x"):
        expect_error(call("GET", "/v1/photos/thumbnail", params={"image_id": escape}), 404, "no file")
    expect_error(call("GET", "/v1/photos/thumbnail", params={"image_id": env["ids"][0], "size": 99}), 422, "size")


# ---------------------------------------------------------------- bad input: each case names the problem
BAD_RATINGS = [
    ({"ratings": [{"image_id": "ID0", "score": 6}]}, 422, ["outside [1, 5]", "6"]),
    ({"ratings": [{"image_id": "ID0", "score": 0.5}]}, 422, ["outside"]),
    ({"ratings": [{"image_id": "ID0", "score": "5"}]}, 422, ["not a number"]),
    ({"ratings": [{"image_id": "ID0", "score": True}]}, 422, ["not a number"]),
    ({"ratings": [{"image_id": "ID0", "score": None}]}, 422, ["not a number"]),
    ({"ratings": [{"image_id": "ID0"}]}, 422, ["image_id and score"]),
    ({"ratings": []}, 422, ["non-empty"]),
    ({"ratings": [{"image_id": "ghost.jpg", "score": 3}]}, 404, ["ghost.jpg"]),
    ({"ratings": [{"image_id": "ID0", "score": 3}], "request_id": "has space"}, 422, ["request id"]),
    ({"ratings": [{"image_id": "ID0", "score": 3}], "extra": 1}, 422, ["ratings"]),
    ({"ratings": [{"image_id": "ID0", "score": 3}] * 1001}, 413, ["1000"]),
]


@pytest.mark.parametrize(("body", "status", "words"), BAD_RATINGS)
def test_bad_ratings(api, body, status, words):
    call, env, _ = api
    call("PUT", "/v1/users/hal")
    text = json.dumps(body).replace("ID0", env["ids"][0])
    expect_error(call("POST", "/v1/users/hal/ratings", data=text, headers={"Content-Type": "application/json"}),
                 status, *words)
    assert call("GET", "/v1/users/hal").json()["n_ratings"] == 0  # nothing half-written


BAD_RERANKS = [
    ({"candidates": ["ID0", "ghost-1.jpg", "ghost-2.jpg"]}, 404, ["ghost-1.jpg", "ghost-2.jpg"]),
    ({"candidates": ["x"] * 1001}, 413, ["1001", "1000"]),
    ({"candidates": []}, 422, ["empty"]),
    ({"candidates": [1, 2]}, 422, ["invalid image ids"]),
    ({"candidates": ["ID0"], "items": []}, 422, ["exactly one"]),
    ({"candidatez": ["ID0"]}, 422, ["unknown fields", "candidatez"]),
    ({"candidates": ["ID0"], "top_k": 0}, 422, ["top_k"]),
    ({"items": [{"image_id": "a", "aes_score": 3, "attributes": [0] * 9, "content": [0] * 10}]}, 422, ["attributes"]),
    ({"items": [{"image_id": "a", "aes_score": "x", "attributes": [0] * 10, "content": [0] * 10}]}, 422, ["numbers"]),
    ([1, 2, 3], 422, ["JSON object"]),
]


@pytest.mark.parametrize(("body", "status", "words"), BAD_RERANKS)
def test_bad_rerank(api, body, status, words):
    call, env, _ = api
    call("POST", "/v1/users/ike/album", json={"image_ids": env["ids"][:3]})
    text = json.dumps(body).replace("ID0", env["ids"][0])
    expect_error(call("POST", "/v1/users/ike/rerank", data=text), status, *words)


@pytest.mark.parametrize(("path", "status", "words"), [
    ("/v1/users/..%2F..%2Fetc/rerank", 400, ["not allowed", "../../etc"]),
    ("/v1/users/a%2Fb/rerank", 400, ["a/b"]),
    ("/v1/users/x'%3B%20DROP%20TABLE%20pam_users%3B--/rerank", 400, ["drop table"]),
    ("/v1/users/a..b/rerank", 400, ["'..'"]),
    ("/v1/users/" + "u" * 129 + "/rerank", 400, ["1-128"]),
    ("/v1/users/%00/rerank", 400, ["not allowed"]),
    ("/v1/users/nobody/rerank", 404, ["unknown user", "nobody"]),
    ("/v1/users/ok-user/unknown-suffix", 404, ["not an endpoint"]),
])
def test_bad_user_ids(api, path, status, words):
    call, env, _ = api
    expect_error(call("POST", path, json={"candidates": [env["ids"][0]]}), status, *words)


def test_malformed_and_oversized_bodies(api):
    call, _env, _ = api
    call("PUT", "/v1/users/jo")
    expect_error(call("POST", "/v1/users/jo/ratings", data=b'{"ratings": [', headers={"Content-Type": "application/json"}),
                 400, "not valid JSON")
    expect_error(call("POST", "/v1/users/jo/rerank", data=b"\xff\xfe garbage"), 400, "not valid JSON")
    expect_error(call("POST", "/v1/users/jo/rerank", data=b""), 400, "empty")
    big = b'{"candidates": ["' + b"a" * (9 * 1024 * 1024) + b'"]}'
    expect_error(call("POST", "/v1/users/jo/rerank", data=big), 413, "at most")
    expect_error(call("GET", "/v1/users/jo/next", params={"n": 0}), 422, "n")
    expect_error(call("GET", "/v1/users/jo/next", params={"n": "lots"}), 422, "n")
    expect_error(call("PATCH", "/v1/users/jo"), 405, "not an endpoint")
    expect_error(call("GET", "/v2/anything"), 404, "not an endpoint")


def test_api_keys_separate_tenants(feature_env, tmp_path):
    config = {"feature_root": feature_env["feature_root"], "user_store": f"sqlite:///{tmp_path / 'u.db'}",
              "api_keys": {"key-alpha": "alpha", "key-beta": "beta"}}
    runtime = LocalRuntime(config)
    with ThreadedServer(create_app(runtime)) as server:
        call = Client(server.url)
        expect_error(call("GET", "/v1/users/sam"), 401, "API key")
        expect_error(call("GET", "/v1/users/sam", headers={"X-API-Key": "wrong"}), 401, "not valid")
        alpha, beta = {"X-API-Key": "key-alpha"}, {"Authorization": "Bearer key-beta"}
        call("POST", "/v1/users/sam/album", json={"image_ids": feature_env["ids"][:3]}, headers=alpha)
        assert call("GET", "/v1/users/sam", headers=alpha).json()["tenant"] == "alpha"
        expect_error(call("GET", "/v1/users/sam", headers=beta), 404, "sam")
        assert call("GET", "/v1/healthz").status_code == 200  # probes need no key
    runtime.close()


def test_curation_page_is_served_under_ui(api):
    from serving.online.app import WEB_DIR

    if not (WEB_DIR / "index.html").is_file():
        pytest.skip("serving/online/web/ has no index.html in this checkout")
    call, _, _ = api
    page = call("GET", "/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == (WEB_DIR / "index.html").read_text()
