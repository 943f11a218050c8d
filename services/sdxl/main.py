"""Wiring of the SDXL worker: settings, the model (loaded in a thread), the
JetStream loop and the operators' gRPC server; graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from ourvidz import grpcserver, queue, runtime
from ourvidz.storage import store_from_settings
from ourvidz.v1 import job_service_pb2_grpc, worker_service_pb2_grpc
from services.sdxl.models import PipeBundle
from services.sdxl.settings import SdxlSettings
from services.sdxl.worker import Worker

log = logging.getLogger(__name__)

SERVICE_NAMES = ["ourvidz.v1.WorkerService"]


@dataclass
class Running:
    port: int
    worker: Worker
    served: grpcserver.Served
    settings: SdxlSettings
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _closers: list = field(default_factory=list)
    bundle: PipeBundle | None = None

    async def wait_ready(self, wait_seconds: float | None = None) -> PipeBundle:
        """Until the model is loaded (raises what loading raised)."""
        await asyncio.wait_for(asyncio.shield(self._tasks[0]), wait_seconds)
        assert self.bundle is not None
        return self.bundle

    async def stop(self) -> None:
        """Stop fetching, finish (or hand back) the job in hand, then close."""
        await grpcserver.set_serving(self.served, SERVICE_NAMES, serving=False)
        self.worker.stop()
        loop_task = self._tasks[1] if len(self._tasks) > 1 else None
        if loop_task is not None:
            done, _ = await asyncio.wait(
                {loop_task}, timeout=self.settings.sdxl_shutdown_grace_seconds
            )
            if not done:
                self.worker.abort_current()
                await asyncio.wait({loop_task}, timeout=self.settings.sdxl_shutdown_grace_seconds)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.served.stop(grace=2.0)
        for close in self._closers:
            with contextlib.suppress(Exception):
                await close()


async def start(settings: SdxlSettings, *, port: int | None = None) -> Running:
    """Connect, start the gRPC server (NOT_SERVING), load the model in a thread,
    then consume. `port=0` binds any free port (tests)."""
    from services.sdxl import models

    nc, js = await queue.connect(settings.nats_url, name=f"sdxl-{settings.sdxl_worker_id}")
    store = store_from_settings(settings)
    jobs_channel = grpcserver.channel(settings.jobs_addr)
    jobs = job_service_pb2_grpc.JobServiceStub(jobs_channel)

    holder: dict[str, PipeBundle] = {}
    worker = Worker(settings, nc, js, store, jobs, lambda: holder.get("bundle"))
    await worker.declare()

    servicer_ref: dict = {}

    def register(server) -> None:
        from services.sdxl.servicer import WorkerServicer

        servicer_ref["s"] = WorkerServicer(
            settings, lambda: holder.get("bundle"), lambda: worker.stats
        )
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(servicer_ref["s"], server)

    served = grpcserver.build_server(
        secret=settings.auth_secret.get_secret_value(),
        register=register,
        service_names=SERVICE_NAMES,
        host=settings.sdxl_host,
        port=settings.sdxl_port if port is None else port,
    )
    await served.start()
    await grpcserver.set_serving(served, SERVICE_NAMES, serving=False)
    running = Running(port=served.port, worker=worker, served=served, settings=settings)

    async def load_then_consume() -> None:
        bundle = await asyncio.to_thread(
            models.load,
            settings.sdxl_model,
            device=settings.sdxl_device,
            dtype=settings.sdxl_dtype,
            compile=settings.sdxl_compile,
            config_dir=settings.sdxl_config_dir or None,
        )
        holder["bundle"] = bundle
        running.bundle = bundle
        await grpcserver.set_serving(served, SERVICE_NAMES, serving=True)
        log.info("ready", extra={"preset": bundle.preset, "device": bundle.device})

    load_task = asyncio.create_task(load_then_consume())

    async def consume() -> None:
        await load_task
        await worker.run()

    running._tasks = [load_task, asyncio.create_task(consume())]

    async def close_nats() -> None:
        await worker.unsubscribe()
        await nc.drain()

    running._closers = [close_nats, jobs_channel.close]
    return running


def main() -> None:
    runtime.run("sdxl", SdxlSettings, start)
