"""Throttled progress reports from the torch thread to the jobs service.

The pipeline's step callback runs in a worker thread; gRPC objects belong to
the event loop. `ProgressReporter.on_step` (any thread) decides whether a step
is worth reporting (always the first and the last, otherwise at most one per
interval) and hands it to a single task on the loop, which sends reports in
order. A report's answer may ask to cancel: that sets the job's cancel event,
which the step callback polls.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

_DONE = None


class ProgressReporter:
    def __init__(
        self,
        send: Callable[[int, int], Awaitable[bool]],
        cancel: threading.Event,
        interval_seconds: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._send = send
        self._cancel = cancel
        self._interval = interval_seconds
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self._last = float("-inf")
        self._task = loop.create_task(self._run())

    def on_step(self, step: int, total: int) -> None:
        """Called by the pipeline after each step, from its thread."""
        now = time.monotonic()
        if step in (1, total) or now - self._last >= self._interval:
            self._last = now
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (step, total))

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not _DONE:
            try:
                if await self._send(*item):
                    self._cancel.set()
            except Exception as exc:  # progress is best effort; the job goes on
                log.warning("progress report failed: %s", exc)

    async def close(self) -> None:
        """Send what is queued, then stop."""
        self._queue.put_nowait(_DONE)
        await self._task
