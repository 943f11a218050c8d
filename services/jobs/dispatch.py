"""The dispatcher: Jobs holds queued generation jobs and publishes a job's task
to its family's queue only when a worker of that family can take it, choosing
which job fairly.

Why not publish at submit: the queue is first in, first out, so one user's
backlog would run before another user's first job, and a stream of fast jobs
would hold back every high one. Holding the line in PostgreSQL lets Jobs
choose; the queue stays short and keeps what it is good at (delivery to
whichever worker is free, redelivery when one dies).

Capacity, from JetStream's info on the family's consumer: every idle worker
waits in a pull request (`num_waiting`), every busy one holds one message
(`num_ack_pending`, a batch is one message). A family has room for one task
per waiting worker and `prefetch` per busy one (so a worker that finishes
finds its next task at once), less the tasks already on the queue
(`num_pending`) or written to the outbox and not yet published.

The choice, for each free slot: among users under their concurrency limit
(`per_user`, jobs on the queue or running; 0: none), the one with the fewest
jobs in flight; between equals, the job that has waited longest in its
line order, where a fast job type gets a head start of `fast_head_start`
seconds over a high one (fast goes first, but a high job that has waited
longer than the head start goes before a new fast one: nothing starves). So
one user's backlog delays another user's first job by at most the jobs the
workers hold (one running and `prefetch` waiting per worker).

Batches (families that render several jobs in one denoising batch, SDXL): a
chosen job that can share a batch takes compatible waiting jobs (the same
`ourvidz.batching.batch_key`) along, in the same fair order, up to the
family's image budget; they go out as one `GenerationBatch` message named by
the first job's id, which each member records as its `batch_id`.

Every replica runs one; a pass holds the family's advisory lock, so replicas
take turns and never count the same slot twice. A pass runs when a job is
queued, starts or ends on this replica, and every `interval` in any case (a
worker that just became idle, another replica's change).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from ourvidz import batching, catalog, metrics, queue
from ourvidz.background import Background
from ourvidz.db import Database
from ourvidz.v1 import job_pb2
from services.jobs import convert, store

log = logging.getLogger(__name__)

# Recent completed jobs a job type's typical duration is the median of.
TYPICAL_OF_LAST = 20
# How long a measured typical duration is reused before it is read again.
TYPICAL_CACHE_SECONDS = 10.0
# How long a submit asks JetStream for its family's waiting workers.
FRESH_LOOK_SECONDS = 0.25
# How often a pass counts each family's jobs not yet started (the metric
# `ourvidz_jobs_waiting`), off the path of a pass woken by a new job.
WAITING_EVERY_SECONDS = 2.0


@dataclass(frozen=True)
class DispatchSettings:
    # Tasks a busy worker may have waiting for it on the queue.
    prefetch: int = 1
    # Jobs of one family one user may have on the queue or running (0: no limit).
    per_user: int = 4
    # Seconds a fast job type is pulled forward in the line over a high one.
    fast_head_start_seconds: float = 60.0
    # A pass at least this often, whatever happened.
    interval_seconds: float = 0.5
    # Images one batch may hold (families that batch; 0 or 1: no batches).
    batch_images: int = batching.SDXL_BATCH_MAX_IMAGES


@dataclass
class Capacity:
    """A family's workers as JetStream last described its consumer."""

    idle: int = 0
    busy: int = 0
    pending: int = 0
    at: float = 0.0

    @property
    def workers(self) -> int:
        return self.idle + self.busy


@dataclass(frozen=True)
class Family:
    name: str
    types: list[str]
    fast: list[str]


@dataclass(frozen=True)
class Look:
    """A submit's question to JetStream about its family's waiting workers,
    asked before its transaction (`Dispatcher.look_ahead`)."""

    family: Family
    task: asyncio.Future
    # The dispatcher's count of passes that published, when it was asked.
    published: int


def families() -> list[Family]:
    by_worker: dict[str, list[catalog.JobType]] = {}
    for jt in catalog.CATALOG.values():
        by_worker.setdefault(jt.worker, []).append(jt)
    return [
        Family(
            name=worker,
            types=sorted(jt.name for jt in types),
            fast=sorted(jt.name for jt in types if jt.quality == "fast"),
        )
        for worker, types in sorted(by_worker.items())
    ]


class Dispatcher(Background):
    task_name = "dispatcher"

    def __init__(
        self,
        database: Database,
        js: JetStreamContext,
        settings: DispatchSettings,
        *,
        on_dispatched: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = database
        self._js = js
        self.settings = settings
        self.on_dispatched = on_dispatched
        # Publishes a committed outbox row at once (the relay's, set at start).
        self.publisher: Callable[[dict], Awaitable[None]] | None = None
        # Told before a submit commits a task that `publisher` sends at once,
        # and after a worker started a job (the relay holds back between).
        self.on_early: Callable[[], None] = lambda: None
        self.on_started: Callable[[], None] = lambda: None
        self.families = {f.name: f for f in families()}
        self._family_of = {t: f for f in self.families.values() for t in f.types}
        self.capacity: dict[str, Capacity] = {name: Capacity() for name in self.families}
        self._typical: dict[str, tuple[float, float | None]] = {}
        self._wake = asyncio.Event()
        # Per family: the last pass left no job waiting (a new job may go out
        # in its own transaction, `dispatch_new`).
        self._line_empty: dict[str, bool] = {name: False for name in self.families}
        self._waiting_counted_at = -WAITING_EVERY_SECONDS
        self._failing = False
        # Passes that wrote tasks: a submit's early look at the workers taken
        # before one of them is stale.
        self._published = 0

    # --- running -----------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.dispatch_all()
                if self._failing:
                    log.info("dispatch: running again")
                self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database or NATS is away: the next pass retries
                # Room unknown: no queued job's estimate counts on a waiting worker.
                self.capacity = {name: Capacity() for name in self.families}
                if not self._failing:
                    log.warning("dispatch failed (%s: %s); retrying", type(exc).__name__, exc)
                self._failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.interval_seconds)

    async def dispatch_all(self) -> int:
        """One pass over every family; how many tasks went out (each family's
        to the relay as soon as they are written)."""
        sent = 0
        count_waiting = time.monotonic() >= self._waiting_counted_at + WAITING_EVERY_SECONDS
        for family in self.families.values():
            written = await self.dispatch(family, count_waiting=count_waiting)
            if written:
                self.on_dispatched()
            sent += written
        if count_waiting:
            self._waiting_counted_at = time.monotonic()
        return sent

    # --- one family ----------------------------------------------------------------

    async def _capacity(self, family: Family, wait_seconds: float = 2.0) -> Capacity:
        try:
            info = await self._js.consumer_info(
                queue.TASKS_STREAM, queue.consumer_name(family.name), timeout=wait_seconds
            )
        except NotFoundError:  # no worker of this family ever started
            cap = Capacity(at=time.monotonic())
        else:
            cap = Capacity(
                idle=info.num_waiting or 0,
                busy=info.num_ack_pending or 0,
                pending=info.num_pending or 0,
                at=time.monotonic(),
            )
        self.capacity[family.name] = cap
        return cap

    async def dispatch(self, family: Family, *, count_waiting: bool = True) -> int:
        """Publish (through the outbox) as many of the family's waiting jobs as
        its workers have room for; how many tasks were written. With
        `count_waiting`, the family's jobs not yet started are counted for
        the metric first."""
        s = self.settings
        async with self._db.tx(role="system") as conn:
            if count_waiting:
                waiting = await store.family_waiting(conn, family.types)
                metrics.JOBS_WAITING.labels(family.name).set(waiting)
            await store.lock_dispatch(conn, family.name)
            cap = await self._capacity(family)
            unpublished = await store.outbox_tasks(conn, family.name)
            slots = cap.idle + s.prefetch * cap.busy - cap.pending - unpublished
            if slots <= 0:
                # No room now (e.g. a worker between its last task's ack and
                # its next pull): a job submitted next may still go out at
                # once if none waits before it.
                self._line_empty[family.name] = not await store.any_waiting(conn, family.types)
                return 0
            budget = s.batch_images if s.batch_images > 1 else 0
            per_user = slots + budget
            rows = await store.dispatch_candidates(
                conn, family.types, family.fast, s.fast_head_start_seconds, per_user
            )
            if not rows:
                self._line_empty[family.name] = True
                return 0
            users = sorted({str(r["user_id"]) for r in rows})
            in_flight = await store.in_flight_by_user(conn, family.types, users)
            groups = choose(rows, in_flight, slots, s.per_user, budget)
            self._line_empty[family.name] = sum(map(len, groups)) == len(rows)
            now = datetime.now(UTC)
            for group in groups:
                await self._publish(conn, group, now)
            self._published += bool(groups)
        if groups:
            log.debug("dispatched %d task(s) of %s", len(groups), family.name)
        return len(groups)

    async def _publish(self, conn, group: list[dict], now: datetime) -> dict:
        """Write the group's task to the outbox and mark its jobs dispatched;
        the outbox row, as the relay reads it."""
        lead = group[0]
        msg_id = f"{lead['id']}:{uuid.uuid4().hex[:12]}"
        tasks = [convert.generation_task(convert.job_proto(row), now=now) for row in group]
        if len(group) == 1:
            subject, payload, headers = task_subject(lead), tasks[0].SerializeToString(), {}
            batch_id = None
        else:
            subject, payload, headers = queue.batch_message(tasks)
            batch_id = str(lead["id"])
        # The task continues the trace of the call that queued its (first) job.
        trace = lead.get("trace_headers") or {}
        ids = [str(r["id"]) for r in group]
        await store.dispatch_task(conn, ids, batch_id, subject, msg_id, payload, headers, trace)
        return {
            "subject": subject,
            "msg_id": msg_id,
            "payload": payload,
            "headers": headers,
            "trace_headers": trace,
        }

    def look_ahead(self, job_type: str) -> Look | None:
        """For a job about to be queued: when its family's line is empty (it
        may go out at once, `dispatch_new`), start asking JetStream for the
        family's waiting workers now, so the answer is in by the time the
        submit's transaction wants it. None when the job will wait in line."""
        family = self._family_of.get(job_type)
        if family is None or not self._line_empty[family.name]:
            return None
        task = asyncio.ensure_future(self._capacity(family, wait_seconds=FRESH_LOOK_SECONDS))
        # An answer that failed is never awaited by a submit that gave up.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return Look(family, task, self._published)

    async def dispatch_new(
        self, conn, row: dict, user_active: int, look: Look | None = None
    ) -> dict | None:
        """In the transaction that queues the job `row`: publish it at once
        (through the outbox) when a worker of its family waits and no other
        job waits in line, the path of a job submitted to an idle family,
        without a pass of its own: the outbox row written, for `publish_now`
        once the transaction committed. None (the job waits for a pass)
        otherwise.
        `user_active`: the user's jobs active before this one (of any family;
        under the concurrency limit, its jobs in flight need no count).
        `look`: the family's waiting workers, asked for before the
        transaction (`look_ahead`); used unless a pass of this replica
        published since it was asked (then asked again).
        The family's lock is held to the end of the transaction, so a pass
        counts this task (or waits for it)."""
        family = self._family_of.get(row["job_type"])
        if family is None or not self._line_empty[family.name]:
            return None
        await store.lock_dispatch(conn, family.name)
        try:
            if look is not None and look.family is family and look.published == self._published:
                cap = await look.task
            else:
                # The snapshot may be half a second old; a submit waits little for this.
                cap = await self._capacity(family, wait_seconds=FRESH_LOOK_SECONDS)
        except Exception:  # NATS slow or away: the job waits in line for a pass
            return None
        if cap.idle <= cap.pending:
            return None
        user = str(row["user_id"])
        if 0 < self.settings.per_user <= user_active:
            flying = await store.in_flight_by_user(conn, family.types, [user])
            if flying.get(user, 0) >= self.settings.per_user:
                return None
        written = await self._publish(conn, [row], datetime.now(UTC))
        cap.pending += 1  # until the next pass reads the consumer again
        self.on_early()
        return written

    async def publish_now(self, written: dict) -> None:
        """A task `dispatch_new` wrote, committed since: to the queue at once."""
        if self.publisher is not None:
            await self.publisher(written)
        else:
            self.on_dispatched()

    # --- where a queued job stands ----------------------------------------------------

    async def estimate(self, job: job_pb2.Job) -> job_pb2.QueueEstimate | None:
        """The queued job's position and expected start (None for a job not
        queued or of no known family)."""
        family = self._family_of.get(job.job_type)
        if job.state != job_pb2.JOB_STATE_QUEUED or family is None:
            return None
        cap = self.capacity[family.name]
        if cap.idle > cap.pending:
            # A worker waits: the job goes out at once (no line to count).
            out = job_pb2.QueueEstimate(position=0)
            out.estimated_start_time.FromDatetime(datetime.now(UTC))
            return out
        s = self.settings
        async with self._db.tx(role="system") as conn:
            ahead = await store.jobs_ahead(
                conn, job.id, family.types, family.fast, s.fast_head_start_seconds
            )
            typical = await self._typical_seconds(conn, job.job_type)
        out = job_pb2.QueueEstimate(dispatched=ahead is None, position=ahead or 0)
        if cap.workers and typical is not None:
            start = datetime.now(UTC) + timedelta(seconds=expected_wait(out.position, cap, typical))
            out.estimated_start_time.FromDatetime(start)
        return out

    async def _typical_seconds(self, conn, job_type: str) -> float | None:
        at, value = self._typical.get(job_type, (0.0, None))
        if time.monotonic() - at > TYPICAL_CACHE_SECONDS:
            value = await store.typical_seconds(conn, job_type, TYPICAL_OF_LAST)
            self._typical[job_type] = (time.monotonic(), value)
        return value


def task_subject(row: dict) -> str:
    """The subject a dispatched job's generation task was published on: its
    family and priority, then its own id or, for a member of a batch, the
    batch's (`tasks.sdxl.fast.<id>`), so JetStream can be asked whether it
    holds the task."""
    task_id = row.get("batch_id") or row["id"]
    return queue.job_task_subject(catalog.CATALOG[row["job_type"]].subject, str(task_id))


def expected_wait(position: int, cap: Capacity, typical: float) -> float:
    """Seconds until a job with `position` jobs ahead starts: at once while an
    idle worker is left for it, else when enough running jobs end, each
    worker finishing one every `typical` seconds, the first halfway through."""
    if position < cap.idle:
        return 0.0
    return typical * ((position - cap.idle) / max(cap.workers, 1) + 0.5)


def choose(
    rows: list[dict], in_flight: dict[str, int], slots: int, per_user: int, budget: int
) -> list[list[dict]]:
    """The tasks to publish, each a list of jobs (one, or a batch), from the
    candidates `rows` (each user's line, in line order), taking turns between
    users: the user with the fewest jobs in flight first, then the job that
    has waited longest in line order."""
    lines: dict[str, list[dict]] = {}
    for row in rows:
        lines.setdefault(str(row["user_id"]), []).append(row)
    flying = {user: in_flight.get(user, 0) for user in lines}

    def room(user: str) -> bool:
        return bool(lines[user]) and (per_user <= 0 or flying[user] < per_user)

    def turn_order() -> list[str]:
        return sorted(
            (u for u in lines if room(u)), key=lambda u: (flying[u], lines[u][0]["rank_time"])
        )

    groups: list[list[dict]] = []
    while len(groups) < slots:
        order = turn_order()
        if not order:
            break
        user = order[0]
        head = lines[user].pop(0)
        flying[user] += 1
        group = [head]
        key = batch_key(head) if budget else None
        if key is not None:
            images = head["num_images"]
            while True:  # fill the batch in turn order too
                mate = _next_mate(lines, turn_order(), key, budget - images)
                if mate is None:
                    break
                mate_user, row = mate
                lines[mate_user].remove(row)
                flying[mate_user] += 1
                images += row["num_images"]
                group.append(row)
        groups.append(group)
    return groups


def batch_key(row: dict) -> tuple | None:
    """`ourvidz.batching.batch_key_of` a job row (None: it runs alone)."""
    return batching.batch_key_of(
        job_type=row["job_type"],
        width=row["width"],
        height=row["height"],
        steps=row["steps"],
        guidance_scale=row["guidance_scale"],
        has_reference=bool(row.get("reference_key")),
        num_frames=row.get("num_frames", 1),
    )


def _next_mate(
    lines: dict[str, list[dict]], order: list[str], key: tuple, images_left: int
) -> tuple[str, dict] | None:
    for user in order:
        for row in lines[user]:
            if row["num_images"] <= images_left and batch_key(row) == key:
                return user, row
    return None
