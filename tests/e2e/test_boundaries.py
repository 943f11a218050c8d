"""What the HTTP API refuses: bad input (named fields, nothing stored or
queued), bad tokens, and other users' resources (404, never 403); and what the
jobs service refuses to a caller that reaches it directly."""

from __future__ import annotations

import io
import uuid

import grpc
import httpx
import pytest
from PIL import Image

from ourvidz.catalog import REFERENCE_BUCKET
from ourvidz.grpcserver import channel
from ourvidz.storage import S3Store
from ourvidz.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc
from tests.conftest import foreign_token, rpc_error
from tests.conftest import token as mint
from tests.e2e.conftest import signup
from tests.e2e.test_generate import job_body, run_job

BAD_JOBS = [
    ({"job_type": "no_such_type"}, "job_type"),
    ({"num_images": 4}, "num_images"),
    ({"reference_strength": 1.5, "reference_type": "style"}, "reference_strength"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 5000}, "prompt"),
    ({"seed": 2**40}, "seed"),
    ({"seed": -1}, "seed"),
    ({"width": 1000}, "width"),
    ({"height": 4096}, "height"),
]


@pytest.mark.parametrize("change,field", BAD_JOBS, ids=[f for _, f in BAD_JOBS])
async def test_bad_job_is_refused_and_nothing_is_queued(http, change, field):
    user = await signup(http)
    response = await user.post("/v1/jobs", json=job_body(**change))
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert field in [e["field"] for e in problem.get("errors", [])], problem
    assert "Traceback" not in response.text
    listed = (await user.get("/v1/jobs")).json()
    assert listed["items"] == []


async def test_bad_uploads_are_refused(http):
    user = await signup(http)
    text = await user.post(
        "/v1/uploads", files={"file": ("notes.png", b"not an image at all", "image/png")}
    )
    assert text.status_code in (400, 415, 422), text.text
    assert "file" in [e["field"] for e in text.json().get("errors", [])]
    big = await user.post(
        "/v1/uploads", files={"file": ("big.png", b"\0" * (21 * 1024 * 1024), "image/png")}
    )
    assert big.status_code == 413, big.status_code


@pytest.mark.parametrize("token", [None, "garbage", "not.a.jwt", "expired", "forged"])
async def test_bad_or_expired_token_is_401(http, stack, token):
    if token == "expired":
        token = mint(str(uuid.uuid4()), "user", -5)
    elif token == "forged":
        token = foreign_token(str(uuid.uuid4()))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for path in ("/v1/jobs", "/v1/me", "/v1/library/assets"):
        response = await http.get(path, headers=headers)
        assert response.status_code == 401, (path, response.text)
    submitted = await http.post("/v1/jobs", headers=headers, json=job_body())
    assert submitted.status_code == 401


async def test_other_users_resources_are_404(http):
    owner = await signup(http)
    stranger = await signup(http)
    job, _ = await run_job(owner, job_body(num_images=1))
    assert job["state"] == "completed"
    image = io.BytesIO()
    Image.new("RGB", (64, 64)).save(image, format="PNG")
    upload = (
        await owner.post("/v1/uploads", files={"file": ("r.png", image.getvalue(), "image/png")})
    ).json()
    session_id = job["workspace_session_id"]

    assert (await stranger.get(f"/v1/jobs/{job['id']}")).status_code == 404
    assert (await stranger.post(f"/v1/jobs/{job['id']}/cancel")).status_code == 404
    assert (await stranger.get(f"/v1/jobs/{job['id']}/events")).status_code == 404
    assert (await stranger.get(f"/v1/workspace/sessions/{session_id}")).status_code == 404
    assert (await stranger.get(f"/v1/workspace/sessions/{session_id}/items")).status_code == 404

    from tests.e2e.test_generate import wait_for

    async def owner_items():
        items = (await owner.get(f"/v1/workspace/sessions/{session_id}/items")).json()["items"]
        return items or None

    items = await wait_for(owner_items)
    assert (await stranger.post(f"/v1/workspace/items/{items[0]['id']}/save")).status_code == 404
    assert (await stranger.delete(f"/v1/workspace/items/{items[0]['id']}")).status_code == 404
    asset = (await owner.post(f"/v1/workspace/items/{items[0]['id']}/save")).json()
    assert (await stranger.get(f"/v1/library/assets/{asset['id']}")).status_code == 404
    assert (await stranger.delete(f"/v1/library/assets/{asset['id']}")).status_code == 404
    assert (await stranger.get("/v1/library/assets")).json()["items"] == []
    borrowed = await stranger.post(
        "/v1/jobs",
        json=job_body(num_images=1, reference_image_id=upload["id"], reference_type="style"),
    )
    assert borrowed.status_code in (404, 422), borrowed.text
    assert (await owner.get(f"/v1/jobs/{job['id']}")).status_code == 200


def _png(size=(96, 80)) -> bytes:
    image = Image.new("RGB", size)
    image.putdata([(x * 2, y * 3, (x + y) % 256) for y in range(size[1]) for x in range(size[0])])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


async def test_polyglot_upload_is_stored_re_encoded_and_files_are_served_safely(http, stack):
    """A PNG with an HTML page appended is kept as a picture only, still works as
    a reference, and what the job produces downloads (from S3, through the
    presigned URL) inline under its own type."""
    user = await signup(http)
    picture = _png()
    sent = picture + b"<html><script>alert(document.cookie)</script></html>"
    response = await user.post("/v1/uploads", files={"file": ("ref.png", sent, "text/html")})
    assert response.status_code == 201, response.text
    upload = response.json()
    assert (upload["content_type"], upload["width"], upload["height"]) == ("image/png", 96, 80)
    blobs = S3Store(
        stack.env["S3_ENDPOINT"], stack.env["S3_ACCESS_KEY"], stack.env["S3_SECRET_KEY"]
    )
    stored = await blobs.get(REFERENCE_BUCKET, f"{user.user['id']}/{upload['id']}.png")
    assert stored != sent and b"<script>" not in stored
    assert upload["size_bytes"] == len(stored)
    with Image.open(io.BytesIO(stored)) as image, Image.open(io.BytesIO(picture)) as original:
        assert image.tobytes() == original.tobytes()

    job, _ = await run_job(
        user,
        job_body(num_images=1, reference_image_id=upload["id"], reference_type="composition"),
    )
    assert job["state"] == "completed", job
    async with httpx.AsyncClient(timeout=30) as client:
        got = await client.get(job["assets"][0]["url"])
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/png"
    assert got.headers["content-disposition"] == "inline"


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
        ("x.html", b"<!doctype html><html><script>alert(1)</script></html>"),
        ("bomb.png", None),
    ],
)
async def test_svg_html_and_bomb_uploads_are_refused_naming_file(http, name, data):
    user = await signup(http)
    if data is None:  # a few kilobytes that decode to 48 Mpx, over the 40 Mpx limit
        image = Image.new("1", (8000, 6000))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
    response = await user.post("/v1/uploads", files={"file": (name, data, "image/png")})
    assert response.status_code in (400, 422), response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert [e["field"] for e in response.json()["errors"]] == ["file"]


async def test_jobs_takes_only_the_callers_own_session_over_grpc(http, stack):
    """The gateway checks the session of a job; Jobs checks it again, through
    the workspace service with the caller's own token, for a caller that
    reaches it directly."""
    owner = await signup(http)
    stranger = await signup(http)
    session = (await owner.post("/v1/workspace/sessions", json={})).json()
    assert session["id"]

    async with channel(f"127.0.0.1:{stack.jobs.port}") as ch:
        jobs = job_service_pb2_grpc.JobServiceStub(ch)

        def create(client, session_id: str):
            spec = job_pb2.JobSpec(
                job_type="sdxl_image_fast",
                prompt="a lighthouse",
                width=64,
                height=64,
                workspace_session_id=session_id,
            )
            return jobs.CreateJob(
                job_service_pb2.CreateJobRequest(job=spec),
                metadata=(("authorization", f"Bearer {client.token}"),),
            )

        for session_id in (session["id"], str(uuid.uuid4())):  # the owner's; nobody's
            err = await rpc_error(create(stranger, session_id))
            assert err.code == grpc.StatusCode.NOT_FOUND, err
            assert "workspace_session_id" in err.message
        mine = await create(owner, session["id"])
    assert mine.job.workspace_session_id == session["id"]
    assert (await stranger.get("/v1/jobs")).json()["items"] == []
