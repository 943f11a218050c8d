"""Crash safety: a worker killed (SIGKILL) in the middle of a job loses
nothing. JetStream redelivers the task after the ack wait, another worker runs
it, and the job completes once with one set of assets."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ourvidz_dev.embedded import free_port
from ourvidz_dev.stack import running_stack, settings_from
from tests.e2e.conftest import mesh_env, signup
from tests.e2e.test_generate import job_body, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def stack_without_worker(base_env):
    async with running_stack(mesh_env(base_env), workers=()) as stack:
        yield stack


async def serving(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.aio.AioRpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_killed_worker_job_is_redelivered_and_completes_once(stack_without_worker):
    stack = stack_without_worker
    port = free_port()
    env = {**os.environ, **stack.env, "SDXL_PORT": str(port), "SDXL_WORKER_ID": "doomed"}
    doomed = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.sdxl", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_for(lambda: serving(port), within=120, interval=0.5)
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
            user = await signup(http)
            body = job_body(job_type="sdxl_image_high", num_images=6, width=256, height=256)
            response = await user.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]

            async def mid_job():
                job = (await user.get(f"/v1/jobs/{job_id}")).json()
                return job["state"] == "running" and job["progress"]["step"] >= 1

            await wait_for(mid_job, within=60, interval=0.05)
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()
            assert (await user.get(f"/v1/jobs/{job_id}")).json()["state"] == "running"

            from services.sdxl.main import start as start_sdxl
            from services.sdxl.settings import SdxlSettings

            rescuer = await start_sdxl(
                settings_from(SdxlSettings, {**stack.env, "SDXL_WORKER_ID": "rescuer"}), port=0
            )
            try:
                events = await user.events(f"/v1/jobs/{job_id}/events")
                job = (await user.get(f"/v1/jobs/{job_id}")).json()
                assert job["state"] == "completed", job
                assert job["attempt"] >= 2
                assert sorted(a["index"] for a in job["assets"]) == list(range(6))
                assert [e["event"] for e in events].count("completed") == 1

                async def items():
                    listed = await user.get(
                        f"/v1/workspace/sessions/{job['workspace_session_id']}/items"
                    )
                    mine = [i for i in listed.json()["items"] if i["job_id"] == job_id]
                    return mine if len(mine) >= 6 else None

                filed = await wait_for(items)
                await asyncio.sleep(1)  # a duplicate filing would show up by now
                assert len(await items()) == len(filed) == 6
            finally:
                await rescuer.stop()
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
