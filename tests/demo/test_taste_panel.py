"""The curation page's taste panel, live: headless Chromium rates photos on the page served by
`pam serve` and, after every rating, the panel must show what GET /v1/users/{id}/taste says."""

from __future__ import annotations

import pytest

from tests.demo.test_curation_page import _focused, _wait_for_ratings, browser, page_service  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.ray]
USER = "taste-panel-user"


def _panel(driver, block: str) -> list[tuple[str, float, bool]]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#taste .taste-{block} .taste-row")
    return [(r.get_attribute("data-key"), float(r.get_attribute("data-effect")),
             r.get_attribute("data-supported") == "true") for r in rows]


def test_the_taste_panel_follows_every_rating(page_service, browser):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    svc = page_service
    svc["client"].add_album(USER, svc["ids"])
    browser.get(f"{svc['url']}/ui/?user={USER}")
    _wait_for_ratings(browser, 0)
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "taste").get_attribute("data-n-ratings") == "0")
    assert "rate photos" in browser.find_element(By.CSS_SELECTOR, "#taste .taste-note").text
    for step in range(1, 7):
        ActionChains(browser).send_keys("5" if step % 2 else "1").perform()
        _wait_for_ratings(browser, step)
        WebDriverWait(browser, 30).until(
            lambda d, n=step: d.find_element(By.ID, "taste").get_attribute("data-n-ratings") == str(n))
        taste = svc["client"].taste(USER)
        assert taste["n_ratings"] == step
        for block in ("attributes", "content"):
            shown = _panel(browser, block)
            expected = [(r["key"], round(r["effect"], 4), r["supported"]) for r in taste[block][:5]]
            assert [(k, round(e, 4), s) for k, e, s in shown] == expected, (step, block)
        assert _focused(browser) is not None
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#taste .taste-name")]
    assert len(names) == 10 and all(names)
