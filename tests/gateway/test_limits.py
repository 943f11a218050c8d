"""Body size limits: JSON bodies and uploads, by declared length and by the
bytes actually streamed."""

from __future__ import annotations

import pytest

from tests.gateway.gateway_helpers import assert_problem, auth, gateway_settings, serve_app

UPLOAD_LIMIT = 4096


@pytest.fixture(scope="module")
async def small_client(base_env, fakes):
    served, _, _ = fakes
    settings = gateway_settings(
        base_env,
        served.port,
        gateway_max_upload_bytes=UPLOAD_LIMIT,
        gateway_multipart_overhead_bytes=2048,
    )
    async with serve_app(settings) as client:
        yield client


async def test_json_body_over_64_kib_is_413(client, user_token):
    body = {"job_type": "image_fast", "prompt": "x" * (64 * 1024)}
    r = await client.post("/v1/jobs", json=body, headers=auth(user_token[1]))
    assert_problem(r, 413)


async def test_streamed_json_without_length_is_counted(client, user_token):
    async def chunks():
        yield b'{"job_type": "image_fast", "prompt": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    r = await client.post(
        "/v1/jobs",
        content=chunks(),
        headers={**auth(user_token[1]), "Content-Type": "application/json"},
    )
    assert "content-length" not in r.request.headers
    assert_problem(r, 413)


async def test_json_under_the_limit_passes(client, user_token):
    body = {"job_type": "image_fast", "prompt": "x" * (60 * 1024), "destination": "library"}
    r = await client.post("/v1/jobs", json=body, headers=auth(user_token[1]))
    assert r.status_code == 202


async def test_upload_over_the_limit_by_length_is_413_naming_file(small_client, user_token):
    data = b"\x89PNG" + b"0" * (UPLOAD_LIMIT * 2)
    r = await small_client.post(
        "/v1/uploads", files={"file": ("big.png", data, "image/png")}, headers=auth(user_token[1])
    )
    body = assert_problem(r, 413)
    assert body["errors"][0]["field"] == "file"


async def test_upload_over_the_file_limit_within_the_framing_is_413(small_client, user_token):
    data = b"\x89PNG" + b"0" * (UPLOAD_LIMIT + 100)  # under limit + overhead, over the file limit
    r = await small_client.post(
        "/v1/uploads", files={"file": ("big.png", data, "image/png")}, headers=auth(user_token[1])
    )
    body = assert_problem(r, 413)
    assert body["errors"][0]["field"] == "file"


async def test_upload_streamed_without_length_is_413(small_client, user_token):
    boundary = "xyz"

    async def chunks():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        for _ in range(10):
            yield b"0" * 1024
        yield f"\r\n--{boundary}--\r\n".encode()

    r = await small_client.post(
        "/v1/uploads",
        content=chunks(),
        headers={
            **auth(user_token[1]),
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    body = assert_problem(r, 413)
    assert body["errors"][0]["field"] == "file"


async def test_upload_within_the_limit_passes(small_client, user_token):
    data = b"\x89PNG" + b"0" * (UPLOAD_LIMIT - 10)
    r = await small_client.post(
        "/v1/uploads", files={"file": ("ok.png", data, "image/png")}, headers=auth(user_token[1])
    )
    assert r.status_code == 201, r.text
