"""The search endpoint (serving/online/search_api.py, mounted beside the API) and the curation page's
search box: headless Chromium types a query, the page shows the engine's order and the user's,
which must be the service's own re-rank of the engine's window."""

from __future__ import annotations

import threading

import pytest
import requests

from pam.client import Client
from serving.online.app import LocalRuntime, create_app
from serving.search.index import build_for_feature_table
from tests.online.conftest import ThreadedServer
from tests.search.test_search import _feature_table

USER = "page-searcher"
QUERY = "dog terrier spaniel hound retriever"


@pytest.fixture(scope="module")
def search_service(tmp_path_factory, shared_photos):
    tmp = tmp_path_factory.mktemp("search-page")
    ids = sorted(p.name for p in shared_photos.iterdir() if p.suffix == ".JPEG")
    features = _feature_table(tmp / "features", ids)
    index = build_for_feature_table(str(tmp / "features"))
    runtime = LocalRuntime({"feature_root": str(tmp / "features"), "user_store": f"sqlite:///{tmp / 'u.db'}",
                            "photos_root": str(shared_photos), "thumbnail_dir": str(tmp / "thumbs")})
    app = create_app(runtime)  # mounts the search router
    aes = dict(zip(ids, features["aes_score"].tolist(), strict=True))
    with ThreadedServer(app) as server, Client(server.url) as client:
        client.add_album(USER, ids)
        window = [h.image_id for h in index.search(QUERY, 200)]
        assert len(window) > 30
        client.rate(USER, [(i, 5.0 if aes[i] < 3 else 1.0) for i in window[:25]])
        yield {"url": server.url, "client": client, "index": index, "ids": ids, "runtime": runtime}
    runtime.close()


pytestmark = [pytest.mark.photos]


def test_search_endpoint_answers_the_engine_order(search_service):
    url, index = search_service["url"], search_service["index"]
    reply = requests.get(f"{url}/v1/search", params={"q": "dog", "n": 50}, timeout=30).json()
    assert reply["image_ids"] == [h.image_id for h in index.search("dog", 50)]
    assert reply["scores"] == sorted(reply["scores"], reverse=True)
    assert "/v1/search" in requests.get(f"{url}/v1/openapi.json", timeout=30).json()["paths"]


@pytest.mark.parametrize(("params", "status", "word"), [
    ({}, 422, "q"), ({"q": ""}, 422, "q"), ({"q": "dog", "n": 0}, 422, "n"), ({"q": "dog", "n": 5000}, 422, "n"),
    ({"q": "x" * 5000}, 422, "q"), ({"q": "dog", "n": "many"}, 422, "n"),
])
def test_search_endpoint_says_what_is_wrong(search_service, params, status, word):
    response = requests.get(f"{search_service['url']}/v1/search", params=params, timeout=30)
    assert response.status_code == status
    body = response.json()
    assert body["error"] and word in body["detail"]


def test_hostile_and_concurrent_queries(search_service):
    url = search_service["url"]
    for q in ['" OR 1=1 --', "text:*", "keyword:/.*/", "\x00\x01", "((((((((", "dog" * 300, "犬 🐕", "../../etc"]:
        response = requests.get(f"{url}/v1/search", params={"q": q}, timeout=30)
        assert response.status_code == 200, (q, response.text)
        assert isinstance(response.json()["image_ids"], list)
    results, errors = [], []

    def query(word):
        try:
            results.append(requests.get(f"{url}/v1/search", params={"q": word, "n": 100}, timeout=60).json())
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=query, args=(w,)) for w in ["dog", "cat", "snake", "shark"] * 5]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    by_query = {}
    for r in results:
        by_query.setdefault(r["query"], []).append(r["image_ids"])
    assert all(all(v == vs[0] for v in vs) for vs in by_query.values())


def test_no_index_is_a_404_that_says_how_to_build_one(tmp_path):
    _feature_table(tmp_path / "features", [f"p{k}.jpg" for k in range(20)])
    runtime = LocalRuntime({"feature_root": str(tmp_path / "features"), "user_store": f"sqlite:///{tmp_path / 'u.db'}"})
    app = create_app(runtime)  # mounts the search router
    with ThreadedServer(app) as server:
        response = requests.get(f"{server.url}/v1/search", params={"q": "p1"}, timeout=30)
    runtime.close()
    assert response.status_code == 404 and response.json()["error"] == "no_search_index"
    assert "pam index --features" in response.json()["detail"]


@pytest.mark.browser
def test_the_page_search_box_shows_both_orders(search_service, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from pam.demo.browser import chromium_driver, find_browser

    if find_browser() is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (bash scripts/install.sh)")
    driver = chromium_driver(tmp_path / "profile", size=(1280, 1400))
    try:
        for user, personalized in ((USER, True), ("nobody-here", False)):
            driver.get(f"{search_service['url']}/ui/?user={user}&deadline=5000")
            box = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "search-input"))
            box.send_keys(QUERY)
            driver.find_element(By.CSS_SELECTOR, "#search-form button").click()
            WebDriverWait(driver, 60).until(
                lambda d: d.find_element(By.ID, "search").get_attribute("data-state") in ("ready", "error"))
            section = driver.find_element(By.ID, "search")
            assert section.get_attribute("data-state") == "ready"
            engine = [c.get_attribute("data-image-id") for c in driver.find_elements(By.CSS_SELECTOR, "#search-engine .card")]
            personal = [c.get_attribute("data-image-id")
                        for c in driver.find_elements(By.CSS_SELECTOR, "#search-personal .card")]
            window = [h.image_id for h in search_service["index"].search(QUERY, 200)]
            assert engine == window[:24]
            note = driver.find_element(By.ID, "search-note").text
            assert section.get_attribute("data-personalized") == str(personalized).lower()
            if personalized:
                assert personal == search_service["client"].rerank(USER, window).image_ids[:24]
                assert personal != engine and "re-ranked on your 25 ratings" in note
            else:
                assert personal == engine and "not personalized" in note and "nobody-here" in note
    finally:
        driver.quit()
