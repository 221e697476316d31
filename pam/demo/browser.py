"""Headless Chromium for the curation page's test and the README's screenshots.

Debian's chromium and chromium-driver (scripts/install.sh installs them) driven by selenium (the
test extra); never a browser that a test tool downloads. `python -m pam.demo.browser URL OUT.png
[--wait-for CSS] [--size 1280x1000]` saves a screenshot of a page (the README's figures are made
this way from a demo run on the sample photos: docs/demo.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
         "--disable-dev-shm-usage", "--hide-scrollbars")


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None when they are not installed."""
    chromium = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    driver = shutil.which("chromedriver") or (CHROMEDRIVER if Path(CHROMEDRIVER).exists() else None)
    return (chromium, driver) if chromium and driver else None


def chromium_driver(user_data_dir: str | Path, size: tuple[int, int] = (1280, 1000)):
    """A selenium WebDriver on headless Debian Chromium with a fresh profile in `user_data_dir`."""
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must never fetch a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_browser()
    if found is None:
        raise RuntimeError("chromium and chromedriver are not installed (bash scripts/install.sh installs "
                           "Debian's chromium and chromium-driver)")
    chromium, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*FLAGS, f"--user-data-dir={user_data_dir}", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def screenshot(url: str, out: Path, size: tuple[int, int] = (1280, 1000), wait_for: str | None = None,
               timeout: float = 60.0) -> Path:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory(prefix="pam-chromium-") as profile:
        driver = chromium_driver(profile, size)
        try:
            driver.get(url)
            if wait_for:
                WebDriverWait(driver, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, wait_for))
            WebDriverWait(driver, timeout).until(
                lambda d: d.execute_script("return [...document.images].every(i => i.complete)"))
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="screenshot of a page in headless Chromium")
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", default="1280x1000", help="window WIDTHxHEIGHT")
    parser.add_argument("--wait-for", help="a CSS selector to wait for before the screenshot")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    print(screenshot(args.url, args.out, (width, height), args.wait_for))


if __name__ == "__main__":
    main()
