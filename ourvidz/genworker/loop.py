"""The JetStream loop every generation worker runs; a model family supplies
only its render and outputs (`Family`).

Per message: parse the `GenerationTask`, `StartJob` (Jobs may say not to
proceed: the job was cancelled or already finished), render while a heartbeat
keeps the message ours (`in_progress` every ack_wait/3) and progress goes to
Jobs (`ProgressReporter`), upload the outputs under the family's deterministic
keys, then `CompleteJob`, then ack. A redelivered task gives the same outputs
at the same keys, so a crash anywhere loses nothing and duplicates nothing.

Cancellation reaches a running job two ways: the answer to a progress report
(`cancel_requested`) and the job's `CANCELLED` event on
`events.jobs.<user>.<job>`; either stops the pipeline at its next step.

Failures: transient ones (out of memory, peers or storage unreachable) are
reported with `will_retry` and the message is nak'ed with a backoff while
attempts remain; permanent ones (bad task, bad reference) fail the job and
terminate the message. Nothing blocks the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from ourvidz import logs, queue
from ourvidz.auth import TokenSource
from ourvidz.genworker.errors import Cancelled, PermanentError, classify, free_device_memory
from ourvidz.genworker.progress import UPLOADING, ProgressReporter
from ourvidz.storage import BlobStore
from ourvidz.v1 import events_pb2, job_pb2, job_service_pb2, job_service_pb2_grpc, queue_pb2

log = logging.getLogger(__name__)

QUALITIES = ("fast", "high")  # fetched in this order: fast presets first


@dataclass(frozen=True)
class LoopConfig:
    """The loop's settings, read from a service's `<family>_*` settings."""

    family: str
    worker_id: str
    auth_secret: str = field(repr=False)
    ack_wait_seconds: float = 60.0
    max_attempts: int = 3
    # Delays before a failed job's message is redelivered, by attempt.
    retry_backoff_seconds: tuple[float, ...] = (5.0, 15.0, 30.0)
    progress_interval_seconds: float = 0.5
    # How long a fetch waits for work before checking the other queue again.
    fetch_timeout_seconds: float = 1.0
    # How long a stop waits for the job in hand before handing it back.
    shutdown_grace_seconds: float = 30.0
    grpc_deadline_seconds: float = 10.0

    @classmethod
    def from_settings(cls, family: str, settings) -> LoopConfig:
        def own(name: str):
            return getattr(settings, f"{family}_{name}")

        return cls(
            family=family,
            worker_id=own("worker_id"),
            auth_secret=settings.auth_secret.get_secret_value(),
            ack_wait_seconds=own("ack_wait_seconds"),
            max_attempts=own("max_attempts"),
            retry_backoff_seconds=tuple(own("retry_backoff_seconds")),
            progress_interval_seconds=own("progress_interval_seconds"),
            fetch_timeout_seconds=own("fetch_timeout_seconds"),
            shutdown_grace_seconds=own("shutdown_grace_seconds"),
            grpc_deadline_seconds=settings.grpc_deadline_seconds,
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


@dataclass
class JobRun:
    """What a family's render gets: the task, the progress reporter, the store
    (for references) and the question whether to stop."""

    task: queue_pb2.GenerationTask
    progress: ProgressReporter
    store: BlobStore
    cancel: threading.Event
    abort: threading.Event

    def should_cancel(self) -> bool:
        """True once the job was cancelled or the worker must hand it back;
        the step callback raises `Cancelled` then."""
        return self.cancel.is_set() or self.abort.is_set()


class Family(Protocol):
    """A model family: renders a task into outputs (heavy work off the event
    loop); raises `Cancelled` when `run.should_cancel()` turns true, a
    `PermanentError` (or ValueError) for a task it cannot run."""

    async def render(self, run: JobRun) -> list[Output]: ...


@dataclass
class Stats:
    current_job_id: str = ""
    jobs_completed: int = 0
    jobs_failed: int = 0


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
        self.tokens = TokenSource(config.auth_secret, config.worker_id, role="worker")
        self.stats = Stats()
        self._stopping = asyncio.Event()
        self._abort = threading.Event()  # set at shutdown when the grace ran out
        self._subs: list = []

    # --- set-up -------------------------------------------------------------------

    def queue_settings(self) -> queue.QueueSettings:
        # One delivery beyond the attempts, so that a worker dying on the last
        # attempt still leaves a delivery that records the failure.
        return queue.QueueSettings(
            ack_wait_seconds=self.config.ack_wait_seconds,
            max_deliver=self.config.max_attempts + 1,
        )

    async def declare(self) -> None:
        """Streams and this family's durable consumers (idempotent)."""
        await queue.declare_streams(self.js)
        qs = self.queue_settings()
        family = self.config.family
        for quality in QUALITIES:
            await queue.declare_task_consumer(
                self.js,
                queue.task_subject(family, quality),
                queue.consumer_name(family, quality),
                qs,
            )
        self._subs = [
            await self.js.pull_subscribe_bind(
                durable=queue.consumer_name(family, quality), stream=queue.TASKS_STREAM
            )
            for quality in QUALITIES
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

    async def run(self) -> None:
        if not self._subs:
            await self.declare()
        fast, high = self._subs
        wait = self.config.fetch_timeout_seconds
        while not self._stopping.is_set():
            try:
                msg = await self._fetch_one(fast, min(0.1, wait))
                if msg is None:
                    msg = await self._fetch_one(high, wait)
            except Exception as exc:  # a broken connection: nats reconnects, we retry
                log.warning("fetch failed: %s", exc)
                await asyncio.sleep(wait)
                continue
            if msg is None:
                continue
            try:
                await self.handle(msg)
            except Exception as exc:  # e.g. NATS away while settling: never end the loop
                log.error("handling a task failed; it is redelivered", exc_info=exc)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=self._backoff(msg.metadata.num_delivered))

    # --- one message ------------------------------------------------------------------

    async def _call(self, method, request):
        return await method(
            request, metadata=self.tokens.metadata(), timeout=self.config.grpc_deadline_seconds
        )

    async def handle(self, msg) -> None:
        delivery = msg.metadata.num_delivered
        try:
            task = queue_pb2.GenerationTask.FromString(msg.data)
        except DecodeError:
            log.error("undecodable task message dropped")
            await msg.term()
            return
        if not task.job_id:
            log.error("task without a job id dropped")
            await msg.term()
            return
        with logs.bind(job_id=task.job_id, user_id=task.user_id, delivery=delivery):
            self.stats.current_job_id = task.job_id
            try:
                await self._handle_task(msg, task, delivery)
            finally:
                self.stats.current_job_id = ""

    async def _handle_task(self, msg, task: queue_pb2.GenerationTask, delivery: int) -> None:
        max_attempts = self.config.max_attempts
        if delivery > max_attempts:
            await self._fail(
                task,
                "ATTEMPTS_EXHAUSTED",
                f"the job did not finish in {max_attempts} attempts",
                retry=False,
            )
            await msg.term()
            return
        # The heartbeat runs from the moment the message is ours: StartJob may
        # itself wait on a busy jobs service.
        async with queue.heartbeat(msg, self.config.ack_wait_seconds):
            await self._start_and_run(msg, task, delivery)

    async def _start_and_run(self, msg, task: queue_pb2.GenerationTask, delivery: int) -> None:
        try:
            started = await self._call(
                self.jobs.StartJob,
                job_service_pb2.StartJobRequest(
                    job_id=task.job_id, worker_id=self.config.worker_id, delivery=delivery
                ),
            )
        except grpc.aio.AioRpcError as exc:
            verdict = classify(exc)
            log.warning("StartJob failed: %s %s", exc.code().name, exc.details())
            if verdict.retry and delivery < self.config.max_attempts:
                await msg.nak(delay=self._backoff(delivery))
            else:
                await msg.term()
            return
        if not started.proceed:
            log.info("job not to be run (cancelled or finished); acked")
            await msg.ack_sync()
            return

        cancel = threading.Event()
        uploaded: list[tuple[str, str]] = []
        reporter = ProgressReporter(
            lambda progress: self._report(task, progress),
            cancel,
            self.config.progress_interval_seconds,
            asyncio.get_running_loop(),
        )
        events = await self._watch_cancel(task, cancel)
        try:
            run = JobRun(task, reporter, self.store, cancel, self._abort)
            outputs = await self.family.render(run)
            if cancel.is_set():  # a finished render at shutdown is still delivered
                raise Cancelled()
            reporter.stage(UPLOADING)
            assets = [await self._upload(output, uploaded) for output in outputs]
            await reporter.close()  # every report reaches Jobs before the completion
            if cancel.is_set():
                raise Cancelled()
            try:
                await self._call(
                    self.jobs.CompleteJob,
                    job_service_pb2.CompleteJobRequest(job_id=task.job_id, assets=assets),
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    log.info("job ended meanwhile (%s); outputs removed", exc.details())
                    raise Cancelled() from exc
                raise
            uploaded.clear()
            self.stats.jobs_completed += 1
            await msg.ack_sync()
            log.info("job completed", extra={"assets": len(assets)})
        except Cancelled:
            await self._remove(uploaded)
            if self._abort.is_set():
                await self._fail(
                    task, "WORKER_SHUTDOWN", "the worker stopped; the job is retried", retry=True
                )
                await msg.nak()
                log.info("job handed back at shutdown")
            else:
                await msg.ack_sync()
                log.info("job cancelled; acked")
        except Exception as exc:
            await self._remove(uploaded)
            await self._on_error(msg, task, delivery, exc)
        finally:
            with contextlib.suppress(Exception):
                await reporter.close()
            if events is not None:
                with contextlib.suppress(Exception):
                    await events.unsubscribe()

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

    async def _report(self, task: queue_pb2.GenerationTask, progress: job_pb2.Progress) -> bool:
        response = await self._call(
            self.jobs.ReportProgress,
            job_service_pb2.ReportProgressRequest(job_id=task.job_id, progress=progress),
        )
        return response.cancel_requested

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
            except Exception as exc:
                log.warning("could not remove %s/%s: %s", bucket, key, exc)
        uploaded.clear()

    def _backoff(self, delivery: int) -> float:
        return queue.retry_delay(self.config.retry_backoff_seconds, delivery)

    async def _fail(self, task, code: str, message: str, *, retry: bool) -> None:
        try:
            await self._call(
                self.jobs.FailJob,
                job_service_pb2.FailJobRequest(
                    job_id=task.job_id,
                    error=job_pb2.JobError(code=code, message=message),
                    will_retry=retry,
                ),
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("FailJob failed: %s %s", exc.code().name, exc.details())

    async def _on_error(self, msg, task, delivery: int, exc: Exception) -> None:
        verdict = classify(exc)
        retry = verdict.retry and delivery < self.config.max_attempts
        if isinstance(exc, PermanentError):
            log.warning("job failed: %s", verdict.message)
        elif not verdict.retry:
            log.warning("job failed: %s (%s: %s)", verdict.message, type(exc).__name__, exc)
        else:
            log.error("job attempt failed (%s)", verdict.code, exc_info=exc)
        if verdict.code == "OUT_OF_MEMORY":
            free_device_memory()
        await self._fail(task, verdict.code, verdict.message, retry=retry)
        if retry:
            await msg.nak(delay=self._backoff(delivery))
        else:
            self.stats.jobs_failed += 1
            await msg.term()
