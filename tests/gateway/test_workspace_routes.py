"""Workspace, library and upload routes against a WorkspaceService double."""

from __future__ import annotations

import uuid

from tests.gateway.gateway_helpers import assert_problem, auth, parse_sse

ITEM_KEYS = {
    "id",
    "session_id",
    "job_id",
    "index",
    "content_type",
    "url",
    "thumbnail_url",
    "prompt",
    "original_prompt",
    "negative_prompt",
    "seed",
}
ASSET_KEYS = {
    "id",
    "content_type",
    "url",
    "thumbnail_url",
    "title",
    "prompt",
    "original_prompt",
    "negative_prompt",
    "job_id",
    "created_at",
}


async def test_sessions_items_and_clear(client, fakes, user_token):
    _, _, workspace = fakes
    user_id, token = user_token
    r = await client.post("/v1/workspace/sessions", headers=auth(token))
    assert r.status_code == 201
    session = r.json()
    assert {"id", "name", "active", "item_count", "created_at"} <= session.keys()
    sid = session["id"]
    assert workspace.sessions[sid].user_id == user_id

    listed = await client.get("/v1/workspace/sessions", headers=auth(token))
    assert [s["id"] for s in listed.json()["items"]] == [sid]
    assert listed.json()["next_page_token"] == ""
    assert (await client.get(f"/v1/workspace/sessions/{sid}", headers=auth(token))).json()[
        "id"
    ] == sid

    items = await client.get(
        f"/v1/workspace/sessions/{sid}/items?page_size=10", headers=auth(token)
    )
    assert items.status_code == 200
    (item,) = items.json()["items"]
    assert ITEM_KEYS <= item.keys()
    assert item["session_id"] == sid and item["thumbnail_url"] is None
    assert (item["prompt"], item["original_prompt"], item["negative_prompt"]) == (
        "a cat asleep on a sunny windowsill, soft light",
        "a cat",
        "blurry",
    )
    assert workspace.last("ListSessionItems")[1].page_size == 10

    cleared = await client.post(f"/v1/workspace/sessions/{sid}/clear", headers=auth(token))
    assert cleared.json() == {"deleted_items": 3}

    other = str(uuid.uuid4())
    assert_problem(await client.get(f"/v1/workspace/sessions/{other}", headers=auth(token)), 404)
    assert_problem(
        await client.post(f"/v1/workspace/sessions/{other}/clear", headers=auth(token)), 404
    )


async def test_session_events_sse(client, user_token):
    _, token = user_token
    sid = (await client.post("/v1/workspace/sessions", headers=auth(token))).json()["id"]
    r = await client.get(f"/v1/workspace/sessions/{sid}/events", headers=auth(token))
    assert r.status_code == 200
    events = parse_sse(r.text)
    assert [e["event"] for e in events] == ["progress", "item"]
    assert events[0]["data"] == {
        "job_id": "j1",
        "sequence": 2,
        "type": "progress",
        "state": "running",
        "step": 3,
        "total": 15,
        "stage": None,
    }
    assert events[1]["data"]["item"]["session_id"] == sid
    other = str(uuid.uuid4())
    assert_problem(
        await client.get(f"/v1/workspace/sessions/{other}/events", headers=auth(token)), 404
    )


async def test_save_and_delete_item(client, fakes, user_token):
    _, _, workspace = fakes
    item_id = str(uuid.uuid4())
    r = await client.post(
        f"/v1/workspace/items/{item_id}/save", json={"title": "keeper"}, headers=auth(user_token[1])
    )
    assert r.status_code == 201
    assert ASSET_KEYS <= r.json().keys()
    assert r.json()["title"] == "keeper"
    assert (r.json()["original_prompt"], r.json()["negative_prompt"]) == ("a wave", "static")
    assert workspace.last("SaveItem")[1].item_id == item_id
    no_body = await client.post(f"/v1/workspace/items/{item_id}/save", headers=auth(user_token[1]))
    assert no_body.status_code == 201
    d = await client.delete(f"/v1/workspace/items/{item_id}", headers=auth(user_token[1]))
    assert d.status_code == 204 and d.content == b""
    assert workspace.last("DeleteItem")[1].item_id == item_id


async def test_library(client, fakes, user_token):
    _, _, workspace = fakes
    token = user_token[1]
    r = await client.get(
        "/v1/library/assets?media_type=video&job_type=video_fast", headers=auth(token)
    )
    assert r.status_code == 200
    (asset,) = r.json()["items"]
    assert ASSET_KEYS <= asset.keys()
    request = workspace.last("ListAssets")[1]
    assert (request.media_type, request.job_type) == ("video", "video_fast")
    assert not request.HasField("created_after") and not request.HasField("created_before")
    r = await client.get(
        "/v1/library/assets",
        params={
            "created_after": "2024-05-01T00:00:00Z",
            "created_before": "2024-05-08T12:30:00+02:00",
        },
        headers=auth(token),
    )
    assert r.status_code == 200
    request = workspace.last("ListAssets")[1]
    assert request.created_after.ToJsonString() == "2024-05-01T00:00:00Z"
    assert request.created_before.ToJsonString() == "2024-05-08T10:30:00Z"
    # A time without a zone is ambiguous, so it is refused.
    assert_problem(
        await client.get(
            "/v1/library/assets?created_after=2024-05-01T00:00:00", headers=auth(token)
        ),
        422,
    )
    assert_problem(
        await client.get("/v1/library/assets?media_type=audio", headers=auth(token)), 422
    )

    aid = "1" + str(uuid.uuid4())[1:]
    assert (await client.get(f"/v1/library/assets/{aid}", headers=auth(token))).json()[
        "title"
    ] == "kept"
    missing = "0" + str(uuid.uuid4())[1:]
    assert_problem(await client.get(f"/v1/library/assets/{missing}", headers=auth(token)), 404)
    patched = await client.patch(
        f"/v1/library/assets/{aid}", json={"title": "new"}, headers=auth(token)
    )
    assert patched.json()["title"] == "new"
    assert_problem(
        await client.patch(f"/v1/library/assets/{aid}", json={}, headers=auth(token)), 422
    )
    assert (
        await client.delete(f"/v1/library/assets/{aid}", headers=auth(token))
    ).status_code == 204


async def test_upload(client, fakes, user_token):
    _, _, workspace = fakes
    token = user_token[1]
    data = b"\x89PNG\r\n\x1a\n" + b"0" * 100
    r = await client.post(
        "/v1/uploads", files={"file": ("ref.png", data, "image/png")}, headers=auth(token)
    )
    assert r.status_code == 201, r.text
    assert {"id", "content_type", "width", "height"} <= r.json().keys()
    assert (r.json()["width"], r.json()["height"]) == (64, 32)
    request = workspace.last("CreateUpload")[1]
    assert request.data == data and request.filename == "ref.png"

    bad = await client.post(
        "/v1/uploads", files={"file": ("x.png", b"GIF89a", "image/png")}, headers=auth(token)
    )
    assert assert_problem(bad, 422)["errors"][0]["field"] == "file"
    missing = await client.post("/v1/uploads", files={"other": ("x", b"1")}, headers=auth(token))
    assert assert_problem(missing, 422)["errors"][0]["field"] == "file"
