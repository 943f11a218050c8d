"""Wiring of the workspace service: database, storage, NATS, the filer, the
clean-up task and the gRPC server. The only module with side effects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from ourvidz import db, queue, runtime
from ourvidz.catalog import ALL_BUCKETS
from ourvidz.grpcserver import Served, build_server, set_serving
from ourvidz.metrics import MetricsServer, start_metrics_server
from ourvidz.storage import store_from_settings
from ourvidz.v1 import workspace_service_pb2_grpc as pb_grpc
from services.workspace.cleaner import Cleaner
from services.workspace.convert import Signer
from services.workspace.filer import Filer
from services.workspace.service import Workspace
from services.workspace.servicer import SERVICE_NAME, WorkspaceServicer
from services.workspace.settings import WorkspaceSettings
from services.workspace.watch import Watchers

log = logging.getLogger(__name__)


@dataclass
class Running:
    port: int
    service: Workspace
    served: Served
    database: db.Database
    nc: NATS
    filer: Filer
    cleaner: Cleaner
    watchers: Watchers
    grace_seconds: float = 10.0
    metrics: MetricsServer | None = None

    async def stop(self) -> None:
        """NOT_SERVING, end the watch streams, stop the background tasks, stop
        the server with a grace period, drain NATS, close the pool."""
        await set_serving(self.served, [SERVICE_NAME], serving=False)
        self.watchers.close_all()
        await self.filer.stop()
        await self.cleaner.stop()
        await self.served.stop(self.grace_seconds)
        with contextlib.suppress(Exception):
            await self.nc.drain()
        await self.database.close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)


async def start(settings: WorkspaceSettings, *, port: int | None = None) -> Running:
    """Start the service; `port` overrides settings.workspace_port (0: any free port)."""
    metrics_server = start_metrics_server(settings)
    database = db.Database(
        settings.service_database_url(),
        max_size=settings.db_pool_size,
        name="workspace",
        timeout=settings.db_pool_timeout_seconds,
    )
    await database.open()
    blobs = store_from_settings(settings)
    await blobs.ensure_buckets(ALL_BUCKETS)
    nc, js = await queue.connect(settings.nats_url, "workspace")
    await queue.declare_streams(js, queue.QueueSettings(replicas=settings.queue_replicas))
    await queue.declare_events_consumer(
        js,
        settings.workspace_events_durable,
        ack_wait_seconds=settings.workspace_filer_ack_wait_seconds,
    )

    service = Workspace(database, blobs, settings)
    signer = Signer(blobs, settings.signed_url_ttl_seconds)
    watchers = Watchers(nc)
    servicer = WorkspaceServicer(service, signer, watchers)
    served = build_server(
        verifier=settings.token_verifier(),
        register=lambda server: pb_grpc.add_WorkspaceServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        host=settings.workspace_host,
        port=settings.workspace_port if port is None else port,
    )
    await served.start()
    await set_serving(served, [SERVICE_NAME])

    filer = Filer(
        nc,
        js,
        service,
        signer,
        durable=settings.workspace_events_durable,
        batch=settings.workspace_filer_batch,
    )
    filer.start()
    cleaner = Cleaner(service, settings.workspace_cleanup_interval_seconds)
    cleaner.start()
    log.info("workspace service listening on %s:%d", settings.workspace_host, served.port)
    return Running(
        port=served.port,
        service=service,
        served=served,
        database=database,
        nc=nc,
        filer=filer,
        cleaner=cleaner,
        watchers=watchers,
        grace_seconds=settings.workspace_shutdown_grace_seconds,
        metrics=metrics_server,
    )


def main() -> None:
    runtime.run("workspace", WorkspaceSettings, start)
