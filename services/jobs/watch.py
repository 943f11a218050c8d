"""WatchJob: a job's history from the database, then its live events from NATS,
in sequence order, until a terminal event.

The subscription starts before the history is read, so no event falls between
the two; an event seen twice is dropped by its sequence number. Core NATS
delivers at most once, so a gap in sequences, or a quiet spell, is filled from
the database, which holds every event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from nats.aio.client import Client as NATS

from ourvidz.db import Database
from ourvidz.errors import NotFound
from ourvidz.storage import BlobStore
from ourvidz.v1 import events_pb2
from services.jobs import convert, domain, store


class Watcher:
    def __init__(self, database: Database, nc: NATS, blobs: BlobStore, poll_seconds: float) -> None:
        self._db = database
        self._nc = nc
        self._blobs = blobs
        self._poll = poll_seconds

    async def _stored(self, user_id: str, job_id: str, after: int) -> tuple[list, bool]:
        """Events after `after` and whether the job has reached a terminal state."""
        async with self._db.tx(user_id=user_id) as conn:
            row = await store.get_job(conn, job_id)
            if row is None:
                raise NotFound("job not found")
            rows = await store.events_after(conn, job_id, after)
        events = [events_pb2.JobEvent.FromString(bytes(r["payload"])) for r in rows]
        return events, row["state"] in domain.TERMINAL

    def _for_client(self, ev: events_pb2.JobEvent) -> events_pb2.JobEvent:
        if ev.HasField("job"):
            convert.sign_assets(ev.job, self._blobs)
        return ev

    async def watch(
        self,
        user_id: str,
        job_id: str,
        after_sequence: int,
        opened: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[events_pb2.JobEvent]:
        """The job's events after `after_sequence`, then live ones until a
        terminal event. `opened` is awaited once the watch is set up (the job
        found, the history read, the subscription in place), before any event."""
        job_id = domain.parse_id(job_id)
        inbox: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(msg) -> None:
            inbox.put_nowait(msg.data)

        sub = await self._nc.subscribe(f"events.jobs.*.{job_id}", cb=on_message)
        try:
            last = max(after_sequence, 0)
            events, terminal = await self._stored(user_id, job_id, last)
            if opened is not None:
                await opened()
            while True:
                for ev in events:
                    if ev.sequence <= last:
                        continue
                    yield self._for_client(ev)
                    last = ev.sequence
                    if ev.type in convert.TERMINAL_EVENT_TYPES:
                        return
                if terminal and not events:
                    return  # finished, and everything after `last` was sent
                events, terminal = await self._next(inbox, user_id, job_id, last)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _next(
        self, inbox: asyncio.Queue[bytes], user_id: str, job_id: str, last: int
    ) -> tuple[list, bool]:
        try:
            data = await asyncio.wait_for(inbox.get(), self._poll)
        except TimeoutError:
            return await self._stored(user_id, job_id, last)
        ev = events_pb2.JobEvent.FromString(data)
        if ev.sequence <= last:
            return [], False
        if ev.sequence == last + 1:
            return [ev], False
        return await self._stored(user_id, job_id, last)  # a gap: read it from the database
