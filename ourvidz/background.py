"""A service's loop that runs beside its server until the service stops."""

from __future__ import annotations

import asyncio
import contextlib


class Background:
    """One asyncio task (`_run`) started with the service and cancelled at its
    stop; the pass in hand ends there (a transaction it held rolls back)."""

    task_name = "background"
    _task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        raise NotImplementedError
