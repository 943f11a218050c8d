"""A workspace service in this process (port 0) against the suite's real
PostgreSQL, NATS JetStream and S3 servers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ourvidz import grpcserver, queue
from ourvidz.v1 import workspace_service_pb2_grpc as pb_grpc
from services.workspace.main import Running, start
from tests.workspace.workspace_helpers import User, workspace_settings


@pytest.fixture(scope="module")
async def workspace(base_env) -> Running:
    running = await start(workspace_settings(base_env), port=0)
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def stub(workspace) -> pb_grpc.WorkspaceServiceStub:
    channel = grpcserver.channel(f"127.0.0.1:{workspace.port}")
    yield pb_grpc.WorkspaceServiceStub(channel)
    await channel.close()


@pytest.fixture(scope="module")
async def js(infra):
    nc, jetstream = await queue.connect(infra.nats_url, "workspace-tests")
    await queue.declare_streams(jetstream)
    yield jetstream
    await nc.close()


@pytest.fixture
def new_user(base_env) -> Callable[[], User]:
    return User
