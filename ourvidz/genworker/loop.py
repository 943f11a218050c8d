"""The JetStream loop every generation worker runs; a model family supplies
only its render and outputs (`Family`).

Every worker of a family shares its one durable consumer (`sdxl`, `wan`: both
priorities) and waits for work in one long pull request: Jobs publishes a
task only when a worker has room, in the order it chose (fast before high,
users in turn; services/jobs/dispatch.py), so a task reaches a waiting
worker at once.

Per message: parse the `GenerationTask`, `StartJob` (Jobs counts the attempt,
or says not to proceed: the job was cancelled, finished or out of attempts),
render while two heartbeats run (`in_progress` keeps the message ours,
`Heartbeat` tells Jobs the worker lives) and progress goes to Jobs
(`ProgressReporter`), upload the outputs under the family's deterministic
keys, then `CompleteJob`, then ack. A redelivered task gives the same outputs
at the same keys, so a crash anywhere loses nothing and duplicates nothing.

A batch message (`GenerationBatch`, the header `Ourvidz-Task: batch`: several
compatible jobs that Jobs put together) is run the same way for each of its
jobs: each is started (a job that must not run drops out, the others go on),
beats, reports, is cancelled, uploads and completes or fails with its own
start token. The jobs that proceed render together where the family can
(`render_batch`: one denoising batch, every job hearing the shared step
count), else one after another. A job cancelled meanwhile is settled at once
(its heartbeat and reports stop; its images, still computed with the others'
so that theirs do not change, are dropped); the render stops only once every
job is cancelled. Each job asks something of the message (`Settle`): the
message is acked once every job is settled, and nak'ed when one must run
again (a retry, a hand-back); its redelivery finds the others settled, and
Jobs refuses to start them again. The message is one span, `<family>.batch`.

Cancellation reaches a running job three ways: the answer to a progress report
or a heartbeat (`cancel_requested`) and the job's `CANCELLED` event on
`events.jobs.<user>.<job>`; any of them stops the pipeline at its next step.

Every call about the job carries the start token StartJob gave: Jobs answers
only the start that holds the job. When another delivery of the task started
it since (this worker was cut off and judged lost), the refusal stops the
pipeline too, and the message is handed back without touching the outputs,
which the holder writes at the same keys.

A dependency that is away (the jobs service, its database, storage) is never
the job's fault: the worker keeps the message and retries with a back-off,
says so in its log and its health card (`waiting_on`), and after
`dependency_wait_seconds` hands the task back with a delay. No message is
terminated unless Jobs recorded the job's outcome. Blobs are removed only when
Jobs answered that the job ended without them; everything else is left to the
jobs service's collector of orphan blobs.

Each message is the span `<family>.job` of its job's trace (the message's
headers carry the context of the call that queued it), and every call to Jobs
about the job runs inside it; the render's stages and the upload are spans
of it (`telemetry.stage`).

Failures of the job itself: transient ones (anything unexpected) are
reported with `will_retry` and the message is nak'ed with a backoff; Jobs
decides whether an attempt is left. Permanent ones (bad task, bad reference)
fail the job and terminate the message.

Failures of the device: out of GPU memory, the render runs again in this
process with less memory (`memory_fallbacks`: the decode in slices and tiles,
then the batch split in halves down to one image; each image keeps its seed),
and only when the last fallback runs out too the job fails with
`OUT_OF_MEMORY`, naming what was tried. A broken device (a sticky CUDA error,
`device_broken`) hands the task back at no cost to the job and stops the loop
with `EXIT_DEVICE_FAILED`: the service reports NOT_SERVING and the process
exits for its supervisor to restart it on a fresh CUDA context.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from ourvidz import logs, queue, telemetry
from ourvidz.auth import TokenSigner, TokenSource
from ourvidz.errors import parse_rpc_error
from ourvidz.genworker.errors import (
    Cancelled,
    PermanentError,
    classify,
    dependency_error,
    device_broken,
    free_device_memory,
    out_of_memory,
)
from ourvidz.genworker.memory import FULL_MEMORY, MemoryFallback, memory_fallbacks
from ourvidz.genworker.previews import DEFAULT_MAX_BYTES, Previews
from ourvidz.genworker.progress import UPLOADING, ProgressReporter
from ourvidz.storage import BlobStore
from ourvidz.v1 import events_pb2, job_pb2, job_service_pb2, job_service_pb2_grpc, queue_pb2

log = logging.getLogger(__name__)

# Earlier versions had a consumer per priority, `<family>-fast` and `-high`.
LEGACY_QUALITIES = ("fast", "high")
# Jobs' reasons for refusing a completion of a job that ended without it.
_ENDED_WITHOUT_OUTPUTS = ("JOB_CANCELLED", "JOB_FAILED")
# Jobs' reason for refusing a call of a start that no longer holds the job
# (another delivery of its task started it since).
_NOT_HOLDER = "NOT_JOB_HOLDER"
T = TypeVar("T")
# The process's exit status once its device failed (EX_SOFTWARE of sysexits):
# non-zero, so the supervisor restarts it.
EXIT_DEVICE_FAILED = 70


class DependencyAway(Exception):
    """A dependency stayed away for the whole wait (or the worker is stopping
    meanwhile): the task goes back to the queue, at no cost to the job."""


@dataclass(frozen=True)
class LoopConfig:
    """The loop's settings, read from a service's `<family>_*` settings."""

    family: str
    worker_id: str
    # Signs this worker's own worker tokens (WORKER_KEY_FILE).
    signer: TokenSigner = field(repr=False)
    ack_wait_seconds: float = 15.0
    # Delays before a failed job's message is redelivered, by attempt.
    retry_backoff_seconds: tuple[float, ...] = (5.0, 15.0, 30.0)
    # How long a task is kept while a dependency is away, and the delay of its
    # hand-back after that.
    dependency_wait_seconds: float = 600.0
    dependency_nak_seconds: float = 30.0
    progress_interval_seconds: float = 0.5
    # A preview image every this many denoising steps (0: none), at most one
    # per preview_min_seconds, each a PNG of at most preview_max_bytes.
    preview_every_steps: int = 0
    preview_min_seconds: float = 1.0
    preview_max_bytes: int = DEFAULT_MAX_BYTES
    # How long one pull request waits for a task before the next is made (a
    # stop ends it at once). A request NATS lost in a reconnect is replaced
    # after this long at most.
    fetch_timeout_seconds: float = 5.0
    # How long a stop waits for the job in hand before handing it back.
    shutdown_grace_seconds: float = 30.0
    grpc_deadline_seconds: float = 10.0
    # Replicas of the streams and the worker registry's bucket (QUEUE_REPLICAS).
    queue_replicas: int = 1

    @classmethod
    def from_settings(cls, family: str, settings) -> LoopConfig:
        def own(name: str):
            return getattr(settings, f"{family}_{name}")

        return cls(
            family=family,
            worker_id=own("worker_id"),
            signer=settings.worker_signer(),
            ack_wait_seconds=own("ack_wait_seconds"),
            retry_backoff_seconds=tuple(own("retry_backoff_seconds")),
            dependency_wait_seconds=own("dependency_wait_seconds"),
            dependency_nak_seconds=own("dependency_nak_seconds"),
            progress_interval_seconds=own("progress_interval_seconds"),
            preview_every_steps=own("preview_every_steps"),
            preview_min_seconds=own("preview_min_seconds"),
            preview_max_bytes=own("preview_max_bytes"),
            fetch_timeout_seconds=own("fetch_timeout_seconds"),
            shutdown_grace_seconds=own("shutdown_grace_seconds"),
            grpc_deadline_seconds=settings.grpc_deadline_seconds,
            queue_replicas=settings.queue_replicas,
        )


@dataclass(frozen=True)
class Blob:
    bucket: str
    key: str
    data: bytes
    content_type: str


@dataclass(frozen=True)
class Output:
    """One asset of a job: its file and, for a video, its thumbnail."""

    index: int
    file: Blob
    width: int
    height: int
    seed: int
    num_frames: int = 0
    thumbnail: Blob | None = None


class OutOfMemory(PermanentError):
    """Every memory fallback ran out of memory too."""

    def __init__(self, tried: list[str]) -> None:
        super().__init__(
            "OUT_OF_MEMORY",
            "the job does not fit in the GPU's memory (tried: " + "; ".join(tried) + ")",
        )


@dataclass
class JobRun:
    """What a family's render gets: the task, the progress reporter, the store
    (for references) and the question whether to stop."""

    task: queue_pb2.GenerationTask
    progress: ProgressReporter
    store: BlobStore
    cancel: threading.Event
    abort: threading.Event
    # Set by the loop when the render is retried after running out of memory.
    memory: MemoryFallback = FULL_MEMORY
    # When to make a preview of the denoising latents (none by default).
    previews: Previews = field(default_factory=lambda: Previews(0))
    # Set by the family's render: what rendered the job (`ourvidz.provenance`);
    # the loop adds the worker id and sends it with CompleteJob.
    provenance: job_pb2.Provenance | None = None

    def should_cancel(self) -> bool:
        """True once the job was cancelled or the worker must hand it back;
        the step callback raises `Cancelled` then."""
        return self.cancel.is_set() or self.abort.is_set()


class Family(Protocol):
    """A model family: renders a task into outputs (heavy work off the event
    loop); raises `Cancelled` when `run.should_cancel()` turns true, a
    `PermanentError` (or ValueError) for a task it cannot run. It follows
    `run.memory` where it can (a retry after an out-of-memory error); the
    outputs must not depend on it beyond the decode's rounding.

    A family may also render the jobs of a batch message together, with an
    async `render_batch(runs) -> list[list[Output] | Exception]`: each run's
    outputs (the same as its `render` gives, within the rounding of the batch
    size), or the exception of a job it could not run (a bad task). It
    reports the shared step count to every run that is not cancelled, raises
    `Cancelled` only once every run should cancel, and raises for the whole
    batch what fails them all. Without it, a batch's jobs render one after
    another."""

    async def render(self, run: JobRun) -> list[Output]: ...


ACK, TERM, NAK = "ack", "term", "nak"


@dataclass(frozen=True)
class Settle:
    """What a job asks of its message: `ACK` (done with it), `TERM` (done,
    and dropped for good) or `NAK` (run it again, after `delay` seconds)."""

    action: str
    delay: float | None = None


def combine(settles: list[Settle]) -> Settle:
    """What a batch's message gets from its jobs' asks: nak'ed (with the
    shortest delay) when one must run again, since the others' redelivery
    finds them settled; terminated when every one was; acked otherwise."""
    naks = [s for s in settles if s.action == NAK]
    if naks:
        return Settle(NAK, min((s.delay or 0.0) for s in naks) or None)
    if settles and all(s.action == TERM for s in settles):
        return Settle(TERM)
    return Settle(ACK)


class CancelFlag(threading.Event):
    """A job's cancel flag: polled by the render's thread, and awaited on the
    event loop (`wait_set`) to settle a cancelled job of a batch at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._was_set = asyncio.Event()

    def set(self) -> None:
        super().set()
        self._loop.call_soon_threadsafe(self._was_set.set)

    async def wait_set(self) -> None:
        await self._was_set.wait()


@dataclass
class _Job:
    """A started job of the message in hand: its start token, its run, and
    the heartbeat and event watch that `Worker._close` stops."""

    task: queue_pb2.GenerationTask
    token: str
    run: JobRun
    superseded: threading.Event
    events: object | None
    beat: asyncio.Task
    uploaded: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Stats:
    current_job_id: str = ""
    jobs_completed: int = 0
    jobs_failed: int = 0
    # The dependency the worker waits for ("" when none), for logs and health.
    waiting_on: str = ""


class Worker:
    def __init__(
        self,
        config: LoopConfig,
        family: Family,
        nc: NATS,
        js: JetStreamContext,
        store: BlobStore,
        jobs: job_service_pb2_grpc.JobServiceStub,
    ) -> None:
        self.config = config
        self.family = family
        self.nc = nc
        self.js = js
        self.store = store
        self.jobs = jobs
        self.tokens = TokenSource(config.signer, config.worker_id, role="worker")
        self.stats = Stats()
        self._stopping = asyncio.Event()
        self._abort = threading.Event()  # set at shutdown when the grace ran out
        self._subs: list = []
        # Non-zero once the device failed: the loop ends and the process exits with it.
        self.exit_code = 0

    # --- set-up -------------------------------------------------------------------

    def queue_settings(self) -> queue.QueueSettings:
        # Deliveries are not limited: Jobs counts attempts, and a task is only
        # dropped once Jobs has recorded its job's outcome.
        return queue.QueueSettings(
            ack_wait_seconds=self.config.ack_wait_seconds,
            max_deliver=-1,
            replicas=self.config.queue_replicas,
        )

    async def declare(self) -> None:
        """Streams and this family's durable consumer (idempotent). The jobs
        service chooses which task goes out when (fast before high, users in
        turn), so one consumer takes both priorities in the order they come.
        The per-priority consumers of earlier versions are removed first (a
        work-queue stream refuses overlapping consumers); the tasks they held
        stay on the stream and reach the new consumer."""
        qs = self.queue_settings()
        await queue.declare_streams(self.js, qs)
        family = self.config.family
        for quality in LEGACY_QUALITIES:
            with contextlib.suppress(NotFoundError):
                await self.js.delete_consumer(queue.TASKS_STREAM, f"{family}-{quality}")
            # Tasks an earlier version published on the family's subject itself
            # match no consumer now; their jobs are still queued, and Jobs'
            # reconciler publishes them again on their own subjects.
            await self.js.purge_stream(
                queue.TASKS_STREAM, subject=queue.task_subject(family, quality)
            )
        await queue.declare_task_consumer(
            self.js, queue.family_subject(family), queue.consumer_name(family), qs
        )
        self._subs = [
            await self.js.pull_subscribe_bind(
                durable=queue.consumer_name(family), stream=queue.TASKS_STREAM
            )
        ]

    # --- the loop -------------------------------------------------------------------

    def stop(self) -> None:
        """Stop fetching; the job in hand finishes."""
        self._stopping.set()

    async def unsubscribe(self) -> None:
        """Drop the pull subscriptions (a drain otherwise waits out its timeout on them)."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []

    def abort_current(self) -> None:
        """Stop the job in hand at its next step and hand it back to the queue."""
        self._abort.set()

    async def _fetch_one(self, sub, wait_seconds: float):
        try:
            msgs = await sub.fetch(1, timeout=wait_seconds)
        except (TimeoutError, NatsTimeout):
            return None
        return msgs[0] if msgs else None

    async def _fetch_unless_stopped(self, sub, wait_seconds: float):
        """A fetch that a stop ends at once (an idle worker exits without
        waiting out the long poll). A message the abandoned pull request
        brings is redelivered after the ack wait; it is never lost."""
        fetch = asyncio.ensure_future(self._fetch_one(sub, wait_seconds))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if fetch.done():
            return fetch.result()
        fetch.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await fetch
        return None

    async def run(self) -> int:
        """Fetch and run tasks until stopped; the exit status the process
        should end with (`EXIT_DEVICE_FAILED` after a device failure, else 0)."""
        if not self._subs:
            await self.declare()
        (tasks,) = self._subs
        wait = self.config.fetch_timeout_seconds
        failing = False
        while not self._stopping.is_set():
            try:
                # One long poll: a task published while it waits arrives at once.
                msg = await self._fetch_unless_stopped(tasks, wait)
            except Exception as exc:  # a broken connection: nats reconnects, we retry
                if not failing:
                    log.warning("fetch failed: %s; retrying until NATS answers", exc)
                failing = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), min(wait, 1.0))
                continue
            if failing:
                log.info("fetching again")
                failing = False
            if msg is None:
                continue
            try:
                await self.handle(msg)
            except Exception as exc:  # e.g. NATS away while settling: never end the loop
                log.warning("settling a task failed (%s); it is redelivered", _short(exc))
                with contextlib.suppress(Exception):
                    await msg.nak(delay=self._backoff(msg.metadata.num_delivered))
        return self.exit_code

    # --- one message ------------------------------------------------------------------

    async def _call(self, method, request):
        return await method(
            request, metadata=self.tokens.metadata(), timeout=self.config.grpc_deadline_seconds
        )

    async def handle(self, msg) -> None:
        delivery = msg.metadata.num_delivered
        try:
            tasks = queue.decode_tasks(msg.data, msg.headers)
        except DecodeError:
            log.error("undecodable task message dropped")
            await msg.term()
            return
        batch = queue.is_batch(msg.headers)
        if not tasks or not all(task.job_id for task in tasks):
            log.error("task without a job id dropped")
            await msg.term()
            return
        task = tasks[0]
        family = self.config.family
        attributes = {
            "messaging.system": "nats",
            "messaging.destination.name": msg.subject,
            "messaging.nats.delivery": delivery,
        }
        if batch:
            attributes["ourvidz.batch.job_ids"] = ",".join(t.job_id for t in tasks)
        with (
            logs.bind(job_id=task.job_id, user_id=task.user_id, delivery=delivery),
            telemetry.job(
                family,
                f"{family}.batch" if batch else f"{family}.job",
                msg.headers,
                job_id=task.job_id,
                job_type=task.job_type,
                **attributes,
            ),
        ):
            self.stats.current_job_id = ",".join(t.job_id for t in tasks)
            try:
                # The heartbeat runs from the moment the message is ours:
                # StartJob may itself wait on a busy or absent jobs service.
                async with queue.heartbeat(msg, self.config.ack_wait_seconds):
                    if batch:
                        await self._settle(msg, await self._run_batch(msg, tasks, delivery))
                    else:
                        await self._settle(msg, await self._start_and_run(msg, task, delivery))
            finally:
                self.stats.current_job_id = ""

    async def _settle(self, msg, settle: Settle) -> None:
        """Do what the message's jobs ask of it."""
        if settle.action == NAK:
            await msg.nak(delay=settle.delay)
        elif settle.action == TERM:
            await msg.term()
        else:
            try:
                await msg.ack_sync()
            except Exception as exc:  # NATS away: the redelivery finds the jobs settled
                log.warning("the task could not be acked (%s)", _short(exc))

    # --- dependencies -------------------------------------------------------------

    async def _persist(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` until it succeeds or fails for a reason other than `what`
        being away. While it is away: retries with a growing pause, one log
        line, `stats.waiting_on` set; raises `DependencyAway` once the wait is
        over or the worker is stopping."""
        deadline = time.monotonic() + self.config.dependency_wait_seconds
        pause = 0.25
        while True:
            try:
                result = await call()
            except Exception as exc:
                if not dependency_error(exc):
                    raise
                if self._stopping.is_set() or time.monotonic() >= deadline:
                    raise DependencyAway(what) from exc
                if self.stats.waiting_on != what:
                    self.stats.waiting_on = what
                    log.warning("waiting for %s: %s", what, _short(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
                pause = min(pause * 2, 5.0)
                continue
            if self.stats.waiting_on == what:
                self.stats.waiting_on = ""
                log.info("%s is back", what)
            return result

    def _hand_back(self, reason: str) -> Settle:
        """Return the task to the queue without costing an attempt."""
        delay = 0.0 if self._stopping.is_set() else self.config.dependency_nak_seconds
        log.warning("task handed back (%s); redelivered in %g s", reason, delay)
        return Settle(NAK, delay)

    # --- one job --------------------------------------------------------------------

    async def _start(
        self, msg, task: queue_pb2.GenerationTask, delivery: int
    ) -> job_service_pb2.StartJobResponse | Settle:
        """StartJob: its answer when the job is to run, else what the job asks
        of the message."""
        request = job_service_pb2.StartJobRequest(
            job_id=task.job_id,
            worker_id=self.config.worker_id,
            delivery=delivery,
            task_sequence=msg.metadata.sequence.stream,
        )
        try:
            started = await self._persist(
                "the jobs service", lambda: self._call(self.jobs.StartJob, request)
            )
        except DependencyAway as away:
            return self._hand_back(f"{away} unreachable")
        except grpc.aio.AioRpcError as exc:
            log.warning("StartJob refused: %s %s", exc.code().name, exc.details())
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return Settle(TERM)  # no such job: nothing to record
            return Settle(NAK, self.config.dependency_nak_seconds)
        if started.held_elsewhere:
            # A second delivery while the job's worker lives: wait, do not drop.
            log.info("job held by another worker; handed back for now")
            return Settle(NAK, self.config.ack_wait_seconds)
        if not started.proceed:
            log.info("job not to be run (%s); acked", job_state_name(started.job.state))
            return Settle(ACK)
        return started

    async def _start_and_run(self, msg, task: queue_pb2.GenerationTask, delivery: int) -> Settle:
        started = await self._start(msg, task, delivery)
        if isinstance(started, Settle):
            return started
        job = await self._open(task, started)
        try:
            return await self._run_job(job)
        finally:
            await self._close(job)

    async def _open(
        self, task: queue_pb2.GenerationTask, started: job_service_pb2.StartJobResponse
    ) -> _Job:
        """A started job, ready to render: its progress reporter, its
        heartbeat to Jobs and its watch for cancellation running."""
        if (job_span := telemetry.current_job()) is not None and job_span.job_id == task.job_id:
            job_span.set_attempt(started.job.attempt)
        token = started.start_token
        loop = asyncio.get_running_loop()
        cancel = CancelFlag(loop)
        superseded = threading.Event()  # another start holds the job now
        reporter = ProgressReporter(
            lambda progress, preview=b"": self._report(task, token, progress, superseded, preview),
            cancel,
            self.config.progress_interval_seconds,
            loop,
        )
        previews = Previews(
            self.config.preview_every_steps,
            self.config.preview_min_seconds,
            self.config.preview_max_bytes,
        )
        return _Job(
            task=task,
            token=token,
            run=JobRun(task, reporter, self.store, cancel, self._abort, previews=previews),
            superseded=superseded,
            events=await self._watch_cancel(task, cancel),
            beat=asyncio.create_task(self._beat(task, token, cancel, superseded)),
        )

    async def _close(self, job: _Job) -> None:
        """Stop the job's heartbeat, reports and watch (repeatable)."""
        job.beat.cancel()
        with contextlib.suppress(BaseException):
            await job.beat
        with contextlib.suppress(Exception):
            await job.run.progress.close()
        if job.events is not None:
            events, job.events = job.events, None
            with contextlib.suppress(Exception):
                await events.unsubscribe()

    async def _run_job(self, job: _Job) -> Settle:
        """Render one job on its own, then deliver it."""
        try:
            outputs = await self._render([job.run], lambda: self.family.render(job.run))
            return await self._deliver(job, outputs)
        except Exception as exc:
            return await self._failed(job, exc)

    async def _deliver(self, job: _Job, outputs: list[Output]) -> Settle:
        """Upload a rendered job's outputs and complete it."""
        if job.run.cancel.is_set():  # a finished render at shutdown is still delivered
            raise Cancelled()
        reporter = job.run.progress
        reporter.stage(UPLOADING)
        assets = []
        with telemetry.stage(f"{self.config.family}.upload", outputs=len(outputs)):
            for output in outputs:
                assets.append(
                    await self._persist("storage", lambda o=output: self._upload(o, job.uploaded))
                )
        await reporter.close()  # every report reaches Jobs before the completion
        # No cancellation check here: Jobs says whether these outputs are wanted.
        return await self._complete(job, assets)

    async def _failed(self, job: _Job, exc: Exception) -> Settle:
        """A job that did not complete: cancelled, handed back, or failed."""
        task, token = job.task, job.token
        if isinstance(exc, Cancelled):
            if job.superseded.is_set():
                return self._superseded()
            if self._abort.is_set():
                await self._fail_once(
                    task,
                    token,
                    "WORKER_SHUTDOWN",
                    "the worker stopped; the job waits for another worker",
                )
                log.info("job handed back at shutdown")
                return Settle(NAK)
            log.info("job cancelled; acked")
            return Settle(ACK)
        if isinstance(exc, DependencyAway):
            return self._hand_back(f"{exc} unreachable")
        if device_broken(exc):
            return await self._device_failed(task, token, exc)
        return await self._on_error(task, token, exc)

    # --- a batch of jobs ------------------------------------------------------------

    async def _run_batch(self, msg, tasks: list[queue_pb2.GenerationTask], delivery: int) -> Settle:
        """Several jobs of one message: each started; those that proceed
        rendered together where the family can (`render_batch`), else one
        after another; each delivered or failed on its own. The message is
        acked once every job is settled, nak'ed when one must run again."""
        settles: list[Settle] = []
        jobs: list[_Job] = []
        for task in tasks:
            with logs.bind(job_id=task.job_id, user_id=task.user_id):
                started = await self._start(msg, task, delivery)
                if not isinstance(started, Settle):
                    jobs.append(await self._open(task, started))
                    continue
            settles.append(started)
            if started.action == NAK and self.stats.waiting_on:
                break  # the jobs service is away: the others wait for the redelivery too
        try:
            if len(jobs) > 1 and callable(getattr(self.family, "render_batch", None)):
                settles += await self._run_together(jobs)
            else:
                for job in jobs:
                    with logs.bind(job_id=job.task.job_id, user_id=job.task.user_id):
                        settles.append(await self._run_job(job))
                        await self._close(job)
        finally:
            for job in jobs:
                await self._close(job)
        return combine(settles)

    async def _run_together(self, jobs: list[_Job]) -> list[Settle]:
        """One render of every job (`Family.render_batch`). A job cancelled
        meanwhile is settled at once (its reports and heartbeat stop); its
        images are still computed with the others', so theirs do not change,
        and dropped. The render stops only when every job is cancelled."""
        watches = [asyncio.create_task(self._close_when_cancelled(job)) for job in jobs]
        runs = [job.run for job in jobs]
        try:
            results = await self._render(runs, lambda: self.family.render_batch(runs))
        except Exception as exc:
            results = [exc] * len(jobs)
        finally:
            for watch in watches:
                watch.cancel()
        settles = []
        for job, result in zip(jobs, results, strict=True):
            with logs.bind(job_id=job.task.job_id, user_id=job.task.user_id):
                try:
                    if isinstance(result, BaseException):
                        # A cancelled job's images are dropped, whatever befell the others.
                        raise Cancelled() if job.run.cancel.is_set() else result
                    settles.append(await self._deliver(job, result))
                except Exception as exc:
                    settles.append(await self._failed(job, exc))
                await self._close(job)
        return settles

    async def _close_when_cancelled(self, job: _Job) -> None:
        await job.run.cancel.wait_set()
        with logs.bind(job_id=job.task.job_id, user_id=job.task.user_id):
            log.info("job cancelled in its batch; the others go on")
            await self._close(job)

    async def _render(self, runs: list[JobRun], render: Callable[[], Awaitable[T]]) -> T:
        """`render()` (the family's, of `runs`); after an out-of-memory error,
        again with the next memory fallback for every run, until one fits or
        none is left (`OutOfMemory`)."""
        ladder = memory_fallbacks(sum(run.task.num_images for run in runs))
        tried = [runs[0].memory.describe()]
        while True:
            try:
                return await render()
            except Exception as exc:
                if not out_of_memory(exc) or device_broken(exc):
                    raise
                failure = _short(exc)
            # Out of the handler: the failed attempt's frames, and the tensors
            # they hold, are released before the cache is emptied.
            await asyncio.to_thread(free_device_memory)
            if len(tried) > len(ladder):
                log.warning("out of GPU memory with every fallback (%s)", failure)
                raise OutOfMemory(tried)
            for run in runs:
                run.memory = ladder[len(tried) - 1]
            tried.append(runs[0].memory.describe())
            log.warning(
                "out of GPU memory with %s; retrying with %s (%s)",
                tried[-2],
                tried[-1],
                failure,
            )

    async def _device_failed(self, task, token: str, exc: Exception) -> Settle:
        """A sticky device error: nothing in this process can use the device
        again. The job goes back to the queue at no cost (a dependency of the
        job failed, not the job), and the loop stops with `EXIT_DEVICE_FAILED`."""
        log.critical(
            "the GPU failed (%s); the job is handed back and the worker exits with status %d",
            _short(exc),
            EXIT_DEVICE_FAILED,
        )
        if (job_span := telemetry.current_job()) is not None:
            job_span.failed(exc, "DEVICE_FAILED")
        self.exit_code = EXIT_DEVICE_FAILED
        self._stopping.set()
        await self._fail_once(
            task,
            token,
            "DEVICE_FAILED",
            "the worker's GPU failed; the job waits for another worker",
        )
        return Settle(NAK)  # at once: another worker takes it

    async def _complete(self, job: _Job, assets: list[job_pb2.Asset]) -> Settle:
        """CompleteJob, asked again while its outcome is unknown (it is
        idempotent); blobs are removed only when Jobs says the job ended
        without them."""
        request = job_service_pb2.CompleteJobRequest(
            job_id=job.task.job_id, assets=assets, start_token=job.token
        )
        if job.run.provenance is not None:
            request.provenance.CopyFrom(job.run.provenance)
            request.provenance.worker_id = self.config.worker_id
        try:
            await self._persist(
                "the jobs service", lambda: self._call(self.jobs.CompleteJob, request)
            )
        except grpc.aio.AioRpcError as exc:
            reason = _reason(exc)
            if (
                exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                and reason in _ENDED_WITHOUT_OUTPUTS
            ):
                log.info("job ended meanwhile (%s); its outputs removed", exc.details())
                await self._remove(job.uploaded)
                return Settle(ACK)
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and reason == _NOT_HOLDER:
                return self._superseded()
            raise
        self.stats.jobs_completed += 1
        log.info("job completed", extra={"assets": len(assets)})
        return Settle(ACK)

    async def _beat(
        self,
        task: queue_pb2.GenerationTask,
        token: str,
        cancel: threading.Event,
        superseded: threading.Event,
    ):
        """Tell Jobs every few seconds that this worker still has the job."""
        interval = min(max(self.config.ack_wait_seconds / 3, 0.1), 5.0)
        request = job_service_pb2.HeartbeatRequest(job_id=task.job_id, start_token=token)
        while True:
            await asyncio.sleep(interval)
            try:
                answer = await self._call(self.jobs.Heartbeat, request)
            except grpc.aio.AioRpcError as exc:
                if _not_holder(exc):
                    superseded.set()
                    cancel.set()
                    return
                log.debug("heartbeat to Jobs failed: %s", exc.code().name)
                continue
            if answer.cancel_requested or answer.finished:
                cancel.set()

    async def _upload(self, output: Output, uploaded: list[tuple[str, str]]) -> job_pb2.Asset:
        """Store an output's file (and thumbnail); the asset that records them."""
        f = output.file
        size = await self.store.put(f.bucket, f.key, f.data, f.content_type)
        uploaded.append((f.bucket, f.key))
        asset = job_pb2.Asset(
            index=output.index,
            bucket=f.bucket,
            key=f.key,
            content_type=f.content_type,
            width=output.width,
            height=output.height,
            seed=output.seed,
            size_bytes=size,
            num_frames=output.num_frames,
        )
        if output.thumbnail is not None:
            t = output.thumbnail
            await self.store.put(t.bucket, t.key, t.data, t.content_type)
            uploaded.append((t.bucket, t.key))
            asset.thumbnail_bucket, asset.thumbnail_key = t.bucket, t.key
        return asset

    async def _report(
        self,
        task: queue_pb2.GenerationTask,
        token: str,
        progress: job_pb2.Progress,
        superseded: threading.Event,
        preview: bytes = b"",
    ) -> bool:
        """Send one progress report (with a preview image where given); True
        when the job must stop."""
        request = job_service_pb2.ReportProgressRequest(
            job_id=task.job_id, progress=progress, start_token=token, preview_png=preview
        )
        try:
            response = await self._call(self.jobs.ReportProgress, request)
        except grpc.aio.AioRpcError as exc:
            if not _not_holder(exc):
                raise
            superseded.set()
            return True
        return response.cancel_requested

    def _superseded(self) -> Settle:
        """Another delivery of the task started the job since this one did:
        its worker renders and completes it (at the same keys, so the objects
        stay). This delivery is handed back like a second delivery of a held
        job; once the job has ended, its StartJob says not to run it."""
        log.warning("another start holds the job now; this delivery is handed back")
        return Settle(NAK, self.config.ack_wait_seconds)

    async def _watch_cancel(self, task: queue_pb2.GenerationTask, cancel: threading.Event):
        async def on_event(m) -> None:
            try:
                event = events_pb2.JobEvent.FromString(m.data)
            except DecodeError:
                return
            if (
                event.type == events_pb2.JOB_EVENT_TYPE_CANCELLED
                or event.state == job_pb2.JOB_STATE_CANCELLED
            ):
                log.info("cancel event received")
                cancel.set()

        try:
            return await self.nc.subscribe(f"events.jobs.*.{task.job_id}", cb=on_event)
        except Exception as exc:  # progress answers still carry cancellation
            log.warning("could not watch the job's events: %s", exc)
            return None

    async def _remove(self, uploaded: list[tuple[str, str]]) -> None:
        for bucket, key in uploaded:
            try:
                await self.store.delete(bucket, key)
            except Exception as exc:  # the collector of orphan blobs gets it later
                log.warning("could not remove %s/%s: %s", bucket, key, exc)
        uploaded.clear()

    def _backoff(self, attempt: int) -> float:
        return queue.retry_delay(self.config.retry_backoff_seconds, max(attempt, 1))

    async def _fail_request(self, request) -> job_pb2.Job:
        response = await self._persist(
            "the jobs service", lambda: self._call(self.jobs.FailJob, request)
        )
        return response.job

    async def _fail_once(self, task, token: str, code: str, message: str) -> None:
        """At shutdown: one try to say the job waits for another worker (no
        attempt spent); the redelivery's StartJob sets it right otherwise."""
        try:
            await self._call(
                self.jobs.FailJob,
                job_service_pb2.FailJobRequest(
                    job_id=task.job_id,
                    error=job_pb2.JobError(code=code, message=message),
                    will_retry=True,
                    dependency_failure=True,
                    start_token=token,
                ),
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("FailJob failed: %s %s", exc.code().name, exc.details())

    async def _on_error(self, task, token: str, exc: Exception) -> Settle:
        verdict = classify(exc)
        if isinstance(exc, PermanentError):
            log.warning("job failed: %s", verdict.message)
        elif not verdict.retry:
            log.warning("job failed: %s (%s: %s)", verdict.message, type(exc).__name__, exc)
        else:
            log.error("job attempt failed (%s)", verdict.code, exc_info=exc)
        if (job_span := telemetry.current_job()) is not None:
            job_span.failed(exc, verdict.code)
        if out_of_memory(exc):
            free_device_memory()
        request = job_service_pb2.FailJobRequest(
            job_id=task.job_id,
            error=job_pb2.JobError(code=verdict.code, message=verdict.message),
            will_retry=verdict.retry,
            dependency_failure=dependency_error(exc),
            start_token=token,
        )
        try:
            job = await self._fail_request(request)
        except (DependencyAway, grpc.aio.AioRpcError) as failed:
            # The outcome is not recorded: the task stays on the queue.
            return self._hand_back(f"the failure could not be recorded: {_short(failed)}")
        if job.state in (job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED):
            self.stats.jobs_failed += 1
            return Settle(TERM)
        if job.state == job_pb2.JOB_STATE_COMPLETED:
            return Settle(ACK)  # another delivery finished it meanwhile
        return Settle(NAK, self._backoff(job.attempt))


def job_state_name(state: int) -> str:
    return job_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def _reason(exc: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a refusal, or ""."""
    with contextlib.suppress(Exception):
        return parse_rpc_error(exc).reason or ""
    return ""


def _not_holder(exc: grpc.aio.AioRpcError) -> bool:
    """Jobs refused the call: this start no longer holds the job."""
    return exc.code() == grpc.StatusCode.FAILED_PRECONDITION and _reason(exc) == _NOT_HOLDER


def _short(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    if isinstance(cause, grpc.aio.AioRpcError):
        return f"{cause.code().name}: {cause.details()}"
    return f"{type(cause).__name__}: {cause}"
