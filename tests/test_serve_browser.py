"""The web page in a real headless Chromium: type a prompt, watch the body stream in, see search hits.

Chromium is driven through chromedriver's W3C WebDriver HTTP API directly (a few JSON requests),
so no browser-automation package or browser download is needed: only Debian's `chromium` and
`chromium-driver` packages. The test skips, saying so, only where those are not installed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

import httpx
import pytest

from fnbody.serve import create_app
from test_serve import BODY, PROMPT, RECORDS, ListIndex, ScriptedGenerator, running_server, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver element reference key

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver packages (apt-get install -y chromium chromium-driver)",
)


class Browser:
    """A minimal W3C WebDriver client: just what this test needs."""

    def __init__(self, driver_url: str, profile: str):
        self.http = httpx.Client(base_url=driver_url, timeout=30)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,900"]
        caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def _call(self, method: str, path: str, payload: dict | None = None):
        r = self.http.request(method, path, json=payload)
        value = r.json()["value"]
        if r.status_code != 200:
            raise RuntimeError(f"webdriver {method} {path}: {value}")
        return value

    def cmd(self, method: str, path: str, payload: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", payload)

    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        return self.cmd("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css: str, text: str) -> None:
        self.cmd("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self.cmd("POST", f"/element/{self.find(css)}/click", {})

    def js(self, script: str, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def text(self, css: str) -> str:
        return self.js("return document.querySelector(arguments[0]).textContent", css)

    def close(self) -> None:
        try:
            self.cmd("DELETE", "")
        finally:
            self.http.close()


@pytest.fixture(scope="module")
def browser():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}", "--allowed-ips=127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/status", timeout=1).json()["value"]["ready"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False

    try:
        assert wait_until(ready, 15), "chromedriver did not start"
        with tempfile.TemporaryDirectory(prefix="fnbody-chromium-") as profile:
            b = Browser(url, profile)
            try:
                yield b
            finally:
                b.close()
    finally:
        driver.terminate()
        driver.wait(10)


def test_page_streams_a_completion_with_highlighting_and_search(browser):
    gen = ScriptedGenerator(BODY * 4, delay=0.01)  # ~0.5 s of streaming: the page shows it growing
    prompt = PROMPT.rstrip("\n")  # typed without the final newline, as people paste it
    with running_server(create_app(gen, ListIndex(RECORDS))) as url:
        browser.get(url + "/")
        assert wait_until(lambda: "scripted" in browser.text("#model")), browser.text("#model")
        browser.type("#prompt", prompt)
        browser.click("#generate")
        # Streaming: part of the body is on the page while the status still says it is writing.
        assert wait_until(lambda: "writing" in browser.text("#status") and "total = a + b" in browser.text("#output"))
        assert wait_until(lambda: browser.text("#status").startswith("done"), 10), browser.text("#status")
        out = browser.text("#output")
        assert out == PROMPT + BODY * 4  # the page added the newline the prompt lacked
        assert gen.prompts_run == [PROMPT]
        # Highlighting: keywords, the function name and the docstring are marked up by our highlighter.
        kinds = browser.js("return Array.from(document.querySelectorAll('#output span')).map(s => s.className + ':' + s.textContent)")
        assert {"tok-kw:def", "tok-fn:add", "tok-kw:return", "tok-doc:\"\"\"Return the sum of a and b.\"\"\""} <= set(kinds)
        # Similar functions from the search index, queried with the docstring.
        assert wait_until(lambda: "read_csv" in browser.text("#similar"))
        assert browser.js("return document.querySelectorAll('#similar li').length") == 2
        # Fully offline: every resource the page loaded came from this server.
        loaded = browser.js("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(u.startswith(url) for u in loaded), loaded


def test_page_stop_button_cancels_generation(browser):
    gen = ScriptedGenerator("    x = 1\n" * 100, delay=0.01)  # 10 s if not stopped
    with running_server(create_app(gen)) as url:
        browser.get(url + "/")
        browser.type("#prompt", "def slow():\n")
        browser.click("#generate")
        assert wait_until(lambda: "x = 1" in browser.text("#output"))
        browser.click("#stop")
        assert wait_until(lambda: browser.text("#status") == "stopped")
        assert wait_until(lambda: gen.streams_closed == 1, 5), "server kept generating after the page stopped"
        assert gen.pieces_streamed < 1000
        # A bad prompt is explained on the page, not sent.
        browser.js("document.getElementById('prompt').value = ''")
        browser.type("#prompt", "hello")
        browser.click("#generate")
        assert "def" in browser.text("#status") and len(gen.prompts_run) == 1
        time.sleep(0.05)
