"""The reconciler: PostgreSQL is the truth, the queue and the blob store are
made to agree with it.

Every replica runs one; each pass claims its rows with `FOR UPDATE SKIP
LOCKED`, so replicas never act on the same job at once, and a worker's call
racing a pass is decided by the row lock.

- A `running` job whose worker gave no sign of life (StartJob, ReportProgress,
  Heartbeat) for `silent_seconds` goes back to `queued` with a WORKER_LOST
  message: the user sees that it waits for another attempt. Its task is
  redelivered by JetStream once its ack wait runs out.
- A dispatched `queued` job unchanged for `check_after_seconds` whose task is
  neither in the outbox nor on the TASKS stream (it was dropped, or the
  stream lost it) goes back in line, where the dispatcher publishes it again.
- Objects in the output buckets that no asset points at, whose job ended
  without them or does not exist, are deleted once older than
  `gc_grace_seconds` (a worker that died after uploading, a job cancelled or
  failed meanwhile).

After the database or the jobs service itself was away, no worker could
report; silence is only judged once the reconciler has seen the database for
`silent_seconds` in a row, so an outage does not hand back every job.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ourvidz import catalog
from ourvidz.background import Background
from ourvidz.storage import BlobStore
from services.jobs.service import JobsCore

log = logging.getLogger(__name__)

# Buckets whose objects belong to jobs (`<user_id>/<job_id>[_<index>].<ext>`).
OUTPUT_BUCKETS = (
    *sorted({jt.bucket for jt in catalog.CATALOG.values()}),
    catalog.THUMBNAIL_BUCKET,
)


@dataclass
class ReconcilerStats:
    handed_back: int = 0
    requeued: int = 0
    checked: int = 0
    blobs_collected: int = 0
    passes: int = 0
    failures: int = 0


def job_id_of_key(key: str) -> str | None:
    """The job an output key belongs to, or None for a key of another shape."""
    name = key.rsplit("/", 1)[-1]
    stem = name.split(".", 1)[0].split("_", 1)[0]
    try:
        return str(uuid.UUID(stem))
    except ValueError:
        return None


class Reconciler(Background):
    task_name = "reconciler"

    def __init__(
        self,
        core: JobsCore,
        blobs: BlobStore,
        present: Callable[[list[str]], Awaitable[set[str]]],
        *,
        silent_seconds: float,
        check_after_seconds: float,
        interval_seconds: float,
        gc_grace_seconds: float,
        gc_interval_seconds: float,
        batch: int = 200,
        on_requeued: Callable[[], None] | None = None,
        buckets: tuple[str, ...] = OUTPUT_BUCKETS,
    ) -> None:
        self._core = core
        self._blobs = blobs
        self._present = present
        self._silent = silent_seconds
        self._check_after = check_after_seconds
        self._interval = interval_seconds
        self._gc_grace = gc_grace_seconds
        self._gc_interval = gc_interval_seconds
        self._batch = batch
        self._on_requeued = on_requeued
        self._buckets = buckets
        self._seen_db_since: float | None = None
        self._next_gc = 0.0
        self.stats = ReconcilerStats()

    # --- one pass ------------------------------------------------------------------

    async def hand_back_silent(self) -> int:
        """Hand back running jobs whose worker went silent (see the module)."""
        now = time.monotonic()
        if self._seen_db_since is None:
            self._seen_db_since = now
        if now - self._seen_db_since < self._silent:
            return 0  # workers may not have been able to report until now
        total = 0
        while True:
            jobs = await self._core.hand_back_silent(self._silent, self._batch)
            total += len(jobs)
            if len(jobs) < self._batch:
                break
        self.stats.handed_back += total
        return total

    async def requeue_lost(self) -> int:
        """Publish again the tasks of queued jobs that are nowhere (see the module)."""
        total = 0
        while True:
            checked, lost = await self._core.requeue_lost(
                self._check_after, self._batch, self._present
            )
            self.stats.checked += checked
            total += len(lost)
            if lost and self._on_requeued is not None:
                self._on_requeued()
            if checked < self._batch:
                break
        self.stats.requeued += total
        return total

    async def collect_blobs(self, grace_seconds: float | None = None) -> int:
        """Delete objects of the output buckets that no asset will point at,
        older than the grace period. Returns how many were deleted."""
        grace = self._gc_grace if grace_seconds is None else grace_seconds
        before = datetime.now(UTC) - timedelta(seconds=grace)
        deleted = 0
        for bucket in self._buckets:
            listed = await self._blobs.list_older(bucket, before, 100_000)
            for start in range(0, len(listed), 500):
                chunk = listed[start : start + 500]
                candidates = [
                    (bucket, key, job_id)
                    for key, _ in chunk
                    if (job_id := job_id_of_key(key)) is not None
                ]
                if not candidates:
                    continue
                for orphan_bucket, key in await self._core.orphan_blobs(candidates):
                    await self._blobs.delete(orphan_bucket, key)
                    deleted += 1
                    log.info("orphan blob %s/%s deleted", orphan_bucket, key)
        self.stats.blobs_collected += deleted
        return deleted

    async def pass_once(self) -> None:
        await self.hand_back_silent()
        await self.requeue_lost()
        if time.monotonic() >= self._next_gc:
            await self.collect_blobs()
            self._next_gc = time.monotonic() + self._gc_interval

    async def _run(self) -> None:
        failing_since: float | None = None
        while True:
            try:
                await self.pass_once()
                if failing_since is not None:
                    log.info("reconciler: dependencies are back")
                failing_since = None
                self.stats.passes += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database, NATS or storage away: next pass
                self.stats.failures += 1
                self._seen_db_since = None
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning(
                        "reconciler pass failed (%s: %s); retrying", type(exc).__name__, exc
                    )
            await asyncio.sleep(self._interval)
