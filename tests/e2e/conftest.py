"""The whole mesh in this process: jobs, workspace, the SDXL worker (tiny
model) and the gateway on a real port, against the session's PostgreSQL, NATS
JetStream and S3 server. The tests talk HTTP to the gateway, as a client would."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from ourvidz import operator
from ourvidz_dev.stack import running_stack


def mesh_env(base_env: dict, **extra) -> dict:
    return {
        **base_env,
        "SDXL_MODEL": "tiny",
        "SDXL_ACK_WAIT_SECONDS": "4",
        "SDXL_PROGRESS_INTERVAL_SECONDS": "0",
        **extra,
    }


@pytest.fixture(scope="package")
async def stack(base_env):
    async with running_stack(mesh_env(base_env)) as s:
        yield s


class Client:
    """A signed-up user of the HTTP API."""

    def __init__(self, http: httpx.AsyncClient, token: str, user: dict):
        self.http = http
        self.token = token
        self.user = user

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    async def get(self, path: str, **kw) -> httpx.Response:
        return await self.http.get(path, headers=self.headers, **kw)

    async def post(self, path: str, **kw) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return await self.http.post(path, headers=headers, **kw)

    async def put(self, path: str, **kw) -> httpx.Response:
        return await self.http.put(path, headers=self.headers, **kw)

    async def delete(self, path: str, **kw) -> httpx.Response:
        return await self.http.delete(path, headers=self.headers, **kw)

    async def patch(self, path: str, **kw) -> httpx.Response:
        return await self.http.patch(path, headers=self.headers, **kw)

    async def events(self, path: str, last_event_id: str | None = None) -> list[dict]:
        """Every SSE event of a stream until the server ends it."""
        headers = dict(self.headers)
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        out: list[dict] = []
        async with self.http.stream("GET", path, headers=headers, timeout=120) as response:
            assert response.status_code == 200, await response.aread()
            fields: dict = {}
            async for line in response.aiter_lines():
                if not line:
                    if "data" in fields:
                        fields["data"] = json.loads(fields["data"])
                        out.append(fields)
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.lstrip(" ")
        return out


PASSWORD = "a long password"


async def login(http: httpx.AsyncClient, email: str) -> Client:
    response = await http.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    return Client(http, body["access_token"], body["user"])


async def signup(http: httpx.AsyncClient, email: str | None = None) -> Client:
    """A new account, signed in: sign-up answers 202 without tokens, so log in."""
    email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
    response = await http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD})
    assert response.status_code == 202, response.text
    return await login(http, email)


async def signup_admin(http: httpx.AsyncClient, owner_url: str) -> Client:
    """A new account made an admin by the operator (`ourvidz admin grant`), signed in."""
    user = await signup(http)
    await asyncio.to_thread(operator.grant_admin, owner_url, user.user["email"])
    return await login(http, user.user["email"])


@pytest.fixture
async def http(stack):
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
        yield client
