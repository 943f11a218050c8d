"""The queue gauges Jobs polls: one durable consumer per worker family (its
name), which takes the family's tasks of every priority, and the enhancer's."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from ourvidz import queue
from services.jobs.queue_metrics import QueueMetrics, task_consumers


def gauge(name: str, consumer: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"consumer": consumer})


def test_one_consumer_per_worker_family_then_the_enhancers():
    assert task_consumers() == ("sdxl", "wan", queue.ENHANCE_CONSUMER)
    assert queue.family_subject("sdxl") == "tasks.sdxl.>"


async def test_a_familys_consumer_counts_the_tasks_of_every_priority(infra):
    family = f"probe{uuid.uuid4().hex[:8]}"
    consumer, ghost = queue.consumer_name(family), f"ghost{uuid.uuid4().hex[:8]}"
    nc, js = await queue.connect(infra.nats_url, name="queue-metrics-test")
    try:
        await queue.declare_streams(js)
        await queue.declare_task_consumer(js, queue.family_subject(family), consumer)
        for quality in ("fast", "high"):
            subject = queue.task_subject(family, quality)
            await js.publish(queue.job_task_subject(subject, f"job-{quality}"), b"task")

        polled = QueueMetrics(js, consumers=(consumer, ghost))
        await polled.poll_once()
        assert gauge("ourvidz_queue_consumer_declared", consumer) == 1
        assert gauge("ourvidz_queue_pending_tasks", consumer) == 2
        assert gauge("ourvidz_queue_ack_pending_tasks", consumer) == 0
        # A family no worker has started: declared 0, and no depth series.
        assert gauge("ourvidz_queue_consumer_declared", ghost) == 0
        assert gauge("ourvidz_queue_pending_tasks", ghost) is None

        # Both tasks come from the one consumer; one held shows as in flight.
        sub = await js.pull_subscribe_bind(durable=consumer, stream=queue.TASKS_STREAM)
        first, second = await sub.fetch(2, timeout=5)
        assert {first.subject, second.subject} == {
            f"tasks.{family}.fast.job-fast",
            f"tasks.{family}.high.job-high",
        }
        await first.ack_sync()
        await polled.poll_once()
        assert gauge("ourvidz_queue_pending_tasks", consumer) == 0
        assert gauge("ourvidz_queue_ack_pending_tasks", consumer) == 1
        await second.ack_sync()
        await sub.unsubscribe()
    finally:
        await js.purge_stream(queue.TASKS_STREAM, subject=queue.family_subject(family))
        await js.delete_consumer(queue.TASKS_STREAM, consumer)
        await nc.close()
