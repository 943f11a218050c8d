"""Which worker families can take work, from the workers' registry in real
NATS: /readyz's `optional.workers` (ready, loading, none; unknown without
NATS, and still 200) and GET /v1/job-types' `available` and
`unavailable_reason` per type (its family's state, and the enhancer for an
enhanced type). Each test reads a registry bucket of its own."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from ourvidz import queue, registry
from services.gateway import workers
from tests.gateway.gateway_helpers import auth, gateway_settings, serve_app

pytestmark = pytest.mark.usefixtures("fakes")


@pytest.fixture
async def kv(infra, monkeypatch):
    """A registry bucket of this test's own, the one the gateway reads."""
    nc, js = await queue.connect(infra.nats_url, name="availability-test")
    bucket = f"workers-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(workers, "BUCKET", bucket)
    kv = await registry.declare_bucket(js, bucket=bucket)
    yield kv
    await js.delete_key_value(bucket)
    await nc.close()


async def put_card(kv, family: str, ready: bool, seen_ago: float = 0.0) -> None:
    worker_id = f"{family}-{uuid.uuid4().hex[:6]}"
    card = {
        "worker_id": worker_id,
        "family": family,
        "ready": ready,
        "last_seen": time.time() - seen_ago,
        "heartbeat_seconds": 5.0,
    }
    await kv.put(registry.worker_key(family, worker_id), json.dumps(card).encode())


async def worker_states(client, within: float = 10.0) -> dict:
    """/readyz's workers, once the gateway's NATS connection (made in the
    background) is up."""
    deadline = time.monotonic() + within
    while True:
        r = await client.get("/readyz")
        assert r.status_code == 200, r.text
        states = r.json()["optional"]["workers"]
        if "unknown" not in states.values() or time.monotonic() > deadline:
            return states
        await asyncio.sleep(0.1)


async def job_types(client, token: str) -> dict:
    r = await client.get("/v1/job-types", headers=auth(token))
    assert r.status_code == 200, r.text
    return {t["name"]: (t["available"], t["unavailable_reason"]) for t in r.json()["items"]}


async def test_readyz_says_which_families_are_ready(client, kv):
    assert await worker_states(client) == {"sdxl": "none", "wan": "none"}
    await put_card(kv, "wan", ready=False)
    await put_card(kv, "sdxl", ready=True, seen_ago=60)  # stopped beating: not counted
    await put_card(kv, "enhancer", ready=True)  # not a generation family
    assert await worker_states(client) == {"sdxl": "none", "wan": "loading"}
    await put_card(kv, "sdxl", ready=True)
    await put_card(kv, "wan", ready=True)  # one loaded worker is enough
    assert await worker_states(client) == {"sdxl": "ready", "wan": "ready"}


async def test_without_nats_the_workers_are_unknown_and_readyz_still_200(base_env, fakes):
    served, _, _ = fakes
    settings = gateway_settings(base_env, served.port, nats_url="nats://127.0.0.1:1")
    async with serve_app(settings) as client:
        r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["optional"]["workers"] == {"sdxl": "unknown", "wan": "unknown"}


async def test_job_types_say_whether_they_can_run_now(client, kv, user_token):
    await worker_states(client)
    assert await job_types(client, user_token[1]) == {
        "sdxl_image_fast": (False, "no sdxl worker is running"),
        "video7b_fast_enhanced": (False, "no wan worker is running"),
    }
    await put_card(kv, "sdxl", ready=True)
    await put_card(kv, "wan", ready=False)
    assert await job_types(client, user_token[1]) == {
        "sdxl_image_fast": (True, None),
        "video7b_fast_enhanced": (False, "the wan worker is still loading its model"),
    }
    await put_card(kv, "wan", ready=True)
    assert await job_types(client, user_token[1]) == {
        "sdxl_image_fast": (True, None),
        "video7b_fast_enhanced": (True, None),
    }


async def test_an_enhanced_type_needs_the_enhancer(base_env, fakes, kv, user_token):
    served, _, _ = fakes
    await put_card(kv, "sdxl", ready=True)
    await put_card(kv, "wan", ready=True)
    async with serve_app(gateway_settings(base_env, served.port)) as client:  # no enhancer
        assert await worker_states(client) == {"sdxl": "ready", "wan": "ready"}
        assert await job_types(client, user_token[1]) == {
            "sdxl_image_fast": (True, None),
            "video7b_fast_enhanced": (False, "the prompt enhancer is not running"),
        }
