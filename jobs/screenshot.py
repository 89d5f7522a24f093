"""PNG screenshots of the project's HTML pages (the demo's report, the world's page) through Debian's
headless Chromium, for READMEs and issue notes; nothing is taken where Chromium is not installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def screenshot(html_page: Path, element: str = "") -> Path | None:
    """The top of a page as PNG through Debian's headless Chromium, when it is installed; with
    `element` (an id), just that element, through chromedriver (selenium comes with `make`'s install)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        return None
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--window-size=1280,1600"]
    png = html_page.with_name(f"{html_page.stem}{'-' + element if element else ''}.png")
    if not element:
        subprocess.run([chromium, *flags, f"--screenshot={png.resolve()}", html_page.resolve().as_uri()],
                       capture_output=True, timeout=120, check=True)
        return png
    try:
        # selenium is a test extra: without it the demo takes whole-page screenshots only
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(html_page.resolve().as_uri())
        found = driver.find_element("id", element)
        driver.set_window_size(1280, found.rect["y"] + found.rect["height"] + 200)  # all of it in the viewport
        found.screenshot(str(png))
    finally:
        driver.quit()
    return png
