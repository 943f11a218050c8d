"""The gateway's NATS connection, for the operators' queue and worker views.

Opened in the background with retries, so a NATS that is down or slow never
stops the gateway from starting or serving the rest of the API; until it is
connected, the routes that need it answer 503."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from ourvidz import queue

log = logging.getLogger(__name__)


class NatsLink:
    def __init__(self, url: str, retry_seconds: float = 2.0, max_retry_seconds: float = 30.0):
        self.url = url
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self._task: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        delay = self.retry_seconds
        while True:
            try:
                self.nc, self.js = await queue.connect(self.url, name="gateway")
                log.info("connected to NATS")
                return
            except Exception as exc:
                log.warning("NATS is not reachable (%r); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_seconds)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5)
