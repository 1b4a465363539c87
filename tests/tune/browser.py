"""A real headless Chromium for the report tests, driven by Selenium with the system's
chromedriver (Debian's ``chromium`` and ``chromium-driver``; ``.ci/run`` installs them).

The browser gets no network at all (every host name fails to resolve), so a page that tried
to fetch anything (a CDN script, a font) would log a console error.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
INSTALL = "apt-get install chromium chromium-driver"

#: For each <img>: its figure key, natural size, size attributes, and how many of its pixels
#: (drawn on a canvas) are not white: a blank image has none.
IMAGES_JS = """
return Array.from(document.images).map(function (img) {
  var canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  var inked = 0;
  if (img.complete && img.naturalWidth > 0) {
    var ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    var px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    for (var i = 0; i < px.length; i += 4) {
      if (px[i] < 250 || px[i + 1] < 250 || px[i + 2] < 250) { inked++; }
    }
  }
  var fig = img.closest('figure');
  return {figure: fig ? fig.getAttribute('data-figure') : null,
          complete: img.complete, naturalWidth: img.naturalWidth,
          naturalHeight: img.naturalHeight, width: parseInt(img.getAttribute('width')),
          height: parseInt(img.getAttribute('height')), inked: inked};
});
"""


def find_chromium() -> tuple[str, str] | None:
    """(browser, chromedriver) paths, or None when either is not installed."""
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@dataclass
class PageCheck:
    title: str
    console: list[dict[str, Any]]  # the browser log (console messages, failed loads)
    images: list[dict[str, Any]]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.console if e.get("level") == "SEVERE"]


@contextmanager
def headless_chromium(browser: str, driver: str) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1024", "--host-resolver-rules=MAP * ~NOTFOUND"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield chrome
    finally:
        chrome.quit()


def check_page(chrome: Any, page: Path) -> PageCheck:
    """Open ``page`` from disk and read the console log and every image's state."""
    chrome.get(Path(page).resolve().as_uri())
    chrome.execute_async_script(
        "var done = arguments[arguments.length - 1];"
        "if (document.readyState === 'complete') { done(); }"
        "else { window.addEventListener('load', function () { done(); }); }")
    images = chrome.execute_script(IMAGES_JS)
    return PageCheck(chrome.title, chrome.get_log("browser"), images)
