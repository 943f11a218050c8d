"""Both blob stores behind one interface: the S3 one against a real S3
protocol server, the local one with its HMAC-signed URLs."""

import time

import httpx
import pytest

from ourvidz.errors import NotFound
from ourvidz.storage import LocalStore, S3Store, check_location, download_headers


@pytest.fixture(params=["local", "s3"])
async def store(request, infra, tmp_path):
    if request.param == "local":
        s = LocalStore(tmp_path / "blobs", "http://127.0.0.1:1", "k" * 40, ttl_seconds=60)
    else:
        s = S3Store(infra.s3_endpoint, "testing", "testing", ttl_seconds=60)
    await s.ensure_buckets(["sdxl-image-fast"])
    return s


async def test_put_get_delete_roundtrip(store):
    data = b"\x89PNG\r\n\x1a\n" + b"x" * 100
    assert await store.put("sdxl-image-fast", "u1/j1_0.png", data, "image/png") == len(data)
    assert await store.exists("sdxl-image-fast", "u1/j1_0.png")
    assert await store.get("sdxl-image-fast", "u1/j1_0.png") == data
    await store.delete("sdxl-image-fast", "u1/j1_0.png")
    assert not await store.exists("sdxl-image-fast", "u1/j1_0.png")
    with pytest.raises(NotFound):
        await store.get("sdxl-image-fast", "u1/j1_0.png")


async def test_s3_signed_url_downloads_the_object(infra):
    s = S3Store(infra.s3_endpoint, "testing", "testing", ttl_seconds=60)
    await s.ensure_buckets(["thumbnails"])
    await s.put("thumbnails", "u2/j2.png", b"payload", "image/png")
    url, expires = s.signed_url("thumbnails", "u2/j2.png")
    assert expires.timestamp() > time.time()
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == b"payload"


@pytest.mark.parametrize(
    ("key", "content_type", "disposition"),
    [
        ("u3/j3_0.png", "image/png", "inline"),
        ("u3/j3.mp4", "video/mp4", "inline"),
        (
            "u3/page.html",
            "application/octet-stream",
            "attachment; filename=\"page.html\"; filename*=UTF-8''page.html",
        ),
    ],
)
async def test_s3_signed_url_serves_our_type_and_disposition(infra, key, content_type, disposition):
    """The presigned URL carries S3's response overrides, so the server answers
    with our headers whatever type the object was stored with."""
    s = S3Store(infra.s3_endpoint, "testing", "testing", ttl_seconds=60)
    await s.ensure_buckets(["thumbnails"])
    page = b"<!doctype html><script>alert(document.cookie)</script>"
    await s.put("thumbnails", key, page, "text/html")
    url, _ = s.signed_url("thumbnails", key)
    assert "response-content-disposition=" in url and "response-content-type=" in url
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200 and response.content == page
    assert response.headers["content-type"] == content_type
    assert response.headers["content-disposition"] == disposition


def test_download_headers_name_a_safe_ascii_file():
    # Our media: inline, and no name (the page offering the download names it).
    headers = download_headers("u/r\u00e9f\u00e9rence image.webp")
    assert headers == {"Content-Type": "image/webp", "Content-Disposition": "inline"}
    # Anything else: an attachment under a safe ASCII name and the exact one.
    headers = download_headers("u/r\u00e9f\u00e9rence page.svg")
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == (
        'attachment; filename="r_f_rence_page.svg"; '
        "filename*=UTF-8''r%C3%A9f%C3%A9rence%20page.svg"
    )


def test_local_signature_checks(tmp_path):
    s = LocalStore(tmp_path, "http://gw", "k" * 40, ttl_seconds=60)
    url, _ = s.signed_url("video-fast", "u/j.mp4")
    query = dict(part.split("=") for part in url.split("?")[1].split("&"))
    expires, sig = int(query["expires"]), query["sig"]
    assert url.startswith("http://gw/v1/files/video-fast/u/j.mp4?")
    assert s.verify("video-fast", "u/j.mp4", expires, sig)
    assert not s.verify("video-fast", "u/other.mp4", expires, sig)
    assert not s.verify("video-fast", "u/j.mp4", expires + 1, sig)
    assert not s.verify("video-fast", "u/j.mp4", int(time.time()) - 1, sig)
    other = LocalStore(tmp_path, "http://gw", "z" * 40)
    assert not other.verify("video-fast", "u/j.mp4", expires, sig)


@pytest.mark.parametrize(
    "bucket,key",
    [
        ("Bad_Bucket", "a.png"),
        ("ok-bucket", "../etc/passwd"),
        ("ok-bucket", "/abs.png"),
        ("ok-bucket", "a//b.png"),
    ],
)
def test_locations_are_checked(bucket, key):
    with pytest.raises(ValueError):
        check_location(bucket, key)


async def test_s3_signed_urls_name_the_public_endpoint_without_reaching_it(infra):
    """Behind a cluster the services reach S3 at an internal name and users at
    a public one: the URL is signed for the public name, and signing it makes
    no request there (this one does not even resolve)."""
    s = S3Store(
        infra.s3_endpoint,
        "testing",
        "testing",
        ttl_seconds=60,
        public_endpoint="https://s3.ourvidz.invalid",
    )
    await s.ensure_buckets(["thumbnails"])
    await s.put("thumbnails", "u4/j4.png", b"payload", "image/png")
    url, _ = s.signed_url("thumbnails", "u4/j4.png")
    assert url.startswith("https://s3.ourvidz.invalid/thumbnails/u4/j4.png?")
    assert "X-Amz-Signature=" in url
    assert await s.get("thumbnails", "u4/j4.png") == b"payload"
    plain = S3Store(infra.s3_endpoint, "testing", "testing", public_endpoint="http://s3.local:9000")
    assert plain.signed_url("thumbnails", "u4/j4.png")[0].startswith("http://s3.local:9000/")
