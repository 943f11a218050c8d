"""Declaring streams and buckets against the session's single NATS server: a
declaration changes only the settings this code owns and keeps the rest; the
replicas a service asks for never lower a stream's; a replica count the
server cannot place stops the start with an error naming QUEUE_REPLICAS; and
NATS_URL may list several servers.

A lone server refuses streams of more than one replica, so the rule that a
replicated stream is never shrunk is shown on a real cluster
(tests/jetstream/test_cluster.py)."""

from __future__ import annotations

import logging
import uuid

import pytest
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError

from ourvidz import queue, registry
from ourvidz.settings import CommonSettings
from ourvidz_dev.embedded import free_port
from tests.conftest import make_settings

FIELDS = ("subjects", "retention", "storage", "duplicate_window", "max_age")


@pytest.fixture
async def js(infra):
    nc, js = await queue.connect(infra.nats_url, name="declare-test")
    yield js
    await nc.close()


def config(name: str, replicas: int = 1, max_age: float = 60.0) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=[f"{name.lower()}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=30.0,
        max_age=max_age,
        num_replicas=replicas,
    )


async def test_a_new_stream_is_created_with_the_settings_replicas(js):
    name = f"DECL_{uuid.uuid4().hex[:8]}"
    info = await queue.ensure_stream(js, config(name), FIELDS)
    assert info.config.num_replicas == 1 and info.config.max_age == 60.0
    assert (await js.stream_info(name)).config.subjects == [f"{name.lower()}.>"]
    await js.delete_stream(name)


async def test_a_declaration_changes_only_its_own_settings(js, caplog):
    name = f"DECL_{uuid.uuid4().hex[:8]}"
    await queue.ensure_stream(js, config(name), FIELDS)
    # An operator limits the stream by hand (a setting this code does not own).
    current = (await js.stream_info(name)).config
    current.max_msgs_per_subject = 7
    current.description = "limited by hand"
    await js.update_stream(current)
    await js.publish(f"{name.lower()}.a", b"kept")

    # The same declaration again: nothing to change, nothing changed.
    with caplog.at_level(logging.WARNING, logger="ourvidz.queue"):
        info = await queue.ensure_stream(js, config(name), FIELDS)
    assert info.config.max_msgs_per_subject == 7 and info.config.description == "limited by hand"
    assert not [r for r in caplog.records if "QUEUE_REPLICAS" in r.getMessage()]

    # A new version's setting is applied; the operator's are kept, and so are the messages.
    info = await queue.ensure_stream(js, config(name, max_age=120.0), FIELDS)
    assert info.config.max_age == 120.0
    assert info.config.max_msgs_per_subject == 7 and info.config.description == "limited by hand"
    assert info.state.messages == 1
    await js.delete_stream(name)


async def test_more_replicas_than_the_server_can_place_stop_the_start_naming_the_setting(
    js, caplog
):
    name = f"DECL_{uuid.uuid4().hex[:8]}"
    # A new stream: refused.
    with caplog.at_level(logging.ERROR, logger="ourvidz.queue"), pytest.raises(APIError):
        await queue.ensure_stream(js, config(name, replicas=3), FIELDS)
    assert any("QUEUE_REPLICAS=3" in r.getMessage() for r in caplog.records)
    caplog.clear()
    # An existing one: refused, and left as it was.
    await queue.ensure_stream(js, config(name), FIELDS)
    with caplog.at_level(logging.ERROR, logger="ourvidz.queue"), pytest.raises(APIError):
        await queue.ensure_stream(js, config(name, replicas=3, max_age=99.0), FIELDS)
    assert any("QUEUE_REPLICAS" in r.getMessage() for r in caplog.records)
    info = await js.stream_info(name)
    assert info.config.num_replicas == 1 and info.config.max_age == 60.0
    await js.delete_stream(name)


async def test_the_mesh_streams_declared_twice_stay_as_they_are(js, caplog):
    # The session's TASKS and EVENTS (other services may have declared them already).
    await queue.declare_streams(js)
    before = {
        s: (await js.stream_info(s)).config for s in (queue.TASKS_STREAM, queue.EVENTS_STREAM)
    }
    with caplog.at_level(logging.WARNING, logger="ourvidz.queue"):
        await queue.declare_streams(js)
        await queue.declare_streams(js)
    after = {s: (await js.stream_info(s)).config for s in before}
    assert after == before
    assert not [r for r in caplog.records if "stream" in r.getMessage()]


async def test_an_existing_bucket_is_used_with_its_settings(js):
    bucket = f"workers-decl-{uuid.uuid4().hex[:8]}"
    await registry.declare_bucket(js, ttl_seconds=5.0, bucket=bucket)
    kv = await registry.declare_bucket(js, ttl_seconds=50.0, replicas=1, bucket=bucket)
    info = await js.stream_info(f"KV_{bucket}")
    assert info.config.max_age == 5.0 and info.config.num_replicas == 1
    await kv.put("sdxl.w", b"{}")
    await js.delete_key_value(bucket)


def test_queue_replicas_is_a_common_setting(base_env):
    assert make_settings(CommonSettings, base_env).queue_replicas == 1
    assert make_settings(CommonSettings, base_env, queue_replicas=3).queue_replicas == 3
    with pytest.raises(ValueError, match="queue_replicas"):
        make_settings(CommonSettings, base_env, queue_replicas=0)


def test_nats_url_may_list_several_servers():
    assert queue.nats_servers("nats://a:4222") == ["nats://a:4222"]
    assert queue.nats_servers(" nats://a:4222, nats://b:4222 ,nats://c:4222,") == [
        "nats://a:4222",
        "nats://b:4222",
        "nats://c:4222",
    ]
    with pytest.raises(ValueError, match="NATS_URL"):
        queue.nats_servers(" , ")


async def test_a_list_with_a_dead_server_connects_to_a_live_one(infra):
    dead = f"nats://127.0.0.1:{free_port()}"
    nc, js = await queue.connect(f"{dead},{infra.nats_url}", name="declare-list-test")
    try:
        assert nc.is_connected
        assert (await js.stream_info(queue.TASKS_STREAM)).config.name == queue.TASKS_STREAM
    finally:
        await nc.close()
