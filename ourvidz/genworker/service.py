"""Wiring shared by the generation workers: the model loaded in a thread, the
JetStream loop, the operators' gRPC server (`WorkerService` plus health and
reflection) and a graceful stop.

When the device fails (a sticky CUDA error) the loop ends by itself: health
turns NOT_SERVING at once, `Running.task` ends, and `runtime` stops the rest
(gRPC, NATS drained) and exits with `Running.exit_code` so that the
supervisor starts a fresh process.

A service's `main.start` calls `start_worker` with its settings, its family's
name, a blocking `load()` that returns the model bundle and a `make_family`
that turns the bundle getter into its `Family`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ourvidz import grpcserver, queue, registry, runtime
from ourvidz.auth import current_principal
from ourvidz.genworker.loop import Family, LoopConfig, Stats, Worker
from ourvidz.metrics import MetricsServer, start_metrics_server
from ourvidz.storage import store_from_settings
from ourvidz.v1 import job_service_pb2_grpc, worker_service_pb2, worker_service_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = ["ourvidz.v1.WorkerService"]


class Bundle(Protocol):
    """The loaded model, as operators see it."""

    preset: str
    device: str
    dtype: str


class WorkerServicer(worker_service_pb2_grpc.WorkerServiceServicer):
    """Who this worker is, what it runs, how it fares (admins and workers)."""

    def __init__(
        self,
        config: LoopConfig,
        configured_model: str,
        bundle: Callable[[], Bundle | None],
        stats: Callable[[], Stats],
    ) -> None:
        self._config = config
        self._model = configured_model
        self._bundle = bundle
        self._stats = stats

    async def GetWorkerInfo(self, request, context):
        current_principal().require("admin", "worker")
        bundle = self._bundle()
        stats = self._stats()
        return worker_service_pb2.GetWorkerInfoResponse(
            worker_id=self._config.worker_id,
            family=self._config.family,
            model_preset=bundle.preset if bundle else self._model,
            device=bundle.device if bundle else "",
            dtype=bundle.dtype if bundle else "",
            ready=bundle is not None,
            current_job_id=stats.current_job_id,
            jobs_completed=stats.jobs_completed,
            jobs_failed=stats.jobs_failed,
            waiting_on=stats.waiting_on,
        )


@dataclass
class Running:
    port: int
    worker: Worker
    served: grpcserver.Served
    config: LoopConfig
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _closers: list = field(default_factory=list)
    bundle: Any = None
    heartbeat: registry.Heartbeat | None = None
    metrics: MetricsServer | None = None
    # Ends when the worker cannot go on (its device failed); `exit_code` is then non-zero.
    task: asyncio.Task | None = None
    exit_code: int = 0

    async def wait_ready(self, wait_seconds: float | None = None):
        """Until the model is loaded (raises what loading raised)."""
        await asyncio.wait_for(asyncio.shield(self._tasks[0]), wait_seconds)
        assert self.bundle is not None
        return self.bundle

    async def stop(self) -> None:
        """Stop fetching, finish (or hand back) the job in hand, then close."""
        await grpcserver.set_serving(self.served, SERVICE_NAMES, serving=False)
        if self.heartbeat is not None:
            await self.heartbeat.stop()  # off the registry at once, not after its TTL
        self.worker.stop()
        grace = self.config.shutdown_grace_seconds
        loop_task = self._tasks[1] if len(self._tasks) > 1 else None
        if loop_task is not None and self._tasks[0].done():  # loaded: a job may be in hand
            done, _ = await asyncio.wait({loop_task}, timeout=grace)
            if not done:
                self.worker.abort_current()
                await asyncio.wait({loop_task}, timeout=grace)
        for task in [*self._tasks, *([self.task] if self.task else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.served.stop(grace=2.0)
        for close in self._closers:
            with contextlib.suppress(Exception):
                await close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)


async def start_worker(
    settings,
    family_name: str,
    *,
    load: Callable[[], Bundle],
    make_family: Callable[[Callable[[], Any]], Family],
    port: int | None = None,
) -> Running:
    """Connect, start the gRPC server (NOT_SERVING), load the model in a thread,
    then consume. Host, port and model come from `<family>_host`, `_port`,
    `_model`; `port=0` binds any free port (tests)."""
    config = LoopConfig.from_settings(family_name, settings)
    metrics_server = start_metrics_server(settings, gpu=True)
    nc, js = await queue.connect(settings.nats_url, name=f"{family_name}-{config.worker_id}")
    store = store_from_settings(settings)
    jobs_channel = grpcserver.channel(settings.jobs_addr, service=family_name)
    jobs = job_service_pb2_grpc.JobServiceStub(jobs_channel)

    holder: dict[str, Any] = {}
    worker = Worker(config, make_family(lambda: holder.get("bundle")), nc, js, store, jobs)
    await worker.declare()

    def register(server) -> None:
        servicer = WorkerServicer(
            config,
            getattr(settings, f"{family_name}_model"),
            lambda: holder.get("bundle"),
            lambda: worker.stats,
        )
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)

    served = grpcserver.build_server(
        verifier=settings.token_verifier(),
        register=register,
        service_names=SERVICE_NAMES,
        host=getattr(settings, f"{family_name}_host"),
        port=getattr(settings, f"{family_name}_port") if port is None else port,
        service=family_name,
    )
    await served.start()
    await grpcserver.set_serving(served, SERVICE_NAMES, serving=False)
    running = Running(
        port=served.port, worker=worker, served=served, config=config, metrics=metrics_server
    )
    model_setting = getattr(settings, f"{family_name}_model")

    def card() -> dict:
        """This worker as GET /v1/admin/workers shows it."""
        bundle = holder.get("bundle")
        stats = worker.stats
        return {
            "worker_id": config.worker_id,
            "family": family_name,
            "model_preset": bundle.preset if bundle else str(model_setting),
            "device": bundle.device if bundle else "",
            "dtype": bundle.dtype if bundle else "",
            "ready": bundle is not None,
            "current_job_id": stats.current_job_id,
            "jobs_completed": stats.jobs_completed,
            "jobs_failed": stats.jobs_failed,
            "waiting_on": stats.waiting_on,
            "grpc_port": served.port,
        }

    running.heartbeat = registry.Heartbeat(
        js, family_name, config.worker_id, card, replicas=config.queue_replicas
    )
    running.heartbeat.start()

    async def load_model() -> None:
        try:
            bundle = await runtime.load_in_thread(load)
        except Exception:
            log.exception("the model could not be loaded; health stays NOT_SERVING")
            raise
        holder["bundle"] = bundle
        running.bundle = bundle
        await grpcserver.set_serving(served, SERVICE_NAMES, serving=True)
        await running.heartbeat.beat()  # show "ready" now, not at the next beat
        log.info("ready", extra={"preset": bundle.preset, "device": bundle.device})

    load_task = asyncio.create_task(load_model())

    async def consume() -> None:
        await load_task
        code = await worker.run()
        if code:
            running.exit_code = code
            await grpcserver.set_serving(served, SERVICE_NAMES, serving=False)
            log.error("the worker cannot go on; stopping with status %d", code)

    consuming = asyncio.create_task(consume())

    async def until_unable() -> None:
        # Ends only when the loop ended on its own with a failure: a stop
        # cancels this task, and a failed load keeps the process up NOT_SERVING.
        with contextlib.suppress(Exception):
            await asyncio.shield(consuming)
        if not running.exit_code:
            await asyncio.Event().wait()

    running._tasks = [load_task, consuming]
    running.task = asyncio.create_task(until_unable())

    async def close_nats() -> None:
        await worker.unsubscribe()
        await nc.drain()

    running._closers = [close_nats, jobs_channel.close]
    return running
