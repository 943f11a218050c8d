"""Runs the gateway: uvicorn serving create_app() until SIGTERM/SIGINT, then a
graceful stop (no new connections, in-flight requests finished within the
grace period, gRPC channels and the database pool closed by the lifespan)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

import uvicorn

from ourvidz import runtime
from ourvidz.metrics import MetricsServer, start_metrics_server
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: main() owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


@dataclass
class Running:
    port: int
    server: uvicorn.Server
    task: asyncio.Task
    app: object
    metrics: MetricsServer | None = None

    async def stop(self) -> None:
        gateway = getattr(self.app.state, "gateway", None)
        if gateway is not None:
            gateway.stopping.set()  # end open SSE streams first
        self.server.should_exit = True
        try:
            await self.task
        finally:
            if self.metrics is not None:
                await asyncio.to_thread(self.metrics.stop)


async def start(settings: GatewaySettings, *, port: int | None = None, **app_kwargs) -> Running:
    """Serve the gateway on settings.gateway_host and `port` (default
    settings.gateway_port; 0 = any free port). Returns once it accepts
    connections. `app_kwargs` go to create_app (database, backends, local_store).
    Its metrics are served on METRICS_HOST:METRICS_PORT, not on this port."""
    app = create_app(settings, **app_kwargs)
    metrics = start_metrics_server(settings)
    sock = socket.socket(socket.AF_INET6 if ":" in settings.gateway_host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.gateway_host, settings.gateway_port if port is None else port))
    sock.set_inheritable(True)
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.gateway_shutdown_grace_seconds),
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            sock.close()
            if metrics is not None:
                metrics.stop()
            task.result()  # raises what stopped it
            raise RuntimeError("the gateway stopped while starting")
        await asyncio.sleep(0.05)
    bound = sock.getsockname()[1]
    log.info("gateway listening on %s:%d", settings.gateway_host, bound)
    return Running(port=bound, server=server, task=task, app=app, metrics=metrics)


def main() -> None:
    runtime.run("gateway", GatewaySettings, start)
