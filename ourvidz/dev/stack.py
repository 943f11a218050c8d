"""The whole mesh in one process — jobs, workspace, the SDXL worker and the
gateway on a real port — for the end-to-end tests and `make bench`.

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


@contextlib.asynccontextmanager
async def running_stack(
    env: Mapping[str, str], *, with_worker: bool = True
) -> AsyncIterator[Stack]:
    from services.gateway.main import start as start_gateway
    from services.gateway.settings import GatewaySettings
    from services.jobs.main import start as start_jobs
    from services.jobs.settings import JobsSettings
    from services.workspace.main import start as start_workspace
    from services.workspace.settings import WorkspaceSettings

    env = dict(env)
    started: list = []
    try:
        workspace = await start_workspace(settings_from(WorkspaceSettings, env), port=0)
        started.append(workspace)
        env["WORKSPACE_ADDR"] = f"127.0.0.1:{workspace.port}"
        jobs = await start_jobs(settings_from(JobsSettings, env), port=0)
        started.append(jobs)
        env["JOBS_ADDR"] = f"127.0.0.1:{jobs.port}"
        gateway = await start_gateway(settings_from(GatewaySettings, env), port=0)
        started.append(gateway)
        url = f"http://127.0.0.1:{gateway.port}"
        sdxl = None
        if with_worker:
            from services.sdxl.main import start as start_sdxl
            from services.sdxl.settings import SdxlSettings

            sdxl = await start_sdxl(settings_from(SdxlSettings, env), port=0)
            started.append(sdxl)
            await sdxl.wait_ready()
        yield Stack(url=url, env=env, jobs=jobs, workspace=workspace, gateway=gateway, sdxl=sdxl)
    finally:
        for part in reversed(started):
            with contextlib.suppress(Exception):
                await part.stop()
