"""The curation page end to end: `pam serve` (Ray Serve on a local Ray) serves serving/online/web/ at /ui/,
headless Debian Chromium opens it, rates photos by keyboard and by click, and after each rating
the album's order on the page must be the service's re-rank reply and PAM's own prediction.
The screenshot is kept (its path is printed): runs/artifacts/curation-page.png."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pam.client import Client
from pam.demo.browser import find_browser
from pam.demo.stages import ServiceProcess, pam_command
from personalize.features import AES_FEAT_DIM, N_ATTRIBUTES, N_CONTENT, pam_input
from personalize.pam import PAM
from tests.conftest import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.ray]
N_PHOTOS = 24
USER = "page-user"
VERSION = "page-test-0"
ARTIFACT = ROOT / "runs" / "artifacts" / "curation-page.png"


def _photos_and_features(tmp: Path) -> dict:
    """Photos on disk and a feature-store version for them: generic scores spread over 1.5-4.5,
    attributes and content that PAM can learn offsets from."""
    from serving import feature_table as ft

    rng = np.random.default_rng(11)
    photos = tmp / "photos"
    photos.mkdir()
    ids = [f"p{k:02d}.jpg" for k in range(N_PHOTOS)]
    for k, image_id in enumerate(ids):
        colour = np.array([40 + 8 * k, 200 - 6 * k, 90 + (37 * k) % 150], np.uint8)
        image = np.tile(colour, (96, 128, 1)) + rng.integers(0, 30, (96, 128, 3)).astype(np.uint8)
        Image.fromarray(image).save(photos / image_id, quality=90)
    content = rng.dirichlet(np.ones(N_CONTENT), N_PHOTOS)
    features = {"aes_score": np.linspace(4.5, 1.5, N_PHOTOS)[rng.permutation(N_PHOTOS)],
                "aes_feat": rng.gamma(2.0, 5.0, (N_PHOTOS, AES_FEAT_DIM)),
                "attributes": np.tanh(rng.normal(0, 0.6, (N_PHOTOS, N_ATTRIBUTES))),
                "content": content}
    root = tmp / "features"
    ft.FeatureTable(root).write_version(ft.feature_table(ids, features, VERSION))
    return {"ids": ids, "photos": photos, "features_root": root, **features}


@pytest.fixture(scope="module")
def page_service(tmp_path_factory):
    if find_browser() is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (bash scripts/install.sh)")
    tmp = tmp_path_factory.mktemp("page")
    data = _photos_and_features(tmp)
    argv = pam_command("serve", "--features", str(data["features_root"]), "--photos", str(data["photos"]),
                       "--users", f"sqlite:///{tmp / 'users.db'}", "--host", "127.0.0.1",
                       "--port", "0", "--num-cpus", "2")
    service = ServiceProcess(argv, tmp / "serve.log")
    try:
        url = service.start(timeout=300)
        client = Client(url, timeout=60.0)
        client.add_album(USER, data["ids"])
        yield {"url": url, "client": client, **data}
        client.close()
    finally:
        service.stop()


@pytest.fixture
def browser(tmp_path):
    from pam.demo.browser import chromium_driver

    driver = chromium_driver(tmp_path / "profile", size=(1280, 1100))
    try:
        yield driver
    finally:
        driver.quit()


def _album_on_page(driver) -> tuple[list[str], np.ndarray]:
    from selenium.webdriver.common.by import By

    cards = driver.find_elements(By.CSS_SELECTOR, "#album .card")
    return ([c.get_attribute("data-image-id") for c in cards],
            np.array([float(c.get_attribute("data-score")) for c in cards]))


def _wait_for_ratings(driver, n: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def updated(d):
        error = d.find_element(By.ID, "error")
        if error.is_displayed() and error.text:
            raise AssertionError(f"the page shows an error: {error.text}")
        return d.find_element(By.ID, "album").get_attribute("data-n-ratings") == str(n)

    WebDriverWait(driver, 60).until(updated)


def _focused(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "#suggestions .suggestion.focused").get_attribute("data-image-id")


def test_rating_on_the_page_reranks_the_album_as_the_model_says(page_service, browser, capsys):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    svc = page_service
    index = {image_id: k for k, image_id in enumerate(svc["ids"])}
    stored = {k: np.asarray(svc[k], np.float32).astype(np.float64) for k in ("attributes", "content", "aes_score")}
    X = np.hstack([pam_input(stored["attributes"], stored["content"]), stored["aes_score"][:, None]])
    generic_order = [svc["ids"][k] for k in np.argsort(-svc["aes_score"], kind="stable")]
    median = float(np.median(svc["aes_score"]))

    browser.get(f"{svc['url']}/ui/?user={USER}")
    _wait_for_ratings(browser, 0)
    order, _ = _album_on_page(browser)
    assert order == generic_order  # no ratings: the generic ranking
    assert "generic" in browser.find_element(By.ID, "album-note").text

    # against each photo's generic score, so the personalized order must move away from it
    def against(image_id: str) -> int:
        return 1 if svc["aes_score"][index[image_id]] >= median else 5

    rated: dict[str, float] = {}
    actions = ["key", "arrow+key", "click", "key"]
    for step, how in enumerate(actions, start=1):
        if how == "arrow+key":
            ActionChains(browser).send_keys("\ue014").perform()  # ArrowRight moves the highlight
        if how == "click":  # a score button under the last suggestion
            target = browser.find_elements(By.CSS_SELECTOR, "#suggestions .suggestion")[-1].get_attribute(
                "data-image-id")
        else:  # keys 1-5 rate the highlighted suggestion
            target = _focused(browser)
        score = against(target)
        if how == "click":
            browser.find_element(
                By.CSS_SELECTOR, f"#suggestions .suggestion[data-image-id='{target}'] button[data-score='{score}']").click()
        else:
            ActionChains(browser).send_keys(str(score)).perform()
        rated[target] = float(score)
        _wait_for_ratings(browser, step)

        order, shown_scores = _album_on_page(browser)
        reply = svc["client"].rerank(USER, svc["ids"])
        assert reply.n_ratings == step
        assert order == reply.image_ids, f"after {step} ratings the page's order is not the service's"
        assert np.allclose(shown_scores, reply.scores, atol=1e-4)
        # the library's own prediction, fit on the same ratings, orders the album the same way
        rows = [index[i] for i in rated]
        predicted = PAM().fit(X[rows], np.array(list(rated.values()))).predict(X)
        # shown on the rating scale: clipped to [1, 5] (the order is the unclipped one's)
        assert np.allclose(shown_scores, np.clip(predicted[[index[i] for i in order]], 1, 5), atol=1e-4)
        assert np.all(np.diff(shown_scores) <= 1e-9)
        suggested = [e.get_attribute("data-image-id")
                     for e in browser.find_elements(By.CSS_SELECTOR, "#suggestions .suggestion")]
        assert not set(suggested) & set(rated), "a rated photo is suggested again"

    assert order != generic_order, "ratings against the generic score left the album's order unchanged"
    badges = {c.get_attribute("data-image-id"): float(c.get_attribute("data-rating"))
              for c in browser.find_elements(By.CSS_SELECTOR, "#album .card.rated")}
    assert badges == rated
    assert "personalized on your 4 ratings" in browser.find_element(By.ID, "album-note").text
    moved = browser.find_elements(By.CSS_SELECTOR, "#album .move.up, #album .move.down")
    assert moved, "the page does not show which photos moved"

    # thumbnails come from the service's thumbnail endpoint and load
    loaded = browser.execute_script(
        "return [...document.querySelectorAll('#album img')].filter(i => i.complete && i.naturalWidth > 0).length")
    assert loaded >= N_PHOTOS // 2
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACT))
    with capsys.disabled():
        print(f"\n[curation page] screenshot kept: {ARTIFACT}")
    with Image.open(ARTIFACT) as shot:
        assert shot.size[0] >= 1000


def test_the_page_says_what_is_wrong_for_an_unknown_user(page_service, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{page_service['url']}/ui/?user=nobody-here")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
    assert "nobody-here" in browser.find_element(By.ID, "error").text
    assert "register an album" in browser.find_element(By.ID, "error").text


def test_the_service_serves_the_page_files(page_service):
    for name, kind in (("", "text/html"), ("app.js", "javascript"), ("style.css", "text/css")):
        with urllib.request.urlopen(f"{page_service['url']}/ui/{name}", timeout=30) as response:
            assert kind in response.headers["Content-Type"]
            assert response.read()
    with urllib.request.urlopen(f"{page_service['url']}/v1/photos/thumbnail?image_id=p03.jpg&size=128") as r:
        assert r.headers["Content-Type"] == "image/jpeg"
