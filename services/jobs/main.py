"""Wiring of the jobs service: database, NATS, streams, the outbox relay and
the gRPC server. The only module with side effects at start and stop."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from ourvidz import db, queue, runtime
from ourvidz.grpcserver import Served, build_server, set_serving
from ourvidz.metrics import MetricsServer, start_metrics_server
from ourvidz.storage import store_from_settings
from ourvidz.v1 import job_service_pb2_grpc
from services.jobs.dispatch import Dispatcher
from services.jobs.queue_metrics import QueueMetrics
from services.jobs.reconciler import Reconciler
from services.jobs.relay import OutboxRelay
from services.jobs.service import JobsCore
from services.jobs.servicer import SERVICE_NAME, JobServicer
from services.jobs.settings import JobsSettings
from services.jobs.sweeper import EnhancementSweeper
from services.jobs.uploads import UploadResolver, WorkspaceUploads
from services.jobs.watch import Watcher

log = logging.getLogger(__name__)


@dataclass
class Running:
    """A started jobs service. `port` is the bound gRPC port."""

    port: int
    served: Served
    database: db.Database
    nc: NATS
    relay: OutboxRelay
    uploads: UploadResolver
    core: JobsCore
    sweeper: EnhancementSweeper
    reconciler: Reconciler
    queue_metrics: QueueMetrics
    dispatcher: Dispatcher
    metrics: MetricsServer | None = None
    grace: float = 10.0
    _stopped: bool = field(default=False, repr=False)

    async def stop(self) -> None:
        """Health NOT_SERVING, stop the server with a grace period, stop the
        enhancement sweeper and the relay, drain NATS, close the pool. Runs in
        a task of its own, each step bounded, so a caller's cancellation or a
        stuck step cannot leave the rest undone."""
        if self._stopped:
            return
        self._stopped = True
        await asyncio.ensure_future(self._shutdown())

    async def _shutdown(self) -> None:
        steps = (
            ("grpc server", lambda: self.served.stop(self.grace), self.grace + 5),
            ("enhancement sweeper", self.sweeper.stop, 10),
            ("reconciler", self.reconciler.stop, 10),
            ("dispatcher", self.dispatcher.stop, 10),
            ("outbox relay", self.relay.stop, 10),
            ("queue metrics", self.queue_metrics.stop, 5),
            ("upload client", self.uploads.close, 5),
            ("nats", self.nc.drain, 10),
            ("database pool", self.database.close, 10),
        )
        for name, step, limit in steps:
            try:
                await asyncio.wait_for(step(), limit)
            except Exception as exc:
                log.warning("stopping the %s: %r", name, exc)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)


async def start(
    settings: JobsSettings, *, port: int | None = None, uploads: UploadResolver | None = None
) -> Running:
    """Start the service. `port=0` binds any free port (tests); `uploads`
    replaces the workspace client that resolves reference images."""
    policy = settings.prompt_policy()  # a missing deny-list file stops the start here
    metrics_server = start_metrics_server(settings)
    role_url = settings.service_database_url()
    database = db.Database(
        role_url,
        max_size=settings.db_pool_size,
        name="jobs",
        timeout=settings.db_pool_timeout_seconds,
    )
    await database.open()
    try:
        nc, js = await queue.connect(settings.nats_url, name="jobs")
    except Exception:
        await database.close()
        raise
    try:
        await queue.declare_streams(js, settings.queue_settings())
    except Exception:
        await nc.close()
        await database.close()
        raise

    blobs = store_from_settings(settings)
    uploads = uploads or WorkspaceUploads(settings.workspace_addr, settings.grpc_deadline_seconds)
    limits = settings.limits()
    dispatcher = Dispatcher(database, js, settings.dispatch_settings())
    core = JobsCore(
        database,
        limits=limits,
        blobs=blobs,
        uploads=uploads,
        max_active_per_user=settings.jobs_max_active_per_user,
        max_preview_bytes=settings.jobs_max_preview_bytes,
        policy=policy,
        max_attempts=settings.jobs_max_attempts,
        silent_seconds=settings.jobs_worker_silent_seconds,
        dispatcher=dispatcher,
    )
    watcher = Watcher(database, nc, blobs, settings.jobs_watch_poll_seconds)
    relay = OutboxRelay(
        database,
        js,
        listen_url=role_url,
        batch=settings.jobs_relay_batch,
        poll_seconds=settings.jobs_relay_poll_seconds,
        backlog_seconds=settings.jobs_metrics_poll_seconds,
    )
    relay.start()
    # A dispatched task goes out at once, not at the relay's next notification.
    dispatcher.on_dispatched = relay.wake
    dispatcher.publisher = relay.publish_committed
    dispatcher.on_early = relay.hold
    dispatcher.on_started = relay.release
    dispatcher.start()
    queue_metrics = QueueMetrics(js, interval_seconds=settings.jobs_metrics_poll_seconds)
    queue_metrics.start()
    sweeper = EnhancementSweeper(
        core,
        timeout_seconds=settings.jobs_enhance_timeout_seconds,
        check_seconds=settings.jobs_enhance_check_seconds,
        on_expired=dispatcher.wake,
    )
    sweeper.start()
    reconciler = Reconciler(
        core,
        blobs,
        lambda subjects: queue.task_held(js, subjects),
        silent_seconds=settings.jobs_worker_silent_seconds,
        check_after_seconds=settings.jobs_queued_check_seconds,
        interval_seconds=settings.jobs_reconcile_seconds,
        gc_grace_seconds=settings.jobs_gc_grace_seconds,
        gc_interval_seconds=settings.jobs_gc_interval_seconds,
        on_requeued=dispatcher.wake,
    )
    reconciler.start()

    servicer = JobServicer(core, watcher, limits)
    served = build_server(
        verifier=settings.token_verifier(),
        register=lambda server: job_service_pb2_grpc.add_JobServiceServicer_to_server(
            servicer, server
        ),
        service_names=[SERVICE_NAME],
        host=settings.jobs_host,
        port=settings.jobs_port if port is None else port,
        service="jobs",
    )
    await served.start()
    await set_serving(served, [SERVICE_NAME])
    log.info("jobs service listening on %s:%d", settings.jobs_host, served.port)
    return Running(
        port=served.port,
        served=served,
        database=database,
        nc=nc,
        relay=relay,
        uploads=uploads,
        core=core,
        sweeper=sweeper,
        reconciler=reconciler,
        queue_metrics=queue_metrics,
        dispatcher=dispatcher,
        metrics=metrics_server,
        grace=settings.jobs_shutdown_grace_seconds,
    )


def main() -> None:
    runtime.run("jobs", JobsSettings, start)
