"""Small helpers shared by the jobs tests."""

from __future__ import annotations

import asyncio

import psycopg
from nats.js.errors import NotFoundError

from ourvidz import queue

MAX_ACTIVE = 3


def owner_query(owner_url: str, query: str, params=()) -> list[tuple]:
    """Run `query` as the database owner (no row level security)."""
    with psycopg.connect(owner_url) as conn:
        return conn.execute(query, params).fetchall()


async def pull_task(harness, subject: str, msg_id: str, wait: float = 15.0, *, ack: bool = True):
    """The message with `msg_id` from the family's durable pull consumer; on a
    family's queue `msg_id` is the job id (the dispatcher names each
    publication `<job id>:<random>`; the task's subject ends with the job id).
    Waiting in a pull request gives the dispatcher the room to publish it.
    Every other message taken is acked; the one found too unless `ack` is
    False (then it stays on the stream, delivered and held)."""
    parts = subject.split(".")
    wanted_subject = queue.job_task_subject(subject, msg_id) if len(parts) == 3 else None
    if len(parts) == 3:  # a family's queue: its consumer takes every priority's tasks
        durable, filter_subject = queue.consumer_name(parts[1]), queue.family_subject(parts[1])
    else:
        durable, filter_subject = queue.ENHANCE_CONSUMER, subject
    try:
        await harness.js.consumer_info(queue.TASKS_STREAM, durable)
    except NotFoundError:
        await queue.declare_task_consumer(harness.js, filter_subject, durable)
        harness.created_consumers.append(durable)  # removed again at teardown
    sub = await harness.js.pull_subscribe_bind(durable=durable, stream=queue.TASKS_STREAM)
    deadline = asyncio.get_running_loop().time() + wait
    try:
        while asyncio.get_running_loop().time() < deadline:
            try:
                # One task per request: no request is left open for the
                # dispatcher to fill once this returns.
                msgs = await sub.fetch(batch=1, timeout=1)
            except TimeoutError:
                continue
            found = None
            for msg in msgs:
                if wanted_subject is not None:
                    match = msg.subject == wanted_subject
                else:
                    match = bool(msg.headers) and msg.headers.get("Nats-Msg-Id") == msg_id
                if ack or not match:
                    await msg.ack()  # every task here belongs to these tests
                if match:
                    found = msg
            if found is not None:
                return found
        raise AssertionError(f"no task {msg_id} on {subject}")
    finally:
        await sub.unsubscribe()
