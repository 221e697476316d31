"""pam index / pam search end to end: a tantivy index of real photo names (../shared/photos) beside a
feature table, queries re-ranked per user by the real service over HTTP, and the engine's order
within the deadline when the service is slow or stops mid-run."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from pam.client import Client
from pam.search.personal import AsyncPersonalSearch, PersonalSearch
from personalize.features import AES_FEAT_DIM, N_ATTRIBUTES, N_CONTENT
from serving.online.app import LocalRuntime, create_app
from serving.search.index import describe, index_dir, open_for_feature_table
from tests.client.servers import FlakyProxy, TrickleServer
from tests.conftest import ROOT
from tests.online.conftest import ThreadedServer

VERSION = "search-test-0"
USER = "searcher"


def test_text_of_a_photo_comes_from_its_names():
    assert describe("n02099601_golden_retriever.JPEG") == ("golden retriever", ["n02099601"])
    assert describe("holiday 2024/Beach_Sunset-2.jpg") == ("holiday 2024 Beach Sunset 2", [])
    assert describe("trips/IMG_2041.HEIC") == ("trips IMG 2041", [])
    assert describe("nested\\winterSnow.png") == ("nested winter Snow", [])
    assert describe("upload:3f2a")[0] == "upload 3f2a"


def _feature_table(root, ids, seed=3):
    from serving import feature_table as ft

    rng = np.random.default_rng(seed)
    n = len(ids)
    features = {"aes_score": rng.uniform(1.5, 4.5, n), "aes_feat": rng.gamma(2.0, 5.0, (n, AES_FEAT_DIM)),
                "attributes": np.tanh(rng.normal(0, 0.6, (n, N_ATTRIBUTES))),
                "content": rng.dirichlet(np.ones(N_CONTENT), n)}
    ft.FeatureTable(str(root)).write_version(ft.feature_table(ids, features, VERSION))
    return features


@pytest.fixture(scope="module")
def photos_env(tmp_path_factory, shared_photos):
    """A feature table of the 1,000 shared photos (ids = their file names; the features are
    generated: this test is about the search, the service re-ranks whatever the table holds),
    its index built by `pam index`, and the service over the same table."""
    tmp = tmp_path_factory.mktemp("search")
    ids = sorted(p.name for p in shared_photos.iterdir() if p.suffix == ".JPEG")
    features = _feature_table(tmp / "features", ids)
    out = subprocess.run([sys.executable, "-m", "pam.cli", "index", "--features", str(tmp / "features"), "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    runtime = LocalRuntime({"feature_root": str(tmp / "features"), "user_store": f"sqlite:///{tmp / 'u.db'}"})
    with ThreadedServer(create_app(runtime)) as server:
        yield {"root": str(tmp / "features"), "ids": ids, "url": server.url, "server": server, "summary": summary,
               "aes": dict(zip(ids, features["aes_score"].tolist(), strict=True))}
    runtime.close()


@pytest.mark.photos
def test_pam_index_stores_the_index_beside_the_feature_table(photos_env):
    from serving import feature_table as ft

    summary = photos_env["summary"]
    assert summary["documents"] == len(photos_env["ids"]) >= 1000
    assert summary["index"] == str(index_dir(photos_env["root"], VERSION))
    assert ft.FeatureTable(photos_env["root"]).versions() == [VERSION]  # the table's readers skip _search
    index = open_for_feature_table(photos_env["root"])
    sharks = [h.image_id for h in index.search("shark", 10)]
    assert set(sharks) == {i for i in photos_env["ids"] if "shark" in i.lower()} and len(sharks) == 2
    retrievers = [h.image_id for h in index.search("retrievers", 10)]  # stemmed: the plural finds them
    assert retrievers and all("retriever" in i for i in retrievers)
    assert [h.image_id for h in index.search("keyword:n01440764", 5)] == ["n01440764_tench.JPEG"]
    assert [h.image_id for h in index.search('"golden retriever"', 5)] == ["n02099601_golden_retriever.JPEG"]
    hits = index.search("dog terrier", 50)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert index.search("", 5) == [] and index.search("zzzqqq", 5) == []
    assert index.search('"unbalanced ( AND', 5) == []  # what the parser cannot read is dropped


@pytest.mark.photos
def test_pam_search_reranks_the_engine_window_for_the_user(photos_env):
    url, ids = photos_env["url"], photos_env["ids"]
    index = open_for_feature_table(photos_env["root"])
    window = [h.image_id for h in index.search("dog terrier hound", 40)]
    with Client(url) as client:
        client.add_album(USER, ids)
        # this user loves what the generic model rates low among the terriers
        client.rate(USER, [(i, 5.0 if photos_env["aes"][i] < 3 else 1.0) for i in window[:20]])
        expected = client.rerank(USER, window)
    out = subprocess.run([sys.executable, "-m", "pam.cli", "search", "dog terrier hound", "--user", USER,
                          "--url", url, "--features", photos_env["root"], "--window", "40", "--show", "40",
                          "--deadline-ms", "5000", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    assert reply["personalized"] is True and reply["reason"] is None and reply["n_ratings"] == 20
    assert [e["image_id"] for e in reply["engine"]] == window
    assert [p["image_id"] for p in reply["personal"]] == expected.image_ids == reply["results"]
    assert [p["score"] for p in reply["personal"]] == pytest.approx(expected.scores, abs=1e-4)
    assert reply["results"] != window  # the ratings moved the order
    # the human form shows both orders side by side
    text = subprocess.run([sys.executable, "-m", "pam.cli", "search", "dog terrier hound", "--user", USER,
                           "--url", url, "--features", photos_env["root"], "--deadline-ms", "5000"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120).stdout
    assert "engine (BM25)" in text and "personal (predicted score)" in text and "re-ranked on 20 ratings" in text


@pytest.mark.photos
def test_search_says_why_it_kept_the_engine_order(photos_env):
    index = open_for_feature_table(photos_env["root"])
    engine = [h.image_id for h in index.search("snake", 30)]
    with Client(photos_env["url"]) as client:
        client.add_album("no-ratings-yet", photos_env["ids"][:50])
    with PersonalSearch(index, photos_env["url"], deadline_s=5.0, window=30) as search:
        cases = {"nobody-here": "unknown_user", "no-ratings-yet": "no ratings", "bad/../user": "invalid_user_id",
                 None: "no user"}
        for user, words in cases.items():
            result = search.search("snake", user)
            assert result.personalized is False and words in result.reason, (user, result.reason)
            assert result.image_ids == engine
        assert search.search("zzzqqq", USER).reason == "no results"
    with PersonalSearch(index, None) as offline:
        assert offline.search("snake", USER).image_ids[:30] == engine


@pytest.mark.photos
def test_a_slow_service_costs_search_only_its_deadline(photos_env):
    index = open_for_feature_table(photos_env["root"])
    with FlakyProxy(photos_env["url"], fail_first=1000, stall_s=2.0) as slow, \
            PersonalSearch(index, slow.url, deadline_s=0.05) as search:
        start = time.monotonic()
        result = search.search("dog", USER)
        took = time.monotonic() - start
    assert result.personalized is False and "within 50 ms" in result.reason
    assert result.image_ids == [h.image_id for h in index.search("dog", 200)]
    assert took < 1.0  # the service would have taken 2 s


def test_a_service_that_trickles_its_reply_costs_search_only_its_deadline(photos_env):
    """Every byte of the reply comes soon after the one before (no read waits long), the whole
    reply takes 1.6 s: the deadline bounds the call, not each read; threads and asyncio."""
    index = open_for_feature_table(photos_env["root"])
    with TrickleServer() as slow:
        with PersonalSearch(index, slow.url, deadline_s=0.1) as search:
            start = time.monotonic()
            result = search.search("dog", USER)
            took = time.monotonic() - start

        async def on_asyncio():
            async with AsyncPersonalSearch(index, slow.url, deadline_s=0.1) as search:
                began = time.monotonic()
                return await search.search("dog", USER), time.monotonic() - began

        async_result, async_took = asyncio.run(on_asyncio())
    for got, seconds in ((result, took), (async_result, async_took)):
        assert got.personalized is False and "within 100 ms" in got.reason, got.reason
        assert got.image_ids == [h.image_id for h in index.search("dog", 200)]
        assert seconds < 0.5


@pytest.mark.photos
def test_the_asyncio_search_answers_as_the_threaded_one_and_keeps_its_deadline(photos_env):
    """AsyncPersonalSearch: the same orders and reasons as PersonalSearch against the real service,
    many queries at once on one loop, and a stalled service costs each only its deadline."""
    index = open_for_feature_table(photos_env["root"])
    queries = [("snake", USER), ("dog", USER), ("snake", "nobody-here"), ("snake", None), ("zzzqqq", USER)]
    with PersonalSearch(index, photos_env["url"], deadline_s=5.0, window=30) as threaded:
        expected = [threaded.search(q, u) for q, u in queries]

    async def run():
        async with AsyncPersonalSearch(index, photos_env["url"], deadline_s=5.0, window=30) as search:
            together = await asyncio.gather(*(search.search(q, u) for q, u in queries * 4))
        async with AsyncPersonalSearch(index, slow.url, deadline_s=0.05) as search:
            start = time.monotonic()
            stalled = await asyncio.gather(*(search.search("dog", USER) for _ in range(8)))
            return together, stalled, time.monotonic() - start

    with FlakyProxy(photos_env["url"], fail_first=1000, stall_s=2.0) as slow:
        together, stalled, took = asyncio.run(run())
    assert expected[0].personalized and expected[1].personalized
    for got, want in zip(together, expected * 4, strict=True):
        assert (got.image_ids, got.personalized, got.reason) == (want.image_ids, want.personalized, want.reason)
    assert all(r.personalized is False and "within 50 ms" in r.reason for r in stalled)
    assert stalled[0].image_ids == [h.image_id for h in index.search("dog", 200)]
    assert took < 1.0  # eight queries at once, each cut at 50 ms; the service would take 2 s


SERVICE_SCRIPT = """
import sys, uvicorn
from serving.online.app import LocalRuntime, create_app
runtime = LocalRuntime({"feature_root": sys.argv[1], "user_store": "sqlite:///" + sys.argv[2]})
uvicorn.run(create_app(runtime), host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""


def _wait_until_up(client, proc, timeout=180):
    from pam.client import ConnectionFailed

    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.health()
        except ConnectionFailed:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_the_service_is_killed_mid_run_and_search_keeps_answering(tmp_path):
    """Queries stream while the service's process is killed (SIGKILL): before, personalized;
    after, the engine's order with the reason; no query fails."""
    from serving.search.index import build_for_feature_table
    from tests.conftest import free_port

    ids = [f"album{k % 7}/photo {k} {['red', 'blue', 'green'][k % 3]} car.jpg" for k in range(300)]
    _feature_table(tmp_path / "features", ids)
    index = build_for_feature_table(str(tmp_path / "features"))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVICE_SCRIPT, str(tmp_path / "features"),
                             str(tmp_path / "u.db"), str(port)], cwd=ROOT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        with Client(url) as client:
            _wait_until_up(client, proc)
            client.add_album(USER, ids)
            client.rate(USER, [(i, 1 + k % 5) for k, i in enumerate(ids[:15])])
        results, killed = [], []
        with PersonalSearch(index, url, deadline_s=2.0, window=100) as search:
            start = time.monotonic()
            while time.monotonic() < start + 3.0:
                if not killed and time.monotonic() > start + 1.0:
                    proc.kill()
                    proc.wait(10)
                    killed.append(time.monotonic())
                results.append((time.monotonic(), search.search("red car", USER)))
                time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    before = [r for t, r in results if t < killed[0]]
    after = [r for t, r in results if t > killed[0]]
    assert before and all(r.personalized for r in before)
    assert len(after) > 10 and all(not r.personalized and "unreachable" in r.reason for r in after), \
        {r.reason for r in after}
    engine = [h.image_id for h in index.search("red car", 100)]
    assert len(engine) == 100 and all(r.image_ids == engine for r in after)
