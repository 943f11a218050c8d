"""The mesh in this process (jobs, workspace, the enhancer with its tiny model
and the gateway on a real port, no generation worker) for the API conformance
run, and the tokens of a signed-up user and of an admin."""

from __future__ import annotations

import asyncio
import secrets
import uuid

import httpx
import pytest

from ourvidz import operator
from ourvidz_dev.stack import running_stack
from tests.enhancer.conftest import remove_enhance_consumer, restore_default_templates


@pytest.fixture(scope="package")
async def stack(base_env, infra):
    # The local blob store, so /v1/files (its signed downloads) is served too.
    env = {**base_env, "ENHANCER_MODEL": "tiny", "STORAGE_BACKEND": "local"}
    try:
        async with running_stack(env, workers=(), enhancer=True) as s:
            yield s
    finally:
        # The run made and activated templates of random text as an admin, and
        # left enhancement tasks of its jobs: the suites that follow share this
        # database and stream, and expect the defaults and an empty queue.
        restore_default_templates(infra.database_url)
        await remove_enhance_consumer(infra.nats_url)


async def _signup(http: httpx.AsyncClient) -> tuple[str, str]:
    """(email, password) of a new account."""
    email = f"api-{uuid.uuid4().hex[:10]}@example.com"
    password = secrets.token_urlsafe(24)
    response = await http.post("/v1/auth/signup", json={"email": email, "password": password})
    assert response.status_code == 202, response.text
    return email, password


async def _login(http: httpx.AsyncClient, email: str, password: str) -> str:
    response = await http.post("/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


@pytest.fixture(scope="package")
async def tokens(stack) -> dict[str, str]:
    """Access tokens of a signed-up user and of an admin, both made before
    any run (a run's own sign-ups and logins may meet the address's limits).
    The admin is made as an operator makes one (`ourvidz admin grant`): an
    existing account given the role, then a fresh login."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        user = await _signup(http)
        admin_email, admin_password = await _signup(http)
        await asyncio.to_thread(operator.grant_admin, stack.env["DATABASE_URL"], admin_email)
        return {
            "user": await _login(http, *user),
            "admin": await _login(http, admin_email, admin_password),
        }
