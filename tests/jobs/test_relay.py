"""The outbox relay: tasks reach the TASKS stream on their job's subject,
a row published twice is stored once, and enhanced jobs go through
tasks.enhance before their generation task."""

from __future__ import annotations

import asyncio
import uuid

from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from ourvidz import queue
from ourvidz.v1 import job_pb2, job_service_pb2, queue_pb2
from tests.conftest import end_active_jobs
from tests.jobs.helpers import owner_query, pull_task
from tests.queue_helpers import someone_waits


async def test_generation_task_is_published_with_the_job_id(harness):
    user_id, md = harness.user()
    job = await harness.create(md, prompt="a tall ship", seed=7, num_images=3)
    msg = await pull_task(harness, "tasks.sdxl.fast", job.id)  # the relay runs by itself
    assert msg.subject == f"tasks.sdxl.fast.{job.id}"
    task = queue_pb2.GenerationTask.FromString(msg.data)
    assert (task.job_id, task.user_id, task.prompt) == (job.id, user_id, "a tall ship")
    assert (task.seed, task.num_images, task.width, task.height) == (7, 3, 1024, 1024)
    assert task.output_bucket == "sdxl-image-fast"
    assert task.steps == 15
    assert task.negative_prompt == job.negative_prompt


async def test_a_row_published_twice_is_stored_once(harness, base_env):
    _, md = harness.user()
    job = await harness.create(md, job_type="sdxl_image_high")
    # Its task published (a worker took it and holds it, unacked).
    held = await pull_task(harness, "tasks.sdxl.high", job.id, ack=False)
    await harness.drain_relay()
    info = await harness.js.stream_info(queue.TASKS_STREAM)
    before = info.state.messages
    # As if a relay died after publishing but before deleting: the row again.
    task = queue_pb2.GenerationTask(job_id=job.id, prompt=job.prompt).SerializeToString()
    owner_query(
        base_env["DATABASE_URL"],
        "INSERT INTO jobs.outbox (subject, msg_id, payload) VALUES (%s, %s, %s) RETURNING id",
        (held.subject, held.headers["Nats-Msg-Id"], task),
    )
    await harness.drain_relay()
    assert (await harness.js.stream_info(queue.TASKS_STREAM)).state.messages == before
    left = owner_query(base_env["DATABASE_URL"], "SELECT count(*) FROM jobs.outbox")
    assert left[0][0] == 0
    assert queue_pb2.GenerationTask.FromString(held.data).steps == 25  # the first one
    await held.ack()


async def test_events_reach_the_events_stream(harness):
    user_id, md = harness.user()
    job = await harness.create(md)
    await harness.drain_relay()
    subject = queue.event_subject(user_id, job.id)
    msg = await harness.js.get_last_msg(queue.EVENTS_STREAM, subject)
    assert msg.headers["Nats-Msg-Id"] == f"{job.id}:1"
    from ourvidz.v1 import events_pb2

    event = events_pb2.JobEvent.FromString(msg.data)
    assert (event.job_id, event.sequence, event.type) == (
        job.id,
        1,
        events_pb2.JOB_EVENT_TYPE_STATE,
    )
    assert event.job.prompt == job.prompt


async def test_enhanced_job_goes_through_the_enhancer(harness):
    _, md = harness.user()
    job = await harness.create(md, job_type="image7b_fast_enhanced", prompt="a cat")
    msg = await pull_task(harness, "tasks.enhance", f"{job.id}:enhance")
    enhance = queue_pb2.EnhanceTask.FromString(msg.data)
    assert (enhance.job_id, enhance.prompt, enhance.target_model) == (job.id, "a cat", "wan")

    done = await harness.stub.CompleteEnhancement(
        job_service_pb2.CompleteEnhancementRequest(
            job_id=job.id, enhanced_prompt="a fluffy cat on a sunlit windowsill"
        ),
        metadata=harness.worker_md,
    )
    assert done.job.state == job_pb2.JOB_STATE_QUEUED
    assert done.job.enhanced_prompt == "a fluffy cat on a sunlit windowsill"
    assert not done.job.enhancement_fallback
    msg = await pull_task(harness, "tasks.wan.fast", job.id)
    task = queue_pb2.GenerationTask.FromString(msg.data)
    assert task.prompt == "a fluffy cat on a sunlit windowsill"
    assert task.output_bucket == "image7b-fast-enhanced"

    again = await harness.stub.CompleteEnhancement(
        job_service_pb2.CompleteEnhancementRequest(job_id=job.id, enhanced_prompt="other"),
        metadata=harness.worker_md,
    )
    assert again.job.enhanced_prompt == "a fluffy cat on a sunlit windowsill"
    assert again.job.last_sequence == done.job.last_sequence


async def test_enhancement_fallback_uses_the_original_prompt(harness):
    _, md = harness.user()
    job = await harness.create(md, job_type="video7b_high_enhanced", prompt="a river")
    done = await harness.stub.CompleteEnhancement(
        job_service_pb2.CompleteEnhancementRequest(
            job_id=job.id, fallback=True, fallback_reason="timeout"
        ),
        metadata=harness.worker_md,
    )
    assert done.job.enhancement_fallback
    assert done.job.enhancement_fallback_reason == "timeout"
    assert done.job.state == job_pb2.JOB_STATE_QUEUED
    msg = await pull_task(harness, "tasks.wan.high", job.id)
    assert queue_pb2.GenerationTask.FromString(msg.data).prompt == "a river"


async def test_the_backlog_gauge_counts_the_rows_not_yet_published(harness, base_env):
    relay = harness.running.relay
    await relay.stop()  # this test alone publishes, so the count stays put
    try:
        await harness.drain_relay()
        assert await relay.count_backlog() == 0
        for _ in range(2):
            subject = queue.event_subject(str(uuid.uuid4()), str(uuid.uuid4()))
            owner_query(
                base_env["DATABASE_URL"],
                "INSERT INTO jobs.outbox (subject, msg_id, payload) VALUES (%s, %s, %s) "
                "RETURNING id",
                (subject, f"backlog-{uuid.uuid4()}", b"x"),
            )
        assert await relay.count_backlog() == 2
        assert REGISTRY.get_sample_value("ourvidz_outbox_backlog_rows") == 2
        await harness.drain_relay()
        assert await relay.count_backlog() == 0
        assert REGISTRY.get_sample_value("ourvidz_outbox_backlog_rows") == 0
    finally:
        relay.start()


async def test_a_task_sent_at_once_to_a_waiting_worker_is_published_once(harness, base_env):
    """A job submitted while a worker waits and nothing is in line goes out in
    its own transaction, published as soon as it commits; the relay then
    deletes its row without publishing it a second time. Every publish
    reaches a plain NATS subscriber (JetStream's duplicate window only keeps
    a copy off the stream), so the subscriber counts them."""
    _, md = harness.user()
    seen: list[str] = []
    # The line must be empty: earlier tests' jobs (some of users at their
    # limit, never dispatched) end first.
    end_active_jobs(base_env["DATABASE_URL"])

    async def count(msg) -> None:
        seen.append(msg.subject)

    family = queue.consumer_name("sdxl")
    try:
        await harness.js.consumer_info(queue.TASKS_STREAM, family)
    except NotFoundError:
        await queue.declare_task_consumer(harness.js, queue.family_subject("sdxl"), family)
        harness.created_consumers.append(family)
    worker = await harness.js.pull_subscribe_bind(durable=family, stream=queue.TASKS_STREAM)
    sub = await harness.nc.subscribe("tasks.sdxl.>", cb=count)
    try:
        while True:
            # A worker waits (its pull request is open) and a pass finds the line empty.
            fetch = asyncio.create_task(worker.fetch(batch=1, timeout=30))
            await someone_waits(harness.js, "sdxl")
            await harness.running.dispatcher.dispatch_all()
            if not fetch.done():
                break
            for msg in await fetch:  # an earlier test's job was still in line
                await msg.ack()
        job = await harness.create(md, prompt="at once")
        assert job.queue.dispatched  # sent in the submit's own transaction
        (msg,) = await fetch
        assert msg.subject.endswith(job.id)
        await msg.ack()
        await harness.drain_relay()
        await harness.nc.flush()
        assert seen.count(msg.subject) == 1
    finally:
        await sub.unsubscribe()
        await worker.unsubscribe()
