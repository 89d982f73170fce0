"""The web page end to end in headless Chromium, driven over WebDriver (chromedriver, plain HTTP)."""
from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from _serving import CLASSES, export_model, free_port, running

from ganops.inference import Generator
from ganops.server import ServerConfig, create_app

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1000,900"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
)


class WebDriver:
    """The few W3C WebDriver commands this test needs, over HTTP to chromedriver."""

    def __init__(self, base: str, session: str):
        self.url = f"{base}/session/{session}"

    def _call(self, method: str, path: str, body: dict | None = None):
        r = httpx.request(method, self.url + path, json=body, timeout=60)
        value = r.json()["value"]
        if r.status_code != 200:
            raise RuntimeError(f"WebDriver {path}: {value}")
        return value

    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def js(self, script: str, *args):
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def js_async(self, script: str, *args):
        return self._call("POST", "/execute/async", {"script": script, "args": list(args)})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("GET", "/screenshot"))

    def wait_for(self, script: str, timeout: float = 30.0):
        """Poll a JS expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(f"return {script};")
            if value:
                return value
            if time.monotonic() > deadline:
                state = self.js("return [document.getElementById('status').textContent, "
                                "document.getElementById('interp-status').textContent];")
                raise TimeoutError(f"{script} still false after {timeout} s; page status: {state}")
            time.sleep(0.1)


@contextlib.contextmanager
def chromium() -> Iterator[WebDriver]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ganops-chromium-") as profile:
        driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        session = None
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(f"{base}/status", timeout=2).json()["value"]["ready"]:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("chromedriver did not start")
                time.sleep(0.1)
            options = {"binary": CHROMIUM, "args": [*FLAGS, f"--user-data-dir={profile}"]}
            r = httpx.post(f"{base}/session", timeout=60, json={
                "capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}})
            session = r.json()["value"]["sessionId"]
            yield WebDriver(base, session)
        finally:
            if session is not None:
                with contextlib.suppress(httpx.HTTPError):
                    httpx.delete(f"{base}/session/{session}", timeout=30)
            driver.terminate()
            driver.wait(10)


# Draw a loaded <img> onto a canvas and return its gray values (the blob URL is same-origin).
PIXELS = """
const img = document.getElementById(arguments[0]);
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const ctx = canvas.getContext('2d');
ctx.drawImage(img, 0, 0);
const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
const gray = [];
for (let i = 0; i < rgba.length; i += 4) gray.push(rgba[i]);
return [canvas.width, canvas.height, gray];
"""


def pixels(browser: WebDriver, element: str) -> np.ndarray:
    width, height, gray = browser.js(PIXELS, element)
    return np.asarray(gray, dtype=np.uint8).reshape(height, width)


def test_page_shows_images_and_interpolates(tmp_path):
    model = export_model(tmp_path, conditional=True)
    generator = Generator.from_onnx(model, providers="cpu")
    app = create_app(generator=generator, config=ServerConfig(providers="cpu"), api_key=None)
    ARTIFACTS.mkdir(exist_ok=True)
    with running(app) as url, chromium() as browser:
        # Seed, class and interpolation from the URL: the page renders all of it on load.
        browser.get(f"{url}/#seed=7&label=3&a=1&b=2&steps=6")
        assert browser.wait_for("document.getElementById('status').dataset.state === 'loaded' && "
                                "document.getElementById('status').textContent")  == \
            f"loaded seed 7, class {CLASSES[3]}"
        options = browser.js("return [...document.getElementById('label').options].map(o => o.text);")
        assert options == [f"{i}: {name}" for i, name in enumerate(CLASSES)]
        assert browser.js("return document.getElementById('label-field').hidden;") is False
        np.testing.assert_array_equal(pixels(browser, "image"), generator.generate([7], labels=3)[0])
        assert generator.sha256[:12] in browser.js("return document.getElementById('model-info').textContent;")

        browser.wait_for("document.getElementById('interp-status').dataset.state === 'loaded'")
        strip = pixels(browser, "strip")
        assert strip.shape == (32, 6 * 30 + 2)
        ends = generator.generate([1, 2], labels=3)
        np.testing.assert_array_equal(strip[2:30, 2:30], ends[0])
        np.testing.assert_array_equal(strip[2:30, 152:180], ends[1])

        # Then as a user would: type a seed, pick a class, press Show.
        browser.js("document.getElementById('seed').value = '11';"
                   "document.getElementById('label').value = '5';"
                   "document.querySelector('#single-form button[type=submit]').click();")
        browser.wait_for(f"document.getElementById('status').textContent === 'loaded seed 11, class {CLASSES[5]}'")
        np.testing.assert_array_equal(pixels(browser, "image"), generator.generate([11], labels=5)[0])
        assert "seed=11" in browser.js("return location.hash;")
        (ARTIFACTS / "browser-page.png").write_bytes(browser.screenshot())

        # A bad seed shows an error on the page rather than breaking it.
        browser.js("document.getElementById('seed').value = '99999999999999999999';"
                   "document.querySelector('#single-form button[type=submit]').click();")
        text = browser.wait_for("document.getElementById('status').dataset.state === 'error' && "
                                "document.getElementById('status').textContent")
        assert text.startswith("HTTP 422")
    assert (ARTIFACTS / "browser-page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_asks_for_the_api_key(tmp_path):
    model = export_model(tmp_path, conditional=False, width=4)
    generator = Generator.from_onnx(model, providers="cpu")
    app = create_app(generator=generator, config=ServerConfig(providers="cpu"), api_key="k3y")
    with running(app) as url, chromium() as browser:
        browser.get(f"{url}/#seed=4")
        browser.wait_for("document.getElementById('status').dataset.state === 'error'")
        assert browser.js("return document.getElementById('auth').hidden;") is False
        browser.js("document.getElementById('api-key').value = 'k3y';"
                   "document.getElementById('api-key-save').click();")
        assert browser.wait_for("document.getElementById('status').dataset.state === 'loaded' && "
                                "document.getElementById('status').textContent") == "loaded seed 4"
        np.testing.assert_array_equal(pixels(browser, "image"), generator.generate([4])[0])
