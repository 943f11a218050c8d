"""The enhancement timeout: a loop that sends jobs left `enhancing` too long
on to generation with their original prompt (JobsCore.expire_enhancements).

Every replica runs one. Claims use `FOR UPDATE SKIP LOCKED`, so replicas never
expire the same job twice, and a CompleteEnhancement racing with a sweep is
decided by the row lock: the loser sees a job no longer enhancing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ourvidz.background import Background
from services.jobs.service import JobsCore

log = logging.getLogger(__name__)


class EnhancementSweeper(Background):
    task_name = "enhancement-sweeper"

    def __init__(
        self,
        core: JobsCore,
        *,
        timeout_seconds: float,
        check_seconds: float,
        batch: int = 100,
        on_expired: Callable[[], None] | None = None,
    ) -> None:
        self._core = core
        self._timeout = timeout_seconds
        self._check = check_seconds
        self._batch = batch
        self._on_expired = on_expired

    async def sweep_once(self) -> int:
        """Expire what is overdue, a batch at a time. Returns how many jobs."""
        total = 0
        while True:
            jobs = await self._core.expire_enhancements(self._timeout, self._batch)
            total += len(jobs)
            if jobs and self._on_expired is not None:
                self._on_expired()  # publish their generation tasks now
            if len(jobs) < self._batch:
                return total

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: try at the next tick
                log.warning("enhancement sweep failed: %s", exc)
            await asyncio.sleep(self._check)
