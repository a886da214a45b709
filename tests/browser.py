"""A real headless Chromium for tests that look at pages (Debian's `chromium` + `chromium-driver`,
driven by selenium). `browser()` skips the calling test with the reason when either is missing."""
from __future__ import annotations

import base64
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

# flags that work in containers and CI: no sandbox (root), no GPU, and nothing that reaches the network
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1"]


def find_browser() -> tuple:
    """(chromium, chromedriver) paths, or (None, reason)."""
    chrome = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if chrome is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", chrome), ("chromedriver", driver)) if p is None)
        return None, f"no headless browser: {missing} not found (Debian: apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, "selenium is not installed (pip install -e '.[dev]')"
    return (chrome, driver), None


@contextmanager
def browser(width: int = 1360, height: int = 1000):
    """A selenium WebDriver on headless Chromium with a fresh profile, closed on exit."""
    found, reason = find_browser()
    if found is None:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chrome, driver_path = found
    with tempfile.TemporaryDirectory(prefix="llamacpu-chromium-") as profile:
        opts = webdriver.ChromeOptions()
        opts.binary_location = chrome
        for flag in FLAGS + [f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
            opts.add_argument(flag)
        driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
        try:
            yield driver
        finally:
            driver.quit()


def screenshot(driver, path, full_page: bool = True, max_height: int | None = None) -> Path:
    """PNG of the page (the whole scrollable height, or up to max_height CSS pixels) through the DevTools
    protocol, which can capture beyond the window."""
    width = driver.execute_script("return document.documentElement.scrollWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight") if full_page else \
        driver.execute_script("return window.innerHeight")
    if max_height:
        height = min(height, max_height)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    path = Path(path)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
