"""The app in a real browser: `streamlit run app.py` headless, read by headless Chromium (marker `browser`)."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not on PATH; .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("chromium is not on PATH; install it with `apt-get install -y chromium` to run this test")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"streamlit exited with {server.returncode}: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@pytest.fixture
def app_url(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(f"http://127.0.0.1:{port}/_stcore/health", server, 120).strip() == "ok"
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class Page:
    """A headless Chromium tab driven over the DevTools protocol, so the test waits in real time.

    `--dump-dom` with `--virtual-time-budget` returns after about 2 s of real time, before Streamlit's
    websocket has delivered the page (virtual time races on while no HTTP fetch is pending), so the
    test polls the rendered text instead, up to a deadline.
    """

    def __init__(self, profile: Path, port: int) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
             "--window-size=1400,1000", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.loop = asyncio.new_event_loop()
        self.socket, self.calls = None, 0

    def __enter__(self) -> Page:
        deadline = time.monotonic() + 60
        while self.socket is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as response:
                    tabs = [t for t in json.load(response) if t.get("type") == "page"]
                from tornado.websocket import websocket_connect

                async def connect(url: str):
                    return await websocket_connect(url, max_message_size=2**28)

                self.socket = self.loop.run_until_complete(connect(tabs[0]["webSocketDebuggerUrl"]))
            except (OSError, IndexError, KeyError, ValueError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError("headless chromium did not open its DevTools port")
                time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        if self.socket is not None:
            self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.loop.close()

    def call(self, method: str, **params) -> dict:
        self.calls += 1
        number = self.calls

        async def exchange() -> dict:
            await self.socket.write_message(json.dumps({"id": number, "method": method, "params": params}))
            while True:
                message = json.loads(await self.socket.read_message())
                if message.get("id") == number:
                    return message.get("result", {})

        return self.loop.run_until_complete(asyncio.wait_for(exchange(), 120))

    def text(self) -> str:
        return self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")["result"].get("value", "")

    def open(self, url: str, until: str, seconds: float) -> float:
        """Navigate and wait until the page shows `until`; the seconds it took."""
        started = time.monotonic()
        self.call("Page.navigate", url=url)
        while until not in self.text():
            if time.monotonic() - started > seconds:
                raise AssertionError(f"{url} did not show {until!r} within {seconds} s: {self.text()[-2000:]!r}")
            time.sleep(0.5)
        return time.monotonic() - started


def test_the_playground_renders_in_chromium(app_url, tmp_path):
    chromium()
    with Page(tmp_path / "profile", free_port()) as page:
        page.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
        page.open(app_url, "Run attack", 240)  # warm: the first visit runs the script once (data, caches)
        page.open(app_url, "Run attack", 60)  # again, from the warm caches (load times belong in bench/)
        dom = page.call("Runtime.evaluate", expression="document.documentElement.outerHTML")["result"]["value"]
        assert "Attack playground" in dom and "Device" in dom and "stException" not in dom
        time.sleep(1)  # let images finish decoding
        shot = tmp_path / "shot.png"
        shot.write_bytes(base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"]))
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1000, 1400)
    assert pixels.std() > 10, "the screenshot is blank"
    if os.environ.get("ATS_SCREENSHOT"):
        shutil.copy(shot, os.environ["ATS_SCREENSHOT"])
