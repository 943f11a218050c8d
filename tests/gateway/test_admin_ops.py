"""GET /v1/admin/queues and /v1/admin/workers against real NATS: admins only,
consumer figures per family and priority (an undeclared consumer is zeros),
the workers' registry with a health verdict, and 503 without NATS."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from ourvidz import queue, registry
from services.gateway.routes import admin_ops
from tests.gateway.gateway_helpers import auth, gateway_settings, serve_app

pytestmark = pytest.mark.usefixtures("fakes")


@pytest.fixture
async def js(infra):
    nc, js = await queue.connect(infra.nats_url, name="admin-ops-test")
    yield js
    await nc.close()


async def _get(client, path, token, within: float = 10.0):
    """GET, waiting out the gateway's NATS connection (made in the background)."""
    deadline = time.monotonic() + within
    while True:
        r = await client.get(path, headers=auth(token))
        if r.status_code != 503 or time.monotonic() > deadline:
            return r
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("path", ["/v1/admin/queues", "/v1/admin/workers"])
async def test_for_admins_only(client, user_token, path):
    anonymous = await client.get(path)
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    assert (await client.get(path, headers=auth(user_token[1]))).status_code == 403


async def test_queues_per_family(client, admin_token, js, monkeypatch):
    r = await _get(client, "/v1/admin/queues", admin_token[1])
    assert r.status_code == 200, r.text
    rows = r.json()["queues"]
    assert [(q["family"], q["subject"], q["consumer"]) for q in rows] == [
        ("sdxl", "tasks.sdxl.>", "sdxl"),
        ("wan", "tasks.wan.>", "wan"),
        ("enhance", "tasks.enhance", "enhancer"),
    ]
    assert {q["priority"] for q in rows} == {None}
    assert r.json()["checked_at"].endswith("Z")

    # A consumer of its own (so other tests' queues do not matter): three tasks,
    # one of them fetched and not acked; and one consumer nobody declared.
    tag = uuid.uuid4().hex[:8]
    subject, durable = f"tasks.probe{tag}.fast", f"probe-{tag}"
    await queue.declare_streams(js)
    await queue.declare_task_consumer(js, subject, durable)
    probes = (
        ("probe", "fast", subject, durable),
        ("ghost", "high", f"tasks.ghost{tag}.high", f"ghost-{tag}"),
    )
    monkeypatch.setattr(admin_ops, "QUEUES", probes)
    for n in range(3):
        await js.publish(subject, f"task {n}".encode())
    sub = await js.pull_subscribe_bind(durable=durable, stream=queue.TASKS_STREAM)
    (held,) = await sub.fetch(1, timeout=5)

    r = await _get(client, "/v1/admin/queues", admin_token[1])
    probe, ghost = r.json()["queues"]
    assert probe == {
        "family": "probe",
        "priority": "fast",
        "subject": subject,
        "consumer": durable,
        "declared": True,
        "pending": 2,
        "in_flight": 1,
        "redelivered": 0,
        "waiting_pulls": 0,
    }
    assert ghost["declared"] is False
    assert (ghost["pending"], ghost["in_flight"], ghost["redelivered"]) == (0, 0, 0)

    await held.ack_sync()
    for msg in await sub.fetch(2, timeout=5):
        await msg.ack_sync()
    await sub.unsubscribe()
    await js.delete_consumer(queue.TASKS_STREAM, durable)


async def test_workers_from_the_registry(client, admin_token, js):
    worker_id = f"gpu-{uuid.uuid4().hex[:6]}"
    card = {
        "worker_id": worker_id,
        "family": "sdxl",
        "model_preset": "tiny",
        "device": "cpu",
        "dtype": "float32",
        "ready": True,
        "current_job_id": "",
        "jobs_completed": 4,
        "jobs_failed": 1,
    }
    beat = registry.Heartbeat(js, "sdxl", worker_id, lambda: card, interval=0.2)
    await beat.beat()
    # A card whose worker stopped beating a while ago (not yet expired).
    kv = await registry.declare_bucket(js)
    silent = f"silent-{uuid.uuid4().hex[:6]}"
    old = {**card, "worker_id": silent, "family": "wan", "last_seen": time.time() - 20}
    await kv.put(registry.worker_key("wan", silent), json.dumps(old).encode())

    r = await _get(client, "/v1/admin/workers", admin_token[1])
    assert r.status_code == 200, r.text
    by_id = {w["worker_id"]: w for w in r.json()["workers"]}
    mine = by_id[worker_id]
    assert mine["family"] == "sdxl" and mine["model_preset"] == "tiny"
    assert (mine["device"], mine["dtype"], mine["ready"]) == ("cpu", "float32", True)
    assert (mine["jobs_completed"], mine["jobs_failed"]) == (4, 1)
    assert mine["current_job_id"] is None and mine["last_seen"].endswith("Z")
    assert mine["health"] == "healthy"
    assert by_id[silent]["health"] == "stale"

    await beat.stop()
    await kv.delete(registry.worker_key("wan", silent))
    r = await _get(client, "/v1/admin/workers", admin_token[1])
    assert worker_id not in {w["worker_id"] for w in r.json()["workers"]}


def test_health_verdicts():
    now = time.time()
    base = {"ready": True, "last_seen": now, "heartbeat_seconds": 5}
    assert admin_ops.verdict(base, now) == "healthy"
    assert admin_ops.verdict({**base, "ready": False}, now) == "starting"
    assert admin_ops.verdict({**base, "last_seen": now - 16}, now) == "stale"
    assert admin_ops.verdict({**base, "jobs_failed": 3, "jobs_completed": 1}, now) == "failing"


async def test_without_nats_the_routes_say_503(base_env, fakes, admin_token):
    settings = gateway_settings(base_env, fakes[0].port, nats_url="nats://127.0.0.1:1")
    async with serve_app(settings) as client:
        for path in ("/v1/admin/queues", "/v1/admin/workers"):
            r = await client.get(path, headers=auth(admin_token[1]))
            assert r.status_code == 503
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "NATS" in r.json()["detail"]
        # The rest of the gateway serves on.
        assert (await client.get("/healthz")).status_code == 200
