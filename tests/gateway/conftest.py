"""Gateway fixtures: peer-service doubles on port 0, settings against the test
servers, and an app served in-process (httpx ASGITransport) with its lifespan."""

from __future__ import annotations

import uuid

import pytest

from services.gateway.settings import GatewaySettings
from tests.conftest import VERIFIER, token
from tests.gateway.gateway_fakes import start_enhancer_fake, start_fakes
from tests.gateway.gateway_helpers import gateway_settings, serve_app


@pytest.fixture(scope="session")
async def fakes():
    served, jobs, workspace = await start_fakes(VERIFIER)
    try:
        yield served, jobs, workspace
    finally:
        await served.stop(0)


@pytest.fixture(scope="session")
async def enhancer():
    """(served, FakeEnhancer): the EnhancerService double."""
    served, fake = await start_enhancer_fake(VERIFIER)
    try:
        yield served, fake
    finally:
        await served.stop(0)


@pytest.fixture(scope="session")
def settings(base_env, fakes, enhancer) -> GatewaySettings:
    served, _, _ = fakes
    return gateway_settings(base_env, served.port, enhancer[0].port)


@pytest.fixture(scope="session")
async def client(settings):
    async with serve_app(settings) as client:
        yield client


@pytest.fixture
def user_token() -> tuple[str, str]:
    """(user id, access token) of a fresh user; the doubles only check the token."""
    user_id = str(uuid.uuid4())
    return user_id, token(user_id, "user", 300, email=f"{user_id[:8]}@example.com")


@pytest.fixture
def admin_token() -> tuple[str, str]:
    """(admin id, access token) of a fresh admin."""
    admin_id = str(uuid.uuid4())
    return admin_id, token(admin_id, "admin", 300, email="boss@example.com")
