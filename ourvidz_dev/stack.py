"""The whole mesh in one process — jobs, workspace, the gateway on a real port,
the generation workers and the enhancer — for the end-to-end tests and
`make bench` (`running_stack`); or as one process per service
(`ServiceProcesses`), for the benchmarks that measure each service's memory
and CPU, or start a worker late.

`make up` runs the same services as separate supervised processes; the
in-process stack is its twin where the diffusers import and the model load
are paid once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def settings_from(cls, env: Mapping[str, str]):
    """Build a settings object from `env` without leaving it in os.environ."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return cls()
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class Stack:
    url: str
    env: dict
    jobs: object
    workspace: object
    gateway: object
    sdxl: object | None = None
    wan: object | None = None
    enhancer: object | None = None


# Model services: (module, settings class) by name.
_MODEL_SERVICES = {
    "sdxl": ("services.sdxl", "SdxlSettings"),
    "wan": ("services.wan", "WanSettings"),
    "enhancer": ("services.enhancer", "EnhancerSettings"),
}


def _own_env(name: str, env: Mapping[str, str], metrics: bool) -> dict[str, str]:
    """Service `name`'s environment: its own database login, and with `metrics`
    a free METRICS_PORT of its own."""
    from ourvidz.db import own_database_env

    out = own_database_env(name, env)
    if metrics:
        from ourvidz_dev.embedded import free_port

        out["METRICS_PORT"] = str(free_port())
    return out


async def _start_model_service(name: str, env: Mapping[str, str], metrics: bool = False):
    import importlib

    package, settings_cls = _MODEL_SERVICES[name]
    main = importlib.import_module(f"{package}.main")
    settings = importlib.import_module(f"{package}.settings")
    own_env = _own_env(name, env, metrics)
    return await main.start(settings_from(getattr(settings, settings_cls), own_env), port=0)


@contextlib.asynccontextmanager
async def running_stack(
    env: Mapping[str, str],
    *,
    workers: tuple[str, ...] = ("sdxl",),
    enhancer: bool = False,
    metrics: bool = False,
) -> AsyncIterator[Stack]:
    """Jobs, workspace and the gateway, plus the named generation workers
    ("sdxl", "wan") and optionally the enhancer, each on a free port. With
    `metrics`, each also serves /metrics on a free port of its own (its
    Running's `metrics.port`); they share this process's registry."""
    from ourvidz import logs
    from services.gateway.main import start as start_gateway
    from services.gateway.settings import GatewaySettings
    from services.jobs.main import start as start_jobs
    from services.jobs.settings import JobsSettings
    from services.workspace.main import start as start_workspace
    from services.workspace.settings import WorkspaceSettings

    logs.quiet_library_errors()  # as the services' processes do (logs.setup)
    env = dict(env)
    # The local store signs download URLs against PUBLIC_BASE_URL, so the
    # gateway's port is chosen before the workspace service starts: a browser
    # must be able to load what those URLs point at.
    gateway_port = 0
    if not env.get("PUBLIC_BASE_URL"):
        from ourvidz_dev.embedded import free_port

        gateway_port = free_port()
        env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{gateway_port}"
    started: list = []
    parts: dict[str, object] = {}
    try:
        workspace = await start_workspace(
            settings_from(WorkspaceSettings, _own_env("workspace", env, metrics)), port=0
        )
        started.append(workspace)
        env["WORKSPACE_ADDR"] = f"127.0.0.1:{workspace.port}"
        jobs = await start_jobs(settings_from(JobsSettings, _own_env("jobs", env, metrics)), port=0)
        started.append(jobs)
        env["JOBS_ADDR"] = f"127.0.0.1:{jobs.port}"
        if enhancer:
            parts["enhancer"] = await _start_model_service("enhancer", env, metrics)
            started.append(parts["enhancer"])
            env["ENHANCER_ADDR"] = f"127.0.0.1:{parts['enhancer'].port}"
        gateway = await start_gateway(
            settings_from(GatewaySettings, _own_env("gateway", env, metrics)), port=gateway_port
        )
        started.append(gateway)
        url = f"http://127.0.0.1:{gateway.port}"
        for name in workers:
            parts[name] = await _start_model_service(name, env, metrics)
            started.append(parts[name])
        for part in parts.values():
            await part.wait_ready()
        yield Stack(url=url, env=env, jobs=jobs, workspace=workspace, gateway=gateway, **parts)
    finally:
        for part in reversed(started):
            with contextlib.suppress(Exception):
                await part.stop()


# --- one process per service ----------------------------------------------------------

# gRPC services that others dial: starting one sets <NAME>_ADDR for those after it.
_DIALLED = ("jobs", "workspace", "enhancer")


def _grpc_serving(port: int) -> bool:
    """True when the server on `port` says SERVING for the whole server ("")."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


@dataclass
class ServiceProcesses:
    """Services run as `make up` runs them, `python -m services.<module>`, one
    process each on a free port, logs in `log_dir/<name>.log`; started and
    stopped one at a time (no restarts: a process that dies stays dead, and
    `start` says so). `env` is shared by all; starting jobs, workspace or the
    enhancer adds its <NAME>_ADDR for the services started after it."""

    env: dict[str, str]
    log_dir: Path
    root: Path = ROOT
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    # Where each process serves /metrics (METRICS_PORT, a free port of its own).
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The gateway's base URL (once it is started)."""
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def pid(self, name: str) -> int | None:
        proc = self.procs.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(
        self,
        name: str,
        module: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 120.0,
    ) -> subprocess.Popen:
        """Start `services.<module>` (default: `name`) as `name` and wait until
        it serves: the gateway's /readyz answers 200, a gRPC service's health
        says SERVING (a worker: its model is loaded)."""
        from ourvidz.db import own_database_env
        from ourvidz_dev.embedded import free_port

        module = module or name
        port = free_port(set(self.ports.values()))
        # Each process gets its own database login only (never the owner's).
        child_env = own_database_env(module, {**self.env, **(env or {})})
        child_env["PYTHONUNBUFFERED"] = "1"
        child_env[f"{module.upper()}_PORT"] = str(port)
        metrics_port = free_port({port, *self.ports.values(), *self.metrics_ports.values()})
        child_env["METRICS_PORT"] = str(metrics_port)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{module}"],
                cwd=self.root,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name], self.ports[name] = proc, port
        self.metrics_ports[name] = metrics_port
        if module == "gateway":
            ready = lambda: _http_ready(f"http://127.0.0.1:{port}/readyz")  # noqa: E731
        else:
            ready = lambda: _grpc_serving(port)  # noqa: E731
        deadline = time.monotonic() + ready_timeout
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready after {ready_timeout:.0f} s")
            time.sleep(0.1)
        if module in _DIALLED:
            self.env[f"{module.upper()}_ADDR"] = f"127.0.0.1:{port}"
        return proc

    def stop(self, name: str, grace: float = 30.0) -> int | None:
        """SIGTERM (a graceful stop: a worker hands back what it holds), then
        SIGKILL after `grace` seconds. Returns the exit code."""
        proc = self.procs.pop(name, None)
        self.ports.pop(name, None)
        self.metrics_ports.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return proc.returncode

    def stop_all(self) -> None:
        """Stop every service, the last started first."""
        for name in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(name)

    def log_tail(self, name: str, chars: int = 2000) -> str:
        try:
            return (self.log_dir / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""
