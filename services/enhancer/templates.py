"""The active templates, cached per replica for a TTL and dropped at once when
any replica changes a template (a core NATS message on
`enhancer.templates.changed`), so a new version takes effect everywhere
without a restart. Core NATS is at most once: the TTL bounds how long a
replica that missed a message keeps an old version."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ourvidz.db import Database
from services.enhancer import store

log = logging.getLogger(__name__)


class TemplateCache:
    def __init__(
        self, database: Database, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._db = database
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[str, tuple[float, dict | None]] = {}
        self._generation = 0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Forget every cached template (a read in flight does not refill it)."""
        self._generation += 1
        self._entries.clear()

    async def active(self, target_model: str) -> dict | None:
        """The active template row of `target_model` (None when there is none)."""
        now = self._clock()
        hit = self._entries.get(target_model)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self._lock:
            generation = self._generation
            async with self._db.tx(role="system") as conn:
                row = await store.active_template(conn, target_model)
            if generation == self._generation:
                self._entries[target_model] = (self._clock() + self._ttl, row)
            return row


class ChangeNotifier:
    """Publishes template changes and drops this replica's cache on any."""

    def __init__(self, nc, subject: str, cache: TemplateCache) -> None:
        self._nc = nc
        self._subject = subject
        self._cache = cache
        self._sub = None

    async def subscribe(self) -> None:
        async def on_change(msg) -> None:
            log.info("templates changed (%s); cache dropped", msg.data.decode(errors="replace"))
            self._cache.invalidate()

        self._sub = await self._nc.subscribe(self._subject, cb=on_change)

    async def publish(self, target_model: str) -> None:
        self._cache.invalidate()
        try:
            await self._nc.publish(self._subject, target_model.encode())
            await self._nc.flush(timeout=5)
        except Exception as exc:  # the TTL still bounds how stale other replicas get
            log.warning("could not announce a template change: %s", exc)

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe: %s", exc)
            self._sub = None
