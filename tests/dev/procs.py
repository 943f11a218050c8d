"""Process helpers for the supervisor tests."""

from __future__ import annotations

import time
from pathlib import Path


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an orphan's zombie
    may linger where PID 1 does not reap; it runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def read_pids(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(x) for x in path.read_text().split() if x.strip().isdigit()]
