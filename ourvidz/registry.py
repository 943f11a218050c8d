"""The live-worker registry: each generation worker and enhancer replica puts
a small JSON card about itself into a JetStream key-value bucket every few
seconds, under `<family>.<worker_id>`, and deletes it on a graceful stop. The
bucket's max age drops the card of a worker that died without saying so.

Operators read it (the gateway's GET /v1/admin/workers). A registry problem is
never a worker's problem: every KV error is logged as a warning and the
worker carries on.

The bucket (its stream `KV_<bucket>`) is created with QUEUE_REPLICAS
replicas; an existing one keeps its settings, but its replicas follow the
rule of the queue's streams: raised to the setting, never lowered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue

from ourvidz import queue

log = logging.getLogger(__name__)

WORKERS_BUCKET = "workers"
# How often a worker refreshes its card, and how long a card outlives its
# last refresh (the bucket's max age): a few missed beats, then it is gone.
HEARTBEAT_SECONDS = 5.0
TTL_SECONDS = 30.0
# How long a stop waits to delete the card: with NATS away the card expires
# by itself, and a stopping worker must not wait out JetStream's 5 s timeout.
DELETE_TIMEOUT_SECONDS = 1.0


def worker_key(family: str, worker_id: str) -> str:
    """`<family>.<worker_id>`, with characters a KV key cannot hold replaced."""
    return f"{_safe(family)}.{_safe(worker_id)}"


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_=-]", "_", part) or "_"


async def declare_bucket(
    js: JetStreamContext,
    ttl_seconds: float = TTL_SECONDS,
    replicas: int = 1,
    bucket: str = WORKERS_BUCKET,
) -> KeyValue:
    """The workers bucket (idempotent: an existing one is used with its
    settings, its replicas raised to `replicas` and never lowered)."""
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        config = KeyValueConfig(bucket=bucket, history=1, ttl=ttl_seconds, replicas=replicas)
        try:
            return await js.create_key_value(config)
        except Exception as exc:
            # Another replica created it first (with its own settings): use that one.
            try:
                kv = await js.key_value(bucket)
            except BucketNotFoundError:
                raise exc from None
    stream = f"KV_{bucket}"
    info = await js.stream_info(stream)
    await queue.reconcile_stream(js, info, StreamConfig(name=stream, num_replicas=replicas), ())
    return kv


async def list_cards(js: JetStreamContext, bucket: str = WORKERS_BUCKET) -> list[dict]:
    """Every card in the bucket (none when the bucket does not exist yet).

    The keys come from the bucket's stream (its subjects), not from a KV
    watcher: `KeyValue.keys()` may end before it has read what the server
    already sent when the client is slow, and leave live cards out."""
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        return []
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=prefix + ">")
    keys = [subject[len(prefix) :] for subject in (info.state.subjects or {})]
    cards = []
    for key in keys:
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            continue  # gone (expired or deleted) after its last write, or since the listing
        if not entry.value:
            continue
        try:
            card = json.loads(entry.value)
        except ValueError:
            log.warning("unreadable worker card %s", key)
            continue
        if isinstance(card, dict):
            cards.append(card)
    return cards


class Heartbeat:
    """Puts `card()` (a JSON-able dict; `last_seen` is added) under the worker's
    key every `interval` seconds until stopped; `stop()` deletes the key."""

    def __init__(
        self,
        js: JetStreamContext,
        family: str,
        worker_id: str,
        card: Callable[[], dict],
        interval: float = HEARTBEAT_SECONDS,
        ttl_seconds: float = TTL_SECONDS,
        bucket: str = WORKERS_BUCKET,
        replicas: int = 1,
    ) -> None:
        self.js = js
        self.replicas = replicas
        self.bucket = bucket
        self.key = worker_key(family, worker_id)
        self.card = card
        self.interval = interval
        self.ttl_seconds = ttl_seconds
        self._kv: KeyValue | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def beat(self) -> None:
        """One refresh (also the first declaration of the bucket)."""
        try:
            if self._kv is None:
                self._kv = await declare_bucket(
                    self.js, self.ttl_seconds, self.replicas, bucket=self.bucket
                )
            body = {**self.card(), "last_seen": time.time(), "heartbeat_seconds": self.interval}
            await self._kv.put(self.key, json.dumps(body).encode())
        except Exception as exc:
            log.warning("worker registry: could not refresh %s: %r", self.key, exc)

    async def _run(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._kv is None:
            return
        try:
            await asyncio.wait_for(self._kv.delete(self.key), DELETE_TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("worker registry: could not remove %s: %r", self.key, exc)
