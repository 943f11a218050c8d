"""Sessions: one active per user, created on demand; the filer files completed
jobs into them, once."""

from __future__ import annotations

import uuid

import grpc

from ourvidz.v1 import events_pb2, job_pb2
from ourvidz.v1 import workspace_service_pb2 as pb
from services.workspace.convert import completion
from tests.conftest import rpc_error
from tests.workspace.workspace_helpers import (
    completed_event,
    eventually,
    file_job,
    items_of,
    publish,
    put_outputs,
)


async def test_active_session_is_created_once(stub, new_user):
    user = new_user()
    first = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    second = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    assert first.id == second.id
    assert first.active and first.user_id == user.id
    listed = await stub.ListSessions(pb.ListSessionsRequest(), **user.kw())
    assert [s.id for s in listed.sessions] == [first.id]


async def test_new_session_becomes_the_active_one(stub, new_user):
    user = new_user()
    old = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    new = (await stub.CreateSession(pb.CreateSessionRequest(name="portraits"), **user.kw())).session
    assert new.name == "portraits" and new.active
    active = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    assert active.id == new.id
    old_now = (await stub.GetSession(pb.GetSessionRequest(session_id=old.id), **user.kw())).session
    assert not old_now.active
    listed = await stub.ListSessions(pb.ListSessionsRequest(), **user.kw())
    assert [s.active for s in listed.sessions].count(True) == 1


async def test_sessions_paginate(stub, new_user):
    user = new_user()
    made = [
        (await stub.CreateSession(pb.CreateSessionRequest(name=f"s{i}"), **user.kw())).session.id
        for i in range(5)
    ]
    seen, token = [], ""
    while True:
        page = await stub.ListSessions(
            pb.ListSessionsRequest(page_size=2, page_token=token), **user.kw()
        )
        assert len(page.sessions) <= 2
        seen += [s.id for s in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(made))
    err = await rpc_error(
        stub.ListSessions(pb.ListSessionsRequest(page_token="garbage!"), **user.kw())
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in err.violations] == ["page_token"]


async def test_completed_job_files_one_item_per_output_once(workspace, js, stub, new_user):
    user = new_user()
    session = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    job_id = str(uuid.uuid4())
    assets = await put_outputs(workspace, user.id, job_id, 3)
    event = completed_event(user.id, job_id, assets, session_id=session.id)
    await publish(js, event)

    async def three():
        items = await items_of(stub, user, session.id)
        return items if len(items) == 3 else None

    items = await eventually(three)
    assert sorted(i.index for i in items) == [0, 1, 2]
    assert {i.job_id for i in items} == {job_id}
    assert all(i.url and i.thumbnail_url and i.expire_time.seconds for i in items)
    assert {i.seed for i in items} == {1000, 1001, 1002}
    assert items[0].prompt == "a red fox in the snow"

    # The same event again (a redelivery or a duplicate publish), then a marker
    # job: once the marker is filed, the duplicate has been handled before it.
    await publish(js, event)
    await file_job(workspace, js, stub, user, count=1, session_id=session.id)
    items = await items_of(stub, user, session.id)
    assert len([i for i in items if i.job_id == job_id]) == 3
    assert len(items) == 4
    # Filing directly twice files nothing the second time either.
    assert await workspace.service.file(completion(event)) == []
    count = await stub.GetSession(pb.GetSessionRequest(session_id=session.id), **user.kw())
    assert count.session.item_count == 4


async def test_job_without_session_goes_to_the_active_one(workspace, js, stub, new_user):
    user = new_user()
    _, items = await file_job(workspace, js, stub, user, count=2)
    active = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    assert {i.session_id for i in items} == {active.id}


async def test_job_of_a_foreign_or_unknown_session_goes_to_the_active_one(
    workspace, js, stub, new_user
):
    user, other = new_user(), new_user()
    foreign = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **other.kw())).session
    _, items = await file_job(workspace, js, stub, user, count=1)
    active = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    assert items[0].session_id == active.id
    # Naming another user's session files into the owner's active session, not there.
    job2 = str(uuid.uuid4())
    assets = await put_outputs(workspace, user.id, job2, 1)
    await publish(js, completed_event(user.id, job2, assets, session_id=foreign.id))

    async def filed():
        return [i for i in await items_of(stub, user, active.id) if i.job_id == job2]

    assert len(await eventually(filed)) == 1
    assert await items_of(stub, other, foreign.id) == []


async def test_clear_session_removes_items_and_unsaved_blobs(workspace, js, stub, new_user):
    user = new_user()
    session = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    job_id, items = await file_job(workspace, js, stub, user, count=3, session_id=session.id)
    saved = sorted(items, key=lambda i: i.index)[0]
    await stub.SaveItem(pb.SaveItemRequest(item_id=saved.id), **user.kw())
    cleared = await stub.ClearSession(pb.ClearSessionRequest(session_id=session.id), **user.kw())
    assert cleared.deleted_items == 3
    assert await items_of(stub, user, session.id) == []
    blobs = workspace.service.blobs
    assert await blobs.exists("sdxl-image-fast", f"{user.id}/{job_id}_0.png")  # in the library
    assert not await blobs.exists("sdxl-image-fast", f"{user.id}/{job_id}_1.png")
    assert not await blobs.exists("sdxl-image-fast", f"{user.id}/{job_id}_2.png")


async def test_non_completion_events_file_nothing(workspace, js, stub, new_user):
    user = new_user()
    session = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    job_id = str(uuid.uuid4())
    assets = await put_outputs(workspace, user.id, job_id, 1)
    failed = completed_event(user.id, job_id, assets, session_id=session.id)
    failed.type = events_pb2.JOB_EVENT_TYPE_FAILED  # a snapshot that still lists an output
    failed.state = job_pb2.JOB_STATE_FAILED
    await publish(js, failed)
    await file_job(workspace, js, stub, user, count=1, session_id=session.id)
    assert all(i.job_id != job_id for i in await items_of(stub, user, session.id))
