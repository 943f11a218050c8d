"""Enhancers in process (port 0, tiny model) against the session's real
PostgreSQL and NATS, and helpers to call them as a user, an admin or a worker."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass

import psycopg
import pytest

from ourvidz import queue
from ourvidz.auth import call_metadata
from ourvidz.grpcserver import channel
from ourvidz.v1 import enhancer_service_pb2_grpc
from services.enhancer.main import start
from services.enhancer.settings import EnhancerSettings
from tests.conftest import make_settings, token

DENIED = "forbidden thing"


def user_md(role: str = "user", subject: str | None = None) -> tuple[str, tuple]:
    subject = subject or str(uuid.uuid4())
    return subject, call_metadata(token(subject, role))


def owner_query(owner_url: str, query: str, params=()) -> list[tuple]:
    """Run `query` as the database owner (no row level security)."""
    with psycopg.connect(owner_url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


@dataclass
class Replica:
    running: object
    stub: enhancer_service_pb2_grpc.EnhancerServiceStub
    channel: object

    @property
    def core(self):
        return self.running.core


@contextlib.asynccontextmanager
async def replica(base_env, **overrides):
    defaults = {
        "PROMPT_DENY_LIST": DENIED,
        "ENHANCER_ACK_WAIT_SECONDS": 5,
        "ENHANCER_FETCH_TIMEOUT_SECONDS": 0.2,
        "ENHANCER_SHUTDOWN_GRACE_SECONDS": 5,
    }
    settings = make_settings(EnhancerSettings, base_env, **{**defaults, **overrides})
    running = await start(settings, port=0)
    ch = channel(f"127.0.0.1:{running.port}")
    try:
        await running.wait_ready(120)
        yield Replica(running, enhancer_service_pb2_grpc.EnhancerServiceStub(ch), ch)
    finally:
        await ch.close()
        await running.stop()


def restore_default_templates(owner_url: str) -> None:
    """Leave the seeded defaults active for the suites that follow."""
    with psycopg.connect(owner_url) as conn:
        conn.execute("UPDATE enhancer.prompt_templates SET active = false WHERE active")
        conn.execute(
            "UPDATE enhancer.prompt_templates SET active = true "
            "WHERE name IN ('sdxl-default', 'wan-default') AND version = 1"
        )


async def remove_enhance_consumer(nats_url: str, durable: str = "enhancer") -> None:
    """Leave no consumer and no task of ours behind on the shared TASKS stream."""
    nc, js = await queue.connect(nats_url, name="enhancer-tests-cleanup")
    try:
        with contextlib.suppress(Exception):
            await js.delete_consumer(queue.TASKS_STREAM, durable)
        for subject in (queue.ENHANCE_SUBJECT, "tasks.wan.>", "tasks.sdxl.>"):
            with contextlib.suppress(Exception):
                await js.purge_stream(queue.TASKS_STREAM, subject=subject)
    finally:
        await nc.close()


@pytest.fixture(scope="module")
async def enh(base_env, infra):
    """One enhancer for a test module; the defaults restored afterwards."""
    async with replica(base_env) as r:
        yield r
    restore_default_templates(infra.database_url)
    await remove_enhance_consumer(infra.nats_url)
