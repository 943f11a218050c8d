"""A batch of SDXL jobs in one message (`GenerationBatch`), run by the SDXL
worker (tiny model) against the real jobs service, NATS JetStream,
PostgreSQL and S3 server. The jobs are created over HTTP while the worker is
paused (no worker waits, so Jobs holds them in line); once it waits again,
Jobs' dispatcher publishes the compatible jobs as one batch. A batch with a
task Jobs would never write is taken off the queue and published again by
the test."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from ourvidz import catalog, queue
from ourvidz.v1 import queue_pb2
from ourvidz_dev.stack import running_stack, settings_from
from services.sdxl import generate
from tests.e2e.conftest import mesh_env, signup
from tests.e2e.test_generate import download, wait_for
from tests.queue_helpers import nobody_waits, take_tasks

SIZE = 64
CONSUMER = queue.consumer_name("sdxl")
TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
async def stack(base_env):
    async with running_stack(mesh_env(base_env), workers=()) as stack:
        yield stack


@pytest.fixture(scope="module")
async def worker(stack):
    """The SDXL worker, paused: a test resumes it once its batch is queued."""
    from services.sdxl.main import start
    from services.sdxl.settings import SdxlSettings

    settings = settings_from(SdxlSettings, {**stack.env, "SDXL_WORKER_ID": "sdxl-batch"})
    running = await start(settings, port=0)
    await running.wait_ready(120)
    await _pause(running)
    yield running
    _resume(running)
    await running.stop()


@pytest.fixture
async def user(stack):
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        yield await signup(http)


async def _pause(running) -> None:
    """Stop the worker's loop, and wait until its last pull request expired:
    then no worker waits, and Jobs holds new jobs in line."""
    running.worker.stop()
    await asyncio.wait_for(running._tasks[1], 30)
    await nobody_waits(running.worker.js, "sdxl")


def _resume(running) -> None:
    running.worker._stopping.clear()
    running._tasks[1] = asyncio.create_task(running.worker.run())


def _bodies(jobs: list[tuple[str, int, int]], **common) -> list[dict]:
    """Job requests of (prompt, num_images, seed), small and fast by default."""
    return [
        {
            "job_type": "sdxl_image_fast",
            "prompt": prompt,
            "num_images": num_images,
            "seed": seed,
            "width": SIZE,
            "height": SIZE,
            **common,
        }
        for prompt, num_images, seed in jobs
    ]


async def _created(user, bodies: list[dict]) -> list[queue_pb2.GenerationTask]:
    """Jobs created over HTTP, and the task each renders (as Jobs writes it)."""
    tasks = []
    for body in bodies:
        response = await user.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["queue"]["dispatched"] is False  # no worker waits: held in line
        tasks.append(_task_of(job, user.user["id"]))
    return tasks


def _task_of(job: dict, user_id: str) -> queue_pb2.GenerationTask:
    jt = catalog.CATALOG[job["job_type"]]
    return queue_pb2.GenerationTask(
        job_id=job["id"],
        user_id=user_id,
        job_type=job["job_type"],
        prompt=job["prompt"],
        negative_prompt=job["negative_prompt"],
        seed=job["seed"],
        num_images=job["num_images"],
        width=job["width"],
        height=job["height"],
        num_frames=job["num_frames"],
        steps=job["steps"],
        guidance_scale=job["guidance_scale"],
        output_bucket=jt.bucket,
    )


async def _publish_batch(js, tasks: list[queue_pb2.GenerationTask]) -> None:
    subject, payload, headers = queue.batch_message(
        tasks, {"Nats-Msg-Id": f"batch-{uuid.uuid4().hex}"}
    )
    assert subject.endswith(f".{tasks[0].job_id}")
    await js.publish(subject, payload, headers=headers)


async def _settled(user, job_ids: list[str]) -> list[dict]:
    async def all_ended():
        jobs = [(await user.get(f"/v1/jobs/{job_id}")).json() for job_id in job_ids]
        return jobs if all(job["state"] in TERMINAL for job in jobs) else None

    return await wait_for(all_ended, within=180)


async def _drained(running, consumer: str) -> None:
    """Until the worker's consumer holds nothing: the batch's message is settled."""

    async def empty():
        info = await running.worker.js.consumer_info(queue.TASKS_STREAM, consumer)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await wait_for(empty, within=60)


class CountingPipe:
    """The worker's real pipeline, counting the images of each call."""

    def __init__(self, pipe) -> None:
        self._pipe = pipe
        self.calls: list[int] = []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **call):
        self.calls.append(len(call["generator"]))
        return self._pipe(**call)


@contextlib.contextmanager
def _counted(running):
    bundle = running.bundle
    real = bundle.txt2img
    bundle.txt2img = CountingPipe(real)
    try:
        yield bundle.txt2img
    finally:
        bundle.txt2img = real


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


async def _assert_rendered_alone(running, job: dict, task: queue_pb2.GenerationTask) -> None:
    """The job's PNGs are the images its task renders alone, within 1/255."""
    alone = await asyncio.to_thread(
        generate.render, running.bundle, task, None, lambda *_: None, lambda: False
    )
    assets = sorted(job["assets"], key=lambda a: a["index"])
    assert [a["index"] for a in assets] == [image.index for image in alone]
    assert [a["seed"] for a in assets] == [image.seed for image in alone]
    for asset, image in zip(assets, alone, strict=True):
        got = _pixels(await download(asset["url"]))
        assert abs(got - _pixels(image.png_bytes)).max() <= 1


async def test_a_batch_of_three_jobs_completes_each_as_rendered_alone(worker, user):
    jobs = [
        ("a lighthouse on a cliff at dusk", 1, 11),
        ("a red fox in the snow, watercolour", 3, 2024),
        ("a bowl of ramen, studio photo", 1, 7),
    ]
    tasks = await _created(user, _bodies(jobs))
    with _counted(worker) as pipe:
        _resume(worker)
        try:
            ended = await _settled(user, [task.job_id for task in tasks])
            await _drained(worker, CONSUMER)
        finally:
            await _pause(worker)
    assert pipe.calls == [5]  # one denoising batch of every image
    assert [job["state"] for job in ended] == ["completed"] * 3
    assert [len(job["assets"]) for job in ended] == [1, 3, 1]
    for job, task in zip(ended, tasks, strict=True):
        assert job["attempt"] == 1
        assert (job["progress"]["step"], job["progress"]["total"]) == (task.steps, task.steps)
        await _assert_rendered_alone(worker, job, task)


async def test_a_job_cancelled_mid_batch_leaves_the_others_alone(worker, user, caplog):
    caplog.set_level(logging.INFO, logger="ourvidz.genworker.loop")
    jobs = [
        ("a lighthouse on a cliff at dusk", 1, 5),
        ("a red fox in the snow, watercolour", 3, 6),
        ("a bowl of ramen, studio photo", 1, 8),
    ]
    # Larger and longer, to be cancelled while it denoises.
    bodies = _bodies(jobs, job_type="sdxl_image_high", width=256, height=256)
    tasks = await _created(user, bodies)
    cancelled = tasks[1].job_id

    async def denoising():
        job = (await user.get(f"/v1/jobs/{cancelled}")).json()
        return job["state"] == "running" and job["progress"]["step"] >= 1

    _resume(worker)
    try:
        await wait_for(denoising, within=120, interval=0.05)
        response = await user.post(f"/v1/jobs/{cancelled}/cancel")
        assert response.status_code == 200, response.text
        ended = await _settled(user, [task.job_id for task in tasks])
        await _drained(worker, CONSUMER)
    finally:
        await _pause(worker)
    assert [job["state"] for job in ended] == ["completed", "cancelled", "completed"]
    assert "job cancelled in its batch; the others go on" in caplog.messages
    assert not ended[1]["assets"]
    for index in (0, 2):
        await _assert_rendered_alone(worker, ended[index], tasks[index])
    for index in range(3):  # the cancelled job's images were never stored
        key = f"{tasks[1].user_id}/{cancelled}_{index}.png"
        assert not await worker.worker.store.exists(tasks[1].output_bucket, key)


async def test_a_failing_job_of_a_batch_fails_alone(worker, user):
    js = worker.worker.js
    jobs = [
        ("a lighthouse on a cliff at dusk", 1, 21),
        ("a red fox in the snow, watercolour", 1, 22),
        ("a bowl of ramen, studio photo", 3, 23),
    ]
    created = await _created(user, _bodies(jobs))
    tasks = await take_tasks(js, "sdxl", [task.job_id for task in created])
    tasks[1].num_images = 2  # a task the model cannot run
    await _publish_batch(js, tasks)
    _resume(worker)
    try:
        ended = await _settled(user, [task.job_id for task in tasks])
        await _drained(worker, CONSUMER)
    finally:
        await _pause(worker)
    assert [job["state"] for job in ended] == ["completed", "failed", "completed"]
    assert ended[1]["error"]["code"] == "INVALID_TASK"
    assert not ended[1]["assets"]
    for index in (0, 2):
        await _assert_rendered_alone(worker, ended[index], tasks[index])
