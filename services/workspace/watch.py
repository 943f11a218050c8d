"""Live updates of one workspace session, from core NATS.

Two subscriptions per watcher: the user's job events
(`events.jobs.<user_id>.>`, published by the jobs service into JetStream, which
also delivers them to plain subscribers) and the items the filer files into the
session (`workspace.items.<user_id>.<session_id>`, published after commit).

Which job events belong to the session: state and terminal events carry a
snapshot of the job, whose `workspace_session_id` names its session (an empty
one means the user's active session). Each watcher remembers that verdict per
job (a bounded map), and applies it to the job's progress and preview events,
which carry no snapshot. A job seen first through such an event (the watcher
started while it ran) is forwarded when the watched session is the active one,
where jobs go unless they name another session.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS

from ourvidz.errors import QUEUE, Unavailable
from ourvidz.v1 import events_pb2
from ourvidz.v1 import workspace_service_pb2 as pb
from services.workspace.convert import summary

log = logging.getLogger(__name__)

ITEMS_PREFIX = "workspace.items"
KNOWN_JOBS = 1024
# How long opening a watch waits for NATS to confirm the subscriptions.
FLUSH_TIMEOUT_SECONDS = 2.0


def item_subject(user_id: str, session_id: str) -> str:
    """Where the filer announces an item filed into a session (core NATS;
    payload: a WorkspaceItem with signed URLs)."""
    return f"{ITEMS_PREFIX}.{user_id}.{session_id}"


@dataclass
class SessionFilter:
    """Decides which of a user's job events concern one session."""

    session_id: str
    is_active: bool
    known: OrderedDict[str, bool] = field(default_factory=OrderedDict)

    def wants(self, event: events_pb2.JobEvent) -> bool:
        if event.HasField("job") and event.job.id:
            named = event.job.workspace_session_id
            belongs = named == self.session_id or (not named and self.is_active)
            self.known[event.job_id] = belongs
            self.known.move_to_end(event.job_id)
            while len(self.known) > KNOWN_JOBS:
                self.known.popitem(last=False)
            return belongs
        verdict = self.known.get(event.job_id)
        return self.is_active if verdict is None else verdict


class Watch:
    """One open watch: subscribed on `open()`, updates through iteration."""

    def __init__(
        self,
        nc: NATS,
        user_id: str,
        session_id: str,
        is_active: bool,
        closing: asyncio.Event,
        max_queue: int = 1000,
    ) -> None:
        self._nc = nc
        self._user_id = user_id
        self._session_id = session_id
        self._filter = SessionFilter(session_id, is_active)
        self._closing = closing
        self._queue: asyncio.Queue = asyncio.Queue(max_queue)
        self._subs: list = []

    async def _on_message(self, msg) -> None:
        try:
            self._queue.put_nowait(msg)
        except asyncio.QueueFull:
            log.warning("watcher of session %s is behind; dropped an update", self._session_id)

    async def open(self) -> None:
        """Subscribe; UNAVAILABLE (the message queue) while NATS is away, as
        no update could reach the watcher."""
        if not self._nc.is_connected:
            raise Unavailable(QUEUE.message, reason=QUEUE.reason)
        self._subs.append(
            await self._nc.subscribe(f"events.jobs.{self._user_id}.>", cb=self._on_message)
        )
        self._subs.append(
            await self._nc.subscribe(
                item_subject(self._user_id, self._session_id), cb=self._on_message
            )
        )
        # Subscribed at the server before the caller hears so.
        await self._nc.flush(timeout=FLUSH_TIMEOUT_SECONDS)

    async def close(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                log.debug("unsubscribe failed", exc_info=True)
        self._subs.clear()

    def _update(self, msg) -> pb.WatchSessionResponse | None:
        try:
            if msg.subject.startswith(ITEMS_PREFIX + "."):
                return pb.WatchSessionResponse(item=pb.WorkspaceItem.FromString(msg.data))
            event = events_pb2.JobEvent.FromString(msg.data)
        except DecodeError:
            log.warning("undecodable message on %s", msg.subject)
            return None
        if not self._filter.wants(event):
            return None
        return pb.WatchSessionResponse(job_event=summary(event))

    async def updates(self) -> AsyncIterator[pb.WatchSessionResponse]:
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            while True:
                getter = asyncio.ensure_future(self._queue.get())
                done, _ = await asyncio.wait({getter, closing}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return
                update = self._update(getter.result())
                if update is not None:
                    yield update
        finally:
            closing.cancel()
            await self.close()


class Watchers:
    """Opens watches and ends them all when the service stops."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self.closing = asyncio.Event()

    async def open(self, user_id: str, session_id: str, is_active: bool) -> Watch:
        watch = Watch(self._nc, user_id, session_id, is_active, self.closing)
        try:
            await watch.open()
        except BaseException:
            await watch.close()  # no subscription outlives a watch that failed to open
            raise
        return watch

    def close_all(self) -> None:
        self.closing.set()
