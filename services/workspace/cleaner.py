"""The periodic clean-up of idle sessions (the work is Workspace.cleanup_idle,
which tests call directly)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.workspace.service import Workspace

log = logging.getLogger(__name__)


class Cleaner:
    def __init__(self, service: Workspace, interval_seconds: float) -> None:
        self._service = service
        self._interval = interval_seconds
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="workspace-cleaner")

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._service.cleanup_idle()
            except Exception:
                log.exception("clean-up of idle sessions failed; next try in one interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
