"""How soon the playground shows its first frame after Run, in headless Chromium.

Starts `streamlit run app.py` from a checkout (this one, or `--root` an older one, to compare before
and after a change), warms it (the first visit loads the data and the caches), then, `--repeats`
times, presses Run and measures the seconds until a reconstruction frame is on the page and
until the run ends, for two runs: the default one, the 3-way compare (iDLG on an untrained LeNet,
60 iterations, a frame every 2), and one IG setting on an untrained ResNet20 (the same iterations
and frames; its selectboxes are driven from the keyboard).

    python bench/app_first_frame.py
    git worktree add /tmp/before <commit> && python bench/app_first_frame.py --root /tmp/before

It drives the same DevTools `Page` as `tests/test_browser.py` and needs Debian's `chromium`.
Run it alone: a second heavy process on a 2-core machine distorts every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ITERATIONS = 60  # the playground's default
HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))
from test_browser import Page, free_port, idle, wait_for  # noqa: E402  (the browser tests' driver)


def ig_on_resnet20(page: Page) -> None:
    """One setting, Model ResNet20, attack ig: what a user who wants the paper's attack picks."""
    page.choose("Settings to compare", "1")
    page.wait_for("Setting B", 60, gone=True)
    for label, option in (("Model", "ResNet20"), ("Attack", "ig")):
        page.select(label, option)
        time.sleep(2)  # the rerun the choice starts
        idle(page, 120)
    shown = dict(json.loads(page.evaluate(
        "JSON.stringify([...document.querySelectorAll('[data-testid=stSelectbox] input')]"
        ".map(i => [i.getAttribute('aria-label'), i.value]))")))
    assert shown.get("Model") == "ResNet20" and shown.get("Attack") == "ig", f"the selectboxes show {shown}"


def measure(page: Page, seconds: float) -> tuple[float, float]:
    """Press Run; the seconds to the first reconstruction frame and to the run's end."""
    idle(page, 120)
    started = time.monotonic()
    page.click("Run")
    while not any(int(n) < ITERATIONS for n in re.findall(r"reconstruction, iteration (\d+)", page.text())):
        assert time.monotonic() - started < seconds, "no frame came"  # a live one: the last run's says 60
        time.sleep(0.05)
    first = time.monotonic() - started
    page.wait_for("Running…", seconds, gone=True)
    return first, time.monotonic() - started


def serve(root: Path, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(root)}  # that checkout's `ats`, not the installed one
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(root / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert wait_for(f"http://127.0.0.1:{port}/_stcore/health", server, 120).strip() == "ok"
    return server, f"http://127.0.0.1:{port}/"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=HERE, help="the checkout whose app.py to serve")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        server, url = serve(args.root.resolve(), Path(scratch))
        try:
            with Page(Path(scratch) / "profile", free_port()) as page:
                page.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1,
                          mobile=False)
                page.open(url, "Before you run", 300)
                page.open(url, "Before you run", 120)
                for run, choose in (("default 3-way iDLG compare, LeNet", None),
                                    ("one IG setting, ResNet20", ig_on_resnet20)):
                    if choose:
                        choose(page)
                    for _ in range(args.repeats):
                        first, end = measure(page, 600)
                        rows.append({"run": run, "first_frame_s": first, "end_s": end})
                        print(f"  {run}: {first:.2f} s, {end:.2f} s", file=sys.stderr, flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    if args.json:
        print(json.dumps([{**r, "root": str(args.root)} for r in rows], indent=2))
        return
    print(f"app at {args.root}")
    for row in rows:
        print(f"  {row['run']:<36} first frame {row['first_frame_s']:6.2f} s   run {row['end_s']:6.2f} s")


if __name__ == "__main__":
    main()
