"""Running a service as a process: settings built once, logs set up, the
service started, then stopped gracefully on SIGTERM or SIGINT.

Every `services/<name>/main.py` ends with `runtime.run(name, Settings, start)`;
`start(settings)` returns an object with an async `stop()`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ourvidz import logs

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
) -> None:
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


def run(name: str, settings_cls: type, start: Callable[[Any], Awaitable[Any]]) -> None:
    settings = settings_cls()
    logs.setup(name, settings.log_level, settings.log_json)
    asyncio.run(serve_until_signalled(start, settings, name))
