"""WatchSession: the session's job events and the items filed into it, live."""

from __future__ import annotations

import asyncio
import uuid

import grpc

from ourvidz import grpcserver
from ourvidz.v1 import events_pb2, job_pb2
from ourvidz.v1 import workspace_service_pb2 as pb
from ourvidz.v1 import workspace_service_pb2_grpc as pb_grpc
from services.workspace.main import start
from tests.workspace.workspace_helpers import (
    CALL_TIMEOUT,
    completed_event,
    publish,
    put_outputs,
    workspace_settings,
)


def state_event(user_id: str, job_id: str, session_id: str, sequence: int) -> events_pb2.JobEvent:
    return events_pb2.JobEvent(
        job_id=job_id,
        user_id=user_id,
        sequence=sequence,
        type=events_pb2.JOB_EVENT_TYPE_STATE,
        state=job_pb2.JOB_STATE_RUNNING,
        job=job_pb2.Job(
            id=job_id,
            user_id=user_id,
            state=job_pb2.JOB_STATE_RUNNING,
            workspace_session_id=session_id,
        ),
    )


def progress_event(user_id: str, job_id: str, sequence: int, step: int) -> events_pb2.JobEvent:
    return events_pb2.JobEvent(
        job_id=job_id,
        user_id=user_id,
        sequence=sequence,
        type=events_pb2.JOB_EVENT_TYPE_PROGRESS,
        state=job_pb2.JOB_STATE_RUNNING,
        progress=job_pb2.Progress(step=step, total=4, stage="denoising"),
    )


async def _next(call) -> pb.WatchSessionResponse:
    return await asyncio.wait_for(call.read(), CALL_TIMEOUT)


async def test_watch_forwards_the_sessions_jobs_and_filed_items(workspace, js, stub, new_user):
    user = new_user()
    watched = (await stub.CreateSession(pb.CreateSessionRequest(name="w"), **user.kw())).session
    # Another session of the same user, no longer active once `watched` exists.
    other = (await stub.CreateSession(pb.CreateSessionRequest(name="o"), **user.kw())).session
    await stub.CreateSession(pb.CreateSessionRequest(name="newest"), **user.kw())

    call = stub.WatchSession(pb.WatchSessionRequest(session_id=watched.id), metadata=user.metadata)
    await asyncio.wait_for(call.initial_metadata(), CALL_TIMEOUT)  # subscribed from here on
    try:
        foreign_job, job_id = str(uuid.uuid4()), str(uuid.uuid4())
        # Events of a job in the other session are not forwarded.
        await publish(js, state_event(user.id, foreign_job, other.id, 1))
        await publish(js, progress_event(user.id, foreign_job, 2, 1))
        await publish(js, state_event(user.id, job_id, watched.id, 1))
        await publish(js, progress_event(user.id, job_id, 2, 3))

        first = await _next(call)
        assert first.WhichOneof("update") == "job_event"
        assert (first.job_event.job_id, first.job_event.event_type) == (job_id, "state")
        assert first.job_event.state == job_pb2.JOB_STATE_RUNNING
        second = await _next(call)
        assert (second.job_event.job_id, second.job_event.event_type) == (job_id, "progress")
        assert (second.job_event.progress.step, second.job_event.progress.total) == (3, 4)

        assets = await put_outputs(workspace, user.id, job_id, 2)
        await publish(js, completed_event(user.id, job_id, assets, session_id=watched.id))
        updates = [await _next(call) for _ in range(3)]
        kinds = sorted(u.WhichOneof("update") for u in updates)
        assert kinds == ["item", "item", "job_event"]
        done = next(u.job_event for u in updates if u.WhichOneof("update") == "job_event")
        assert (done.job_id, done.event_type, done.sequence) == (job_id, "completed", 9)
        filed = [u.item for u in updates if u.WhichOneof("update") == "item"]
        assert sorted(i.index for i in filed) == [0, 1]
        assert {i.session_id for i in filed} == {watched.id}
        assert all(i.url and i.id for i in filed)
    finally:
        call.cancel()


async def test_active_session_watch_gets_jobs_without_a_session(js, stub, new_user):
    """Jobs that name no session go to the active one; a watcher that starts
    mid-job (first sees a progress event) forwards it when watching the active
    session."""
    user = new_user()
    active = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    call = stub.WatchSession(pb.WatchSessionRequest(session_id=active.id), metadata=user.metadata)
    await asyncio.wait_for(call.initial_metadata(), CALL_TIMEOUT)
    try:
        running_job, new_job = str(uuid.uuid4()), str(uuid.uuid4())
        await publish(js, progress_event(user.id, running_job, 5, 2))
        await publish(js, state_event(user.id, new_job, "", 1))
        got = [(await _next(call)).job_event for _ in range(2)]
        assert [(e.job_id, e.event_type) for e in got] == [
            (running_job, "progress"),
            (new_job, "state"),
        ]
    finally:
        call.cancel()


async def test_stopping_the_service_ends_watch_streams(base_env, new_user):
    user = new_user()
    running = await start(workspace_settings(base_env), port=0)
    channel = grpcserver.channel(f"127.0.0.1:{running.port}")
    try:
        local = pb_grpc.WorkspaceServiceStub(channel)
        session = (await local.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
        call = local.WatchSession(pb.WatchSessionRequest(session_id=session.id), **user.kw())
        await asyncio.wait_for(call.initial_metadata(), CALL_TIMEOUT)
        await running.stop()
        ended = await asyncio.wait_for(call.read(), CALL_TIMEOUT)
        assert ended is grpc.aio.EOF
    finally:
        await channel.close()
