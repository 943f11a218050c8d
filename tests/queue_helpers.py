"""Helpers for tests that stand between Jobs and a worker family's queue.

Jobs publishes a task only when a worker waits for one (its dispatcher): a
test that pauses a worker waits until that worker's last pull request has
expired (`nobody_waits`), and a test that wants a task Jobs would publish
waits for it in a pull request of its own (`take_tasks`)."""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext

from ourvidz import queue
from ourvidz.v1 import queue_pb2


async def nobody_waits(js: JetStreamContext, family: str, within: float = 60.0) -> None:
    """Until no pull request waits on the family's consumer."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        info = await js.consumer_info(queue.TASKS_STREAM, queue.consumer_name(family))
        if not info.num_waiting:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"a pull request still waits on {family}: {info}")
        await asyncio.sleep(0.05)


async def someone_waits(js: JetStreamContext, family: str, within: float = 60.0) -> None:
    """Until a pull request waits on the family's consumer."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        info = await js.consumer_info(queue.TASKS_STREAM, queue.consumer_name(family))
        if info.num_waiting:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no pull request waits on {family}: {info}")
        await asyncio.sleep(0.02)


async def take_tasks(
    js: JetStreamContext, family: str, job_ids: list[str], within: float = 60.0
) -> list[queue_pb2.GenerationTask]:
    """The tasks of `job_ids`, as Jobs publishes them to a waiting worker of
    `family`, taken off the queue (acked), in the order of `job_ids`. Tasks
    of other jobs met on the way are acked too. The family's consumer is
    declared as its workers declare it, where none did yet."""
    await queue.declare_task_consumer(js, queue.family_subject(family), queue.consumer_name(family))
    sub = await js.pull_subscribe_bind(
        durable=queue.consumer_name(family), stream=queue.TASKS_STREAM
    )
    deadline = asyncio.get_running_loop().time() + within
    found: dict[str, queue_pb2.GenerationTask] = {}
    try:
        while len(found) < len(job_ids):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"Jobs did not publish the tasks of {job_ids}")
            try:
                (msg,) = await sub.fetch(1, timeout=1)
            except TimeoutError:
                continue
            await msg.ack()
            for task in queue.decode_tasks(msg.data, msg.headers):
                if task.job_id in job_ids:
                    found[task.job_id] = task
    finally:
        await sub.unsubscribe()
    return [found[job_id] for job_id in job_ids]
