"""pam.client against the real service (FastAPI app over real HTTP): every call of the API, its
errors as exceptions with the service's codes, API keys, sync and asyncio."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from pam.client import (
    ApiError,
    AsyncClient,
    Client,
    ConnectionFailed,
    PhotoScore,
    Ranking,
    ServiceUnavailable,
)
from tests.client.conftest import API_KEY
from tests.conftest import ROOT, free_port

HEAVY = ["numpy", "pyarrow", "sklearn", "torch", "ray", "onnxruntime", "scipy", "pandas"]


def test_import_pulls_in_no_heavy_library():
    """pam.client imports with numpy, pyarrow, scikit-learn, torch, Ray and ONNX Runtime made
    unimportable, and afterwards nothing but the standard library is loaded (httpx comes when an
    upload's multipart body is encoded)."""
    code = f"""
import importlib.abc, json, sys
BLOCK = {HEAVY!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCK:
            raise ImportError(name + ' is blocked: pam.client must not need it')
sys.meta_path.insert(0, Blocker())
import pam.client
from pam.client import Client, AsyncClient
third = sorted({{m.split('.')[0] for m in sys.modules}} - set(sys.stdlib_module_names) - {{'pam', '__main__'}})
print(json.dumps(third))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not {m for m in loaded if not m.startswith("_")}, loaded  # site's own hooks are "_..."


def test_the_whole_api_through_the_client(service):
    ids = service["ids"]
    with Client(service["url"], timeout=30) as client:
        assert client.health() == {"status": "ok"}
        assert client.ready()["ready"] is True
        assert client.info()["model_version"] == service["model_version"]
        state = client.create_user("cli-ann")
        assert state.created and state.n_ratings == 0
        assert client.create_user("cli-ann").created is False
        assert client.add_album("cli-ann", ids[:30])["album_size"] == 30

        generic = client.rerank("cli-ann", ids[:20])
        assert isinstance(generic, Ranking) and generic.personalized is False and "no ratings" in generic.fallback
        assert generic.image_ids == sorted(ids[:20], key=lambda i: -service["aes_score"][i])

        # pairs, dicts and a mapping are all ratings
        ack = client.rate("cli-ann", [(ids[0], 5), (ids[1], 1)])
        assert ack.n_ratings == 2 and not ack.replayed and len(ack.request_id) >= 16
        ack = client.rate("cli-ann", [{"image_id": ids[2], "score": 4.5}], request_id="fixed-1")
        again = client.rate("cli-ann", [{"image_id": ids[2], "score": 4.5}], request_id="fixed-1")
        assert again.replayed and again.n_ratings == ack.n_ratings == 3
        client.rate("cli-ann", {i: 1 + k % 5 for k, i in enumerate(ids[3:12])})

        ranking = client.rerank("cli-ann", ids[:30], top_k=10)
        assert ranking.personalized and ranking.n_ratings == 12 and len(ranking) == 10
        assert ranking.scores == sorted(ranking.scores, reverse=True)
        full = client.rerank("cli-ann", ids[:30])
        assert full.image_ids[:10] == ranking.image_ids

        suggestions = client.next("cli-ann", n=3)
        assert len(suggestions.image_ids) == 3 and not set(suggestions.image_ids) & set(ids[:12])
        album = client.album("cli-ann")
        assert album.image_ids[:30] == ids[:30] and len(album.ratings) == 12
        user = client.user("cli-ann")
        assert user.n_ratings == 12 and user.personalized and user.gain is not None
        taste = client.taste("cli-ann")
        assert taste["n_ratings"] == 12 and len(taste["attributes"]) == 10 and len(taste["content"]) == 10
        effects = [abs(a["effect"]) for a in taste["attributes"]]
        assert effects == sorted(effects, reverse=True)

        # scoring by id, then the same photos re-ranked from their inline features
        scored = client.score(ids[30:36], include_features=True)
        assert all(isinstance(p, PhotoScore) and p.source == "store" for p in scored)
        inline = client.rerank("cli-ann", scored)
        by_id = client.rerank("cli-ann", ids[30:36])
        assert inline.image_ids == by_id.image_ids
        assert np.allclose(inline.scores, by_id.scores, atol=1e-5)

        # uploads: real JPEG bytes, scored and kept; the same bytes get the same id
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 160, 3), np.uint8)).save(buffer, "JPEG")
        up = client.upload([("mine.jpg", buffer.getvalue())])
        assert up[0].source == "scored" and up[0].image_id.startswith("upload:")
        assert client.upload([buffer.getvalue()])[0].image_id == up[0].image_id
        assert client.thumbnail(ids[0], size=64)[:2] == b"\xff\xd8"

        # bulk: one Ranking per query in order, a failing query's ApiError in its place
        results = client.rerank_many([("cli-ann", ids[:5]), ("nobody-here", ids[:5]),
                                      {"user_id": "cli-ann", "candidates": ids[5:9], "top_k": 2}])
        assert isinstance(results[0], Ranking) and len(results[2].image_ids) == 2
        assert isinstance(results[1], ApiError) and results[1].code == "unknown_user"
        many = client.rerank_many([("cli-ann", ids[k % 40:k % 40 + 3]) for k in range(70)])  # 2 requests: 64 + 6
        assert len(many) == 70 and all(isinstance(r, Ranking) for r in many)
        assert many[69].image_ids == client.rerank("cli-ann", ids[29:32]).image_ids

        assert client.delete_user("cli-ann")
        with pytest.raises(ApiError) as gone:
            client.user("cli-ann")
        assert gone.value.status == 404 and gone.value.code == "unknown_user"


@pytest.mark.parametrize(("call", "status", "code", "words"), [
    (lambda c, ids: c.rate("cli-bad", [(ids[0], 7)]), 422, "score_out_of_range", ["7", "outside"]),
    (lambda c, ids: c.rerank("cli-bad", ["no-such-photo.jpg"]), 404, None, ["no-such-photo.jpg"]),
    (lambda c, ids: c.rerank("bad/../id", ids[:3]), 400, "invalid_user_id", ["not allowed"]),
    (lambda c, ids: c.rerank("cli-bad", ids[:3] * 400), 413, "too_many_items", ["1000"]),
    (lambda c, ids: c.add_album("cli-bad", []), 422, None, ["empty"]),
    (lambda c, ids: c.next("never-made"), 404, "unknown_user", ["never-made"]),
])
def test_errors_carry_the_service_code_and_detail(service, call, status, code, words):
    with Client(service["url"]) as client:
        client.add_album("cli-bad", service["ids"][:10])
        with pytest.raises(ApiError) as err:
            call(client, service["ids"])
    assert err.value.status == status, err.value
    if code:
        assert err.value.code == code
    assert err.value.detail and all(w in json.dumps(err.value.body) for w in words), err.value.body
    assert not isinstance(err.value, ServiceUnavailable)


def test_include_asks_for_optional_reply_parts(service):
    """The service here has no taste prior: std is None (PAM has no predictive distribution)."""
    ids = service["ids"]
    with Client(service["url"], timeout=30) as client:
        client.add_album("cli-inc", ids[:20])
        client.rate("cli-inc", {i: 1 + k % 5 for k, i in enumerate(ids[:10])})
        plain = client.rerank("cli-inc", ids[:20])
        assert plain.std is None and plain.reasons is None and "std" not in plain.raw
        ranking = client.rerank("cli-inc", ids[:20], include=["uncertainty", "reasons"])
        assert ranking.std is None and "std" in ranking.raw and len(ranking.reasons["keys"]) == 20
        assert ranking.image_ids == plain.image_ids
        many = client.rerank_many([("cli-inc", ids[:5]), {"user_id": "cli-inc", "candidates": ids[:5],
                                                          "include": []}], include="reasons")
        assert len(many[0].reasons["keys"]) == 5 and many[1].reasons is None  # a query's own include wins
        with pytest.raises(ApiError) as err:
            client.rerank("cli-inc", ids[:5], include=["everything"])
        assert err.value.status == 422 and "include" in err.value.detail
        assert client.user("cli-inc").gain_model == "pam" and client.next("cli-inc").strategy == "active-pam"


def test_api_keys_and_tenants(keyed_service):
    ids = keyed_service["ids"]
    with Client(keyed_service["url"]) as anonymous:
        with pytest.raises(ApiError) as err:
            anonymous.add_album("kim", ids[:5])
        assert err.value.status == 401
        assert anonymous.health() == {"status": "ok"}  # health needs no key
    with Client(keyed_service["url"], api_key="wrong") as wrong, pytest.raises(ApiError) as err:
        wrong.add_album("kim", ids[:5])
    assert err.value.status == 401
    with Client(keyed_service["url"], api_key=API_KEY) as a, Client(keyed_service["url"], api_key="k-other") as b:
        a.add_album("kim", ids[:5])
        a.rate("kim", [(ids[0], 5)])
        assert a.user("kim").n_ratings == 1
        with pytest.raises(ApiError) as other:  # tenant b has no user kim
            b.user("kim")
        assert other.value.code == "unknown_user"


def test_async_client_runs_the_api_concurrently(service):
    ids = service["ids"]

    async def main():
        async with AsyncClient(service["url"], timeout=30) as client:
            await client.add_album("cli-async", ids[:20])
            acks = await asyncio.gather(*(client.rate("cli-async", [(ids[k], 1 + k % 5)]) for k in range(10)))
            assert sorted(a.n_ratings for a in acks) == list(range(1, 11))  # none lost, none twice
            ranking, bulk = await asyncio.gather(client.rerank("cli-async", ids[:20], top_k=5),
                                                 client.rerank_many([("cli-async", ids[:4])] * 70))
            assert ranking.n_ratings == 10 and len(ranking.image_ids) == 5
            assert len(bulk) == 70 and bulk[0].image_ids == (await client.rerank("cli-async", ids[:4])).image_ids
            with pytest.raises(ApiError) as err:
                await client.rate("cli-async", [(ids[0], 0)])
            assert err.value.code == "score_out_of_range"
            return (await client.next("cli-async", 2)).image_ids

    assert len(asyncio.run(main())) == 2


def test_one_client_from_many_threads(service):
    ids = service["ids"]
    with Client(service["url"], max_connections=4) as client:
        client.add_album("cli-threads", ids[:40])
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                for j in range(5):
                    client.rate("cli-threads", [(ids[(k * 5 + j) % 40], 1 + j)])
                    client.rerank("cli-threads", ids[:40])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:2]
        assert client.user("cli-threads").n_ratings == 40


def test_nothing_listening_is_a_connection_error_after_the_retries():
    with Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01) as client, \
            pytest.raises(ConnectionFailed) as err:
        client.health()
    assert len(err.value.attempts) == 3 and "refused" in err.value.attempts[0].lower()


def test_bad_base_urls_are_refused_at_once():
    for bad in ([], "127.0.0.1:8000", ["http://ok", "ftp://no"]):
        with pytest.raises(ValueError):
            Client(bad)
