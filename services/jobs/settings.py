"""Settings of the jobs service (env: JOBS_*), on top of the common ones."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr

from ourvidz.queue import QueueSettings
from ourvidz.settings import CommonSettings
from services.jobs.dispatch import DispatchSettings


class JobsSettings(CommonSettings):
    # This service's own database login (JOBS_DATABASE_URL); in dev/test
    # it may be derived from DATABASE_URL and DB_PASSWORD_JOBS instead.
    db_service: ClassVar[str | None] = "jobs"
    jobs_database_url: SecretStr = SecretStr("")
    db_password_jobs: SecretStr = SecretStr("")
    jobs_host: str = "127.0.0.1"
    jobs_port: int = 50051
    # Jobs in queued, enhancing or running state one user may hold at once.
    jobs_max_active_per_user: int = 10
    # Outbox rows the relay claims per transaction, and how often it polls when
    # no notification arrives.
    jobs_relay_batch: int = 100
    jobs_relay_poll_seconds: float = 1.0
    # How long WatchJob waits for a live event before it re-reads the database
    # (core NATS delivery is at most once).
    jobs_watch_poll_seconds: float = 5.0
    # Largest preview image a worker may attach to a progress report.
    jobs_max_preview_bytes: int = 512 * 1024
    # An enhanced job still `enhancing` after this long goes on with its
    # original prompt (a recorded fallback), so a stopped enhancer delays jobs
    # but never strands them. Checked every jobs_enhance_check_seconds.
    jobs_enhance_timeout_seconds: float = Field(60.0, gt=0)
    jobs_enhance_check_seconds: float = Field(2.0, gt=0)
    jobs_shutdown_grace_seconds: float = 10.0
    # Renders a job may start (a start that dies or fails counts; a dependency
    # that was away does not).
    jobs_max_attempts: int = Field(3, ge=1)
    # The reconciler (services/jobs/reconciler.py): a running job whose worker
    # was silent this long is handed back; a dispatched queued job unchanged
    # this long has its task looked for on the queue (and goes back in line
    # when it is gone).
    jobs_worker_silent_seconds: float = Field(15.0, gt=0)
    jobs_queued_check_seconds: float = Field(30.0, gt=0)
    jobs_reconcile_seconds: float = Field(2.0, gt=0)
    # Objects of the output buckets that belong to no asset are deleted once
    # older than the grace period; looked for every interval.
    jobs_gc_grace_seconds: float = Field(3600.0, ge=0)
    jobs_gc_interval_seconds: float = Field(600.0, gt=0)
    # How often the queue depth (JetStream consumer info) and the outbox
    # backlog are measured for the metrics.
    jobs_metrics_poll_seconds: float = Field(5.0, gt=0)
    # The dispatcher (services/jobs/dispatch.py): a queued job's task goes to
    # the queue when a worker of its family has room: one per idle worker and
    # JOBS_DISPATCH_PREFETCH per busy one. A user may have at most
    # JOBS_MAX_RUNNING_PER_USER jobs of a family on the queue or running (0: no
    # limit); a fast job type goes before a high one submitted less than
    # JOBS_FAST_HEAD_START_SECONDS earlier. Compatible SDXL jobs go out
    # together in one batch of at most SDXL_BATCH_MAX_IMAGES images (the
    # worker's setting too; 1: no batches).
    jobs_dispatch_prefetch: int = Field(1, ge=0)
    jobs_max_running_per_user: int = Field(4, ge=0)
    jobs_fast_head_start_seconds: float = Field(60.0, ge=0)
    jobs_dispatch_poll_seconds: float = Field(0.5, gt=0)

    def dispatch_settings(self) -> DispatchSettings:
        return DispatchSettings(
            prefetch=self.jobs_dispatch_prefetch,
            per_user=self.jobs_max_running_per_user,
            fast_head_start_seconds=self.jobs_fast_head_start_seconds,
            interval_seconds=self.jobs_dispatch_poll_seconds,
            batch_images=self.sdxl_batch_max_images,
        )

    def queue_settings(self) -> QueueSettings:
        return QueueSettings(replicas=self.queue_replicas)
