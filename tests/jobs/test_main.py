"""`python -m services.jobs` serves, reports SERVING, and exits cleanly on
SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from grpc_health.v1 import health_pb2, health_pb2_grpc

from ourvidz.grpcserver import channel
from ourvidz_dev.embedded import free_port


async def test_the_service_runs_as_a_module_and_stops_on_sigterm(base_env):
    port = free_port()
    env = {**os.environ, **base_env, "JOBS_PORT": str(port), "LOG_JSON": "true"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.jobs",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        ch = channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(ch)
        status = None
        for _ in range(300):
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service="ourvidz.v1.JobService"), timeout=1
                )
                status = reply.status
                break
            except Exception:
                if proc.returncode is not None:
                    break
                await asyncio.sleep(0.1)
        await ch.close()
        assert status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        assert b"jobs stopped" in stderr  # one line, from ourvidz.runtime
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
