"""The live-worker registry against real NATS: a heartbeat puts the worker's
card, stop removes it, the bucket's max age drops a worker that died silently,
and a registry that cannot be reached only logs a warning."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

import pytest

from ourvidz import queue, registry


@pytest.fixture
async def js(infra):
    nc, js = await queue.connect(infra.nats_url, name="registry-test")
    yield js
    await nc.close()


async def _eventually(check, within: float = 10.0):
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def test_keys_hold_only_what_a_kv_key_may():
    assert registry.worker_key("sdxl", "gpu-node-1") == "sdxl.gpu-node-1"
    assert registry.worker_key("wan", "host:1234 a/b") == "wan.host_1234_a_b"


async def test_a_heartbeat_registers_and_stop_removes(js):
    bucket = f"workers-test-{uuid.uuid4().hex[:8]}"
    worker_id = f"w-{uuid.uuid4().hex[:6]}"
    state = {"ready": False}
    beat = registry.Heartbeat(
        js,
        "sdxl",
        worker_id,
        lambda: {"worker_id": worker_id, "family": "sdxl", "ready": state["ready"]},
        interval=0.1,
        bucket=bucket,
    )
    beat.start()

    async def mine():
        cards = await registry.list_cards(js, bucket)
        return [c for c in cards if c["worker_id"] == worker_id]

    (card,) = await _eventually(mine)
    assert card["family"] == "sdxl" and card["ready"] is False
    assert abs(card["last_seen"] - time.time()) < 5 and card["heartbeat_seconds"] == 0.1
    # The next beats carry the new state.
    state["ready"] = True

    async def ready():
        found = await mine()
        return found and found[0]["ready"]

    await _eventually(ready)
    await beat.stop()
    assert await mine() == []
    # Declaring again (another replica starting) keeps the bucket as it is.
    kv = await registry.declare_bucket(js, bucket=bucket)
    assert (await kv.status()).bucket == bucket
    await js.delete_key_value(bucket)


async def test_a_silent_worker_drops_out_after_the_ttl(js):
    bucket = f"workers-test-{uuid.uuid4().hex[:8]}"
    kv = await registry.declare_bucket(js, ttl_seconds=1.0, bucket=bucket)
    await kv.put("wan.gone", json.dumps({"worker_id": "gone"}).encode())
    assert [c["worker_id"] for c in await registry.list_cards(js, bucket)] == ["gone"]

    async def empty():
        return await registry.list_cards(js, bucket) == []

    await _eventually(empty, within=10)
    await js.delete_key_value(bucket)


async def test_no_bucket_lists_nothing(js):
    assert await registry.list_cards(js, f"absent-{uuid.uuid4().hex[:8]}") == []


async def test_registry_errors_only_warn(infra, caplog):
    nc, js = await queue.connect(infra.nats_url, name="registry-closed")
    await nc.close()  # every KV call now fails
    beat = registry.Heartbeat(js, "wan", "w1", lambda: {"worker_id": "w1"}, interval=0.05)
    with caplog.at_level(logging.WARNING, logger="ourvidz.registry"):
        beat.start()
        await asyncio.sleep(0.2)
        await beat.stop()
    assert any("could not refresh wan.w1" in r.getMessage() for r in caplog.records)
