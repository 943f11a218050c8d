"""Attempts counted by Jobs, heartbeats, and the reconciler: a silent worker's
job is handed back, a queued job whose task is gone is published again, and
blobs that belong to no asset are collected, on both storage backends."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ourvidz import queue
from ourvidz.storage import LocalStore, store_from_settings
from ourvidz.v1 import job_pb2
from ourvidz.v1 import job_service_pb2 as pb
from services.jobs.reconciler import Reconciler, job_id_of_key
from tests.jobs.helpers import owner_query, pull_task
from tests.jobs.test_worker import Worker

pytestmark = pytest.mark.usefixtures("harness")


@pytest.fixture
def worker(harness) -> Worker:
    return Worker(harness)


async def wait_until(probe, expected, attempts: int = 200):
    """Until `await probe()` gives `expected` (an ack is settled asynchronously)."""
    for _ in range(attempts):
        if (got := await probe()) == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{got!r} != {expected!r}")


def held(harness):
    return lambda subjects: queue.task_held(harness.js, subjects)


# The test database is shared with every other test of the session, whose
# jobs may be left queued or running: the bounds used here are far beyond
# their age, and only the jobs a test moves that far back are acted on.
LONG_AGO = 10 * 24 * 3600
BOUND = LONG_AGO // 2


def age(harness, job_id: str, column: str, seconds: int = LONG_AGO) -> None:
    """Move a job's timestamp `seconds` into the past, as time would."""
    owner_query(
        harness.settings.database_url,
        f"UPDATE jobs.jobs SET {column} = now() - make_interval(secs => %s) "
        "WHERE id = %s RETURNING id",
        (seconds, job_id),
    )


async def get(harness, md, job_id: str) -> job_pb2.Job:
    return (await harness.stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=md)).job


async def test_a_job_whose_worker_dies_every_time_fails_after_its_attempts(harness, worker):
    _, md = harness.user()
    job = await harness.create(md)
    for delivery in (1, 2, 3):  # each start dies without a word
        started = await worker.start(job.id, delivery=delivery)
        assert started.proceed and started.job.attempt == delivery
    last = await worker.start(job.id, delivery=4)
    assert not last.proceed
    assert last.job.state == job_pb2.JOB_STATE_FAILED
    assert last.job.error.code == "ATTEMPTS_EXHAUSTED"
    assert "3 attempts" in last.job.error.message


async def test_a_dependency_failure_costs_no_attempt(harness, worker):
    _, md = harness.user()
    job = await harness.create(md)
    for delivery in range(1, 8):  # more deliveries than attempts, all dependency failures
        started = await worker.start(job.id, delivery=delivery)
        assert started.proceed and started.job.attempt == 1
        answer = await harness.stub.FailJob(
            pb.FailJobRequest(
                job_id=job.id,
                error=job_pb2.JobError(code="STORAGE_UNAVAILABLE", message="storage away"),
                will_retry=True,
                dependency_failure=True,
                start_token=started.start_token,
            ),
            metadata=harness.worker_md,
        )
        assert answer.job.state == job_pb2.JOB_STATE_QUEUED and answer.job.attempt == 0
    done = await worker.complete(job)
    assert done.state == job_pb2.JOB_STATE_COMPLETED


async def test_the_same_delivery_is_the_same_start(harness):
    _, md = harness.user()
    job = await harness.create(md)
    request = pb.StartJobRequest(job_id=job.id, worker_id="w", delivery=1, task_sequence=77)
    first = await harness.stub.StartJob(request, metadata=harness.worker_md)
    again = await harness.stub.StartJob(request, metadata=harness.worker_md)
    assert first.start_token == again.start_token
    assert first.start_token.startswith("77:1:")  # the delivery, then a random part
    assert again.job.attempt == 1 and again.job.last_sequence == first.job.last_sequence
    # Another delivery while the first worker still beats does not start...
    core = harness.running.core
    other = pb.StartJobRequest(job_id=job.id, worker_id="w2", delivery=2, task_sequence=77)
    core.silent_seconds = 60
    try:
        held = await harness.stub.StartJob(other, metadata=harness.worker_md)
    finally:
        core.silent_seconds = harness.settings.jobs_worker_silent_seconds
    assert held.held_elsewhere and not held.proceed
    assert held.job.attempt == 1 and held.job.last_sequence == first.job.last_sequence
    # ... once that worker is silent, it is the next attempt.
    age(harness, job.id, "heartbeat_at", 120)
    taken = await harness.stub.StartJob(other, metadata=harness.worker_md)
    assert taken.proceed and not taken.held_elsewhere and taken.job.attempt == 2


async def test_heartbeat_carries_cancellation(harness, worker):
    _, md = harness.user()
    job = await harness.create(md)
    token = (await worker.start(job.id)).start_token
    beat = await harness.stub.Heartbeat(
        pb.HeartbeatRequest(job_id=job.id, start_token=token), metadata=harness.worker_md
    )
    assert (beat.cancel_requested, beat.finished) == (False, False)
    await harness.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=md)
    beat = await harness.stub.Heartbeat(
        pb.HeartbeatRequest(job_id=job.id, start_token=token), metadata=harness.worker_md
    )
    assert (beat.cancel_requested, beat.finished) == (True, True)


async def test_a_silent_workers_job_is_handed_back_and_its_worker_can_still_finish(harness, worker):
    _, md = harness.user()
    lively, silent = await harness.create(md), await harness.create(md)
    await worker.start(lively.id)
    token = (await worker.start(silent.id)).start_token
    age(harness, silent.id, "heartbeat_at")

    handed = await harness.running.core.hand_back_silent(BOUND, 100)
    assert [j.id for j in handed] == [silent.id]
    job = await get(harness, md, silent.id)
    assert job.state == job_pb2.JOB_STATE_QUEUED and job.attempt == 1
    assert job.error.code == "WORKER_LOST" and "another attempt" in job.error.message
    assert (await get(harness, md, lively.id)).state == job_pb2.JOB_STATE_RUNNING

    # The worker was only cut off: its heartbeat makes the job running again,
    # and progress reports on a handed-back job change nothing.
    assert await worker.progress(silent.id, 3) is False
    await harness.stub.Heartbeat(
        pb.HeartbeatRequest(job_id=silent.id, start_token=token), metadata=harness.worker_md
    )
    assert (await get(harness, md, silent.id)).state == job_pb2.JOB_STATE_RUNNING
    # Handed back again, it may still complete (the same outputs at the same keys).
    age(harness, silent.id, "heartbeat_at")
    await harness.running.core.hand_back_silent(BOUND, 100)
    done = await worker.complete(silent)
    assert done.state == job_pb2.JOB_STATE_COMPLETED and len(done.assets) == 1


async def test_the_reconciler_waits_after_an_outage_before_judging_silence(harness, worker):
    _, md = harness.user()
    job = await harness.create(md)
    await worker.start(job.id)
    age(harness, job.id, "heartbeat_at")
    reconciler = Reconciler(
        harness.running.core,
        harness.running.core.blobs,
        held(harness),
        silent_seconds=3600,  # "just came back": nothing may be judged for an hour
        check_after_seconds=3600,
        interval_seconds=3600,
        gc_grace_seconds=3600,
        gc_interval_seconds=3600,
    )
    assert await reconciler.hand_back_silent() == 0
    assert (await get(harness, md, job.id)).state == job_pb2.JOB_STATE_RUNNING


async def test_a_queued_job_whose_task_is_gone_goes_back_in_line_once(harness):
    _, md = harness.user()
    job = await harness.create(md, job_type="sdxl_image_high")
    # Taken and not acked: its task is on the stream, held.
    first = await pull_task(harness, "tasks.sdxl.high", job.id, ack=False)
    # Its outbox row gone too (a task published at once is also the relay's
    # to publish again and delete): only the queue holds it.
    await harness.drain_relay()
    subject = first.subject
    assert subject == "tasks.sdxl.high." + job.id
    assert await queue.task_held(harness.js, [subject]) == {subject}
    # Present: nothing to do, however old the job.
    age(harness, job.id, "updated_at")
    age(harness, job.id, "dispatched_at")
    checked, lost = await harness.running.core.requeue_lost(BOUND, 100, held(harness))
    assert checked == 1 and lost == []

    await first.ack()  # the task is gone
    await harness.nc.flush()
    await wait_until(lambda: queue.task_held(harness.js, [subject]), set())
    # Confirmed a moment ago: not looked at again before the bound.
    assert await harness.running.core.requeue_lost(BOUND, 100, held(harness)) == (0, [])
    age(harness, job.id, "checked_at")
    _, lost = await harness.running.core.requeue_lost(BOUND, 100, held(harness))
    assert [j.id for j in lost] == [job.id]
    # Back in line, it is published again once a worker waits, under a new
    # message id (the old one may still be in the duplicate window).
    again = await pull_task(harness, "tasks.sdxl.high", job.id, ack=False)
    await harness.drain_relay()
    assert again.subject == subject
    assert again.headers["Nats-Msg-Id"].startswith(f"{job.id}:")
    assert again.headers["Nats-Msg-Id"] != first.headers["Nats-Msg-Id"]
    assert (await get(harness, md, job.id)).state == job_pb2.JOB_STATE_QUEUED
    # Held again: the check finds it there, not lost twice.
    age(harness, job.id, "updated_at")
    age(harness, job.id, "dispatched_at")
    age(harness, job.id, "checked_at")
    assert await harness.running.core.requeue_lost(BOUND, 100, held(harness)) == (1, [])
    await again.ack()


async def test_nothing_changes_when_nats_cannot_answer(harness):
    _, md = harness.user()
    job = await harness.create(md)
    task = await pull_task(harness, "tasks.sdxl.fast", job.id, ack=False)  # dispatched
    await harness.drain_relay()  # on the queue only, not in the outbox
    age(harness, job.id, "updated_at")
    age(harness, job.id, "dispatched_at")

    async def away(subjects):
        raise ConnectionError("nats is away")

    with pytest.raises(ConnectionError):
        await harness.running.core.requeue_lost(BOUND, 1000, away)
    row = owner_query(
        harness.settings.database_url, "SELECT checked_at FROM jobs.jobs WHERE id = %s", (job.id,)
    )
    assert row == [(None,)]
    await task.ack()


def test_output_keys_name_their_job():
    job_id = str(uuid.uuid4())
    assert job_id_of_key(f"u/{job_id}_3.png") == job_id
    assert job_id_of_key(f"u/{job_id}.mp4") == job_id
    assert job_id_of_key("u/notes.txt") is None


@pytest.fixture(params=["local", "s3"])
def blobs(request, harness, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path, "http://127.0.0.1:1", "k")
    return store_from_settings(harness.settings)


async def test_orphan_blobs_are_collected_and_assets_kept(harness, worker, blobs):
    bucket = f"gc-{uuid.uuid4().hex[:10]}"
    await blobs.ensure_buckets([bucket])
    user_id, md = harness.user()
    completed = await harness.create(md, num_images=3)
    failed = await harness.create(md)
    running = await harness.create(md)
    for job in (completed, failed, running):
        await worker.start(job.id)

    def key(job_id: str, index: int) -> str:
        return f"{user_id}/{job_id}_{index}.png"

    await worker.complete(completed, n=3)
    # The collector is pointed at a bucket of its own (the session's store is
    # shared): the completed job's first asset is moved there, its other two
    # assets dropped, as if the job had made one image in that bucket.
    owner_query(
        harness.settings.database_url,
        "WITH moved AS (UPDATE jobs.assets SET bucket = %s WHERE job_id = %s AND index = 0 "
        "RETURNING job_id) DELETE FROM jobs.assets WHERE job_id = %s AND index > 0 RETURNING index",
        (bucket, completed.id, completed.id),
    )
    await worker.fail(failed.id, will_retry=False)
    objects = {
        "asset of a completed job": (key(completed.id, 0), True),
        "completed, but not its asset": (key(completed.id, 1), False),
        "output of a failed job": (key(failed.id, 0), False),
        "output of a running job": (key(running.id, 0), True),
        "no such job": (key(str(uuid.uuid4()), 0), False),
        "not an output key": (f"{user_id}/notes.txt", True),
    }
    for object_key, _ in objects.values():
        await blobs.put(bucket, object_key, b"\x89PNG", "image/png")

    reconciler = Reconciler(
        harness.running.core,
        blobs,
        held(harness),
        silent_seconds=3600,
        check_after_seconds=3600,
        interval_seconds=3600,
        gc_grace_seconds=3600,
        gc_interval_seconds=3600,
        buckets=(bucket,),
    )
    assert await reconciler.collect_blobs() == 0  # all younger than the grace period
    deleted = await reconciler.collect_blobs(grace_seconds=-5)
    assert deleted == sum(1 for _, keep in objects.values() if not keep)
    for what, (object_key, keep) in objects.items():
        assert await blobs.exists(bucket, object_key) is keep, what
