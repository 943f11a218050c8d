"""`make bench`: the timings docs/BENCHMARKS.md reports, measured in one run so
that their ratios are comparable (CPU timings on a shared machine swing ±50 %).

- render: the tiny SDXL preset, `sdxl_image_fast` (15 steps) at 1024² (the
  catalog default) and 256², model time only;
- job: a 1-image `sdxl_image_fast` job at its default size through the whole
  mesh over HTTP, from submit to `completed` (embedded PostgreSQL, NATS, S3);
- up: `python -m ourvidz.dev.up` from start to a 200 on /readyz;
- gpu (only where CUDA is present): the `full-random` preset (the real SDXL
  architecture) at 1024² in bf16, batch 1 and 6.

Options: --only render,job,up,gpu   --repeat N
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
RESULTS: list[tuple[str, str, str]] = []


def report(name: str, seconds: list[float], note: str = "") -> None:
    median = statistics.median(seconds)
    spread = f"{min(seconds):.2f}–{max(seconds):.2f}" if len(seconds) > 1 else f"{seconds[0]:.2f}"
    RESULTS.append((name, f"{median:.2f}", f"{spread} (n={len(seconds)}) {note}".strip()))
    print(f"{name}: median {median:.2f} s [{spread}] {note}", file=sys.stderr, flush=True)


def task(width: int, height: int, num_images: int = 1, steps: int = 15):
    from ourvidz.v1 import queue_pb2

    return queue_pb2.GenerationTask(
        job_id="bench", user_id="bench", job_type="sdxl_image_fast", prompt="a lighthouse at dusk",
        negative_prompt="blurry", seed=42, num_images=num_images, width=width, height=height,
        steps=steps, guidance_scale=6.0, output_bucket="sdxl-image-fast",
    )  # fmt: skip


def bench_render(repeat: int) -> None:
    from services.sdxl import models
    from services.sdxl.generate import render

    bundle = models.load("tiny")
    for size in (1024, 256):
        render(bundle, task(size, size), None, lambda *_: None, lambda: False)  # warm-up
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            render(bundle, task(size, size), None, lambda *_: None, lambda: False)
            times.append(time.perf_counter() - start)
        report(f"tiny render sdxl_image_fast {size}² ×1", times)


async def _bench_job(repeat: int) -> None:
    from ourvidz import db
    from ourvidz.dev.embedded import Embedded, start_nats, start_postgres, start_s3
    from ourvidz.dev.stack import running_stack
    from ourvidz.migrate import migration_folders

    tmp = Path(tempfile.mkdtemp(prefix="ovb"))
    emb = Embedded()
    try:
        start_postgres(tmp / "pg", emb)
        start_nats(tmp / "nats", emb)
        start_s3(emb)
        db.prepare(emb.database_url, "bench", migration_folders())
        secret = "bench-secret-0123456789-0123456789-0123"
        env = {
            "OURVIDZ_ENV": "dev", "DATABASE_URL": emb.database_url, "DB_ROLE_PASSWORD": "bench",
            "NATS_URL": emb.nats_url, "STORAGE_BACKEND": "s3", "S3_ENDPOINT": emb.s3_endpoint,
            "S3_ACCESS_KEY": "bench", "S3_SECRET_KEY": "bench", "AUTH_SECRET": secret,
            "STORAGE_SIGNING_KEY": secret, "SDXL_MODEL": "tiny", "LOG_LEVEL": "WARNING",
            "LOG_JSON": "false",
        }  # fmt: skip
        async with (
            running_stack(env) as stack,
            httpx.AsyncClient(base_url=stack.url, timeout=120) as http,
        ):
            signup = await http.post(
                "/v1/auth/signup", json={"email": "bench@example.com", "password": "bench password"}
            )
            headers = {"Authorization": f"Bearer {signup.json()['access_token']}"}
            times = []
            for i in range(repeat + 1):
                start = time.perf_counter()
                job = await http.post(
                    "/v1/jobs", headers=headers,
                    json={"job_type": "sdxl_image_fast", "prompt": f"a lighthouse {i}", "num_images": 1},
                )  # fmt: skip
                job_id = job.json()["id"]
                async with http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers
                ) as stream:
                    async for _ in stream.aiter_lines():
                        pass
                elapsed = time.perf_counter() - start
                state = (await http.get(f"/v1/jobs/{job_id}", headers=headers)).json()["state"]
                if state != "completed":
                    raise RuntimeError(f"bench job ended {state}")
                if i:  # the first job warms the worker up
                    times.append(elapsed)
            report("tiny job sdxl_image_fast 1024² ×1, submit → completed", times)
    finally:
        emb.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def bench_up(repeat: int) -> None:
    """Seconds from `python -m ourvidz.dev.up` to a 200 on /readyz (dependencies
    installed; embedded servers and data in a fresh folder each time)."""
    from ourvidz.dev.embedded import free_port

    times, first_job = [], []
    for _ in range(repeat):
        data = Path(tempfile.mkdtemp(prefix="ovu"))
        port = free_port()
        env = {**os.environ, "GATEWAY_PORT": str(port), "OURVIDZ_DATA_DIR": str(data)}
        env.pop("DATABASE_URL", None)
        env.pop("NATS_URL", None)
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ourvidz.dev.up"], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            while time.perf_counter() - start < 180:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError("ourvidz.dev.up exited early")
                time.sleep(0.25)
            times.append(time.perf_counter() - start)
            first_job.append(_first_job(f"http://127.0.0.1:{port}") + times[-1])
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(60)
            shutil.rmtree(data, ignore_errors=True)
    report("make up → /readyz 200", times)
    report(
        "make up → first sdxl_image_fast 1024² job completed",
        first_job,
        "(includes the worker's model load)",
    )


def _first_job(url: str) -> float:
    """Seconds from a 200 on /readyz to the first job completed."""
    start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120) as http:
        token = http.post(
            "/v1/auth/signup", json={"email": "first@example.com", "password": "bench password"}
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        job = http.post(
            "/v1/jobs",
            headers=headers,
            json={"job_type": "sdxl_image_fast", "prompt": "a lighthouse"},
        ).json()
        with http.stream("GET", f"/v1/jobs/{job['id']}/events", headers=headers) as stream:
            for _ in stream.iter_lines():
                pass
        state = http.get(f"/v1/jobs/{job['id']}", headers=headers).json()["state"]
    if state != "completed":
        raise RuntimeError(f"first job ended {state}")
    return time.perf_counter() - start


def bench_gpu(repeat: int) -> None:
    import torch

    if not torch.cuda.is_available():
        print("gpu: no CUDA device here; skipped", file=sys.stderr)
        return
    from services.sdxl import models
    from services.sdxl.generate import render

    bundle = models.load("full-random", device="cuda", dtype="bfloat16")
    for batch in (1, 6):
        render(bundle, task(1024, 1024, batch), None, lambda *_: None, lambda: False)
        times = []
        for _ in range(repeat):
            torch.cuda.synchronize()
            start = time.perf_counter()
            render(bundle, task(1024, 1024, batch), None, lambda *_: None, lambda: False)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        report(
            f"full-random sdxl_image_fast 1024² ×{batch} bf16 ({torch.cuda.get_device_name()})",
            times,
        )
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="render,job,up,gpu")
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parts = opts.only.split(",")
    if "render" in parts:
        bench_render(opts.repeat)
    if "job" in parts:
        asyncio.run(_bench_job(opts.repeat))
    if "up" in parts:
        bench_up(max(1, opts.repeat - 1))
    if "gpu" in parts:
        bench_gpu(opts.repeat)
    print("\n| measurement | median s | range |\n| --- | --- | --- |")
    for name, median, spread in RESULTS:
        print(f"| {name} | {median} | {spread} |")


if __name__ == "__main__":
    main()
