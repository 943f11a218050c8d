"""The whole mesh in this process: jobs, workspace, the SDXL worker (tiny
model) and the gateway on a real port, against the session's PostgreSQL, NATS
JetStream and S3 server. The tests talk HTTP to the gateway, as a client would."""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import make_settings


@dataclass
class Stack:
    url: str
    env: dict
    jobs: object
    workspace: object
    gateway: object
    sdxl: object | None = None


def mesh_env(base_env: dict, **extra) -> dict:
    return {
        **base_env,
        "CATALOG_SDXL_MIN_SIZE": "64",
        "SDXL_MODEL": "tiny",
        "SDXL_ACK_WAIT_SECONDS": "6",
        "SDXL_PROGRESS_INTERVAL_SECONDS": "0",
        "JOBS_MAX_ACTIVE_PER_USER": "10",
        **extra,
    }


@contextlib.asynccontextmanager
async def running_stack(base_env: dict, *, with_worker: bool = True):
    from services.jobs.main import start as start_jobs
    from services.jobs.settings import JobsSettings

    from services.gateway.main import start as start_gateway
    from services.gateway.settings import GatewaySettings
    from services.workspace.main import start as start_workspace
    from services.workspace.settings import WorkspaceSettings

    env = mesh_env(base_env)
    workspace = await start_workspace(make_settings(WorkspaceSettings, env), port=0)
    env["WORKSPACE_ADDR"] = f"127.0.0.1:{workspace.port}"
    jobs = await start_jobs(make_settings(JobsSettings, env), port=0)
    env["JOBS_ADDR"] = f"127.0.0.1:{jobs.port}"
    gateway = await start_gateway(make_settings(GatewaySettings, env), port=0)
    url = f"http://127.0.0.1:{gateway.port}"
    env["PUBLIC_BASE_URL"] = url
    sdxl = None
    if with_worker:
        from services.sdxl.main import start as start_sdxl
        from services.sdxl.settings import SdxlSettings

        sdxl = await start_sdxl(make_settings(SdxlSettings, env), port=0)
    stack = Stack(url=url, env=env, jobs=jobs, workspace=workspace, gateway=gateway, sdxl=sdxl)
    try:
        yield stack
    finally:
        for part in (sdxl, gateway, jobs, workspace):
            if part is not None:
                with contextlib.suppress(Exception):
                    await part.stop()


@pytest.fixture(scope="package")
async def stack(base_env):
    async with running_stack(base_env) as s:
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


async def signup(http: httpx.AsyncClient) -> Client:
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    response = await http.post(
        "/v1/auth/signup", json={"email": email, "password": "a long password"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return Client(http, body["access_token"], body["user"])


@pytest.fixture
async def http(stack):
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
        yield client
