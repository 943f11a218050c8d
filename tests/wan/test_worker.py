"""The WAN worker through the real jobs service, NATS JetStream and S3: jobs
are created as a user would (CreateJob), published by Jobs' relay, run by the
worker and followed with WatchJob."""

from __future__ import annotations

import asyncio
import io
import uuid
from dataclasses import dataclass

import pytest
from PIL import Image

from ourvidz import catalog, grpcserver, queue
from ourvidz.auth import TokenSource
from ourvidz.storage import store_from_settings
from ourvidz.v1 import (
    events_pb2,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from services.jobs.main import start as start_jobs
from services.jobs.settings import JobsSettings
from services.wan.main import start
from services.wan.settings import WanSettings
from tests.conftest import GATEWAY_SIGNER, make_settings, token
from tests.queue_helpers import nobody_waits, take_tasks
from tests.wan.test_generate import decode_mp4, decode_png

ACK_WAIT = 1.0
CONSUMERS = (queue.consumer_name("wan"),)
# Long enough on a CPU that a missing heartbeat would let the ack wait run out.
SLOW = {"width": 256, "height": 256, "num_frames": 33}


def wan_settings(base_env, jobs_port: int, worker_id: str) -> WanSettings:
    # The ack wait is 1 s; the jobs service of these tests allows one attempt,
    # so a redelivery would fail the job (ATTEMPTS_EXHAUSTED).
    return make_settings(
        WanSettings,
        base_env,
        jobs_addr=f"127.0.0.1:{jobs_port}",
        wan_device="cpu",
        wan_ack_wait_seconds=ACK_WAIT,
        wan_progress_interval_seconds=0,
        wan_fetch_timeout_seconds=0.3,
        wan_shutdown_grace_seconds=5,
        wan_worker_id=worker_id,
    )


@dataclass
class Mesh:
    jobs: object
    stub: job_service_pb2_grpc.JobServiceStub
    wan: object
    store: object
    base_env: dict

    def user(self) -> tuple[str, tuple]:
        user_id = str(uuid.uuid4())
        return user_id, (("authorization", f"Bearer {token(user_id)}"),)

    async def create(self, md, **spec) -> job_pb2.Job:
        spec.setdefault("prompt", "a red fox running through snow, tracking shot")
        spec.setdefault("seed", 21)
        response = await self.stub.CreateJob(
            job_service_pb2.CreateJobRequest(job=job_pb2.JobSpec(**spec)), metadata=md
        )
        return response.job

    async def get(self, md, job_id: str) -> job_pb2.Job:
        return (
            await self.stub.GetJob(job_service_pb2.GetJobRequest(job_id=job_id), metadata=md)
        ).job

    async def events(self, md, job_id: str) -> list[events_pb2.JobEvent]:
        """The job's whole history, once it has ended."""
        stream = self.stub.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id), metadata=md)
        return [r.event async for r in stream]

    async def consumers(self) -> list:
        js = self.wan.worker.js
        return [await js.consumer_info(queue.TASKS_STREAM, name) for name in CONSUMERS]


@pytest.fixture(scope="module")
async def mesh(base_env, tiny_wan):
    jobs = await start_jobs(make_settings(JobsSettings, base_env, JOBS_MAX_ATTEMPTS=1), port=0)
    settings = wan_settings(base_env, jobs.port, "wan-test")
    store = store_from_settings(settings)
    await store.ensure_buckets(catalog.ALL_BUCKETS)
    wan = await start(settings, port=0)
    await wan.wait_ready(120)
    channel = grpcserver.channel(f"127.0.0.1:{jobs.port}")
    try:
        yield Mesh(jobs, job_service_pb2_grpc.JobServiceStub(channel), wan, store, base_env)
    finally:
        await wan.stop()
        await channel.close()
        await jobs.stop()


async def _drained(mesh: Mesh) -> None:
    """Until both consumers hold nothing: no pending, nothing awaiting an ack."""
    for _ in range(400):
        infos = await mesh.consumers()
        if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"messages left: {infos}")


async def _pause(mesh: Mesh) -> None:
    """Stop the worker's loop until `_resume`; once its last pull request
    expired, Jobs holds new jobs in line."""
    mesh.wan.worker.stop()
    await asyncio.wait_for(mesh.wan._tasks[1], 10)
    await nobody_waits(mesh.wan.worker.js, "wan")


def _resume(mesh: Mesh) -> None:
    mesh.wan.worker._stopping.clear()
    mesh.wan._tasks[1] = asyncio.create_task(mesh.wan.worker.run())


def _stages(events: list[events_pb2.JobEvent]) -> list[str]:
    stages = [e.progress.stage for e in events if e.type == events_pb2.JOB_EVENT_TYPE_PROGRESS]
    return [s for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]]


async def test_video_fast_gives_an_mp4_and_a_thumbnail(mesh):
    user, md = mesh.user()
    job = await mesh.create(md, job_type="video_fast", width=112, height=64, num_frames=9)
    events = await mesh.events(md, job.id)
    job = await mesh.get(md, job.id)
    assert job.state == job_pb2.JOB_STATE_COMPLETED, job.error
    assert job.attempt == 1 and job.negative_prompt == catalog.WAN_DEFAULT_NEGATIVE

    (asset,) = job.assets
    assert (asset.bucket, asset.key) == ("video-fast", f"{user}/{job.id}.mp4")
    assert (asset.thumbnail_bucket, asset.thumbnail_key) == ("thumbnails", f"{user}/{job.id}.png")
    assert (asset.content_type, asset.width, asset.height, asset.num_frames) == (
        "video/mp4",
        112,
        64,
        9,
    )
    assert asset.seed == 21
    data = await mesh.store.get(asset.bucket, asset.key)
    assert len(data) == asset.size_bytes
    frames, (codec, pix_fmt, rate) = decode_mp4(data)
    assert (len(frames), frames[0].shape, codec, pix_fmt, rate) == (
        9,
        (64, 112, 3),
        "h264",
        "yuv420p",
        16,
    )
    thumbnail = decode_png(await mesh.store.get(asset.thumbnail_bucket, asset.thumbnail_key))
    assert thumbnail.size == (112, 64)

    assert _stages(events) == [
        "encoding_text",
        "denoising",
        "decoding",
        "encoding_video",
        "uploading",
    ]
    denoised = [
        e.progress.step
        for e in events
        if e.type == events_pb2.JOB_EVENT_TYPE_PROGRESS and e.progress.stage == "denoising"
    ]
    assert denoised == list(range(1, 26))  # video_fast: 25 steps, every one reported here
    assert events[-1].type == events_pb2.JOB_EVENT_TYPE_COMPLETED
    await _drained(mesh)


async def test_image_fast_gives_one_png(mesh):
    user, md = mesh.user()
    job = await mesh.create(md, job_type="image_fast", width=64, height=48)
    events = await mesh.events(md, job.id)
    job = await mesh.get(md, job.id)
    assert job.state == job_pb2.JOB_STATE_COMPLETED, job.error
    (asset,) = job.assets
    assert (asset.bucket, asset.key, asset.content_type) == (
        "image-fast",
        f"{user}/{job.id}_0.png",
        "image/png",
    )
    assert not asset.thumbnail_key
    image = Image.open(io.BytesIO(await mesh.store.get(asset.bucket, asset.key)))
    assert image.size == (64, 48) == (asset.width, asset.height)
    assert "encoding_video" not in _stages(events)
    await _drained(mesh)


async def test_cancel_stops_the_running_job_at_its_next_step(mesh):
    user, md = mesh.user()
    job = await mesh.create(md, job_type="video_fast", **SLOW)

    async def running() -> None:
        while True:
            current = await mesh.get(md, job.id)
            if current.state == job_pb2.JOB_STATE_RUNNING and current.progress.step >= 1:
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(running(), 60)
    await mesh.stub.CancelJob(job_service_pb2.CancelJobRequest(job_id=job.id), metadata=md)
    await _drained(mesh)  # the worker let go of the message
    final = await mesh.get(md, job.id)
    assert final.state == job_pb2.JOB_STATE_CANCELLED and not final.assets
    assert final.progress.step < 25
    assert not await mesh.store.exists("video-fast", f"{user}/{job.id}.mp4")
    assert not await mesh.store.exists("thumbnails", f"{user}/{job.id}.png")


async def test_heartbeat_keeps_a_job_longer_than_the_ack_wait_from_redelivery(mesh):
    """The ack wait is 1 s and the job takes several; an idle second replica
    shares the consumer, so a missed heartbeat would hand it the message
    (delivery 2, beyond the one attempt allowed: the job would fail)."""
    spare = await start(wan_settings(mesh.base_env, mesh.jobs.port, "wan-spare"), port=0)
    await spare.wait_ready(120)
    try:
        before = sum(i.num_redelivered for i in await mesh.consumers())
        completed_before = mesh.wan.worker.stats.jobs_completed
        user, md = mesh.user()
        job = await mesh.create(md, job_type="video_fast", **SLOW)
        events = await mesh.events(md, job.id)
        job = await mesh.get(md, job.id)
        await _drained(mesh)
        after = sum(i.num_redelivered for i in await mesh.consumers())
        completed = mesh.wan.worker.stats.jobs_completed - completed_before
        completed += spare.worker.stats.jobs_completed
    finally:
        await spare.stop()

    assert job.state == job_pb2.JOB_STATE_COMPLETED, job.error
    assert job.attempt == 1
    assert after == before, "the task was redelivered"
    ran = job.complete_time.ToDatetime() - job.start_time.ToDatetime()
    assert ran.total_seconds() > 3 * ACK_WAIT, f"the job ({ran}) must outlast the ack wait"
    kinds = [e.type for e in events]
    assert kinds.count(events_pb2.JOB_EVENT_TYPE_COMPLETED) == 1
    starts = [
        e
        for e in events
        if e.type == events_pb2.JOB_EVENT_TYPE_STATE and e.state == job_pb2.JOB_STATE_RUNNING
    ]
    assert len(starts) == 1  # one StartJob
    (asset,) = job.assets
    assert asset.key == f"{user}/{job.id}.mp4"
    # Either replica may take the first delivery; between them, one completion.
    assert completed == 1


async def _rerouted(mesh: Mesh, md, spec: dict, **task_changes) -> job_pb2.Job:
    """A job created through Jobs whose queued task is replaced by one with
    `task_changes`, as a client that bypassed Jobs' checks might send it."""
    await _pause(mesh)
    try:
        job = await mesh.create(md, **spec)
        js = mesh.wan.worker.js
        subject = queue.job_task_subject(catalog.CATALOG[spec["job_type"]].subject, job.id)
        (task,) = await take_tasks(js, "wan", [job.id])
        for name, value in task_changes.items():
            if isinstance(value, job_pb2.Reference):
                getattr(task, name).CopyFrom(value)
            else:
                setattr(task, name, value)
        await js.publish(
            subject, task.SerializeToString(), headers={"Nats-Msg-Id": f"{job.id}-rerouted"}
        )
    finally:
        _resume(mesh)
    return job


async def test_reference_on_a_wan_task_fails_for_good(mesh):
    user, md = mesh.user()
    reference = job_pb2.Reference(
        type=job_pb2.REFERENCE_TYPE_STYLE, bucket="reference-images", key=f"{user}/ref.png"
    )
    job = await _rerouted(
        mesh, md, {"job_type": "image_fast", "width": 64, "height": 64}, reference=reference
    )
    await mesh.events(md, job.id)
    final = await mesh.get(md, job.id)
    assert final.state == job_pb2.JOB_STATE_FAILED
    assert final.error.code == "INVALID_REFERENCE"
    assert "text-to-video" in final.error.message and "reference" in final.error.message
    await _drained(mesh)


async def test_frame_count_not_4k_plus_1_fails_for_good(mesh):
    _, md = mesh.user()
    job = await _rerouted(
        mesh,
        md,
        {"job_type": "video_fast", "width": 64, "height": 64, "num_frames": 9},
        num_frames=10,
    )
    await mesh.events(md, job.id)
    final = await mesh.get(md, job.id)
    assert final.state == job_pb2.JOB_STATE_FAILED
    assert final.error.code == "INVALID_TASK" and "num_frames" in final.error.message
    assert final.attempt == 1
    await _drained(mesh)


async def test_a_batch_message_runs_its_jobs_one_after_another(mesh):
    """WAN renders no batch: the jobs of a batch message (as Jobs would
    publish them) each run alone, in order, and each completes."""
    _, md = mesh.user()
    spec = {"job_type": "image_fast", "width": 64, "height": 48}
    await _pause(mesh)
    try:
        jobs = [await mesh.create(md, **spec, seed=seed) for seed in (1, 2)]
        js = mesh.wan.worker.js
        tasks = await take_tasks(js, "wan", [job.id for job in jobs])
        subject, payload, headers = queue.batch_message(tasks, {"Nats-Msg-Id": uuid.uuid4().hex})
        await js.publish(subject, payload, headers=headers)
    finally:
        _resume(mesh)
    ended = []
    for job in jobs:
        await mesh.events(md, job.id)
        ended.append(await mesh.get(md, job.id))
    assert [job.state for job in ended] == [job_pb2.JOB_STATE_COMPLETED] * 2
    assert [job.assets[0].seed for job in ended] == [1, 2]
    await _drained(mesh)


async def test_worker_info_and_health(mesh):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpcserver.channel(f"127.0.0.1:{mesh.wan.port}") as ch:
        health = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="ourvidz.v1.WorkerService")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        tokens = TokenSource(GATEWAY_SIGNER, "ops", role="admin")
        info = await worker_service_pb2_grpc.WorkerServiceStub(ch).GetWorkerInfo(
            worker_service_pb2.GetWorkerInfoRequest(), metadata=tokens.metadata(), timeout=5
        )
    assert (info.worker_id, info.family, info.model_preset, info.ready) == (
        "wan-test",
        "wan",
        "tiny",
        True,
    )
    assert (info.device, info.dtype) == ("cpu", "float32")
    assert info.jobs_completed >= 1 and info.jobs_failed >= 1
