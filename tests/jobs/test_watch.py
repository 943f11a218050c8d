"""WatchJob: history from the database, live events through NATS, resuming
after a sequence, and the end of the stream at a terminal event."""

from __future__ import annotations

import asyncio

import grpc

from ourvidz.v1 import events_pb2, job_pb2
from ourvidz.v1 import job_service_pb2 as pb
from tests.conftest import rpc_error
from tests.jobs.test_worker import Worker

T = events_pb2


async def collect(harness, md, job_id: str, after: int = 0) -> list[events_pb2.JobEvent]:
    call = harness.stub.WatchJob(
        pb.WatchJobRequest(job_id=job_id, after_sequence=after), metadata=md
    )
    return [r.event async for r in call]


async def finished_job(harness, md) -> job_pb2.Job:
    worker = Worker(harness)
    job = await harness.create(md)
    await worker.start(job.id)
    await worker.progress(job.id, 7)
    await worker.complete(job, n=1)
    return job


async def test_a_finished_job_replays_its_history_and_ends(harness):
    _, md = harness.user()
    job = await finished_job(harness, md)
    events = await asyncio.wait_for(collect(harness, md, job.id), 30)
    assert [e.sequence for e in events] == [1, 2, 3, 4]
    assert [e.type for e in events] == [
        T.JOB_EVENT_TYPE_STATE,
        T.JOB_EVENT_TYPE_STATE,
        T.JOB_EVENT_TYPE_PROGRESS,
        T.JOB_EVENT_TYPE_COMPLETED,
    ]
    assert events[2].progress.step == 7 and not events[2].HasField("job")
    done = events[-1]
    assert done.state == job_pb2.JOB_STATE_COMPLETED
    assert done.job.assets[0].key == f"{job.user_id}/{job.id}_0.png"
    assert done.job.assets[0].url.startswith("http")
    assert done.job.prompt == job.prompt and done.job.user_id == job.user_id


async def test_resume_after_a_sequence(harness):
    _, md = harness.user()
    job = await finished_job(harness, md)
    events = await asyncio.wait_for(collect(harness, md, job.id, after=2), 30)
    assert [e.sequence for e in events] == [3, 4]
    assert await asyncio.wait_for(collect(harness, md, job.id, after=4), 30) == []


async def test_live_events_follow_the_history(harness):
    _, md = harness.user()
    worker = Worker(harness)
    job = await harness.create(md)
    call = harness.stub.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=md)
    stream = call.__aiter__()
    first = await asyncio.wait_for(stream.__anext__(), 30)
    assert (first.event.sequence, first.event.state) == (1, job_pb2.JOB_STATE_QUEUED)

    await worker.start(job.id)
    for step in (1, 2, 3):
        await worker.progress(job.id, step)
    await worker.complete(job, n=1)

    rest = []

    async def drain():
        async for response in stream:
            rest.append(response.event)

    await asyncio.wait_for(drain(), 30)
    assert [e.sequence for e in rest] == [2, 3, 4, 5, 6]
    assert [e.progress.step for e in rest[1:4]] == [1, 2, 3]
    assert rest[-1].type == T.JOB_EVENT_TYPE_COMPLETED


async def test_a_cancelled_job_stream_ends_with_cancelled(harness):
    _, md = harness.user()
    job = await harness.create(md)
    call = harness.stub.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=md)
    stream = call.__aiter__()
    await asyncio.wait_for(stream.__anext__(), 30)
    await harness.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=md)
    last = await asyncio.wait_for(stream.__anext__(), 30)
    assert last.event.type == T.JOB_EVENT_TYPE_CANCELLED
    assert last.event.job.state == job_pb2.JOB_STATE_CANCELLED
    assert [r async for r in stream] == []


async def test_watching_a_foreign_or_missing_job_is_not_found(harness):
    _, md = harness.user()
    job = await harness.create(md)
    _, other = harness.user()
    for job_id in (job.id, "00000000-0000-0000-0000-000000000000", "nonsense"):
        err = await rpc_error(collect(harness, other, job_id))
        assert err.code == grpc.StatusCode.NOT_FOUND


async def test_live_events_arrive_through_nats(harness):
    """With the database re-read pushed far out, only NATS can deliver."""
    from services.jobs.watch import Watcher

    running = harness.running
    watcher = Watcher(running.database, running.nc, running.core.blobs, poll_seconds=120)
    user_id, md = harness.user()
    job = await harness.create(md)
    events = watcher.watch(user_id, job.id, 0)
    first = await asyncio.wait_for(events.__anext__(), 10)
    assert first.sequence == 1
    await harness.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=md)
    second = await asyncio.wait_for(events.__anext__(), 10)
    assert (second.sequence, second.type) == (2, T.JOB_EVENT_TYPE_CANCELLED)
    await events.aclose()
