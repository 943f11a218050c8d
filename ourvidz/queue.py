"""NATS JetStream topology, declared in code and applied idempotently at start.

- TASKS: a work-queue stream (file storage) on `tasks.>`; generation tasks on
  `tasks.<family>.<priority>.<job id>` (`tasks.sdxl.fast.<id>`,
  `tasks.wan.high.<id>`), enhance tasks on `tasks.enhance`. One durable pull
  consumer per worker family, named by it (`sdxl` on `tasks.sdxl.>`, both
  priorities), shared by every replica of that worker: Jobs publishes a task
  only when a worker can take it, so the order (fast before high, fair across
  users) is Jobs', and the backlog is its `ourvidz_jobs_waiting`, not the
  consumers' lag. The job id in the subject lets Jobs' reconciler ask
  JetStream whether a job's task is still held (`task_held`). Publishes carry
  `Nats-Msg-Id` = job id, so a retried publish is stored once within the
  duplicate window. Consumers redeliver without limit: Jobs counts attempts
  (renders that started), so a dependency that is away never uses them up.
  A batch of compatible SDXL jobs (`GenerationBatch`) is one message on the
  first task's subject with the header `Ourvidz-Task: batch`
  (`batch_headers`, `is_batch`); a single task has no such header.
- EVENTS: a limits stream on `events.>` with short retention; job events on
  `events.jobs.<user_id>.<job_id>` fan out to watchers (plain subscriptions) and
  to Workspace's durable consumer.

Replicas: every service that declares a stream, a consumer or a key-value
bucket reads QUEUE_REPLICAS (3 on a 3-node cluster). A stream is created with
it; an existing one is brought to this version's configuration, but its
replicas are never lowered (a service started without the setting must not
shrink a replicated stream), and a service whose value differs from the
stream's says so in a warning. Consumers are declared without replicas of
their own (0: they follow their stream's, also when it is scaled up).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import APIError, NotFoundError

from ourvidz import catalog
from ourvidz.v1 import queue_pb2

log = logging.getLogger(__name__)

TASKS_STREAM = "TASKS"
EVENTS_STREAM = "EVENTS"
ENHANCE_SUBJECT = "tasks.enhance"
# The enhancer's durable consumer of ENHANCE_SUBJECT (the default of ENHANCER_CONSUMER).
ENHANCE_CONSUMER = "enhancer"
WORKSPACE_CONSUMER = "workspace-filer"
# The header that marks a message of several tasks, and its value for a
# `GenerationBatch`; a message without it holds one `GenerationTask`.
TASK_KIND_HEADER = "Ourvidz-Task"
BATCH_KIND = "batch"
# The setting every service reads for the replicas of what it declares.
REPLICAS_SETTING = "QUEUE_REPLICAS"
# JetStream's answer to adding a stream that exists with another configuration.
_STREAM_NAME_IN_USE = 10058


@dataclass(frozen=True)
class QueueSettings:
    # A worker that holds a task beats `in_progress` every third of this, so
    # a dead worker's task goes to another replica after at most this long.
    ack_wait_seconds: float = 15.0
    # -1: no limit (attempts are counted by Jobs, not by deliveries).
    max_deliver: int = -1
    # Redelivery delays after a missed ack (JetStream `backoff`), seconds;
    # only the ones at least as long as the ack wait are used.
    backoff_seconds: tuple[float, ...] = ()
    events_max_age_seconds: float = 24 * 3600
    duplicate_window_seconds: float = 3600
    # Replicas of the streams and buckets this service creates (QUEUE_REPLICAS).
    replicas: int = 1


def task_subject(worker: str, quality: str) -> str:
    return f"tasks.{worker}.{quality}"


def job_task_subject(queue_subject: str, job_id: str) -> str:
    """One job's task on its family's queue: `tasks.sdxl.fast` -> `tasks.sdxl.fast.<id>`."""
    return f"{queue_subject}.{job_id}"


def batch_message(
    tasks: list[queue_pb2.GenerationTask], headers: dict[str, str] | None = None
) -> tuple[str, bytes, dict[str, str]]:
    """A batch's message: its subject (the first task's, on the family and
    quality of its job type), payload and headers (`headers`, e.g.
    `Nats-Msg-Id` and the trace context, plus the batch's kind)."""
    if not tasks:
        raise ValueError("a batch holds at least one task")
    first = tasks[0]
    subject = job_task_subject(catalog.CATALOG[first.job_type].subject, first.job_id)
    payload = queue_pb2.GenerationBatch(tasks=tasks).SerializeToString()
    return subject, payload, {**(headers or {}), TASK_KIND_HEADER: BATCH_KIND}


def is_batch(headers: dict[str, str] | None) -> bool:
    """Whether a task message holds a `GenerationBatch` (else one `GenerationTask`)."""
    return (headers or {}).get(TASK_KIND_HEADER) == BATCH_KIND


def decode_tasks(data: bytes, headers: dict[str, str] | None) -> list[queue_pb2.GenerationTask]:
    """The tasks of a task message: a batch's, or the single one. Raises
    `DecodeError` for a payload that is not one."""
    if is_batch(headers):
        return list(queue_pb2.GenerationBatch.FromString(data).tasks)
    return [queue_pb2.GenerationTask.FromString(data)]


def family_subject(family: str) -> str:
    """Every task of a worker family, whatever its priority: `tasks.sdxl.>`."""
    return f"tasks.{family}.>"


def consumer_name(family: str) -> str:
    """The durable consumer of a worker family's tasks (on `family_subject`):
    the family's name, `sdxl`."""
    return family


def event_subject(user_id: str, job_id: str) -> str:
    return f"events.jobs.{user_id}.{job_id}"


def nats_servers(url: str) -> list[str]:
    """The servers of NATS_URL, which may list several, comma separated
    (`nats://a:4222,nats://b:4222`): the client connects to one and moves to
    another when it is lost."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("NATS_URL names no server")
    return servers


async def connect(url: str, name: str) -> tuple[NATS, JetStreamContext]:
    """A connection that reconnects for ever, and says so in one line per
    event (the client's default logs a traceback for every refused retry).
    `url` may list several servers, comma separated."""
    state = {"down": False}

    async def on_error(exc: Exception) -> None:
        # A refused reconnect comes here every half second: one line for the
        # whole outage. (A disconnect alone says nothing: our own close or
        # drain also calls it, and a reconnect that succeeds needs no line.)
        if isinstance(exc, OSError | nats.errors.UnexpectedEOF | nats.errors.StaleConnectionError):
            if not state["down"]:
                state["down"] = True
                log.warning("nats: connection lost (%s); reconnecting", type(exc).__name__)
            return
        log.warning("nats: %s: %s", type(exc).__name__, exc)

    async def on_reconnected() -> None:
        if state["down"]:
            log.info("nats: reconnected")
        state["down"] = False

    nc = await nats.connect(
        nats_servers(url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=on_error,
        reconnected_cb=on_reconnected,
    )
    return nc, nc.jetstream()


def _same(current, wanted) -> bool:
    if isinstance(wanted, list):
        return sorted(current or []) == sorted(wanted)
    if isinstance(wanted, float) and current is not None:
        return abs(float(current) - wanted) < 1e-3
    return current == wanted


async def ensure_stream(
    js: JetStreamContext, config: StreamConfig, fields: tuple[str, ...]
) -> StreamInfo:
    """Create the stream `config` describes, or bring the existing one to it:
    only `fields` (the settings this code owns) and the replicas are compared
    and changed, the rest of the stream's configuration is kept, and its
    replicas are never lowered. A difference between `config.num_replicas` (QUEUE_REPLICAS) and
    the stream's replicas is logged as a warning naming the setting."""
    wanted = config.num_replicas or 1
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            return await js.add_stream(config)
        except APIError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                log.error(
                    "stream %s could not be created with %s=%d: %s",
                    config.name, REPLICAS_SETTING, wanted, exc.description,
                )  # fmt: skip
                raise
        # Another service created it meanwhile, maybe with other settings.
        info = await js.stream_info(config.name)
    return await reconcile_stream(js, info, config, fields)


async def reconcile_stream(
    js: JetStreamContext, info: StreamInfo, config: StreamConfig, fields: tuple[str, ...]
) -> StreamInfo:
    """Bring the existing stream `info` to `config` (see `ensure_stream`)."""
    current = info.config
    wanted = config.num_replicas or 1
    have = current.num_replicas or 1
    changes = {
        f: getattr(config, f) for f in fields if not _same(getattr(current, f), getattr(config, f))
    }
    if wanted > have:
        changes["num_replicas"] = wanted
        log.warning(
            "stream %s has %d replica(s), %s is %d here: raising it to %d",
            current.name, have, REPLICAS_SETTING, wanted, wanted,
        )  # fmt: skip
    elif wanted < have:
        log.warning(
            "stream %s has %d replicas, %s is %d here: kept at %d (replicas are never "
            "lowered; set %s=%d on every service)",
            current.name, have, REPLICAS_SETTING, wanted, have, REPLICAS_SETTING, have,
        )  # fmt: skip
    if not changes:
        return info
    try:
        return await js.update_stream(dataclasses.replace(current, **changes))
    except APIError as exc:
        what = ", ".join(f"{k}={v}" for k, v in changes.items())
        if "num_replicas" in changes:
            what += f" from {REPLICAS_SETTING}"
        log.error("stream %s could not be updated (%s): %s", current.name, what, exc.description)
        raise


_TASKS_FIELDS = ("subjects", "retention", "storage", "duplicate_window")
_EVENTS_FIELDS = (*_TASKS_FIELDS, "max_age")


async def declare_streams(js: JetStreamContext, qs: QueueSettings = QueueSettings()) -> None:
    """TASKS and EVENTS, created or brought to this configuration (see
    `ensure_stream`: their replicas are never lowered)."""
    await ensure_stream(
        js,
        StreamConfig(
            name=TASKS_STREAM,
            subjects=["tasks.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=qs.duplicate_window_seconds,
            num_replicas=qs.replicas,
        ),
        _TASKS_FIELDS,
    )
    await ensure_stream(
        js,
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=["events.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=qs.events_max_age_seconds,
            duplicate_window=min(qs.duplicate_window_seconds, qs.events_max_age_seconds),
            num_replicas=qs.replicas,
        ),
        _EVENTS_FIELDS,
    )


async def declare_task_consumer(
    js: JetStreamContext, subject: str, durable: str, qs: QueueSettings = QueueSettings()
) -> None:
    """A durable pull consumer on the work-queue stream (explicit ack, bounded
    ack wait and redeliveries). No replicas of its own: it has the stream's."""
    backoff = [b for b in qs.backoff_seconds if b >= qs.ack_wait_seconds] or None
    if backoff and 0 < qs.max_deliver < len(backoff):
        backoff = None
    config = ConsumerConfig(
        durable_name=durable,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=qs.ack_wait_seconds,
        max_deliver=qs.max_deliver,
        max_ack_pending=1000,
        backoff=backoff,
        deliver_policy=DeliverPolicy.ALL,
    )
    # JetStream updates a durable declared earlier with other (editable)
    # settings: ack wait, redeliveries and the filter follow this version.
    await js.add_consumer(TASKS_STREAM, config)


async def declare_events_consumer(
    js: JetStreamContext,
    durable: str = WORKSPACE_CONSUMER,
    subject: str = "events.jobs.>",
    ack_wait_seconds: float = 30.0,
) -> None:
    await js.add_consumer(
        EVENTS_STREAM,
        ConsumerConfig(
            durable_name=durable,
            filter_subject=subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_seconds,
            # No limit: a consumer retries while its database is away (an
            # outage must not drop a completion); events expire with the stream.
            max_deliver=-1,
            deliver_policy=DeliverPolicy.ALL,
        ),
    )


async def task_held(js: JetStreamContext, subjects: list[str]) -> set[str]:
    """Which of these task subjects hold a message on the TASKS stream (waiting,
    delivered and not yet acked, or waiting for a redelivery). Raises when
    JetStream cannot answer."""
    held = set()
    for subject in subjects:
        try:
            await js.get_last_msg(TASKS_STREAM, subject)
        except NotFoundError:
            continue
        held.add(subject)
    return held


# --- consuming tasks -------------------------------------------------------------------


async def _keep_in_progress(msg, ack_wait_seconds: float) -> None:
    interval = max(ack_wait_seconds / 3, 0.1)
    while True:
        await asyncio.sleep(interval)
        try:
            await msg.in_progress()
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc)


@contextlib.asynccontextmanager
async def heartbeat(msg, ack_wait_seconds: float) -> AsyncIterator[None]:
    """While inside, `in_progress` every ack_wait/3 keeps `msg` ours, so a
    task longer than the ack wait is not redelivered while its worker lives."""
    task = asyncio.create_task(_keep_in_progress(msg, ack_wait_seconds))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def retry_delay(delays: tuple[float, ...], delivery: int) -> float:
    """The nak delay after delivery number `delivery` failed: by attempt, the
    last delay repeated (none given: at once)."""
    delays = delays or (0.0,)
    return delays[min(delivery - 1, len(delays) - 1)]
