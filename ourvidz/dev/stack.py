"""The whole mesh in one process — jobs, workspace, the gateway on a real port,
the generation workers and the enhancer — for the end-to-end tests and
`make bench`.

`make up` runs the same services as separate supervised processes; this is
the in-process twin, where the diffusers import and the model load are paid
once."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass


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


async def _start_model_service(name: str, env: Mapping[str, str]):
    import importlib

    package, settings_cls = _MODEL_SERVICES[name]
    main = importlib.import_module(f"{package}.main")
    settings = importlib.import_module(f"{package}.settings")
    return await main.start(settings_from(getattr(settings, settings_cls), env), port=0)


@contextlib.asynccontextmanager
async def running_stack(
    env: Mapping[str, str],
    *,
    workers: tuple[str, ...] = ("sdxl",),
    enhancer: bool = False,
) -> AsyncIterator[Stack]:
    """Jobs, workspace and the gateway, plus the named generation workers
    ("sdxl", "wan") and optionally the enhancer, each on a free port."""
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
        from ourvidz.dev.embedded import free_port

        gateway_port = free_port()
        env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{gateway_port}"
    started: list = []
    parts: dict[str, object] = {}
    try:
        workspace = await start_workspace(settings_from(WorkspaceSettings, env), port=0)
        started.append(workspace)
        env["WORKSPACE_ADDR"] = f"127.0.0.1:{workspace.port}"
        jobs = await start_jobs(settings_from(JobsSettings, env), port=0)
        started.append(jobs)
        env["JOBS_ADDR"] = f"127.0.0.1:{jobs.port}"
        if enhancer:
            parts["enhancer"] = await _start_model_service("enhancer", env)
            started.append(parts["enhancer"])
            env["ENHANCER_ADDR"] = f"127.0.0.1:{parts['enhancer'].port}"
        gateway = await start_gateway(settings_from(GatewaySettings, env), port=gateway_port)
        started.append(gateway)
        url = f"http://127.0.0.1:{gateway.port}"
        for name in workers:
            parts[name] = await _start_model_service(name, env)
            started.append(parts[name])
        for part in parts.values():
            await part.wait_ready()
        yield Stack(url=url, env=env, jobs=jobs, workspace=workspace, gateway=gateway, **parts)
    finally:
        for part in reversed(started):
            with contextlib.suppress(Exception):
                await part.stop()
