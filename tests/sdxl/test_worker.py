"""The worker loop against a real NATS JetStream and a real S3 server, with a
minimal in-test JobService that records the worker's calls (the real jobs
service is exercised by the end-to-end tests)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import uuid

import grpc
import pytest
from PIL import Image

from ourvidz import catalog, grpcserver, queue
from ourvidz.auth import TokenSource, current_principal
from ourvidz.errors import FailedPrecondition
from ourvidz.storage import store_from_settings
from ourvidz.v1 import (
    events_pb2,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from services.sdxl.main import start
from services.sdxl.settings import SdxlSettings
from tests.conftest import GATEWAY_SIGNER, VERIFIER, make_settings
from tests.queue_helpers import nobody_waits


class RecordingJobs(job_service_pb2_grpc.JobServiceServicer):
    """Answers like the jobs service would and records every call; per-test
    hooks change the answers. Like the real service it remembers which jobs
    it completed, so it can commit a completion and then lose the answer."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.proceed = True
        # Codes StartJob answers with before it succeeds (a jobs service away).
        self.start_errors: list[grpc.StatusCode] = []
        # Codes CompleteJob answers with before it commits.
        self.complete_errors: list[grpc.StatusCode] = []
        # Completions refused because another start holds the job, which that
        # start completes.
        self.superseded_completions = 0
        # Completions to commit and then answer with UNAVAILABLE (the reply lost).
        self.lose_completion_answers = 0
        self.completed: set[str] = set()
        # Starts to answer "another worker holds this job" before one proceeds.
        self.held_elsewhere = 0
        self.cancel_at_step: int | None = None
        self.on_progress = None
        self.on_start = None
        self.changed = asyncio.Event()

    def reset(self) -> None:
        self.__init__()

    def _record(self, name: str, request) -> None:
        current_principal().require("worker")
        self.calls.append((name, request))
        self.changed.set()

    def of(self, name: str) -> list:
        return [r for n, r in self.calls if n == name]

    async def wait_for(self, name: str, count: int = 1, wait_seconds: float = 60.0) -> list:
        async def until() -> None:
            while len(self.of(name)) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), wait_seconds)
        return self.of(name)

    async def StartJob(self, request, context):
        self._record("StartJob", request)
        if self.on_start is not None:
            self.on_start()
        if self.start_errors:
            await context.abort(self.start_errors.pop(0), "injected")
        if request.job_id in self.completed:
            job = job_pb2.Job(id=request.job_id, state=job_pb2.JOB_STATE_COMPLETED)
            return job_service_pb2.StartJobResponse(job=job, proceed=False)
        if self.held_elsewhere:
            self.held_elsewhere -= 1
            return job_service_pb2.StartJobResponse(proceed=False, held_elsewhere=True)
        return job_service_pb2.StartJobResponse(
            proceed=self.proceed, start_token=f"{request.task_sequence}:{request.delivery}"
        )

    async def ReportProgress(self, request, context):
        self._record("ReportProgress", request)
        if self.on_progress is not None:
            await self.on_progress(request)
        cancel = self.cancel_at_step is not None and request.progress.step >= self.cancel_at_step
        return job_service_pb2.ReportProgressResponse(cancel_requested=cancel)

    async def Heartbeat(self, request, context):
        self._record("Heartbeat", request)
        return job_service_pb2.HeartbeatResponse()

    async def CompleteJob(self, request, context):
        self._record("CompleteJob", request)
        if self.complete_errors:
            code = self.complete_errors.pop(0)
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise FailedPrecondition("the job was cancelled", reason="JOB_CANCELLED")
            await context.abort(code, "injected")
        if self.superseded_completions:
            self.superseded_completions -= 1
            self.completed.add(request.job_id)  # by the start that holds it
            raise FailedPrecondition("another start holds the job", reason="NOT_JOB_HOLDER")
        self.completed.add(request.job_id)  # committed
        if self.lose_completion_answers:
            self.lose_completion_answers -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the answer was lost")
        job = job_pb2.Job(id=request.job_id, state=job_pb2.JOB_STATE_COMPLETED)
        return job_service_pb2.CompleteJobResponse(job=job)

    async def FailJob(self, request, context):
        self._record("FailJob", request)
        state = job_pb2.JOB_STATE_QUEUED if request.will_retry else job_pb2.JOB_STATE_FAILED
        job = job_pb2.Job(id=request.job_id, state=state, attempt=1)
        return job_service_pb2.FailJobResponse(job=job)


@pytest.fixture(scope="module")
async def jobs_double(base_env):
    double = RecordingJobs()
    served = grpcserver.build_server(
        verifier=VERIFIER,
        register=lambda s: job_service_pb2_grpc.add_JobServiceServicer_to_server(double, s),
        service_names=["ourvidz.v1.JobService"],
        port=0,
    )
    await served.start()
    yield double, served.port
    await served.stop(0)


@pytest.fixture(scope="module")
async def sdxl(base_env, jobs_double, tiny_bundle):
    _, port = jobs_double
    settings = make_settings(
        SdxlSettings,
        base_env,
        jobs_addr=f"127.0.0.1:{port}",
        sdxl_progress_interval_seconds=0,
        sdxl_retry_backoff_seconds="[0.2]",
        sdxl_ack_wait_seconds=5,
        sdxl_fetch_timeout_seconds=0.3,
        sdxl_worker_id="sdxl-test",
    )
    store = store_from_settings(settings)
    await store.ensure_buckets(catalog.ALL_BUCKETS)
    running = await start(settings, port=0)
    await running.wait_ready(120)
    yield running, store
    await running.stop()


@pytest.fixture
def double(jobs_double):
    d, _ = jobs_double
    d.reset()
    return d


async def _publish(running, task, subject="tasks.sdxl.fast") -> None:
    await running.worker.js.publish(
        queue.job_task_subject(subject, task.job_id),
        task.SerializeToString(),
        headers={"Nats-Msg-Id": task.job_id},
    )


async def _drained(running) -> None:
    """Until the family's consumer holds nothing: no pending, nothing awaiting an ack."""
    for _ in range(200):
        info = await running.worker.js.consumer_info(
            queue.TASKS_STREAM, queue.consumer_name("sdxl")
        )
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"messages left: {info}")


def _ids() -> tuple[str, str]:
    return f"u{uuid.uuid4().hex[:8]}", f"j{uuid.uuid4().hex[:12]}"


async def test_task_runs_uploads_completes_and_acks(sdxl, double, make_task):
    running, store = sdxl
    user, job = _ids()
    task = make_task(job_id=job, user_id=user, num_images=3, steps=3, seed=41)
    await _publish(running, task)

    (complete,) = await double.wait_for("CompleteJob")
    await _drained(running)

    (started,) = double.of("StartJob")
    assert (started.job_id, started.worker_id, started.delivery) == (job, "sdxl-test", 1)
    reports = double.of("ReportProgress")
    assert [r.progress.step for r in reports if r.progress.stage == "denoising"] == [1, 2, 3]
    assert {r.progress.total for r in reports} == {3}
    stages = [r.progress.stage for r in reports]
    assert [s for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]] == [
        "encoding_text",
        "denoising",
        "decoding",
        "uploading",
    ]
    names = [n for n, _ in double.calls]
    assert names.index("CompleteJob") > max(i for i, n in enumerate(names) if n == "ReportProgress")

    # Every call about the job carries the token its start was given.
    token = f"{started.task_sequence}:{started.delivery}"
    assert complete.start_token == token
    assert {r.start_token for r in reports} == {token}
    assert {h.start_token for h in double.of("Heartbeat")} <= {token}

    assert [a.index for a in complete.assets] == [0, 1, 2]
    assert [a.seed for a in complete.assets] == [41, 42, 43]
    for asset in complete.assets:
        assert (asset.bucket, asset.key) == ("sdxl-image-fast", f"{user}/{job}_{asset.index}.png")
        assert (asset.content_type, asset.width, asset.height) == ("image/png", 64, 64)
        data = await store.get(asset.bucket, asset.key)
        assert len(data) == asset.size_bytes
        assert Image.open(io.BytesIO(data)).size == (64, 64)
    assert not double.of("FailJob")


async def _pause(running) -> None:
    """Stop the worker's loop until `_resume`, and wait until its last pull
    request expired (a task published meanwhile would go to it)."""
    running.worker.stop()
    await asyncio.wait_for(running._tasks[1], 10)
    await nobody_waits(running.worker.js, "sdxl")


def _resume(running) -> None:
    running.worker._stopping.clear()
    running._tasks[1] = asyncio.create_task(running.worker.run())


async def test_both_priorities_are_taken_in_the_order_published(sdxl, double, make_task):
    """Jobs decides the order (its dispatcher publishes fast before high, users
    in turn); the worker's one consumer takes the family's tasks as published."""
    running, _ = sdxl
    await _pause(running)  # hold the loop while the queue fills
    user, _ = _ids()
    high = make_task(
        job_id=f"high-{uuid.uuid4().hex[:8]}", user_id=user, job_type="sdxl_image_high"
    )
    fast = make_task(job_id=f"fast-{uuid.uuid4().hex[:8]}", user_id=user)
    await _publish(running, high, "tasks.sdxl.high")
    await _publish(running, fast, "tasks.sdxl.fast")
    _resume(running)

    await double.wait_for("CompleteJob", 2)
    await _drained(running)
    assert [r.job_id for r in double.of("StartJob")] == [high.job_id, fast.job_id]


async def test_start_job_refusal_acks_without_running(sdxl, double, make_task):
    running, store = sdxl
    double.proceed = False
    user, job = _ids()
    await _publish(running, make_task(job_id=job, user_id=user))
    await double.wait_for("StartJob")
    await _drained(running)
    assert not double.of("ReportProgress") and not double.of("CompleteJob")
    assert not await store.exists("sdxl-image-fast", f"{user}/{job}_0.png")


async def test_cancel_from_progress_answer_stops_and_cleans_up(sdxl, double, make_task):
    running, store = sdxl
    double.cancel_at_step = 2
    user, job = _ids()
    await _publish(running, make_task(job_id=job, user_id=user, steps=12, width=256, height=256))
    await double.wait_for("ReportProgress", 2)
    await _drained(running)
    assert not double.of("CompleteJob") and not double.of("FailJob")
    assert max(r.progress.step for r in double.of("ReportProgress")) < 12
    assert not await store.exists("sdxl-image-fast", f"{user}/{job}_0.png")


async def test_cancel_event_stops_the_job(sdxl, double, make_task):
    running, store = sdxl
    user, job = _ids()
    nc = running.worker.nc

    async def publish_cancel(request):
        if request.progress.step == 1:
            event = events_pb2.JobEvent(
                job_id=job,
                user_id=user,
                sequence=5,
                type=events_pb2.JOB_EVENT_TYPE_CANCELLED,
                state=job_pb2.JOB_STATE_CANCELLED,
            )
            await nc.publish(queue.event_subject(user, job), event.SerializeToString())
            await nc.flush()
            await asyncio.sleep(0.5)  # keep the answer back: only the event cancels

    double.on_progress = publish_cancel
    await _publish(running, make_task(job_id=job, user_id=user, steps=15, width=512, height=512))
    await double.wait_for("StartJob")
    await _drained(running)
    assert not double.of("CompleteJob")
    assert max(r.progress.step for r in double.of("ReportProgress")) < 15
    assert not await store.exists("sdxl-image-fast", f"{user}/{job}_0.png")


async def test_a_jobs_service_away_at_completion_costs_nothing(sdxl, double, make_task):
    running, store = sdxl
    double.complete_errors = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED]
    user, job = _ids()
    await _publish(running, make_task(job_id=job, user_id=user, seed=5))
    await double.wait_for("CompleteJob", 3)
    await _drained(running)
    assert not double.of("FailJob")  # the job did nothing wrong
    assert len(double.of("StartJob")) == 1  # the message was kept, not redelivered
    assert await store.exists("sdxl-image-fast", f"{user}/{job}_0.png")


async def test_a_completion_committed_whose_answer_was_lost_keeps_its_files(
    sdxl, double, make_task
):
    running, store = sdxl
    double.lose_completion_answers = 1
    user, job = _ids()
    await _publish(running, make_task(job_id=job, user_id=user, num_images=3, seed=9))
    await double.wait_for("CompleteJob", 2)
    await _drained(running)
    assert job in double.completed and not double.of("FailJob")
    for index in range(3):  # the completed job's files are all there
        assert await store.exists("sdxl-image-fast", f"{user}/{job}_{index}.png")


async def test_a_start_while_jobs_is_away_waits_and_runs_once(sdxl, double, make_task):
    running, _ = sdxl
    double.start_errors = [grpc.StatusCode.UNAVAILABLE] * 3
    waiting: list[str] = []  # what the worker's health says at each try
    double.on_start = lambda: waiting.append(running.worker.stats.waiting_on)
    user, job = _ids()
    await _publish(running, make_task(job_id=job, user_id=user))
    (complete,) = await double.wait_for("CompleteJob")
    await _drained(running)
    starts = double.of("StartJob")
    assert len(starts) == 4 and {s.delivery for s in starts} == {1}  # one delivery throughout
    assert not double.of("FailJob")
    assert waiting == ["", "the jobs service", "the jobs service", "the jobs service"]
    assert running.worker.stats.waiting_on == ""
    assert complete.assets[0].key == f"{user}/{job}_0.png"


async def test_a_job_held_by_a_live_worker_is_handed_back_not_dropped(sdxl, double, make_task):
    running, _ = sdxl
    double.held_elsewhere = 1
    user, job = _ids()
    await _publish(running, make_task(job_id=job, user_id=user))
    (complete,) = await double.wait_for("CompleteJob")
    await _drained(running)
    assert [s.delivery for s in double.of("StartJob")] == [1, 2]  # kept, delivered again
    assert complete.job_id == job


async def test_cancelled_meanwhile_at_completion_removes_outputs(sdxl, double, make_task):
    running, store = sdxl
    double.complete_errors = [grpc.StatusCode.FAILED_PRECONDITION]
    user, job = _ids()
    await _publish(running, make_task(job_id=job, user_id=user))
    await double.wait_for("CompleteJob")
    await _drained(running)
    assert not double.of("FailJob")
    assert len(double.of("StartJob")) == 1
    assert not await store.exists("sdxl-image-fast", f"{user}/{job}_0.png")


async def test_a_start_superseded_at_completion_keeps_the_outputs(sdxl, double, make_task):
    """Another delivery started the job meanwhile and completed it: the
    outputs are that start's too (same keys), so they stay; the task is
    handed back, and its next delivery is acked without running."""
    running, store = sdxl
    double.superseded_completions = 1
    user, job = _ids()
    await _publish(running, make_task(job_id=job, user_id=user))
    await double.wait_for("StartJob", 2)
    await _drained(running)
    assert [s.delivery for s in double.of("StartJob")] == [1, 2]
    assert len(double.of("CompleteJob")) == 1 and not double.of("FailJob")
    assert await store.exists("sdxl-image-fast", f"{user}/{job}_0.png")


async def test_undecodable_reference_fails_for_good(sdxl, double, make_task):
    running, store = sdxl
    user, job = _ids()
    await store.put("reference-images", f"{user}/ref.png", b"not an image", "image/png")
    reference = job_pb2.Reference(
        type=job_pb2.REFERENCE_TYPE_STYLE,
        strength=0.5,
        bucket="reference-images",
        key=f"{user}/ref.png",
    )
    await _publish(running, make_task(job_id=job, user_id=user, reference=reference))
    (fail,) = await double.wait_for("FailJob")
    await _drained(running)
    assert (fail.will_retry, fail.error.code) == (False, "INVALID_REFERENCE")
    assert len(double.of("StartJob")) == 1 and not double.of("CompleteJob")


async def test_a_failed_job_is_an_error_span_in_the_trace_its_message_carried(
    sdxl, double, make_task
):
    from opentelemetry import trace

    from ourvidz import telemetry

    running, store = sdxl
    user, job = _ids()
    await store.put("reference-images", f"{user}/ref.png", b"not an image", "image/png")
    reference = job_pb2.Reference(bucket="reference-images", key=f"{user}/ref.png")
    task = make_task(job_id=job, user_id=user, reference=reference)
    with telemetry.capture() as exporter:
        with telemetry.tracer("jobs").start_as_current_span("publish") as publisher:
            headers = telemetry.inject({"Nats-Msg-Id": job})
        await running.worker.js.publish(
            queue.job_task_subject("tasks.sdxl.fast", job),
            task.SerializeToString(),
            headers=headers,
        )
        await double.wait_for("FailJob")
        await _drained(running)
        for _ in range(200):  # the span ends as the handling of the message returns
            spans = [s for s in exporter.get_finished_spans() if s.name == "sdxl.job"]
            if spans:
                break
            await asyncio.sleep(0.05)
        (span,) = spans
    assert span.parent.span_id == publisher.get_span_context().span_id
    assert span.attributes["job.id"] == job
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.status.description == "INVALID_REFERENCE"


async def test_reference_job_completes(sdxl, double, make_task):
    running, store = sdxl
    user, job = _ids()
    buffer = io.BytesIO()
    Image.new("RGB", (96, 80), (10, 200, 40)).save(buffer, format="PNG")
    await store.put("reference-images", f"{user}/ref.png", buffer.getvalue(), "image/png")
    reference = job_pb2.Reference(
        type=job_pb2.REFERENCE_TYPE_CHARACTER,
        strength=1.0,
        bucket="reference-images",
        key=f"{user}/ref.png",
    )
    await _publish(running, make_task(job_id=job, user_id=user, steps=10, reference=reference))
    (complete,) = await double.wait_for("CompleteJob")
    await _drained(running)
    strength, _ = catalog.reference_settings("character", 1.0)
    assert double.of("ReportProgress")[-1].progress.total == int(10 * strength)
    assert complete.assets[0].key == f"{user}/{job}_0.png"


async def test_shutdown_hands_the_job_in_hand_back(sdxl, double, make_task, base_env, jobs_double):
    running, _ = sdxl
    await _pause(running)
    settings = make_settings(
        SdxlSettings,
        base_env,
        jobs_addr=f"127.0.0.1:{jobs_double[1]}",
        sdxl_progress_interval_seconds=0,
        sdxl_retry_backoff_seconds="[0.2]",
        sdxl_shutdown_grace_seconds=0.2,
        sdxl_fetch_timeout_seconds=0.3,
        sdxl_worker_id="sdxl-leaving",
    )
    leaving = await start(settings, port=0)
    await leaving.wait_ready(120)
    user, job = _ids()
    await _publish(running, make_task(job_id=job, user_id=user, steps=15, width=512, height=512))
    await double.wait_for("ReportProgress")
    await leaving.stop()
    (fail,) = double.of("FailJob")
    assert (fail.will_retry, fail.error.code) == (True, "WORKER_SHUTDOWN")
    assert fail.dependency_failure  # leaving costs the job no attempt
    assert not double.of("CompleteJob")

    _resume(running)  # another replica takes the job over
    (complete,) = await double.wait_for("CompleteJob")
    await _drained(running)
    starts = double.of("StartJob")
    assert [(s.worker_id, s.delivery) for s in starts] == [("sdxl-leaving", 1), ("sdxl-test", 2)]
    assert complete.assets[0].key == f"{user}/{job}_0.png"


async def test_poison_message_is_dropped(sdxl, double):
    running, _ = sdxl
    await running.worker.js.publish("tasks.sdxl.fast.poison", b"\xff\xfe not a protobuf")
    await _drained(running)
    assert not double.calls


async def test_worker_info_and_health(sdxl, base_env):
    running, _ = sdxl
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpcserver.channel(f"127.0.0.1:{running.port}") as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        tokens = TokenSource(GATEWAY_SIGNER, "ops", role="admin")
        info = await worker_service_pb2_grpc.WorkerServiceStub(ch).GetWorkerInfo(
            worker_service_pb2.GetWorkerInfoRequest(), metadata=tokens.metadata(), timeout=5
        )
    assert (info.worker_id, info.family, info.model_preset, info.ready) == (
        "sdxl-test",
        "sdxl",
        "tiny",
        True,
    )
    assert (info.device, info.dtype) == ("cpu", "float32")
    assert info.jobs_completed >= 1 and info.jobs_failed >= 1


class FailingPipe:
    """The real pipeline behind a device that fails: `fail(call)` returns the
    exception a call raises (the real torch classes, CUDA's own messages),
    or None to run it."""

    def __init__(self, pipe, fail) -> None:
        self._pipe = pipe
        self._fail = fail
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **call):
        self.batches.append(len(call["generator"]))
        if (exc := self._fail(self, call)) is not None:
            raise exc
        return self._pipe(**call)


def _oom() -> Exception:
    import torch

    return torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of "
        "139.72 GiB of which 1.06 GiB is free."
    )


def _fits(images: int):
    """Out of memory for a batch of more than `images`, or a decode without slicing."""

    def fail(pipe, call):
        sliced = pipe.vae.use_slicing and pipe.vae.use_tiling
        return _oom() if len(call["generator"]) > images or not sliced else None

    return fail


@contextlib.contextmanager
def _device(running, fail):
    bundle = running.bundle
    real = bundle.txt2img
    bundle.txt2img = FailingPipe(real, fail)
    try:
        yield bundle.txt2img
    finally:
        bundle.txt2img = real


def _pixels(data: bytes):
    import numpy as np

    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)


async def test_out_of_memory_retries_in_smaller_batches_with_the_same_images(
    sdxl, double, make_task, caplog
):
    running, store = sdxl
    user, plain_job = _ids()
    _, job = _ids()
    await _publish(running, make_task(job_id=plain_job, user_id=user, num_images=3, seed=77))
    (plain,) = await double.wait_for("CompleteJob")
    caplog.set_level(logging.WARNING, logger="ourvidz.genworker.loop")
    with _device(running, _fits(images=1)) as pipe:
        await _publish(running, make_task(job_id=job, user_id=user, num_images=3, seed=77))
        complete = (await double.wait_for("CompleteJob", 2))[1]
        await _drained(running)
    assert pipe.batches == [3, 3, 2, 1, 1, 1]  # full, sliced, halves (2 fails), ones
    assert not double.of("FailJob")
    assert [a.seed for a in complete.assets] == [a.seed for a in plain.assets] == [77, 78, 79]
    for before, after in zip(plain.assets, complete.assets, strict=True):
        want = _pixels(await store.get(before.bucket, before.key))
        got = _pixels(await store.get(after.bucket, after.key))
        # The same images, up to the rounding of another batch size.
        assert abs(want - got).max() <= 2
    retries = [r.getMessage() for r in caplog.records if "out of GPU memory" in r.getMessage()]
    assert [m.split(" (")[0] for m in retries] == [
        "out of GPU memory with the full batch; retrying with VAE slicing and tiling",
        "out of GPU memory with VAE slicing and tiling; "
        "retrying with VAE slicing and tiling + batches of 2",
        "out of GPU memory with VAE slicing and tiling + batches of 2; "
        "retrying with VAE slicing and tiling + batches of 1",
    ]
    # Later jobs decode at full speed again.
    assert not running.bundle.txt2img.vae.use_slicing
    assert not running.bundle.txt2img.vae.use_tiling


async def test_out_of_memory_with_every_fallback_fails_the_job(sdxl, double, make_task):
    running, _ = sdxl
    user, job = _ids()
    with _device(running, lambda pipe, call: _oom()) as pipe:
        await _publish(running, make_task(job_id=job, user_id=user, num_images=3))
        (fail,) = await double.wait_for("FailJob")
        await _drained(running)
    assert pipe.batches == [3, 3, 2, 1]  # each fallback fails at its first batch
    assert (fail.will_retry, fail.dependency_failure) == (False, False)
    assert fail.error.code == "OUT_OF_MEMORY"
    assert fail.error.message == (
        "the job does not fit in the GPU's memory (tried: the full batch; VAE slicing and "
        "tiling; VAE slicing and tiling + batches of 2; VAE slicing and tiling + batches of 1)"
    )
    assert not double.of("CompleteJob")


@pytest.mark.parametrize(
    "error",
    [
        "accelerator: CUDA error: an illegal memory access was encountered",
        "runtime: CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx( handle, "
        "opa, opb, m, n, k, &falpha, a, CUDA_R_16BF, lda, b, CUDA_R_16BF, ldb, &fbeta, c, "
        "CUDA_R_16BF, ldc, compute_type, CUBLAS_GEMM_DEFAULT_TENSOR_OP)`",
    ],
)
async def test_a_broken_gpu_hands_the_job_back_and_ends_the_worker(
    sdxl, double, make_task, base_env, jobs_double, caplog, error
):
    import torch
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from ourvidz.genworker.loop import EXIT_DEVICE_FAILED

    running, _ = sdxl
    await _pause(running)
    settings = make_settings(
        SdxlSettings,
        base_env,
        jobs_addr=f"127.0.0.1:{jobs_double[1]}",
        sdxl_progress_interval_seconds=0,
        sdxl_fetch_timeout_seconds=0.3,
        sdxl_worker_id="sdxl-broken",
    )
    broken = await start(settings, port=0)
    try:
        await broken.wait_ready(120)
        kind, message = error.split(": ", 1)
        cls = torch.AcceleratorError if kind == "accelerator" else RuntimeError
        caplog.set_level(logging.WARNING, logger="ourvidz.genworker.loop")
        with _device(broken, lambda pipe, call: cls(message)) as pipe:
            user, job = _ids()
            await _publish(running, make_task(job_id=job, user_id=user))
            await asyncio.wait_for(broken.task, 60)  # the worker ends by itself
            assert broken.exit_code == EXIT_DEVICE_FAILED
            async with grpcserver.channel(f"127.0.0.1:{broken.port}") as ch:
                health = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="")
                )
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert pipe.batches == [1]  # no retry on a broken device
        (fail,) = double.of("FailJob")
        assert (fail.will_retry, fail.dependency_failure) == (True, True)  # no attempt spent
        assert fail.error.code == "DEVICE_FAILED"
        (line,) = [r for r in caplog.records if r.levelno == logging.CRITICAL]
        assert line.getMessage().startswith(f"the GPU failed ({cls.__name__}: {message[:20]}")
        assert "exits with status 70" in line.getMessage()
    finally:
        await broken.stop()

    _resume(running)  # a healthy replica takes the job over at once
    (complete,) = await double.wait_for("CompleteJob")
    await _drained(running)
    starts = double.of("StartJob")
    assert [(s.worker_id, s.delivery) for s in starts] == [("sdxl-broken", 1), ("sdxl-test", 2)]
    assert complete.assets[0].key == f"{user}/{job}_0.png"


# --- batches of jobs in one message -------------------------------------------------


async def _publish_batch(running, tasks) -> None:
    subject, payload, headers = queue.batch_message(
        tasks, {"Nats-Msg-Id": f"batch-{tasks[0].job_id}"}
    )
    await running.worker.js.publish(subject, payload, headers=headers)


def _batch(make_task, user: str, jobs) -> list:
    """Tasks of (num_images, seed, prompt), each its own job."""
    return [
        make_task(job_id=_ids()[1], user_id=user, num_images=n, seed=seed, prompt=prompt)
        for n, seed, prompt in jobs
    ]


async def test_a_batch_out_of_memory_halves_its_image_list_keeping_each_seed(
    sdxl, double, make_task
):
    running, store = sdxl
    user, _ = _ids()
    jobs = [(1, 5, "a cat on a sofa"), (3, 50, "a dog in the rain")]
    with _device(running, lambda pipe, call: None) as roomy:
        await _publish_batch(running, _batch(make_task, user, jobs))
        plain = await double.wait_for("CompleteJob", 2)
        await _drained(running)
    with _device(running, _fits(images=1)) as tight:
        await _publish_batch(running, _batch(make_task, user, jobs))
        complete = (await double.wait_for("CompleteJob", 4))[2:]
        await _drained(running)
    assert roomy.batches == [4]  # both jobs in one pipeline call
    assert tight.batches == [4, 4, 2, 1, 1, 1, 1]  # full, sliced, halves (2 fails), ones
    assert not double.of("FailJob")
    for before, after in zip(plain, complete, strict=True):
        assert [a.seed for a in after.assets] == [a.seed for a in before.assets]
        for was, now in zip(before.assets, after.assets, strict=True):
            want = _pixels(await store.get(was.bucket, was.key))
            got = _pixels(await store.get(now.bucket, now.key))
            assert abs(want - got).max() <= 2
    assert [[a.seed for a in c.assets] for c in complete] == [[5], [50, 51, 52]]


async def test_a_job_of_a_batch_held_elsewhere_runs_at_the_redelivery_alone(
    sdxl, double, make_task
):
    running, _ = sdxl
    user, _ = _ids()
    double.held_elsewhere = 1  # the first job's first start: another worker holds it
    tasks = _batch(make_task, user, [(1, 1, "a cat"), (1, 2, "a dog"), (1, 3, "a bird")])
    with _device(running, lambda pipe, call: None) as pipe:
        await _publish_batch(running, tasks)
        completes = await double.wait_for("CompleteJob", 3)
        await _drained(running)
    assert pipe.batches == [2, 1]  # the others together, then the held one alone
    assert [c.job_id for c in completes] == [t.job_id for t in (tasks[1], tasks[2], tasks[0])]
    starts = [(s.job_id, s.delivery) for s in double.of("StartJob")]
    # The redelivery starts every job again; the completed ones are refused.
    assert starts == [(t.job_id, 1) for t in tasks] + [(t.job_id, 2) for t in tasks]
    assert not double.of("FailJob")


async def test_a_batch_is_handed_back_when_one_job_is_completed_by_another_start(
    sdxl, double, make_task
):
    running, _ = sdxl
    user, _ = _ids()
    double.superseded_completions = 1  # the first completion: another start holds that job
    tasks = _batch(make_task, user, [(1, 1, "a cat"), (3, 2, "a dog")])
    await _publish_batch(running, tasks)
    starts = await double.wait_for("StartJob", 4)  # the batch comes back once
    await _drained(running)
    assert [(s.job_id, s.delivery) for s in starts] == [
        (tasks[0].job_id, 1),
        (tasks[1].job_id, 1),
        (tasks[0].job_id, 2),
        (tasks[1].job_id, 2),
    ]
    assert len(double.of("CompleteJob")) == 2 and not double.of("FailJob")
    # Every report carries its own job's start token and the shared step count.
    for task, first in zip(tasks, starts[:2], strict=True):
        reports = [r for r in double.of("ReportProgress") if r.job_id == task.job_id]
        assert {r.start_token for r in reports} == {f"{first.task_sequence}:{first.delivery}"}
        steps = [r.progress.step for r in reports if r.progress.stage == "denoising"]
        assert steps == [1, 2, 3]
