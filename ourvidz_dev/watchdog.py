"""Stops what `make up` started when `make up` itself dies without doing so
(SIGKILL, the out-of-memory killer, a crash).

The services and the embedded servers run in sessions of their own, so that a
signal to `make up`'s process group (Ctrl-C at the terminal, `kill -TERM
-<pgid>`) reaches `make up` alone, which then stops the services first and the
servers last. The price: nothing ends them by itself if `make up` dies. This
watchdog is that something: a small process, in a session of its own too,
that reads what `make up` started from a pipe. A clean stop ends with "done";
the end of the pipe without it means `make up` is gone, and the watchdog stops
the services (SIGTERM, then SIGKILL after a grace), then NATS, then PostgreSQL
(through pgserver's own bookkeeping).

The protocol, one line each: `service <pid>`, `server <pid>` (process group
leaders of their own sessions), `postgres <data dir>`, `done`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import IO

from ourvidz_dev.embedded import process_alive, release_postgres

log = logging.getLogger("ourvidz_dev.watchdog")

GRACE_SECONDS = 10.0


class Watchdog:
    """`make up`'s end of the pipe."""

    def __init__(self, proc: subprocess.Popen, pipe: IO[str]) -> None:
        self.proc = proc
        self._pipe = pipe
        self._lock = threading.Lock()  # the supervisor's thread reports restarts

    @classmethod
    def start(cls) -> Watchdog:
        read_end, write_end = os.pipe()  # not inherited by anything else started here
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ourvidz_dev.watchdog", "--parent", str(os.getpid())],
                stdin=read_end,
                start_new_session=True,
            )
        finally:
            os.close(read_end)
        return cls(proc, os.fdopen(write_end, "w", buffering=1))

    def _send(self, line: str) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._pipe.write(line + "\n")

    def service(self, pid: int) -> None:
        self._send(f"service {pid}")

    def server(self, pid: int) -> None:
        self._send(f"server {pid}")

    def postgres(self, data_dir: Path) -> None:
        self._send(f"postgres {data_dir}")

    def release(self) -> None:
        """Everything was stopped in order: the watchdog leaves without acting."""
        self._send("done")
        with contextlib.suppress(OSError, ValueError):
            self._pipe.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- the watchdog process -----------------------------------------------------------


def _leads_its_session(pid: int) -> bool:
    """True while `pid` runs and leads its own session, as everything `make up`
    starts does: a pid reused by an unrelated process almost never does."""
    try:
        return os.getsid(pid) == pid and process_alive(pid)
    except OSError:
        return False


def end_groups(pids: list[int], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM to each group, SIGKILL to what is left after `grace` seconds."""
    pids = [pid for pid in pids if _leads_its_session(pid)]
    for pid in pids:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def act(parent: int, lines: list[str]) -> None:
    """What to do once `make up` (pid `parent`) is gone without saying "done"."""
    told = [line.partition(" ")[::2] for line in lines]
    services = [int(arg) for kind, arg in told if kind == "service"]
    servers = [int(arg) for kind, arg in told if kind == "server"]
    pg_dirs = [arg for kind, arg in told if kind == "postgres"]
    log.warning("make up (pid %d) ended without stopping what it started; stopping it", parent)
    end_groups(list(reversed(services)))
    end_groups(servers)
    for data_dir in pg_dirs:
        try:
            release_postgres(Path(data_dir), parent)
        except Exception as exc:
            log.warning("could not stop PostgreSQL in %s: %s", data_dir, exc)
    log.warning("stopped what make up left running")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ourvidz_dev.watchdog")
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"{'watchdog':<10}| %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    # pgserver asks platformdirs for a runtime folder that containers often lack.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    # Nothing but the end of the pipe ends this process: not a terminal's
    # Ctrl-C, nor a signal to make up's group.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    lines: list[str] = []
    for raw in sys.stdin:
        line = raw.strip()
        if line == "done":
            return 0
        if line:
            lines.append(line)
    act(args.parent, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
