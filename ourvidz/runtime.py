"""Running a service as a process: settings built once, logs set up, the
service started, then stopped gracefully on SIGTERM or SIGINT.

Every `services/<name>/main.py` ends with `runtime.run(name, Settings, start)`;
`start(settings)` returns an object with an async `stop()`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ourvidz import logs, telemetry

log = logging.getLogger(__name__)

# diffusers and transformers import their classes lazily, and two threads that
# first import them at once can see a half-initialised module ("cannot import
# name ..."). Where several model services share a process (the in-process
# stack of the tests and benchmarks), they load their models one at a time.
_MODEL_LOAD_LOCK = threading.Lock()


async def load_in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking model load in a thread, one load per process at a time."""

    def locked() -> Any:
        with _MODEL_LOAD_LOCK:
            return fn(*args, **kwargs)

    return await asyncio.to_thread(locked)


async def serve_until_signalled(
    start: Callable[[Any], Awaitable[Any]], settings: Any, name: str
) -> int:
    """Serve until SIGTERM/SIGINT or the service's own task ends; the exit
    status (the service's `exit_code`, 0 when it has none)."""
    running = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiters = {asyncio.create_task(stop.wait())}
    # A service whose own serving task ends (the gateway's uvicorn) stops too.
    if isinstance(getattr(running, "task", None), asyncio.Task):
        waiters.add(running.task)
    _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    log.info("%s shutting down", name)
    await running.stop()
    for task in pending:
        task.cancel()
    code = int(getattr(running, "exit_code", 0) or 0)
    log.info("%s stopped (status %d)", name, code)
    return code


def run(name: str, settings_cls: type, start: Callable[[Any], Awaitable[Any]]) -> None:
    settings = settings_cls()
    logs.setup(name, settings.log_level, settings.log_json)
    telemetry.setup(name, settings)
    exit_now(asyncio.run(serve_until_signalled(start, settings, name)))


def exit_now(code: int = 0) -> None:
    """End the process once the service has stopped cleanly, skipping the
    interpreter's own teardown: `stop()` closed everything the service held
    (server, NATS, pools), and tearing down the modules of torch, diffusers
    and transformers only adds 1-2 s (measured on an idle SDXL worker) between
    a finished stop and the exit a supervisor waits for. Exit handlers still
    run, and every log line is flushed."""
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
