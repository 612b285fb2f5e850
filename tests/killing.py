"""Kill a command with SIGKILL once its results database holds some rows: the resume tests' first half."""
from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path


def kill_after_rows(command: list[str], environment: dict, db: Path, *, table: str, rows: int,
                    seconds: float) -> int:
    """Start `command`, wait until `db`'s `table` holds `rows` rows (or the command ends, or
    `seconds` pass), then SIGKILL it (no chance to clean up) and whatever it started in its session
    (a Ray cluster's workers, say). Returns the rows counted just before the kill."""
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline, count = time.monotonic() + seconds, 0
    while time.monotonic() < deadline and process.poll() is None:
        if db.exists():
            with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(db, timeout=5)) as c:
                count = c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            if count >= rows:
                break
        time.sleep(0.05)
    process.kill()
    process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return count
