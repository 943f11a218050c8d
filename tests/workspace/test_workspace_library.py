"""Saving items, the library (filters, rename, delete) and signed URLs."""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import parse_qs, unquote, urlparse

import grpc
import httpx
from google.protobuf.timestamp_pb2 import Timestamp

from ourvidz import grpcserver
from ourvidz.v1 import job_pb2
from ourvidz.v1 import workspace_service_pb2 as pb
from ourvidz.v1 import workspace_service_pb2_grpc as pb_grpc
from services.workspace.main import start
from tests.conftest import rpc_error
from tests.workspace.workspace_helpers import (
    IMAGE_BUCKET,
    completed_event,
    eventually,
    file_job,
    items_of,
    publish,
    put_outputs,
    workspace_settings,
)


async def _assets(stub, user, **filters) -> list[pb.LibraryAsset]:
    reply = await stub.ListAssets(pb.ListAssetsRequest(page_size=200, **filters), **user.kw())
    return list(reply.assets)


async def test_save_is_idempotent_and_marks_the_item(workspace, js, stub, new_user):
    user = new_user()
    prompt = "an old lighthouse on a cliff at dusk, storm clouds gathering over a wild grey sea"
    _, items = await file_job(workspace, js, stub, user, count=1, prompt=prompt)
    item = items[0]
    first = (await stub.SaveItem(pb.SaveItemRequest(item_id=item.id), **user.kw())).asset
    second = (await stub.SaveItem(pb.SaveItemRequest(item_id=item.id), **user.kw())).asset
    assert first.id == second.id
    assert first.title.startswith("an old lighthouse on a cliff")
    assert len(first.title) <= 61 and first.title.endswith("…")
    assert first.prompt == prompt and first.job_id == item.job_id
    assert first.url and first.thumbnail_url and first.create_time.seconds
    assert [a.id for a in await _assets(stub, user)] == [first.id]
    listed = await items_of(stub, user, item.session_id)
    assert listed[0].library_asset_id == first.id


async def test_save_with_a_title_and_a_bad_title(workspace, js, stub, new_user):
    user = new_user()
    _, items = await file_job(workspace, js, stub, user, count=2)
    named = await stub.SaveItem(pb.SaveItemRequest(item_id=items[0].id, title=" Fox "), **user.kw())
    assert named.asset.title == "Fox"
    err = await rpc_error(
        stub.SaveItem(pb.SaveItemRequest(item_id=items[1].id, title="x" * 201), **user.kw())
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in err.violations] == ["title"]


async def test_delete_item_removes_its_blob_unless_saved(workspace, js, stub, new_user):
    user = new_user()
    job_id, items = await file_job(workspace, js, stub, user, count=2)
    by_index = {i.index: i for i in items}
    blobs = workspace.service.blobs
    key0, key1 = f"{user.id}/{job_id}_0.png", f"{user.id}/{job_id}_1.png"
    assert await blobs.exists(IMAGE_BUCKET, key0) and await blobs.exists(IMAGE_BUCKET, key1)

    await stub.DeleteItem(pb.DeleteItemRequest(item_id=by_index[0].id), **user.kw())
    assert not await blobs.exists(IMAGE_BUCKET, key0)

    asset = (await stub.SaveItem(pb.SaveItemRequest(item_id=by_index[1].id), **user.kw())).asset
    await stub.DeleteItem(pb.DeleteItemRequest(item_id=by_index[1].id), **user.kw())
    assert await blobs.exists(IMAGE_BUCKET, key1)  # the library still holds it
    assert await items_of(stub, user, by_index[1].session_id) == []
    err = await rpc_error(
        stub.DeleteItem(pb.DeleteItemRequest(item_id=by_index[1].id), **user.kw())
    )
    assert err.code == grpc.StatusCode.NOT_FOUND
    # Deleting the asset now removes the object: nothing points at it any more.
    await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset.id), **user.kw())
    assert not await blobs.exists(IMAGE_BUCKET, key1)


async def test_delete_asset_keeps_blob_while_an_item_points_at_it(workspace, js, stub, new_user):
    user = new_user()
    job_id, items = await file_job(workspace, js, stub, user, count=1)
    asset = (await stub.SaveItem(pb.SaveItemRequest(item_id=items[0].id), **user.kw())).asset
    await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset.id), **user.kw())
    assert await workspace.service.blobs.exists(IMAGE_BUCKET, f"{user.id}/{job_id}_0.png")
    err = await rpc_error(stub.GetAsset(pb.GetAssetRequest(asset_id=asset.id), **user.kw()))
    assert err.code == grpc.StatusCode.NOT_FOUND
    item = (await items_of(stub, user, items[0].session_id))[0]
    assert item.library_asset_id == ""
    # Saved again after the delete: a new asset.
    again = (await stub.SaveItem(pb.SaveItemRequest(item_id=item.id), **user.kw())).asset
    assert again.id != asset.id


async def test_library_destination_files_assets_directly(workspace, js, stub, new_user):
    user = new_user()
    job_id = str(uuid.uuid4())
    assets = await put_outputs(workspace, user.id, job_id, 3)
    event = completed_event(
        user.id, job_id, assets, destination=job_pb2.DESTINATION_LIBRARY, prompt="three owls"
    )
    await publish(js, event)

    async def three():
        found = [a for a in await _assets(stub, user) if a.job_id == job_id]
        return found if len(found) == 3 else None

    found = await eventually(three)
    assert sorted(a.index for a in found) == [0, 1, 2]
    assert {a.title for a in found} == {"three owls"}
    await publish(js, event)  # a duplicate, then a marker job
    await file_job(workspace, js, stub, user, count=1)
    assert len([a for a in await _assets(stub, user) if a.job_id == job_id]) == 3
    active = (await stub.GetActiveSession(pb.GetActiveSessionRequest(), **user.kw())).session
    assert all(i.job_id != job_id for i in await items_of(stub, user, active.id))


TYPED = "a fox in the snow"
ENHANCED = "a red fox leaping through deep fresh snow at dawn, soft golden light, photograph"
NEGATIVE = "blurry, low quality"


async def test_an_enhanced_job_files_the_rendered_prompt_beside_the_typed_one(
    workspace, js, stub, new_user
):
    user = new_user()
    _, (item,) = await file_job(
        workspace,
        js,
        stub,
        user,
        count=1,
        prompt=TYPED,
        enhanced_prompt=ENHANCED,
        negative_prompt=NEGATIVE,
    )
    assert (item.prompt, item.original_prompt, item.negative_prompt) == (ENHANCED, TYPED, NEGATIVE)
    asset = (await stub.SaveItem(pb.SaveItemRequest(item_id=item.id), **user.kw())).asset
    assert (asset.prompt, asset.original_prompt, asset.negative_prompt) == (
        ENHANCED,
        TYPED,
        NEGATIVE,
    )
    assert asset.title == TYPED  # the user's words name it, not the enhancer's
    got = (await stub.GetAsset(pb.GetAssetRequest(asset_id=asset.id), **user.kw())).asset
    assert (got.prompt, got.original_prompt) == (ENHANCED, TYPED)


async def test_an_enhanced_job_to_the_library_files_both_prompts(workspace, js, stub, new_user):
    user = new_user()
    job_id = str(uuid.uuid4())
    outputs = await put_outputs(workspace, user.id, job_id, 1)
    await publish(
        js,
        completed_event(
            user.id,
            job_id,
            outputs,
            destination=job_pb2.DESTINATION_LIBRARY,
            prompt=TYPED,
            enhanced_prompt=ENHANCED,
            negative_prompt=NEGATIVE,
        ),
    )

    async def filed():
        return [a for a in await _assets(stub, user) if a.job_id == job_id]

    (asset,) = await eventually(filed)
    assert (asset.prompt, asset.original_prompt, asset.negative_prompt) == (
        ENHANCED,
        TYPED,
        NEGATIVE,
    )
    assert asset.title == TYPED


async def test_a_plain_job_files_the_typed_prompt_as_both(workspace, js, stub, new_user):
    """Not enhanced, or enhanced but fallen back to the original (no enhanced
    prompt in the job): the prompt rendered is the one typed."""
    user = new_user()
    _, (item,) = await file_job(
        workspace, js, stub, user, count=1, prompt=TYPED, negative_prompt=NEGATIVE
    )
    assert (item.prompt, item.original_prompt, item.negative_prompt) == (TYPED, TYPED, NEGATIVE)
    asset = (await stub.SaveItem(pb.SaveItemRequest(item_id=item.id), **user.kw())).asset
    assert (asset.prompt, asset.original_prompt) == (TYPED, TYPED)


async def test_list_filter_rename_and_paginate(workspace, js, stub, new_user):
    user = new_user()
    image_job = str(uuid.uuid4())
    images = await put_outputs(workspace, user.id, image_job, 3)
    await publish(
        js, completed_event(user.id, image_job, images, destination=job_pb2.DESTINATION_LIBRARY)
    )
    video_job = str(uuid.uuid4())
    key = f"{user.id}/{video_job}.mp4"
    await workspace.service.blobs.put("video-fast", key, b"\x00\x00\x00\x18ftypmp42", "video/mp4")
    video = job_pb2.Asset(
        index=0, bucket="video-fast", key=key, content_type="video/mp4", width=832, height=480
    )
    await publish(
        js,
        completed_event(
            user.id,
            video_job,
            [video],
            destination=job_pb2.DESTINATION_LIBRARY,
            job_type="video_fast",
        ),
    )

    async def four():
        found = await _assets(stub, user)
        return found if len(found) == 4 else None

    await eventually(four)
    videos = await _assets(stub, user, media_type="video")
    assert [a.job_id for a in videos] == [video_job]
    assert len(await _assets(stub, user, media_type="image")) == 3
    assert len(await _assets(stub, user, job_type="sdxl_image_fast")) == 3
    assert [a.job_type for a in await _assets(stub, user, job_type="video_fast")] == ["video_fast"]
    bad = await rpc_error(stub.ListAssets(pb.ListAssetsRequest(media_type="audio"), **user.kw()))
    assert [v.field for v in bad.violations] == ["media_type"]

    seen, token = [], ""
    while True:
        page = await stub.ListAssets(
            pb.ListAssetsRequest(page_size=3, page_token=token), **user.kw()
        )
        seen += [a.id for a in page.assets]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 4 == len(set(seen))
    assert seen[0] == videos[0].id  # newest first

    # Date bounds: after is inclusive, before exclusive; a reversed range is refused.
    newest = videos[0].create_time
    since = await _assets(stub, user, created_after=newest)
    assert [a.id for a in since] == [videos[0].id]
    before = await _assets(stub, user, created_before=newest)
    assert len(before) == 3 and videos[0].id not in {a.id for a in before}
    far = Timestamp(seconds=newest.seconds + 3600)
    assert await _assets(stub, user, created_after=far) == []
    reversed_range = await rpc_error(
        stub.ListAssets(pb.ListAssetsRequest(created_after=far, created_before=newest), **user.kw())
    )
    assert [v.field for v in reversed_range.violations] == ["created_before"]
    for name in ("created_after", "created_before"):  # no datetime holds the year -29719
        out_of_range = await rpc_error(
            stub.ListAssets(
                pb.ListAssetsRequest(**{name: Timestamp(seconds=-(10**12))}), **user.kw()
            )
        )
        assert out_of_range.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in out_of_range.violations] == [name]

    renamed = await stub.UpdateAsset(
        pb.UpdateAssetRequest(asset_id=videos[0].id, title="  My clip  "), **user.kw()
    )
    assert renamed.asset.title == "My clip"
    got = await stub.GetAsset(pb.GetAssetRequest(asset_id=videos[0].id), **user.kw())
    assert got.asset.title == "My clip"
    for title in ("", "   ", "t" * 201, "t\x00"):
        err = await rpc_error(
            stub.UpdateAsset(pb.UpdateAssetRequest(asset_id=videos[0].id, title=title), **user.kw())
        )
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in err.violations] == ["title"]

    await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=videos[0].id), **user.kw())
    assert not await workspace.service.blobs.exists("video-fast", key)
    assert await _assets(stub, user, media_type="video") == []


async def test_signed_urls_serve_the_bytes_and_carry_the_ttl(workspace, js, stub, new_user):
    user = new_user()
    job_id, items = await file_job(workspace, js, stub, user, count=1)
    item = items[0]
    expected = await workspace.service.blobs.get(IMAGE_BUCKET, f"{user.id}/{job_id}_0.png")
    async with httpx.AsyncClient() as client:
        response = await client.get(item.url)
    assert response.status_code == 200
    assert response.content == expected and expected.startswith(b"\x89PNG")
    ttl = workspace.service.settings.signed_url_ttl_seconds
    query = parse_qs(urlparse(item.url).query)
    assert query["X-Amz-Expires"] == [str(ttl)]
    # The stated expiry is the URL's: now + ttl (a minute of slack for a slow machine).
    assert abs(item.expire_time.seconds - (time.time() + ttl)) < 60


async def test_signed_urls_expire_after_the_ttl(workspace, js, stub, new_user, base_env):
    """The S3 test server (moto) does not enforce presigned expiry, so expiry is
    checked with the local store's signed URLs, served by the same code path:
    a second instance on the same database with a 3 s TTL."""
    user = new_user()
    _, items = await file_job(workspace, js, stub, user, count=1)
    settings = workspace_settings(base_env, storage_backend="local", signed_url_ttl_seconds=3)
    second = await start(settings, port=0)
    channel = grpcserver.channel(f"127.0.0.1:{second.port}")
    try:
        other = pb_grpc.WorkspaceServiceStub(channel)
        item = (await items_of(other, user, items[0].session_id))[0]
        local = second.service.blobs
        parsed = urlparse(item.url)
        bucket, key = unquote(parsed.path).removeprefix("/v1/files/").split("/", 1)
        query = parse_qs(parsed.query)
        expires, sig = int(query["expires"][0]), query["sig"][0]
        assert (bucket, key) == (IMAGE_BUCKET, f"{user.id}/{item.job_id}_0.png")
        assert expires == item.expire_time.seconds
        assert local.verify(bucket, key, expires, sig)
    finally:
        await channel.close()
        await second.stop()
    await asyncio.sleep(max(0.0, expires - time.time()) + 1.1)
    assert not local.verify(bucket, key, expires, sig)
