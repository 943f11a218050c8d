"""The whole mesh in this process (jobs, workspace, the gateway, the tiny SDXL
worker and the tiny enhancer) with local storage, so the signed download route
is served too; and a small world in it: user A with one of each resource,
user B who owns nothing of A's, an admin's template with a stored test run.

The walks in this folder probe the tenant boundary with that world: B (and
callers without a token, or with the wrong role) against A's ids."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from PIL import Image

from ourvidz import operator
from ourvidz.auth import ISSUER
from ourvidz.keys import public_jwk
from ourvidz_dev.stack import running_stack
from tests.conftest import GATEWAY_KEY, WORKER_KEY, foreign_token, token
from tests.enhancer.conftest import remove_enhance_consumer, restore_default_templates

# A password no strength rule refuses: the walk is about ownership, not passwords.
PASSWORD = "Walk-the-boundary 7 times, " + uuid.uuid4().hex[:12]
# Bounds on waiting for the world to be built (events, not sleeps, end the waits).
SETUP_SECONDS = 300


def security_env(base_env: dict) -> dict:
    return {
        **base_env,
        "STORAGE_BACKEND": "local",
        "SDXL_MODEL": "tiny",
        "SDXL_PROGRESS_INTERVAL_SECONDS": "0",
        "ENHANCER_MODEL": "tiny",
    }


@pytest.fixture(scope="package")
async def stack(base_env, infra):
    try:
        async with running_stack(security_env(base_env), workers=("sdxl",), enhancer=True) as s:
            yield s
    finally:
        # Leave the default templates active and no task of ours on the shared
        # stream for the suites that follow.
        restore_default_templates(infra.database_url)
        await remove_enhance_consumer(infra.nats_url)


def service_token(stack, role: str, subject: str | None = None, ttl_seconds: int = 600) -> str:
    """An access token for `role` ("user", "admin" or "worker") as the mesh
    issues it: the gateway's key signs users' and admins', a worker's key
    workers' (a negative `ttl_seconds`: expired)."""
    return token(subject or str(uuid.uuid4()), role, ttl_seconds)


def _claims(subject: str, role: str) -> dict:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "sub": subject,
        "role": role,
        "typ": "access",
        "iat": now,
        "exp": now + 600,
    }


def refused_tokens(stack, world: World) -> list[tuple[str, str]]:
    """(what it is, token) of tokens every call that takes one refuses: none
    is an access token, valid now, that a trusted key may sign for its role."""
    gateway_kid = public_jwk(GATEWAY_KEY)["kid"]
    return [
        ("a token of nobody's key", "e30.e30.c2lnbmF0dXJl"),
        ("A's token signed by a key no service trusts", foreign_token(world.a.id)),
        ("A's refresh token", world.a.refresh_token),
        ("A's expired token", service_token(stack, "user", world.a.id, ttl_seconds=-5)),
        (
            "a worker token signed with the gateway's key",
            jwt.encode(_claims("worker-1", "worker"), GATEWAY_KEY, "EdDSA", {"kid": gateway_kid}),
        ),
        (
            "an admin token signed with a worker's key",
            jwt.encode(_claims(world.a.id, "admin"), WORKER_KEY, "EdDSA"),
        ),
        ("an unsigned admin token", jwt.encode(_claims(world.a.id, "admin"), None, "none")),
        (
            "an admin token signed HS256 with the gateway's public key",
            jwt.encode(
                _claims(world.a.id, "admin"),
                public_jwk(GATEWAY_KEY)["x"],
                "HS256",
                {"kid": gateway_kid},
            ),
        ),
    ]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class User:
    id: str
    email: str
    token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


@dataclass
class World:
    """What the walks need: A's resources, B, an admin, and the markers that
    would show A's data in an answer to anyone else."""

    a: User
    b: User
    admin_token: str
    prompt: str
    job_id: str
    cancelled_job_id: str
    session_id: str
    other_session_id: str
    item_ids: list[str]
    asset_ids: list[str]
    upload_id: str
    template_id: str
    template_test_id: str
    file_bucket: str
    file_key: str
    file_url: str
    other_file_url: str
    idempotency_key: str

    def markers(self) -> dict[str, str]:
        """Strings that only A's data contains, by what they are."""
        out = {
            "A's user id": self.a.id,
            "A's email": self.a.email,
            "A's prompt": self.prompt,
            "A's job": self.job_id,
            "A's cancelled job": self.cancelled_job_id,
            "A's session": self.session_id,
            "A's other session": self.other_session_id,
            "A's upload": self.upload_id,
            "A's file key": self.file_key,
        }
        out.update({f"A's item {i}": v for i, v in enumerate(self.item_ids)})
        out.update({f"A's asset {i}": v for i, v in enumerate(self.asset_ids)})
        return out

    def leaks(self, text: str, sent: str = "") -> list[str]:
        """The markers of A's data found in `text`, leaving out those the
        caller sent itself (`sent`: the request's URL and body)."""
        return [
            name for name, value in self.markers().items() if value in text and value not in sent
        ]


async def login(http: httpx.AsyncClient, email: str) -> User:
    response = await http.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    return User(body["user"]["id"], email, body["access_token"], body["refresh_token"])


async def signup(http: httpx.AsyncClient) -> User:
    """A new account, signed in (sign-up answers 202 without tokens)."""
    email = f"walk-{uuid.uuid4().hex[:12]}@example.com"
    response = await http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD})
    assert response.status_code == 202, response.text
    return await login(http, email)


def png_bytes(size: int = 64) -> bytes:
    image = io.BytesIO()
    Image.new("RGB", (size, size), (200, 40, 90)).save(image, format="PNG")
    return image.getvalue()


async def sse_events(response: httpx.Response):
    """(event name, data) of each SSE event of an open streamed response."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if "data" in fields:
                yield fields.get("event", "message"), json.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.lstrip(" ")


async def _files_into_session(http, user: User, session_id: str, body: dict, count: int, key: str):
    """Submit a job (idempotency key `key`) into `session_id` and follow the
    session's events until `count` items are filed; returns (job, item ids)."""
    items: list[str] = []
    path = f"/v1/workspace/sessions/{session_id}/events"
    async with http.stream("GET", path, headers=user.headers, timeout=SETUP_SECONDS) as stream:
        assert stream.status_code == 200, await stream.aread()
        submitted = await http.post(
            "/v1/jobs", headers={**user.headers, "Idempotency-Key": key}, json=body
        )
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()
        async for name, data in sse_events(stream):
            if name == "failed":
                raise AssertionError(f"the world's job failed: {data}")
            if name == "item" and data["item"]["job_id"] == job["id"]:
                items.append(data["item"]["id"])
                if len(items) == count:
                    break
    return job, items


@pytest.fixture(scope="package")
async def world(stack) -> World:
    async with (
        asyncio.timeout(SETUP_SECONDS),
        httpx.AsyncClient(base_url=stack.url, timeout=120) as http,
    ):
        a = await signup(http)
        b = await signup(http)
        # An admin as operators make one (`ourvidz admin grant`), signed in.
        admin = await signup(http)
        await asyncio.to_thread(operator.grant_admin, stack.env["DATABASE_URL"], admin.email)
        admin_token = (await login(http, admin.email)).token
        prompt = f"a lighthouse of {uuid.uuid4().hex} on a cliff"

        upload = await http.post(
            "/v1/uploads", headers=a.headers, files={"file": ("a.png", png_bytes(), "image/png")}
        )
        assert upload.status_code == 201, upload.text
        other = await http.post("/v1/workspace/sessions", headers=a.headers, json={"name": "old"})
        assert other.status_code == 201, other.text
        session = await http.post("/v1/workspace/sessions", headers=a.headers, json={"name": "now"})
        assert session.status_code == 201, session.text
        session_id = session.json()["id"]

        body = {
            "job_type": "sdxl_image_fast",
            "prompt": prompt,
            "num_images": 3,
            "seed": 7,
            "width": 128,
            "height": 128,
            "workspace_session_id": session_id,
        }
        key = f"walk-{uuid.uuid4().hex}"
        job, item_ids = await _files_into_session(http, a, session_id, body, 3, key)
        got = await http.get(f"/v1/jobs/{job['id']}", headers=a.headers)
        assert got.json()["state"] == "completed", got.text
        assets = sorted(got.json()["assets"], key=lambda asset: asset["index"])
        file_url, other_file_url = assets[0]["url"], assets[1]["url"]

        # A second job, cancelled: A's job listing has two pages of one.
        second = await http.post(
            "/v1/jobs", headers=a.headers, json={**body, "num_images": 1, "seed": 8}
        )
        assert second.status_code == 202, second.text
        cancelled = await http.post(f"/v1/jobs/{second.json()['id']}/cancel", headers=a.headers)
        assert cancelled.status_code in (200, 409), cancelled.text

        asset_ids = []
        for item_id in item_ids[:2]:
            saved = await http.post(f"/v1/workspace/items/{item_id}/save", headers=a.headers)
            assert saved.status_code == 201, saved.text
            asset_ids.append(saved.json()["id"])

        admin = bearer(admin_token)
        template = await http.post(
            "/v1/admin/prompt-templates",
            headers=admin,
            json={
                "name": f"walk-{uuid.uuid4().hex[:8]}",
                "target_model": "sdxl",
                "system_prompt": "Describe the picture in more detail.",
            },
        )
        assert template.status_code == 201, template.text
        template_id = template.json()["id"]
        tested = await http.post(
            f"/v1/admin/prompt-templates/{template_id}/tests",
            headers=admin,
            json={"sample_prompts": ["a red fox"], "settings": {"max_new_tokens": 8, "seed": 1}},
        )
        assert tested.status_code == 200, tested.text

        path = urlsplit(file_url).path.removeprefix("/v1/files/")
        bucket, _, key = path.partition("/")
        return World(
            a=a,
            b=b,
            admin_token=admin_token,
            prompt=prompt,
            job_id=job["id"],
            cancelled_job_id=second.json()["id"],
            session_id=session_id,
            other_session_id=other.json()["id"],
            item_ids=item_ids,
            asset_ids=asset_ids,
            upload_id=upload.json()["id"],
            template_id=template_id,
            template_test_id=tested.json()["tests"][0]["id"],
            file_bucket=bucket,
            file_key=key,
            file_url=file_url,
            other_file_url=other_file_url,
            idempotency_key=key,
        )


async def a_keeps_everything(stack, world: World) -> None:
    """Every call anyone else made left A's resources as they were."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=60, headers=world.a.headers) as http:
        job = await http.get(f"/v1/jobs/{world.job_id}")
        assert job.status_code == 200 and job.json()["state"] == "completed", job.text
        items = await http.get(f"/v1/workspace/sessions/{world.session_id}/items")
        assert items.status_code == 200, items.text
        kept = {i["id"] for i in items.json()["items"]}
        assert set(world.item_ids) <= kept, f"A lost items: {set(world.item_ids) - kept}"
        for asset_id in world.asset_ids:
            asset = await http.get(f"/v1/library/assets/{asset_id}")
            assert asset.status_code == 200, asset.text
            assert asset.json()["title"] != "mine now"
        upload_session = await http.get(f"/v1/workspace/sessions/{world.other_session_id}")
        assert upload_session.status_code == 200, upload_session.text
        download = await http.get(world.file_url)
        assert download.status_code == 200
        assert download.content.startswith(b"\x89PNG")
