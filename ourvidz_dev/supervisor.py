"""Keep a handful of local processes running: the heart of `make up`.

Three parts, kept apart so each can be tested on its own:

- `RestartPolicy` decides how long to wait before restarting a service that
  exited (pure arithmetic: 1 s doubling to 30 s, reset once a run lasted 60 s);
- a spawner turns a `ServiceSpec` into a running child (`spawn_process` by
  default: a subprocess in its own process group, its output prefixed with the
  service's name);
- `Supervisor` starts the services in order, watches them from one thread,
  restarts the ones that die, and on `stop()` ends them in reverse order
  (SIGTERM to the group, a grace period, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Protocol

log = logging.getLogger("ourvidz_dev.up")


# --- restart policy ------------------------------------------------------------


@dataclass
class RestartPolicy:
    """Exponential backoff between restarts of one service.

    Every unexpected exit doubles the wait (from `initial` up to `maximum`);
    a run that lasted at least `reset_after` seconds counts as healthy and
    starts the sequence again from `initial`.
    """

    initial: float = 1.0
    maximum: float = 30.0
    factor: float = 2.0
    reset_after: float = 60.0
    failures: int = 0

    def next_delay(self, uptime: float) -> float:
        """The wait before the next start, given how long the last run lasted."""
        if uptime >= self.reset_after:
            self.failures = 0
        delay = min(self.initial * self.factor**self.failures, self.maximum)
        self.failures += 1
        return delay


# --- spawning --------------------------------------------------------------------


@dataclass
class ServiceSpec:
    """What to run for one service, and how to tell that it is up."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    # Called until it returns True (or `ready_timeout` passes) before the next
    # service starts: lets dependents find their dependency listening.
    ready: Callable[[], bool] | None = None
    ready_timeout: float = 30.0


class Child(Protocol):
    pid: int

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...


Spawner = Callable[[ServiceSpec], Child]

_COLOURS = ("36", "33", "35", "32", "34", "31")


class LinePrefixer:
    """Copies a child's output to `sink`, one line at a time, each prefixed
    with the service's name so interleaved logs stay readable."""

    def __init__(self, sink: IO[str], width: int = 10, colour: bool | None = None) -> None:
        self.sink = sink
        self.width = width
        self.colour = sink.isatty() if colour is None else colour
        self._lock = threading.Lock()
        self._next_colour = 0
        self._colours: dict[str, str] = {}

    def prefix(self, name: str) -> str:
        label = f"{name:<{self.width}}|"
        if not self.colour:
            return label + " "
        if name not in self._colours:
            self._colours[name] = _COLOURS[self._next_colour % len(_COLOURS)]
            self._next_colour += 1
        return f"\x1b[{self._colours[name]}m{label}\x1b[0m "

    def write_line(self, name: str, line: str) -> None:
        with self._lock:
            self.sink.write(self.prefix(name) + line.rstrip("\r\n") + "\n")
            self.sink.flush()

    def pump(self, name: str, stream: IO[bytes]) -> None:
        """Read `stream` to its end (the child closed it or exited)."""
        with contextlib.suppress(ValueError, OSError):
            for raw in iter(stream.readline, b""):
                self.write_line(name, raw.decode("utf-8", "replace"))
        with contextlib.suppress(OSError):
            stream.close()


def process_spawner(
    prefixer: LinePrefixer, on_spawn: Callable[[int], None] | None = None
) -> Spawner:
    """A spawner that runs each service as a subprocess in a new session (so a
    Ctrl-C at the terminal reaches only the supervisor, which then stops the
    services in order) and prefixes its merged stdout/stderr. `on_spawn` hears
    each new pid (`make up`'s watchdog)."""

    def spawn(spec: ServiceSpec) -> Child:
        proc = subprocess.Popen(
            list(spec.argv),
            env=dict(spec.env) if spec.env is not None else None,
            cwd=spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        threading.Thread(
            target=prefixer.pump,
            args=(spec.name, proc.stdout),
            name=f"out-{spec.name}",
            daemon=True,
        ).start()
        if on_spawn is not None:
            on_spawn(proc.pid)
        return proc

    return spawn


def signal_group(child: Child, sig: int) -> None:
    """Signal the child's whole process group (it leads one: see the spawner),
    so whatever it started goes too; fall back to the child alone."""
    if child.pid <= 0:
        return  # not a real process: never signal our own group
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, sig)


# --- the supervisor ----------------------------------------------------------------


@dataclass
class Restart:
    """One restart decision, kept for the log and for tests."""

    name: str
    exit_code: int | None
    uptime: float
    delay: float


@dataclass
class _Running:
    spec: ServiceSpec
    policy: RestartPolicy
    child: Child | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    pids: list[int] = field(default_factory=list)


class Supervisor:
    """Starts services in order, restarts those that exit, stops them all."""

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        *,
        spawner: Spawner,
        policy: Callable[[], RestartPolicy] = RestartPolicy,
        stop_timeout: float = 10.0,
        poll_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"service names repeat: {names}")
        self._services = {s.name: _Running(spec=s, policy=policy()) for s in specs}
        self._spawner = spawner
        self._stop_timeout = stop_timeout
        self._poll = poll_interval
        self._clock = clock
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self.restarts: list[Restart] = []

    # -- inspection ------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._services)

    def pids(self, name: str) -> list[int]:
        """Every pid the service has had, oldest first."""
        with self._lock:
            return list(self._services[name].pids)

    def child(self, name: str) -> Child | None:
        with self._lock:
            return self._services[name].child

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start every service in the given order, waiting for each one's
        readiness check before the next, then watch them."""
        for name, svc in self._services.items():
            if self._stopping.is_set():
                return
            with self._lock:
                self._spawn(svc)
            self._await_ready(name, svc)
        self._monitor = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._monitor.start()

    def interrupt(self) -> None:
        """Ask a running `start()` to launch nothing more (safe in a signal
        handler); `stop()` still has to follow."""
        self._stopping.set()

    def stop(self) -> None:
        """Stop watching, then end the services in reverse start order."""
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join()
        with self._lock:
            for name, svc in reversed(self._services.items()):
                child, svc.child, svc.restart_at = svc.child, None, None
                if child is not None:
                    self._end(name, child)

    # -- internals ---------------------------------------------------------------

    def _spawn(self, svc: _Running) -> None:
        svc.child = self._spawner(svc.spec)
        svc.started_at = self._clock()
        svc.restart_at = None
        svc.pids.append(svc.child.pid)
        log.info("started %s (pid %d)", svc.spec.name, svc.child.pid)

    def _await_ready(self, name: str, svc: _Running) -> None:
        check = svc.spec.ready
        if check is None:
            return
        deadline = self._clock() + svc.spec.ready_timeout
        while not self._stopping.is_set() and self._clock() < deadline:
            child = svc.child
            if child is None or child.poll() is not None:
                log.warning("%s exited before it was ready; going on", name)
                return
            with contextlib.suppress(Exception):
                if check():
                    return
            self._stopping.wait(self._poll)
        if not self._stopping.is_set():
            log.warning(
                "%s not ready after %.0f s; starting the rest anyway", name, svc.spec.ready_timeout
            )

    def _watch(self) -> None:
        while not self._stopping.wait(self._poll):
            with self._lock:
                if self._stopping.is_set():
                    return
                now = self._clock()
                for name, svc in self._services.items():
                    if svc.child is not None:
                        code = svc.child.poll()
                        if code is None:
                            continue
                        uptime = now - svc.started_at
                        delay = svc.policy.next_delay(uptime)
                        self.restarts.append(Restart(name, code, uptime, delay))
                        log.warning(
                            "%s exited with code %s after %.1f s; restarting in %.1f s",
                            name,
                            code,
                            uptime,
                            delay,
                        )
                        svc.child, svc.restart_at = None, now + delay
                    elif svc.restart_at is not None and now >= svc.restart_at:
                        try:
                            self._spawn(svc)
                        except OSError as exc:
                            delay = svc.policy.next_delay(0.0)
                            log.error(
                                "could not start %s (%s); retrying in %.1f s", name, exc, delay
                            )
                            svc.restart_at = now + delay

    def _end(self, name: str, child: Child) -> None:
        if child.poll() is None:
            signal_group(child, signal.SIGTERM)
            try:
                child.wait(self._stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", name, self._stop_timeout)
        # Whatever is left in the group (the child itself, or what it started)
        # goes now; a group already empty answers ProcessLookupError.
        signal_group(child, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(self._stop_timeout)
        log.info("stopped %s", name)


def run_until_signalled(
    supervisor: Supervisor, after_start: Callable[[], None] | None = None
) -> int:
    """Start the supervisor, wait for SIGINT or SIGTERM, stop it. Returns the
    signal number that ended the run. Must run on the main thread.

    A signal during start-up interrupts the start (no further service is
    launched); `after_start` runs once everything is launched and must not
    block (start a thread for long work)."""
    got: list[int] = []
    done = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        got.append(signum)
        supervisor.interrupt()
        done.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start()
        if after_start is not None and not done.is_set():
            after_start()
        while not done.wait(0.5):
            pass
        log.info("stopping (%s)", signal.Signals(got[0]).name)
    finally:
        supervisor.stop()
        for sig, old in previous.items():
            signal.signal(sig, old)
    return got[0] if got else 0


def python_argv(module: str) -> list[str]:
    """The command that runs `python -m <module>` with this interpreter."""
    return [sys.executable, "-m", module]
