"""The JetStream consumer: takes SDXL tasks, runs them, reports to Jobs.

Per message: parse the `GenerationTask`, `StartJob` (Jobs may say not to
proceed: the job was cancelled or already finished), render in a thread while a
heartbeat keeps the message ours (`in_progress` every ack_wait/3) and progress
goes to Jobs (throttled), upload the PNGs under deterministic keys, then
`CompleteJob`, then ack. A redelivered task gives the same images at the same
keys, so a crash anywhere loses nothing and duplicates nothing.

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
import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from PIL import Image, UnidentifiedImageError

from ourvidz import logs, queue
from ourvidz.auth import TokenSource
from ourvidz.errors import NotFound
from ourvidz.storage import BlobStore
from ourvidz.v1 import events_pb2, job_pb2, job_service_pb2, job_service_pb2_grpc, queue_pb2
from services.sdxl import generate
from services.sdxl.errors import InvalidReference, PermanentError, classify
from services.sdxl.models import PipeBundle
from services.sdxl.progress import ProgressReporter
from services.sdxl.settings import SdxlSettings

log = logging.getLogger(__name__)

FAMILY = "sdxl"
QUALITIES = ("fast", "high")  # fetched in this order: fast presets first
CONTENT_TYPE = "image/png"


def output_key(task: queue_pb2.GenerationTask, index: int) -> str:
    return f"{task.user_id}/{task.job_id}_{index}.png"


@dataclass
class Stats:
    current_job_id: str = ""
    jobs_completed: int = 0
    jobs_failed: int = 0


class Worker:
    def __init__(
        self,
        settings: SdxlSettings,
        nc: NATS,
        js: JetStreamContext,
        store: BlobStore,
        jobs: job_service_pb2_grpc.JobServiceStub,
        bundle: Callable[[], PipeBundle | None],
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.js = js
        self.store = store
        self.jobs = jobs
        self._bundle = bundle
        self.tokens = TokenSource(
            settings.auth_secret.get_secret_value(), settings.sdxl_worker_id, role="worker"
        )
        self.stats = Stats()
        self._stopping = asyncio.Event()
        self._abort = threading.Event()  # set at shutdown when the grace ran out
        self._subs: list = []

    # --- set-up -------------------------------------------------------------------

    def queue_settings(self) -> queue.QueueSettings:
        # One delivery beyond the attempts, so that a worker dying on the last
        # attempt still leaves a delivery that records the failure.
        return queue.QueueSettings(
            ack_wait_seconds=self.settings.sdxl_ack_wait_seconds,
            max_deliver=self.settings.sdxl_max_attempts + 1,
        )

    async def declare(self) -> None:
        """Streams and this family's durable consumers (idempotent)."""
        await queue.declare_streams(self.js)
        qs = self.queue_settings()
        for quality in QUALITIES:
            await queue.declare_task_consumer(
                self.js,
                queue.task_subject(FAMILY, quality),
                queue.consumer_name(FAMILY, quality),
                qs,
            )
        self._subs = [
            await self.js.pull_subscribe_bind(
                durable=queue.consumer_name(FAMILY, quality), stream=queue.TASKS_STREAM
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
        wait = self.settings.sdxl_fetch_timeout_seconds
        while not self._stopping.is_set():
            try:
                msg = await self._fetch_one(fast, min(0.1, wait))
                if msg is None:
                    msg = await self._fetch_one(high, wait)
            except Exception as exc:  # a broken connection: nats reconnects, we retry
                log.warning("fetch failed: %s", exc)
                await asyncio.sleep(wait)
                continue
            if msg is not None:
                await self.handle(msg)

    # --- one message ------------------------------------------------------------------

    def _meta(self):
        return self.tokens.metadata()

    async def _call(self, method, request):
        return await method(
            request, metadata=self._meta(), timeout=self.settings.grpc_deadline_seconds
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
        max_attempts = self.settings.sdxl_max_attempts
        if delivery > max_attempts:
            await self._fail(
                task,
                "ATTEMPTS_EXHAUSTED",
                f"the job did not finish in {max_attempts} attempts",
                retry=False,
            )
            await msg.term()
            return
        try:
            started = await self._call(
                self.jobs.StartJob,
                job_service_pb2.StartJobRequest(
                    job_id=task.job_id, worker_id=self.settings.sdxl_worker_id, delivery=delivery
                ),
            )
        except grpc.aio.AioRpcError as exc:
            verdict = classify(exc)
            log.warning("StartJob failed: %s %s", exc.code().name, exc.details())
            if verdict.retry and delivery < max_attempts:
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
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        events = await self._watch_cancel(task, cancel)
        try:
            images = await self._run(task, cancel)
            assets = []
            for image in images:
                key = output_key(task, image.index)
                size = await self.store.put(task.output_bucket, key, image.png_bytes, CONTENT_TYPE)
                uploaded.append((task.output_bucket, key))
                assets.append(
                    job_pb2.Asset(
                        index=image.index,
                        bucket=task.output_bucket,
                        key=key,
                        content_type=CONTENT_TYPE,
                        width=image.width,
                        height=image.height,
                        seed=image.seed,
                        size_bytes=size,
                    )
                )
            if cancel.is_set():
                raise generate.Cancelled()
            try:
                await self._call(
                    self.jobs.CompleteJob,
                    job_service_pb2.CompleteJobRequest(job_id=task.job_id, assets=assets),
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    log.info("job ended meanwhile (%s); outputs removed", exc.details())
                    raise generate.Cancelled() from exc
                raise
            uploaded.clear()
            self.stats.jobs_completed += 1
            await msg.ack_sync()
            log.info("job completed", extra={"images": len(assets)})
        except generate.Cancelled:
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
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if events is not None:
                with contextlib.suppress(Exception):
                    await events.unsubscribe()

    async def _run(self, task: queue_pb2.GenerationTask, cancel: threading.Event):
        bundle = self._bundle()
        if bundle is None:
            raise RuntimeError("model not loaded")
        reference = None
        if generate.has_reference(task):
            reference = await self._reference(task)
        loop = asyncio.get_running_loop()
        reporter = ProgressReporter(
            lambda step, total: self._report(task, step, total),
            cancel,
            self.settings.sdxl_progress_interval_seconds,
            loop,
        )
        try:
            return await generate.render_async(
                bundle,
                task,
                reference,
                reporter.on_step,
                lambda: cancel.is_set() or self._abort.is_set(),
            )
        finally:
            await reporter.close()

    async def _reference(self, task: queue_pb2.GenerationTask) -> Image.Image:
        try:
            data = await self.store.get(task.reference.bucket, task.reference.key)
        except NotFound as exc:
            raise InvalidReference("the reference image no longer exists") from exc
        except ValueError as exc:
            raise InvalidReference(f"bad reference location: {exc}") from exc

        def decode() -> Image.Image:
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.load()
                    return image.convert("RGB")
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
                raise InvalidReference("the reference image cannot be decoded") from exc

        return await asyncio.to_thread(decode)

    async def _report(self, task: queue_pb2.GenerationTask, step: int, total: int) -> bool:
        response = await self._call(
            self.jobs.ReportProgress,
            job_service_pb2.ReportProgressRequest(
                job_id=task.job_id,
                progress=job_pb2.Progress(step=step, total=total, stage="denoising"),
            ),
        )
        return response.cancel_requested

    async def _heartbeat(self, msg) -> None:
        interval = max(self.settings.sdxl_ack_wait_seconds / 3, 0.1)
        while True:
            await asyncio.sleep(interval)
            try:
                await msg.in_progress()
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

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
        delays = self.settings.sdxl_retry_backoff_seconds or (0.0,)
        return delays[min(delivery - 1, len(delays) - 1)]

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
        retry = verdict.retry and delivery < self.settings.sdxl_max_attempts
        if isinstance(exc, PermanentError) or not verdict.retry:
            log.warning("job failed: %s", verdict.message)
        else:
            log.error("job attempt failed (%s)", verdict.code, exc_info=exc)
        if verdict.code == "OUT_OF_MEMORY":
            _free_device_memory()
        await self._fail(task, verdict.code, verdict.message, retry=retry)
        if retry:
            await msg.nak(delay=self._backoff(delivery))
        else:
            self.stats.jobs_failed += 1
            await msg.term()


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
