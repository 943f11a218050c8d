"""Signed downloads of the local blob store, and the headers that keep a stored
object from being read as anything but what we wrote."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from ourvidz.storage import LocalStore
from tests.conftest import SECRET
from tests.gateway.gateway_helpers import assert_problem, gateway_settings, serve_app


@pytest.fixture(scope="module")
async def store_client(base_env, fakes, tmp_path_factory):
    served, _, _ = fakes
    root = tmp_path_factory.mktemp("files")
    settings = gateway_settings(base_env, served.port, storage_root=str(root))
    store = LocalStore(root, "http://testserver", SECRET)
    await store.put("sdxl-image-fast", "u1/j1_0.png", b"\x89PNG-bytes", "image/png")
    await store.put("video-fast", "u1/j2.mp4", b"mp4-bytes", "video/mp4")
    page = b"<!doctype html><script>alert(document.cookie)</script>"
    await store.put("sdxl-image-fast", "u1/page.html", page, "text/html")
    await store.put("sdxl-image-fast", "u1/noext", page, "text/html")
    async with serve_app(settings) as client:
        yield client, store


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_valid_signature_serves_the_file(store_client):
    client, store = store_client
    url, _ = store.signed_url("sdxl-image-fast", "u1/j1_0.png")
    r = await client.get(_path(url))
    assert r.status_code == 200
    assert r.content == b"\x89PNG-bytes"
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-disposition"] == "inline"
    video, _ = store.signed_url("video-fast", "u1/j2.mp4")
    v = await client.get(_path(video))
    assert v.status_code == 200 and v.headers["content-type"] == "video/mp4"
    assert v.headers["x-content-type-options"] == "nosniff"
    assert v.headers["content-disposition"] == "inline"


@pytest.mark.parametrize(("key", "name"), [("u1/page.html", "page.html"), ("u1/noext", "noext")])
async def test_anything_but_our_media_is_an_opaque_download(store_client, key, name):
    """An object that is not one of our image or video types is never served
    as a page: no text/html, an attachment, and nosniff."""
    client, store = store_client
    url, _ = store.signed_url("sdxl-image-fast", key)
    r = await client.get(_path(url))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == (
        f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}"
    )
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_every_answer_carries_nosniff(store_client):
    client, _ = store_client
    answers = {
        200: await client.get("/healthz"),
        403: await client.get("/v1/files/sdxl-image-fast/u1/j1_0.png"),
        404: await client.get("/v1/nope"),
        413: await client.post("/v1/auth/login", content=b"x" * (2 * 1024 * 1024)),
    }
    for status, response in answers.items():
        assert response.status_code == status
        assert response.headers["x-content-type-options"] == "nosniff", status


async def test_tampered_signature_or_key_is_403(store_client):
    client, store = store_client
    url, _ = store.signed_url("sdxl-image-fast", "u1/j1_0.png")
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert_problem(await client.get(_path(url).replace(sig, flipped)), 403)
    other_key = _path(url).replace("j1_0.png", "j9_0.png")
    assert_problem(await client.get(other_key), 403)
    assert_problem(await client.get("/v1/files/sdxl-image-fast/u1/j1_0.png"), 403)


async def test_expired_signature_is_403(store_client):
    client, store = store_client
    url, _ = store.signed_url("sdxl-image-fast", "u1/j1_0.png", ttl_seconds=-10)
    assert_problem(await client.get(_path(url)), 403)


async def test_missing_file_with_a_valid_signature_is_404(store_client):
    client, store = store_client
    url, _ = store.signed_url("sdxl-image-fast", "u1/none.png")
    assert_problem(await client.get(_path(url)), 404)
