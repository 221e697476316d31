"""The README's curation-page screenshot, reproducibly: rate n suggested photos by a rule, save the page.

    pam demo --sample-photos --serve          # prints the service URL; keep it running
    python -m pam.demo.page_screenshot URL runs/demo/album/album.json docs/figures/demo-page.png \\
        --like chelsea coffee --dislike hubble_deep_field immunohistochemistry

A user (default `guest`) gets the whole album; the page's highlighted suggestion is rated with the
keyboard: 5 for a crop of a liked photograph, 1 for a disliked one, 3 otherwise. Only for
sample-photo albums (their ids are `<photograph>/<photograph>-NNN.jpg`; their licences allow it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def rate_and_capture(url: str, image_ids: list[str], out: Path, user: str, n_ratings: int,
                     like: set[str], dislike: set[str], size: tuple[int, int] = (1280, 1100)) -> dict:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from pam.client import Client
    from pam.demo.browser import chromium_driver

    with Client(url, timeout=60.0) as client:
        client.add_album(user, image_ids)
    rated = {}
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium_driver(profile, size=size)
        try:
            driver.get(f"{url}/ui/?user={user}")
            for step in range(n_ratings + 1):
                WebDriverWait(driver, 60).until(
                    lambda d, n=step: d.find_element(By.ID, "album").get_attribute("data-n-ratings") == str(n))
                if step == n_ratings:
                    break
                target = driver.find_element(By.CSS_SELECTOR, "#suggestions .suggestion.focused")
                image_id = target.get_attribute("data-image-id")
                photograph = image_id.split("/", 1)[0]
                score = 5 if photograph in like else 1 if photograph in dislike else 3
                ActionChains(driver).send_keys(str(score)).perform()
                rated[image_id] = score
            WebDriverWait(driver, 30).until(lambda d: d.execute_script(  # lazy images: those in view
                "return [...document.querySelectorAll('img')]"
                ".filter(i => i.getBoundingClientRect().top < window.innerHeight).every(i => i.complete)"))
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
    return {"screenshot": str(out), "user": user, "ratings": rated}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the service, e.g. http://127.0.0.1:8000")
    parser.add_argument("album", type=Path, help="the sample album's album.json (pam demo --sample-photos)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--user", default="guest")
    parser.add_argument("--ratings", type=int, default=12)
    parser.add_argument("--like", nargs="*", default=["chelsea", "coffee"])
    parser.add_argument("--dislike", nargs="*", default=["hubble_deep_field", "immunohistochemistry"])
    args = parser.parse_args(argv)
    manifest = json.loads(args.album.read_text(encoding="utf-8"))
    ids = [crop["image_id"] for crop in manifest["crops"]]
    summary = rate_and_capture(args.url, ids, args.out, args.user, args.ratings, set(args.like), set(args.dislike))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
