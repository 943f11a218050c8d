"""Wiring of the enhancer: database, NATS (template changes, the enhance
stage), the model (loaded in a thread; health SERVING only once it is), the
gRPC server; graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from ourvidz import db, grpcserver, queue, registry, runtime
from ourvidz.metrics import MetricsServer, start_metrics_server
from ourvidz.v1 import enhancer_service_pb2_grpc, job_service_pb2_grpc
from services.enhancer import models
from services.enhancer.service import EnhancerCore, TokenCounter
from services.enhancer.servicer import SERVICE_NAME, EnhancerServicer
from services.enhancer.settings import EnhancerSettings
from services.enhancer.stage import EnhanceStage
from services.enhancer.templates import ChangeNotifier, TemplateCache

log = logging.getLogger(__name__)

SERVICE_NAMES = [SERVICE_NAME]


@dataclass
class Running:
    """A started enhancer. `port` is the bound gRPC port."""

    port: int
    served: grpcserver.Served
    core: EnhancerCore
    stage: EnhanceStage
    settings: EnhancerSettings
    model: models.LoadedModel | None = None
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _closers: list = field(default_factory=list)
    _stopped: bool = False
    heartbeat: registry.Heartbeat | None = None
    metrics: MetricsServer | None = None

    async def wait_ready(self, wait_seconds: float | None = None) -> models.LoadedModel:
        """Until the model is loaded (raises what loading raised)."""
        await asyncio.wait_for(asyncio.shield(self._tasks[0]), wait_seconds)
        assert self.model is not None
        return self.model

    async def stop(self) -> None:
        """Health NOT_SERVING, stop taking enhance tasks and finish the one in
        hand, stop the server, then close NATS, the channel and the pool."""
        if self._stopped:
            return
        self._stopped = True
        await grpcserver.set_serving(self.served, SERVICE_NAMES, serving=False)
        if self.heartbeat is not None:
            await self.heartbeat.stop()  # off the registry at once, not after its TTL
        self.stage.stop()
        loop_task = self._tasks[1] if len(self._tasks) > 1 else None
        if loop_task is not None:
            await asyncio.wait({loop_task}, timeout=self.settings.enhancer_shutdown_grace_seconds)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.served.stop(grace=2.0)
        for close in self._closers:
            try:
                await asyncio.wait_for(close(), 10)
            except Exception as exc:
                log.warning("stopping: %r", exc)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)


async def start(settings: EnhancerSettings, *, port: int | None = None) -> Running:
    """Start the service. `port=0` binds any free port (tests)."""
    role_url = settings.service_database_url()
    metrics_server = start_metrics_server(settings, gpu=True)
    database = db.Database(
        role_url,
        max_size=settings.db_pool_size,
        name="enhancer",
        timeout=settings.db_pool_timeout_seconds,
    )
    await database.open()
    try:
        nc, js = await queue.connect(settings.nats_url, name=f"{settings.enhancer_worker_id}")
    except Exception:
        await database.close()
        raise

    holder: dict[str, models.LoadedModel] = {}
    cache = TemplateCache(database, settings.enhancer_template_cache_seconds)
    notifier = ChangeNotifier(nc, settings.enhancer_templates_subject, cache)
    counter = await runtime.load_in_thread(TokenCounter, settings.enhancer_clip_tokenizer)
    core = EnhancerCore(
        settings,
        database,
        lambda: holder.get("model"),
        cache,
        notifier,
        settings.prompt_policy(),
        counter,
    )
    jobs_channel = grpcserver.channel(settings.jobs_addr)
    stage = EnhanceStage(settings, js, core, job_service_pb2_grpc.JobServiceStub(jobs_channel))
    try:
        await notifier.subscribe()
        await stage.declare()
    except Exception:
        await nc.close()
        await database.close()
        raise

    served = grpcserver.build_server(
        verifier=settings.token_verifier(),
        register=lambda server: enhancer_service_pb2_grpc.add_EnhancerServiceServicer_to_server(
            EnhancerServicer(core), server
        ),
        service_names=SERVICE_NAMES,
        host=settings.enhancer_host,
        port=settings.enhancer_port if port is None else port,
    )
    await served.start()
    await grpcserver.set_serving(served, SERVICE_NAMES, serving=False)
    running = Running(
        port=served.port,
        served=served,
        core=core,
        stage=stage,
        settings=settings,
        metrics=metrics_server,
    )

    def card() -> dict:
        """This replica as GET /v1/admin/workers shows it."""
        model = holder.get("model")
        return {
            "worker_id": settings.enhancer_worker_id,
            "family": "enhancer",
            "model_preset": model.preset if model else str(settings.enhancer_model),
            "device": model.device if model else "",
            "dtype": model.dtype if model else "",
            "ready": model is not None,
            "current_job_id": stage.current_job_id,
            "jobs_completed": stage.handled - stage.failed,
            "jobs_failed": stage.failed,
            "grpc_port": served.port,
        }

    running.heartbeat = registry.Heartbeat(
        js, "enhancer", settings.enhancer_worker_id, card, replicas=settings.queue_replicas
    )
    running.heartbeat.start()

    async def load() -> None:
        try:
            model = await runtime.load_in_thread(
                models.load,
                settings.enhancer_model,
                device=settings.enhancer_device,
                dtype=settings.enhancer_dtype,
            )
        except Exception:
            log.exception("the model could not be loaded; health stays NOT_SERVING")
            raise
        holder["model"] = model
        running.model = model
        await grpcserver.set_serving(served, SERVICE_NAMES, serving=True)
        await running.heartbeat.beat()  # show "ready" now, not at the next beat
        log.info("ready", extra={"model": model.name, "device": model.device})

    load_task = asyncio.create_task(load())

    async def consume() -> None:
        await load_task
        await stage.run()

    running._tasks = [load_task, asyncio.create_task(consume())]

    async def close_nats() -> None:
        await stage.unsubscribe()
        await notifier.close()
        await nc.drain()

    running._closers = [close_nats, jobs_channel.close, database.close]
    log.info("enhancer listening on %s:%d", settings.enhancer_host, served.port)
    return running


def main() -> None:
    runtime.run("enhancer", EnhancerSettings, start)
