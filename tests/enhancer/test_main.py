"""`python -m services.enhancer` starts, becomes SERVING once its model is
loaded, answers, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from grpc_health.v1 import health_pb2, health_pb2_grpc

from ourvidz.grpcserver import channel
from ourvidz.v1 import enhancer_service_pb2 as pb
from ourvidz.v1 import enhancer_service_pb2_grpc
from ourvidz_dev.embedded import free_port
from tests.conftest import ROOT
from tests.enhancer.conftest import remove_enhance_consumer, user_md


async def test_module_entry_point_serves_and_stops_on_sigterm(base_env, infra):
    port = free_port()
    env = {**os.environ, **base_env, "ENHANCER_PORT": str(port), "LOG_JSON": "true"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.enhancer",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            status = None
            for _ in range(600):
                try:
                    request = health_pb2.HealthCheckRequest(service="ourvidz.v1.EnhancerService")
                    status = (await health.Check(request, timeout=1)).status
                except Exception:
                    status = None
                if status == health_pb2.HealthCheckResponse.SERVING or proc.returncode is not None:
                    break
                await asyncio.sleep(0.1)
            assert status == health_pb2.HealthCheckResponse.SERVING
            _, md = user_md()
            reply = await enhancer_service_pb2_grpc.EnhancerServiceStub(ch).EnhancePrompt(
                pb.EnhancePromptRequest(prompt="a cat", target_model="wan"), metadata=md
            )
            assert reply.enhanced_prompt and reply.model == "qwen2.5-tiny"
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        assert b"enhancer stopped" in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await remove_enhance_consumer(infra.nats_url)
