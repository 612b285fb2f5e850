"""The app in a real browser: `streamlit run app.py` headless, read by headless Chromium (marker `browser`).

The compare test measures (it does not assert times, which depend on the machine): how soon the first
frame of a 3-way iDLG compare on LeNet appears, the 3-way compare against 3 separate runs, how long
Stop takes; it asserts what must hold anywhere (one run per double click, a run cut short by another
page is kept). Screenshots and `timings.json` go to `$ATS_SCREENSHOTS` when set.
"""
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

import re

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
def app_url(tmp_path, data_dir):  # the server inherits ATS_DATA_DIR (the stand-in without real data)
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

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression)["result"].get("value")

    def wait_for(self, text: str, seconds: float, *, gone: bool = False) -> float:
        """Poll until the page shows `text` (or no longer shows it); the seconds it took."""
        started = time.monotonic()
        while (text in self.text()) == gone:
            if time.monotonic() - started > seconds:
                raise AssertionError(f"{text!r} {'stayed' if gone else 'did not show'} within {seconds} s: "
                                     f"{self.text()[-2000:]!r}")
            time.sleep(0.1)
        return time.monotonic() - started

    def click(self, text: str, selector: str = "button", wait: float = 0.0) -> None:
        """Click the shown, enabled `selector` element whose text is `text` (after an icon, for a page
        link), looking again for up to `wait` seconds (Streamlit shows its Stop button a moment after
        a run starts)."""
        deadline = time.monotonic() + wait
        while True:
            found = self.evaluate(f"""(() => {{ const e = [...document.querySelectorAll({json.dumps(selector)})]
                .find(e => !e.disabled && (e.offsetParent !== null || e.closest("[data-testid=stStatusWidget]"))
                           && (e.innerText.trim() === {json.dumps(text)}
                           || (e.tagName === "A" && e.innerText.trim().endsWith({json.dumps(text)}))));
                if (!e) return false; e.click(); return true; }})()""")
            if found or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        assert found, f"no enabled {selector} {text!r} on the page"

    def choose(self, group: str, option: str) -> None:
        """Pick `option` of the radio group labelled `group`."""
        self.click(option, f"[role=radiogroup][aria-label={json.dumps(group)}] [data-testid=stRadioOption]")

    def select(self, label: str, option: str, index: int = 0) -> None:
        """Pick `option` (its shown text) in the `index`-th selectbox labelled `label`, as a keyboard
        user would: focus its input, open the list, type the option, press Enter."""
        found = self.evaluate(f"""(() => {{ const e = [...document.querySelectorAll('[data-testid=stSelectbox]')]
            .filter(b => (b.querySelector('label') || {{}}).innerText === {json.dumps(label)})[{index}];
            const input = e && e.querySelector('input');
            if (!input) return false; input.focus(); return true; }})()""")
        assert found, f"no selectbox labelled {label!r}"
        self.key("ArrowDown", 40)
        self.call("Input.insertText", text=option)
        time.sleep(0.3)  # let the list filter to the typed option
        self.key("Enter", 13)

    def key(self, key: str, code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)

    def type_into(self, label: str, value: str, index: int = 0) -> None:
        """Replace the text of the `index`-th input whose label starts with `label`, then press Enter."""
        found = self.evaluate(f"""(() => {{ const e = [...document.querySelectorAll('input')]
            .filter(e => (e.getAttribute('aria-label') || '').startsWith({json.dumps(label)}))[{index}];
            if (!e) return false; e.focus(); e.select(); return true; }})()""")
        assert found, f"no input labelled {label!r}"
        self.call("Input.insertText", text=value)
        self.key("Enter", 13)

    def scroll_to(self, text: str) -> None:
        self.evaluate(f"""(() => {{ const e = [...document.querySelectorAll('p, span, div, h3')]
            .find(e => e.children.length === 0 && (e.innerText || '').includes({json.dumps(text)}));
            if (e) e.scrollIntoView({{block: 'start'}}); }})()""")

    def screenshot(self, path: Path, height: int = 1000) -> Path:
        """A screenshot 1400 px wide and `height` tall (Streamlit scrolls inside its own container)."""
        self.call("Emulation.setDeviceMetricsOverride", width=1400, height=height, deviceScaleFactor=1, mobile=False)
        time.sleep(1.5)  # let images decode and the layout settle
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        self.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
        return path

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
        page.open(app_url, "Before you run", 240)  # warm: the first visit runs the script once (data, caches)
        page.open(app_url, "Before you run", 60)  # again, from the warm caches (load times belong in bench/)
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


RUNNING = "!!document.querySelector('[data-testid=stStatusWidgetRunningIcon]')"  # Streamlit's running man


def idle(page: Page, seconds: float) -> float:
    """Wait until the script ends (Streamlit's running indicator goes away); the seconds it took."""
    started = time.monotonic()
    time.sleep(0.3)  # a rerun just asked for shows its indicator within a moment
    while page.evaluate(RUNNING):
        if time.monotonic() - started > seconds:
            raise AssertionError(f"the app was still running after {seconds} s")
        time.sleep(0.1)
    return time.monotonic() - started


def run_and_wait(page: Page, seconds: float) -> tuple[float, float]:
    """Press Run; the seconds until the attack ends (Run comes back), and the app's own seconds for it."""
    started = time.monotonic()
    page.click("Run")
    page.wait_for("Running…", 60)
    page.wait_for("Running…", seconds, gone=True)
    attack = time.monotonic() - started
    idle(page, 120)  # the results drawn, new policies scored
    return attack, app_seconds(page)


def double_click(page: Page, text: str) -> None:
    """Two mouse clicks 150 ms apart where the button `text` is shown, as a hurried person makes them."""
    find = f"""[...document.querySelectorAll('button')].find(b => b.offsetParent !== null
        && b.innerText.trim() === {json.dumps(text)})"""
    page.evaluate(f"{find}.scrollIntoView({{block: 'center'}})")
    time.sleep(1)  # the scroll may be smooth: measure where the button ends up
    box = json.loads(page.evaluate(f"""(() => {{ const r = {find}.getBoundingClientRect();
        return JSON.stringify([r.x + r.width / 2, r.y + r.height / 2]); }})()"""))
    for _ in range(2):
        for kind in ("mousePressed", "mouseReleased"):
            page.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)
        time.sleep(0.15)


def app_seconds(page: Page) -> float:
    """The run's own time, from the caption under "This run" ("… · 41.3 s")."""
    found = re.search(r"iterations · seed \d+ · [^·]+ · ([0-9.]+) s", page.text())
    return float(found.group(1)) if found else float("nan")


def test_a_three_way_compare_in_chromium(app_url, tmp_path):
    """The default 3-way compare (iDLG on an untrained LeNet, 60 iterations): measured, with screenshots."""
    chromium()
    shots = Path(os.environ.get("ATS_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    def note(what: str, seconds: float) -> None:  # written as measured, so a failure later keeps them
        times[what] = round(seconds, 2)
        (shots / "timings.json").write_text(json.dumps(times, indent=2))
    with Page(tmp_path / "profile", free_port()) as page:
        page.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
        page.open(app_url, "Before you run", 300)  # warm: the first visit loads the data, the caches, the timing
        note("page load (warm)", page.open(app_url, "Before you run", 120))
        page.scroll_to("Settings to compare")
        page.screenshot(shots / "1-settings-and-estimate.png", 1700)
        started = time.monotonic()
        page.click("Run")
        page.wait_for("reconstruction, iteration", 120)
        note("first frame of the 3-way compare (after Run)", time.monotonic() - started)
        page.scroll_to("Running…")
        page.screenshot(shots / "2-live-3-way.png", 1500)
        page.wait_for("Running…", 900, gone=True)
        note("3-way compare (Run to its end)", time.monotonic() - started)
        idle(page, 180)
        note("3-way compare (the app's own seconds)", app_seconds(page))
        page.scroll_to("This run")
        page.screenshot(shots / "3-result-3-way.png", 2700)

        page.choose("Settings to compare", "1")
        page.wait_for("Setting B", 30, gone=True)
        separate, own = 0.0, 0.0
        for policy in ("none", "3-1-7", "3-1-7+43-18-18"):
            page.type_into("Policy (", policy)
            page.wait_for("changed since this run", 30)  # the page has the new setting
            idle(page, 60)
            attack, seconds = run_and_wait(page, 900)
            separate, own = separate + attack, own + seconds
        note("3 separate runs (Run to their end, summed)", separate)
        note("3 separate runs (the app's own seconds, summed)", own)

        page.choose("Settings to compare", "3")
        page.type_into("Iterations", "10")
        page.wait_for("Setting C", 30)
        idle(page, 60)
        double_click(page, "Run")
        page.wait_for("run 5: rows", 180)  # runs 1-4 came before; the double click's run is kept
        idle(page, 120)
        time.sleep(3)  # a second, queued run would have started by now
        idle(page, 120)
        kept = re.findall(r"run (\d+): rows", page.text())
        assert kept and kept[0] == "5", f"a double click did not make exactly one run: runs kept {kept}"

        page.click("Run")
        page.wait_for("Running…", 60)
        page.wait_for(": iteration ", 60)  # its progress: a frame came
        page.click("Scores", "[data-testid=stSidebarNavLink]")
        page.wait_for("Privacy and accuracy scores", 60)
        page.click("Attack playground", "[data-testid=stSidebarNavLink]")
        note("back on the playground after leaving a run", page.wait_for("The last run stopped at iteration", 60))
        page.wait_for("run 6: rows", 30)  # the run cut short is kept (its row may render after the notice)
        assert re.findall(r"run (\d+): rows", page.text())[0] == "6"
        page.screenshot(shots / "4-run-cut-short-kept.png", 1000)
        assert page.evaluate("document.querySelector('input[aria-label=Iterations]').value") == "10"  # kept

        page.type_into("Iterations", "60")
        idle(page, 60)
        page.click("Run")
        page.wait_for("Running…", 60)
        page.wait_for(": iteration ", 60)
        started = time.monotonic()
        page.click("Stop", "[data-testid=stStatusWidget] button", wait=20)
        idle(page, 120)
        note("Stop pressed until the run stops", time.monotonic() - started)
        dom = page.evaluate("document.documentElement.outerHTML")
        assert "stException" not in dom
    print(json.dumps(times, indent=2))
