"""An idle worker (SDXL, WAN, the enhancer) run as a real process stops soon
after SIGTERM: exit status 0, no traceback, well before the supervisor's
10 s kill. The bound here is generous for a busy machine; the measured time
is printed (`pytest -s`)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ourvidz_dev.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
EXIT_BOUND_SECONDS = 10.0


async def serving(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.aio.AioRpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


async def wait_serving(proc: asyncio.subprocess.Process, port: int, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise AssertionError(f"the worker exited with {proc.returncode} before serving")
        if await serving(port):
            return
        # Health answers at once, so the one-second deadline paces the loop;
        # a short pause keeps an unbound port from spinning it.
        await asyncio.sleep(0.2)
    raise AssertionError(f"the worker did not serve within {within} s")


@pytest.mark.parametrize("service", ["sdxl", "wan", "enhancer"])
async def test_idle_worker_exits_cleanly_and_soon_on_sigterm(base_env, tmp_path, service):
    port = free_port()
    env = {
        **os.environ,
        **base_env,
        f"{service.upper()}_PORT": str(port),
        f"{service.upper()}_WORKER_ID": f"shutdown-{service}",
        f"{service.upper()}_MODEL": "tiny",
        f"{service.upper()}_DEVICE": "cpu",
        # Nothing listens here: an idle worker never dials Jobs.
        "JOBS_ADDR": f"127.0.0.1:{free_port()}",
    }
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{service}", cwd=ROOT, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        try:
            await wait_serving(proc, port, within=180)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(proc.wait(), EXIT_BOUND_SECONDS)
            except TimeoutError:
                raise AssertionError(
                    f"{service} still runs {EXIT_BOUND_SECONDS} s after SIGTERM"
                ) from None
            took = time.monotonic() - sent
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    logged = stderr_path.read_text(errors="replace")
    print(f"{service}: exit {code} {took:.2f} s after SIGTERM")
    assert code == 0, logged
    assert "Traceback" not in logged, logged
    assert f"{service} shutting down" in logged and f"{service} stopped" in logged, logged
