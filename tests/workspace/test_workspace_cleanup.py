"""Idle sessions are retired: items and unreferenced blobs removed, the
session deactivated and no longer listed."""

from __future__ import annotations

import uuid

import grpc
import psycopg

from ourvidz.v1 import workspace_service_pb2 as pb
from tests.conftest import rpc_error
from tests.workspace.workspace_helpers import (
    IMAGE_BUCKET,
    completed_event,
    eventually,
    file_job,
    items_of,
    publish,
    put_outputs,
)


def _backdate(owner_url: str, session_id: str, days: int) -> None:
    with psycopg.connect(owner_url) as conn:
        conn.execute(
            """UPDATE workspace.sessions
               SET last_activity_at = now() - make_interval(days => %s) WHERE id = %s""",
            (days, session_id),
        )


async def test_idle_sessions_are_retired(workspace, js, stub, new_user, infra):
    user, busy = new_user(), new_user()
    session = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    job_id, items = await file_job(workspace, js, stub, user, count=2, session_id=session.id)
    kept = next(i for i in items if i.index == 0)
    await stub.SaveItem(pb.SaveItemRequest(item_id=kept.id), **user.kw())
    busy_session = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **busy.kw())).session
    _, busy_items = await file_job(workspace, js, stub, busy, count=1)

    max_idle_days = workspace.service.settings.workspace_session_max_idle_seconds // 86400
    _backdate(infra.database_url, session.id, max_idle_days + 1)
    _backdate(infra.database_url, busy_session.id, max_idle_days - 1)  # idle, not for long enough

    assert await workspace.service.cleanup_idle() >= 1

    err = await rpc_error(stub.GetSession(pb.GetSessionRequest(session_id=session.id), **user.kw()))
    assert err.code == grpc.StatusCode.NOT_FOUND
    listed = (await stub.ListSessions(pb.ListSessionsRequest(), **user.kw())).sessions
    assert session.id not in [s.id for s in listed]
    blobs = workspace.service.blobs
    assert await blobs.exists(IMAGE_BUCKET, f"{user.id}/{job_id}_0.png")  # saved to the library
    assert not await blobs.exists(IMAGE_BUCKET, f"{user.id}/{job_id}_1.png")
    assets = (await stub.ListAssets(pb.ListAssetsRequest(), **user.kw())).assets
    assert [a.job_id for a in assets] == [job_id]
    # The next active session is a new one; the other user's session is untouched.
    fresh = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    assert fresh.id != session.id and fresh.item_count == 0
    still = await stub.GetSession(pb.GetSessionRequest(session_id=busy_session.id), **busy.kw())
    assert still.session.active and still.session.item_count == len(busy_items)


async def test_a_job_for_a_retired_session_goes_to_the_active_one(
    workspace, js, stub, new_user, infra
):
    user = new_user()
    old = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    _backdate(infra.database_url, old.id, 30)
    assert await workspace.service.cleanup_idle() >= 1
    job_id = str(uuid.uuid4())
    assets = await put_outputs(workspace, user.id, job_id, 1)
    await publish(js, completed_event(user.id, job_id, assets, session_id=old.id))
    active = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    assert active.id != old.id

    async def filed():
        return await items_of(stub, user, active.id)

    items = await eventually(filed)
    assert [i.job_id for i in items] == [job_id]
