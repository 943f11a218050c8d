"""The queue's depth as metrics: every few seconds, JetStream's info on each
task consumer (one per worker family, and the enhancer's) sets the
`ourvidz_queue_*` gauges (ourvidz.metrics). Jobs holds queued jobs back until
a worker can take them, so these show the tasks handed to the workers, not the
backlog: that is `ourvidz_jobs_waiting`, set by the dispatcher.

Every Jobs replica polls the same consumers, so each reports the same shared
values: dashboards take the max() of the replicas, not their sum(). A consumer
that does not exist yet (no worker of its family ever started) has
`ourvidz_queue_consumer_declared` 0 and no depth series; while JetStream does
not answer, the depth series are withdrawn rather than left stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from ourvidz import catalog, metrics, queue
from ourvidz.background import Background

log = logging.getLogger(__name__)


def task_consumers() -> tuple[str, ...]:
    """The durable consumers of the TASKS stream: each worker family's (sdxl,
    wan), then the enhancer's."""
    names = sorted({queue.consumer_name(jt.worker) for jt in catalog.CATALOG.values()})
    return (*names, queue.ENHANCE_CONSUMER)


def _withdraw(consumer: str) -> None:
    for gauge in metrics.QUEUE_GAUGES:
        with contextlib.suppress(KeyError):
            gauge.remove(consumer)


class QueueMetrics(Background):
    task_name = "queue-metrics"

    def __init__(
        self,
        js: JetStreamContext,
        *,
        interval_seconds: float = 5.0,
        consumers: tuple[str, ...] | None = None,
    ) -> None:
        self._js = js
        self._interval = interval_seconds
        self.consumers = consumers or task_consumers()
        self._failing = False

    async def poll_once(self) -> None:
        """Read every consumer's info and set the gauges. Raises when JetStream
        does not answer (after withdrawing the series it could not read)."""
        for consumer in self.consumers:
            try:
                info = await self._js.consumer_info(queue.TASKS_STREAM, consumer, timeout=2)
            except NotFoundError:
                metrics.QUEUE_DECLARED.labels(consumer).set(0)
                _withdraw(consumer)
                continue
            except Exception:
                _withdraw(consumer)
                raise
            metrics.QUEUE_DECLARED.labels(consumer).set(1)
            metrics.QUEUE_PENDING.labels(consumer).set(info.num_pending or 0)
            metrics.QUEUE_ACK_PENDING.labels(consumer).set(info.num_ack_pending or 0)
            metrics.QUEUE_REDELIVERED.labels(consumer).set(info.num_redelivered or 0)
            metrics.QUEUE_WAITING_PULLS.labels(consumer).set(info.num_waiting or 0)

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
                self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: next round
                if not self._failing:
                    log.warning("queue metrics: JetStream did not answer (%s)", type(exc).__name__)
                self._failing = True
            await asyncio.sleep(self._interval)
