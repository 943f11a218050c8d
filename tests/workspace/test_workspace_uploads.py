"""Reference uploads: decoded and checked before anything is stored."""

from __future__ import annotations

import io
import struct
import zlib

import grpc
import pytest
from PIL import Image

from ourvidz.catalog import REFERENCE_BUCKET
from ourvidz.v1 import workspace_service_pb2 as pb
from tests.conftest import rpc_error


def encoded(fmt: str, size=(40, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, format=fmt)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims `width` x `height` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def stored_keys(workspace, user_id: str) -> list[str]:
    client = workspace.service.blobs.client
    return [o.object_name for o in client.list_objects(REFERENCE_BUCKET, prefix=f"{user_id}/")]


@pytest.mark.parametrize(
    ("fmt", "content_type", "ext"),
    [("PNG", "image/png", "png"), ("JPEG", "image/jpeg", "jpg"), ("WEBP", "image/webp", "webp")],
)
async def test_accepted_formats(workspace, stub, new_user, fmt, content_type, ext):
    user = new_user()
    data = encoded(fmt)
    # The declared type is the client's word; the decoded format decides.
    reply = await stub.CreateUpload(
        pb.CreateUploadRequest(data=data, filename="ref.bin", content_type="text/plain"),
        **user.kw(),
    )
    upload = reply.upload
    assert (upload.content_type, upload.width, upload.height) == (content_type, 40, 24)
    assert upload.size_bytes == len(data)
    assert upload.bucket == REFERENCE_BUCKET
    assert upload.key == f"{user.id}/{upload.id}.{ext}"
    assert await workspace.service.blobs.get(REFERENCE_BUCKET, upload.key) == data
    got = await stub.GetUpload(pb.GetUploadRequest(upload_id=upload.id), **user.kw())
    assert got.upload == upload


@pytest.mark.parametrize(
    "case",
    ["text", "gif", "truncated", "oversized", "bomb_over_limit", "bomb_huge", "empty"],
)
async def test_refused_uploads_store_nothing(workspace, stub, new_user, case):
    user = new_user()
    limit = workspace.service.settings.workspace_upload_max_bytes
    data = {
        "text": b"hello, this is not an image\n" * 10,
        "gif": encoded("GIF"),
        "truncated": encoded("PNG", (64, 64))[:60],
        "oversized": encoded("PNG") + b"\x00" * (limit + 1),
        "bomb_over_limit": png_declaring(8000, 6000),  # 48 Mpx > 40 Mpx, a few bytes
        "bomb_huge": png_declaring(100_000, 100_000),
        "empty": b"",
    }[case]
    err = await rpc_error(
        stub.CreateUpload(
            pb.CreateUploadRequest(data=data, filename="x.png", content_type="image/png"),
            **user.kw(),
        )
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in err.violations] == ["file"]
    assert err.violations[0].message
    if case.startswith("bomb"):
        assert "pixels" in err.violations[0].message
    assert stored_keys(workspace, user.id) == []
    async with workspace.service.database.tx(user_id=user.id) as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM workspace.uploads")
        assert (await cur.fetchone())["n"] == 0


async def test_oversized_message_names_the_limit(stub, new_user, workspace):
    user = new_user()
    limit = workspace.service.settings.workspace_upload_max_bytes
    err = await rpc_error(
        stub.CreateUpload(pb.CreateUploadRequest(data=b"\x89PNG" + b"\x00" * limit), **user.kw())
    )
    assert "20 MiB" in err.violations[0].message


async def test_upload_of_another_user_is_not_found(stub, new_user):
    owner, other = new_user(), new_user()
    upload = (
        await stub.CreateUpload(pb.CreateUploadRequest(data=encoded("PNG")), **owner.kw())
    ).upload
    err = await rpc_error(stub.GetUpload(pb.GetUploadRequest(upload_id=upload.id), **other.kw()))
    assert err.code == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(stub.GetUpload(pb.GetUploadRequest(upload_id="nope"), **owner.kw()))
    assert err.code == grpc.StatusCode.NOT_FOUND
