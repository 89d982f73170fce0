"""Headless Debian Chromium driven over chromedriver's W3C WebDriver HTTP API (no selenium)."""
from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import httpx

from pipeline_repo import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = ("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver; "
           "`make test` installs them when run as root)")
# Offline and quiet: without the background-networking flags Chromium keeps dialing out here.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


class WebDriver:
    """The few WebDriver commands the browser tests need, on one session."""

    def __init__(self, session_url: str):
        self.url = session_url

    def _call(self, method: str, path: str, body: dict | None = None):
        r = httpx.request(method, self.url + path, json=body, timeout=120)
        value = r.json()["value"]
        if r.status_code != 200:
            raise RuntimeError(f"WebDriver {method} {path}: {value}")
        return value

    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def js(self, script: str, *args):
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("GET", "/screenshot"))

    def wait_for(self, script: str, *, timeout_s: float = 30.0, poll_s: float = 0.1,
                 describe: Callable[[], str] = lambda: "") -> object:
        """Run `script` (a function body with `return`) until it returns something truthy."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.js(script)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout_s:.0f}s: {script}\n{describe()}")
            time.sleep(poll_s)


@contextlib.contextmanager
def chromium(*, window_size: str = "1000,900") -> Iterator[WebDriver]:
    """chromedriver on a free port, one headless session with a fresh profile; both closed after."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ganops-chromium-") as profile:
        driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        session = None
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/status", timeout=2).json()["value"]["ready"]:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("chromedriver did not start")
                time.sleep(0.1)
            options = {"binary": CHROMIUM,
                       "args": [*FLAGS, f"--window-size={window_size}", f"--user-data-dir={profile}"]}
            r = httpx.post(f"{base}/session", timeout=120, json={
                "capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}})
            session = r.json()["value"]["sessionId"]
            yield WebDriver(f"{base}/session/{session}")
        finally:
            if session is not None:
                with contextlib.suppress(httpx.HTTPError):
                    httpx.delete(f"{base}/session/{session}", timeout=30)
            driver.terminate()
            driver.wait(10)
