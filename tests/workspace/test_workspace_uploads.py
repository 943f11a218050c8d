"""Reference uploads: decoded, checked and re-encoded before anything is stored;
what is stored is a fresh encoding of the pixels, never the uploaded bytes."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import grpc
import pytest
from PIL import Image, PngImagePlugin

from ourvidz.catalog import REFERENCE_BUCKET
from ourvidz.v1 import workspace_service_pb2 as pb
from tests.conftest import rpc_error


def encoded(fmt: str, size=(40, 24), **options) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, format=fmt, **options)
    return buf.getvalue()


def gradient(size=(40, 24)) -> Image.Image:
    """A picture whose pixels all differ, so a changed pixel shows."""
    width, height = size
    image = Image.new("RGBA", size)
    image.putdata(
        [
            (x * 6 % 256, y * 10 % 256, (x * y) % 256, 255 - x)
            for y in range(height)
            for x in range(width)
        ]
    )
    return image


def png_of(image: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **options)
    return buf.getvalue()


def zip_archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("payload.html", "<script>alert(document.cookie)</script>")
    return buf.getvalue()


def png_chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG, in order; fails on anything after IEND."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    kinds, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kinds.append(data[offset + 4 : offset + 8])
        offset += 12 + length
        if kinds[-1] == b"IEND":
            break
    assert offset == len(data), f"{len(data) - offset} bytes after IEND"
    return kinds


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


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (16, 16), (shade, 0, 0)) for shade in (0, 120, 240)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


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
    assert upload.bucket == REFERENCE_BUCKET
    assert upload.key == f"{user.id}/{upload.id}.{ext}"
    stored = await workspace.service.blobs.get(REFERENCE_BUCKET, upload.key)
    assert upload.size_bytes == len(stored)
    with Image.open(io.BytesIO(stored)) as image:
        assert (image.format, image.size, image.mode) == (fmt, (40, 24), "RGB")
    got = await stub.GetUpload(pb.GetUploadRequest(upload_id=upload.id), **user.kw())
    assert got.upload == upload


@pytest.mark.parametrize(
    "trailer",
    [zip_archive(), b"<html><body><script>alert(document.cookie)</script></body></html>"],
    ids=["zip", "script"],
)
async def test_polyglot_png_is_stored_re_encoded(workspace, stub, new_user, trailer):
    """A valid PNG with a zip or an HTML page appended: the picture is kept,
    the rest is gone."""
    user = new_user()
    picture = gradient()
    data = png_of(picture) + trailer
    upload = (await stub.CreateUpload(pb.CreateUploadRequest(data=data), **user.kw())).upload
    stored = await workspace.service.blobs.get(REFERENCE_BUCKET, upload.key)
    assert stored != data
    assert trailer not in stored and b"<script>" not in stored and b"PK\x03\x04" not in stored
    assert png_chunks(stored)[-1] == b"IEND"  # nothing after it
    with Image.open(io.BytesIO(stored)) as image:
        assert image.format == "PNG"
        assert image.convert("RGBA").tobytes() == picture.tobytes()
    assert (upload.content_type, upload.width, upload.height) == ("image/png", 40, 24)
    assert upload.size_bytes == len(stored)


async def test_png_text_and_metadata_chunks_are_dropped(workspace, stub, new_user):
    user = new_user()
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "secret-comment")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>secret-xmp</x:xmpmeta>")
    exif = Image.Exif()
    exif[0x010F] = "secret-camera"
    data = png_of(gradient(), pnginfo=info, exif=exif.tobytes())
    upload = (await stub.CreateUpload(pb.CreateUploadRequest(data=data), **user.kw())).upload
    stored = await workspace.service.blobs.get(REFERENCE_BUCKET, upload.key)
    assert not set(png_chunks(stored)) & {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"iCCP"}
    assert b"secret" not in stored


async def test_jpeg_exif_and_gps_are_stripped_after_orientation_is_applied(
    workspace, stub, new_user
):
    user = new_user()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: shown turned 90 degrees clockwise
    exif[0x010F] = "secret-camera"  # Make
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}  # GPSInfo
    data = encoded("JPEG", (40, 24), exif=exif.tobytes(), comment=b"secret-comment")
    with Image.open(io.BytesIO(data)) as sent:
        assert sent.getexif().get_ifd(0x8825)  # the upload does carry a position
    upload = (await stub.CreateUpload(pb.CreateUploadRequest(data=data), **user.kw())).upload
    stored = await workspace.service.blobs.get(REFERENCE_BUCKET, upload.key)
    # Width and height as the picture is shown: the orientation was applied.
    assert (upload.content_type, upload.width, upload.height) == ("image/jpeg", 24, 40)
    with Image.open(io.BytesIO(stored)) as image:
        assert image.format == "JPEG" and image.size == (24, 40)
        assert not image.getexif()
        assert "exif" not in image.info and "comment" not in image.info
    assert b"Exif" not in stored and b"secret" not in stored


@pytest.mark.parametrize("lossless", [True, False], ids=["lossless", "lossy"])
async def test_webp_keeps_its_kind_of_compression(workspace, stub, new_user, lossless):
    user = new_user()
    picture = gradient()
    buf = io.BytesIO()
    picture.save(buf, format="WEBP", lossless=lossless, quality=90)
    upload = (
        await stub.CreateUpload(pb.CreateUploadRequest(data=buf.getvalue()), **user.kw())
    ).upload
    stored = await workspace.service.blobs.get(REFERENCE_BUCKET, upload.key)
    assert upload.content_type == "image/webp" and upload.key.endswith(".webp")
    with Image.open(io.BytesIO(stored)) as image:
        assert image.format == "WEBP" and image.mode == "RGBA"
        if lossless:
            assert image.tobytes() == picture.tobytes()


@pytest.mark.parametrize(
    "case",
    [
        "text",
        "gif",
        "svg",
        "html",
        "truncated",
        "oversized",
        "bomb_over_limit",
        "bomb_huge",
        "animated_png",
        "animated_webp",
        "empty",
    ],
)
async def test_refused_uploads_store_nothing(workspace, stub, new_user, case):
    user = new_user()
    limit = workspace.service.settings.workspace_upload_max_bytes
    data = {
        "text": b"hello, this is not an image\n" * 10,
        "gif": encoded("GIF"),
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "html": b"<!doctype html><html><script>alert(1)</script></html>",
        "truncated": encoded("PNG", (64, 64))[:60],
        "oversized": encoded("PNG") + b"\x00" * (limit + 1),
        "bomb_over_limit": png_declaring(8000, 6000),  # 48 Mpx > 40 Mpx, a few bytes
        "bomb_huge": png_declaring(100_000, 100_000),
        "animated_png": animated("PNG"),
        "animated_webp": animated("WEBP"),
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
    if case.startswith("animated"):
        assert "frames" in err.violations[0].message
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
