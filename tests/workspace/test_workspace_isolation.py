"""One user never reaches another's sessions, items, assets or uploads: not
through the API (NOT_FOUND, never a hint), not through SQL (row level security
binds the service's own database role)."""

from __future__ import annotations

import grpc
import psycopg
import pytest
from psycopg.rows import dict_row

from ourvidz.v1 import workspace_service_pb2 as pb
from tests.conftest import rpc_error
from tests.workspace.workspace_helpers import User, file_job, png_bytes

TABLES = ("sessions", "items", "library_assets", "uploads")


@pytest.fixture(scope="module")
async def owned(workspace, js, stub, base_env):
    """A user with a session, items, a saved asset and an upload."""
    owner = User()
    _, items = await file_job(workspace, js, stub, owner, count=2)
    asset = (await stub.SaveItem(pb.SaveItemRequest(item_id=items[0].id), **owner.kw())).asset
    upload = (
        await stub.CreateUpload(pb.CreateUploadRequest(data=png_bytes()), **owner.kw())
    ).upload
    return owner, items, asset, upload


async def test_another_user_gets_not_found_everywhere(stub, owned, new_user):
    owner, items, asset, upload = owned
    other = new_user()
    session_id = items[0].session_id
    calls = [
        stub.GetSession(pb.GetSessionRequest(session_id=session_id), **other.kw()),
        stub.ListSessionItems(pb.ListSessionItemsRequest(session_id=session_id), **other.kw()),
        stub.ClearSession(pb.ClearSessionRequest(session_id=session_id), **other.kw()),
        stub.SaveItem(pb.SaveItemRequest(item_id=items[1].id), **other.kw()),
        stub.DeleteItem(pb.DeleteItemRequest(item_id=items[1].id), **other.kw()),
        stub.GetAsset(pb.GetAssetRequest(asset_id=asset.id), **other.kw()),
        stub.UpdateAsset(pb.UpdateAssetRequest(asset_id=asset.id, title="mine"), **other.kw()),
        stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset.id), **other.kw()),
        stub.GetUpload(pb.GetUploadRequest(upload_id=upload.id), **other.kw()),
    ]
    for call in calls:
        err = await rpc_error(call)
        assert err.code == grpc.StatusCode.NOT_FOUND, err
    watch = stub.WatchSession(pb.WatchSessionRequest(session_id=session_id), **other.kw())
    err = await rpc_error(watch.read())
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert (await stub.ListAssets(pb.ListAssetsRequest(), **other.kw())).assets == []
    sessions = (await stub.ListSessions(pb.ListSessionsRequest(), **other.kw())).sessions
    assert session_id not in [s.id for s in sessions]
    # The owner's things are untouched.
    got = await stub.GetAsset(pb.GetAssetRequest(asset_id=asset.id), **owner.kw())
    assert got.asset.title != "mine"
    left = await stub.ListSessionItems(
        pb.ListSessionItemsRequest(session_id=session_id), **owner.kw()
    )
    assert len(left.items) == 2


async def test_workers_have_no_workspace(stub, base_env):
    worker = User(role="worker")
    err = await rpc_error(stub.GetActiveSession(pb.GetActiveSessionRequest(), **worker.kw()))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    err = await rpc_error(stub.GetActiveSession(pb.GetActiveSessionRequest(), timeout=10))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED


def _count(url: str, table: str, owner_id: str, caller_id: str, role: str = "user") -> int:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        conn.execute(
            "SELECT set_config('app.user_id', %s, true), set_config('app.role', %s, true)",
            (caller_id, role),
        )
        row = conn.execute(
            f"SELECT count(*) AS n FROM workspace.{table} WHERE user_id = %s", (owner_id,)
        ).fetchone()
        return row["n"]


async def test_row_level_security_binds_the_service_role(owned, infra, base_env, new_user):
    owner, *_ = owned
    other = new_user()
    url = base_env["WORKSPACE_DATABASE_URL"]
    for table in TABLES:
        assert _count(url, table, owner.id, owner.id) >= 1, table
        assert _count(url, table, owner.id, other.id) == 0, table
        assert _count(url, table, owner.id, "") == 0, table  # no caller, no rows


async def test_a_trusted_transaction_for_one_user_cannot_write_anothers_rows(
    owned, infra, base_env, new_user
):
    owner, *_ = owned
    other = new_user()
    url = base_env["WORKSPACE_DATABASE_URL"]
    with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(
            "SELECT set_config('app.user_id', %s, true), set_config('app.role', 'system', true)",
            (other.id,),
        )
        conn.execute(
            "INSERT INTO workspace.sessions (id, user_id, name) VALUES (gen_random_uuid(), %s, 'x')",
            (owner.id,),
        )
