"""The outbox relay: publishes rows of jobs.outbox to JetStream, then deletes
them.

A change and its outbox rows commit together, so nothing is lost when the
process dies between the commit and the publish: the next relay (this replica
after a restart, or another one) finds the rows. Rows are claimed with
`FOR UPDATE SKIP LOCKED`, so several replicas share the work without
publishing a row twice at once; a row published but not yet deleted when a
relay dies is published again with the same `Nats-Msg-Id`, which JetStream's
duplicate window drops. A row written inside a trace (its `trace_headers`)
is published in a `jobs.outbox.publish` span of that trace, whose context the
message carries as its traceparent / tracestate headers, so its consumer
continues the trace. It wakes on `NOTIFY jobs_outbox` (a trigger on the
outbox) and polls about once a second in case a notification is missed.

Every `backlog_seconds` it counts the rows still waiting (the metric
`ourvidz_outbox_backlog_rows`): every replica counts the same table, so
dashboards take the max() of the replicas, not their sum().
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import psycopg
from nats.js import JetStreamContext
from opentelemetry import trace

from ourvidz import metrics, telemetry
from ourvidz.db import Database
from services.jobs import store

log = logging.getLogger(__name__)

CHANNEL = "jobs_outbox"
PUBLISH_TIMEOUT_SECONDS = 5.0
# After a task went out at once to a waiting worker, the relay's next batch
# waits until a worker started a job, at most this long: the worker's
# StartJob, arriving now, is not kept behind bookkeeping (the same rows, and
# the job's events, a moment later).
EARLY_GRACE_SECONDS = 0.02
# Message ids published early that the relay need not publish again: kept
# until their row is claimed, at most this many (then JetStream's duplicate
# window drops a second publish, as before).
EARLY_KEPT = 1000


class OutboxRelay:
    def __init__(
        self,
        database: Database,
        js: JetStreamContext,
        *,
        listen_url: str,
        batch: int = 100,
        poll_seconds: float = 1.0,
        backlog_seconds: float = 5.0,
    ) -> None:
        self._db = database
        self._js = js
        self._listen_url = listen_url
        self._batch = batch
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._backlog_every = backlog_seconds
        self._backlog_at = 0.0
        self._early: dict[str, None] = {}  # insertion-ordered set of msg ids
        self._hold_until = 0.0
        self._released = asyncio.Event()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="outbox-listen"),
            asyncio.create_task(self._run(), name="outbox-relay"),
        ]

    async def stop(self) -> None:
        """Stop after the batch in hand: its transaction either commits (rows
        deleted) or rolls back (rows stay for the next relay)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def wake(self) -> None:
        self._wake.set()

    async def drain_once(self) -> tuple[int, bool]:
        """Publish one batch. Returns (rows published, whether all went out)."""
        async with self._db.tx(role="system") as conn:
            rows = await store.claim_outbox(conn, self._batch)
            done: list[int] = []
            ok = True
            for row in rows:
                if row["msg_id"] in self._early:  # on the stream already (publish_committed)
                    del self._early[row["msg_id"]]
                    done.append(row["id"])
                    continue
                try:
                    await self._publish(row)
                except Exception as exc:  # NATS down or slow: keep the rest for later
                    log.warning("outbox publish to %s failed: %s", row["subject"], exc)
                    ok = False
                    break
                done.append(row["id"])
            if done:
                await store.delete_outbox(conn, done)
        return len(done), ok

    async def publish_committed(self, row: dict) -> None:
        """Publish a row its writer has just committed, ahead of the relay's
        next claim (a task for a worker that waits). Published, the relay's
        claim deletes the row without publishing it again (another replica's
        relay may: JetStream's duplicate window drops that copy, the same
        Nats-Msg-Id). A failure here is left to the relay."""
        try:
            await self._publish(row)
        except Exception as exc:  # NATS slow or away: the relay retries
            log.info("early publish to %s failed (%s); left to the relay", row["subject"], exc)
            self.wake()
            return
        self._early[row["msg_id"]] = None
        while len(self._early) > EARLY_KEPT:
            del self._early[next(iter(self._early))]

    def hold(self) -> None:
        """A task is about to be committed and published at once
        (`publish_committed`): the next batch waits for `release` (at most
        EARLY_GRACE_SECONDS), so the commit's notification does not start it
        while the worker's StartJob arrives."""
        self._released.clear()
        self._hold_until = time.monotonic() + EARLY_GRACE_SECONDS

    def release(self) -> None:
        """A worker started a job: a held batch goes now."""
        self._released.set()

    async def _publish(self, row: dict) -> None:
        """One row as a message. A row written inside a trace is published in
        a producer span of that trace, whose context the message carries."""
        headers = {**(row.get("headers") or {}), "Nats-Msg-Id": row["msg_id"]}
        carried = row.get("trace_headers") or {}
        if not carried:
            await self._publish_with(row, headers)
            return
        with telemetry.tracer("jobs").start_as_current_span(
            "jobs.outbox.publish",
            context=telemetry.extract(carried),
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": row["subject"],
                "messaging.message.id": row["msg_id"],
            },
        ):
            await self._publish_with(row, telemetry.inject(headers))

    async def _publish_with(self, row: dict, headers: dict[str, str]) -> None:
        await self._js.publish(
            row["subject"],
            bytes(row["payload"]),
            timeout=PUBLISH_TIMEOUT_SECONDS,
            headers=headers,
        )

    async def count_backlog(self) -> int:
        """Count the unpublished rows and set the backlog gauge."""
        async with self._db.tx(role="system") as conn:
            rows = await store.count_outbox(conn)
        metrics.OUTBOX_BACKLOG.set(rows)
        return rows

    async def _run(self) -> None:
        backoff = self._poll
        while True:
            self._wake.clear()
            held = self._hold_until - time.monotonic()
            if held > 0:  # a worker is starting the task just published: it goes first
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), held)
            try:
                while True:
                    count, ok = await self.drain_once()
                    if not ok or count < self._batch:
                        break
                if time.monotonic() >= self._backlog_at:
                    self._backlog_at = time.monotonic() + self._backlog_every
                    await self.count_backlog()
                backoff = self._poll if ok else min(backoff * 2, 30.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: try again later
                log.warning("outbox relay error: %s", exc)
                ok = False
                backoff = min(backoff * 2, 30.0)
            if ok:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll)
            else:
                await asyncio.sleep(backoff)

    async def _listen(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._listen_url, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._wake.set()  # catch up on anything written while not listening
                    while True:
                        # aclosing: a cancelled generator must let go of the
                        # connection's lock before the connection closes.
                        notifies = conn.notifies(timeout=30.0)
                        async with contextlib.aclosing(notifies):
                            async for _ in notifies:
                                self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox listener error: %s", exc)
                await asyncio.sleep(1.0)
