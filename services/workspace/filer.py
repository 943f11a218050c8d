"""The filer: a durable JetStream pull consumer on the job events that files
completed jobs' outputs into workspace sessions or the library.

A message is acked only after its transaction committed; a failure naks it for
a later redelivery, and a redelivered completion files nothing twice (unique
keys with ON CONFLICT DO NOTHING). Every other event is acked and ignored here
(watchers see them through their own subscriptions). After commit, each new
item is announced on `workspace.items.<user_id>.<session_id>`. Filing a
completion is a span of the job's trace (the event's headers carry it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from ourvidz import logs, telemetry
from ourvidz.errors import dependency_failure
from ourvidz.queue import EVENTS_STREAM
from ourvidz.v1 import events_pb2
from services.workspace.convert import Signer, completion
from services.workspace.service import Workspace
from services.workspace.watch import item_subject

log = logging.getLogger(__name__)

RETRY_DELAY_SECONDS = 2.0
FETCH_TIMEOUT_SECONDS = 1.0


class Filer:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        service: Workspace,
        signer: Signer,
        *,
        durable: str,
        batch: int = 16,
        fetch_timeout: float = FETCH_TIMEOUT_SECONDS,
    ) -> None:
        self._nc = nc
        self._js = js
        self._service = service
        self._signer = signer
        self._durable = durable
        self._batch = batch
        self._fetch_timeout = fetch_timeout
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        # Fetches that found nothing to do (an idle filer counts up once a timeout).
        self.idle_fetches = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="workspace-filer")

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Finish the batch in hand (its messages get acked), then stop."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_seconds)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._consume()
            except Exception as exc:  # NATS away, the consumer deleted: bind again
                log.warning(
                    "the filer's consumer failed (%s: %s); binding again in %.0f s",
                    type(exc).__name__,
                    exc,
                    RETRY_DELAY_SECONDS,
                )
                await asyncio.sleep(RETRY_DELAY_SECONDS)

    async def _consume(self) -> None:
        sub = await self._js.pull_subscribe_bind(self._durable, stream=EVENTS_STREAM)
        log.info("filer bound to the consumer %s", self._durable)
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(self._batch, timeout=self._fetch_timeout)
                except (TimeoutError, nats.errors.TimeoutError):
                    # Nothing to file. A fetch of several messages times out with
                    # the builtin TimeoutError, a fetch of one with nats's own.
                    self.idle_fetches += 1
                    continue
                for msg in msgs:
                    await self.handle(msg)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def handle(self, msg) -> None:
        try:
            event = events_pb2.JobEvent.FromString(msg.data)
        except DecodeError:
            log.error("undecodable job event on %s; dropped", msg.subject)
            await msg.term()
            return
        if event.type != events_pb2.JOB_EVENT_TYPE_COMPLETED:
            await msg.ack()
            return
        done = completion(event)
        with (
            logs.bind(job_id=event.job_id, user_id=event.user_id),
            telemetry.job(
                "workspace",
                "workspace.file",
                msg.headers,
                job_id=event.job_id,
                job_type=event.job.job_type,
                **{"messaging.system": "nats", "messaging.destination.name": msg.subject},
            ),
        ):
            if done is None:
                log.error("completed event without a usable job snapshot; dropped")
                await msg.term()
                return
            try:
                items = await self._service.file(done)
            except Exception as exc:
                if (dependency := dependency_failure(exc)) is not None:
                    log.warning("filing the job's outputs waits: %s", dependency.summary)
                else:
                    log.exception("filing the job's outputs failed; will retry")
                # Later and later while it lasts, at most every 30 s.
                delivered = msg.metadata.num_delivered or 1
                await msg.nak(delay=min(RETRY_DELAY_SECONDS * delivered, 30.0))
                return
            await msg.ack()
            if items:
                log.info("filed %d items into session %s", len(items), items[0].session_id)
            for item in items:
                try:
                    await self._nc.publish(
                        item_subject(str(item.user_id), str(item.session_id)),
                        self._signer.item(item).SerializeToString(),
                    )
                except Exception:
                    log.warning("could not announce item %s", item.id, exc_info=True)
