"""`make bench`: the timings docs/BENCHMARKS.md reports, measured in one run so
that their ratios are comparable (CPU timings on a shared machine swing ±50 %).

- render: the tiny SDXL preset, `sdxl_image_fast` (15 steps) at 1024² (the
  catalog default) and 256²; the tiny WAN preset, `video_fast` (25 steps) at
  256×144 with 17 frames and `image_fast` at 256×144; the tiny Qwen preset,
  200 new tokens; model time only;
- job: through the whole mesh over HTTP, from submit to `completed` (embedded
  PostgreSQL, NATS, S3): a 1-image `sdxl_image_fast` job at its default size,
  a `video_fast` job at 256×144×17 and an `image7b_fast_enhanced` job at
  256×144 (enhance stage included);
- pickup: an idle tiny SDXL worker, one 64² job at a time over HTTP: the
  server's created_at → started_at, p50 and p99;
- batch: 8 users submit one 64² job each at once to one tiny SDXL worker,
  with Jobs publishing one job per task, then compatible jobs in batches of
  at most SDXL_BATCH_MAX_IMAGES images: seconds to every job completed,
  jobs/s, and the ratio of the two;
- up: `python -m ourvidz_dev.up` from start to a 200 on /readyz;
- control-plane: the load bench of `ourvidz_dev.loadbench` (the services as
  processes, the SDXL `control-plane` preset, no model): submit→start
  latencies and jobs/s for many users over HTTP and SSE, each process's memory
  idle, under 500 idle SSE watchers and with a 1,000-job queue, and the
  queue's drain rate; its options (--users, --jobs, --queue, ...) apply;
- gpu (only where CUDA is present), in bf16 with random weights of the real
  architectures (`full-random`): SDXL at 1024², batch 1 and 6; WAN 2.1 1.3B
  `video_fast` (81 frames at 832×480, 25 steps); Qwen2.5-7B, 200 new tokens.

Options: --only render,job,pickup,batch,up,control-plane,gpu (or the parts as arguments:
`python -m ourvidz_dev.bench control-plane`)   --repeat N
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

ROOT = Path(__file__).resolve().parents[1]
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


def wan_task(job_type: str, width: int, height: int, num_frames: int):
    from ourvidz.catalog import CATALOG, WAN_DEFAULT_NEGATIVE
    from ourvidz.v1 import queue_pb2

    jt = CATALOG[job_type]
    return queue_pb2.GenerationTask(
        job_id="bench", user_id="bench", job_type=job_type,
        prompt="a red kite over a windy beach, camera tracking left",
        negative_prompt=WAN_DEFAULT_NEGATIVE, seed=42, num_images=1, width=width, height=height,
        num_frames=num_frames, steps=jt.steps, guidance_scale=jt.guidance_scale,
        output_bucket=jt.bucket,
    )  # fmt: skip


def _timed(fn, repeat: int, *, sync=None) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return times


def bench_render(repeat: int) -> None:
    from services.sdxl import models
    from services.sdxl.generate import render

    bundle = models.load("tiny")
    for size in (1024, 256):
        times = _timed(
            lambda size=size: render(
                bundle, task(size, size), None, lambda *_: None, lambda: False
            ),
            repeat,
        )
        report(f"tiny render sdxl_image_fast {size}² ×1", times)

    from services.wan import generate as wan_generate
    from services.wan import models as wan_models

    wan = wan_models.load("tiny")
    for job_type, frames in (("video_fast", 17), ("image_fast", 1)):
        times = _timed(
            lambda job_type=job_type, frames=frames: wan_generate.render(
                wan, wan_task(job_type, 256, 144, frames), lambda *_: None, lambda: False
            ),
            repeat,
        )
        report(f"tiny render {job_type} 256×144×{frames} (25 steps)", times)

    from services.enhancer import bench as enhancer_bench

    times = enhancer_bench.run("tiny", 200, repeat, "auto", "auto")
    report("tiny Qwen2 200 new tokens", times)


@contextlib.asynccontextmanager
async def _embedded_env():
    """Embedded PostgreSQL, NATS and S3 in a fresh folder, migrated: the
    environment of a stack on them."""
    from ourvidz import db
    from ourvidz.migrate import migration_folders
    from ourvidz_dev.embedded import Embedded, start_nats, start_postgres, start_s3
    from ourvidz_dev.up import dev_keys

    tmp = Path(tempfile.mkdtemp(prefix="ovb"))
    emb = Embedded()
    try:
        start_postgres(tmp / "pg", emb)
        start_nats(tmp / "nats", emb)
        start_s3(emb)
        passwords = db.dev_passwords("bench")
        db.prepare(emb.database_url, passwords, migration_folders())
        secret = "bench-secret-0123456789-0123456789-0123"
        key_settings, worker_keys = dev_keys(tmp / "keys", ("worker",))
        yield {
            "OURVIDZ_ENV": "dev", **db.service_url_env(emb.database_url, passwords),
            "NATS_URL": emb.nats_url, "STORAGE_BACKEND": "s3", "S3_ENDPOINT": emb.s3_endpoint,
            "S3_ACCESS_KEY": "bench", "S3_SECRET_KEY": "bench", **key_settings,
            "WORKER_KEY_FILE": worker_keys["worker"],
            "STORAGE_SIGNING_KEY": secret, "SDXL_MODEL": "tiny", "WAN_MODEL": "tiny",
            "ENHANCER_MODEL": "tiny", "LOG_LEVEL": "WARNING", "LOG_JSON": "false",
        }  # fmt: skip
    finally:
        emb.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _signed_in(http: httpx.AsyncClient, email: str) -> dict[str, str]:
    account = {"email": email, "password": "bench password"}
    await http.post("/v1/auth/signup", json=account)
    login = await http.post("/v1/auth/login", json=account)
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


async def _bench_job(repeat: int) -> None:
    from ourvidz_dev.stack import running_stack

    async with _embedded_env() as env:
        async with (
            running_stack({**env, **UNLIMITED}, workers=("sdxl", "wan"), enhancer=True) as stack,
            httpx.AsyncClient(base_url=stack.url, timeout=120) as http,
        ):
            headers = await _signed_in(http, "bench@example.com")
            small = {"width": 256, "height": 144}
            jobs = (
                ("sdxl_image_fast 1024² ×1", {"job_type": "sdxl_image_fast", "num_images": 1}),
                ("video_fast 256×144×17", {"job_type": "video_fast", "num_frames": 17, **small}),
                ("image7b_fast_enhanced 256×144", {"job_type": "image7b_fast_enhanced", **small}),
            )
            for name, body in jobs:
                times = []
                for i in range(repeat + 1):
                    start = time.perf_counter()
                    job = await http.post(
                        "/v1/jobs", headers=headers, json={**body, "prompt": f"a lighthouse {i}"}
                    )
                    if job.status_code != 202:
                        raise RuntimeError(f"bench job refused: {job.text}")
                    job_id = job.json()["id"]
                    async with http.stream(
                        "GET", f"/v1/jobs/{job_id}/events", headers=headers
                    ) as stream:
                        async for _ in stream.aiter_lines():
                            pass
                    elapsed = time.perf_counter() - start
                    done = (await http.get(f"/v1/jobs/{job_id}", headers=headers)).json()
                    if done["state"] != "completed":
                        raise RuntimeError(f"bench job ended {done['state']}")
                    if i:  # the first job warms the worker up
                        times.append(elapsed)
                report(f"tiny job {name}, submit → completed", times)


BATCH_JOBS = 8
# The benches' users submit and sign up from one address, faster than the
# gateway's abuse limits allow: those are not what they measure.
UNLIMITED = {
    "GATEWAY_JOBS_PER_MINUTE": "100000",
    "GATEWAY_JOBS_BURST": "1000",
    "GATEWAY_SIGNUPS_PER_ADDRESS": "100000",
}


async def _bench_batch(repeat: int) -> None:
    """8 one-image `sdxl_image_fast` jobs at 64², one from each of 8 users,
    submitted at once to a stack with one tiny SDXL worker: seconds from the
    first submit to every job completed, and jobs/s, with Jobs publishing one
    job per task (SDXL_BATCH_MAX_IMAGES=1) and then compatible jobs together
    in batches of at most SDXL_BATCH_MAX_IMAGES images, each way on a stack of
    its own in the same run; the ratio of the two rates."""
    from ourvidz.settings import SDXL_BATCH_MAX_IMAGES
    from ourvidz_dev.stack import running_stack

    body = {"job_type": "sdxl_image_fast", "num_images": 1, "width": 64, "height": 64}
    rates = {}
    for budget in (1, SDXL_BATCH_MAX_IMAGES):
        async with _embedded_env() as env:
            # Many users from one address: its sign-up limit is not what is measured.
            env = {**env, "SDXL_BATCH_MAX_IMAGES": str(budget), **UNLIMITED}
            async with (
                running_stack(env, workers=("sdxl",)) as stack,
                httpx.AsyncClient(base_url=stack.url, timeout=120) as http,
            ):
                times = []
                for i in range(repeat + 1):
                    users = [
                        await _signed_in(http, f"batch-{budget}-{i}-{n}@example.com")
                        for n in range(BATCH_JOBS)
                    ]

                    async def one(n: int, headers: dict[str, str]) -> None:
                        job = await http.post(
                            "/v1/jobs", headers=headers, json={**body, "prompt": f"a fox {n}"}
                        )
                        if job.status_code != 202:
                            raise RuntimeError(f"bench job refused: {job.text}")
                        path = f"/v1/jobs/{job.json()['id']}/events"
                        async with http.stream("GET", path, headers=headers) as stream:
                            async for _ in stream.aiter_lines():
                                pass
                        done = (await http.get(path.rsplit("/", 1)[0], headers=headers)).json()
                        if done["state"] != "completed":
                            raise RuntimeError(f"bench job ended {done['state']}")

                    start = time.perf_counter()
                    await asyncio.gather(*(one(n, h) for n, h in enumerate(users)))
                    if i:  # the first round warms the worker up
                        times.append(time.perf_counter() - start)
        way = f"batches of ≤ {budget} images" if budget > 1 else "one job per task"
        rates[budget] = BATCH_JOBS / statistics.median(times)
        report(f"tiny worker, {BATCH_JOBS} users × 1 job 64² at once, {way}", times,
               f"{rates[budget]:.2f} jobs/s")  # fmt: skip
    ratio = rates[SDXL_BATCH_MAX_IMAGES] / rates[1]
    RESULTS.append(("batched ÷ one job per task, jobs/s", f"{ratio:.2f}×", ""))


PICKUP_JOBS = 40


async def _bench_pickup(repeat: int) -> None:
    """An idle tiny SDXL worker: one 64² job at a time is submitted over HTTP
    and followed to its end; the server's created_at → started_at of each
    (Jobs holds the job, its dispatcher publishes it to the waiting worker,
    the worker's StartJob), p50 and p99 over PICKUP_JOBS × repeat jobs."""
    from ourvidz_dev.loadbench import percentile
    from ourvidz_dev.stack import running_stack

    body = {"job_type": "sdxl_image_fast", "num_images": 1, "width": 64, "height": 64}
    waits = []
    async with _embedded_env() as env:
        async with (
            running_stack({**env, **UNLIMITED}, workers=("sdxl",)) as stack,
            httpx.AsyncClient(base_url=stack.url, timeout=120) as http,
        ):
            await _pickups(http, body, PICKUP_JOBS * repeat + 1, waits)
    p50, p99 = percentile(waits, 50), percentile(waits, 99)
    RESULTS.append((
        f"idle pick-up, created_at → started_at over HTTP ({len(waits)} jobs)",
        f"p50 {p50 * 1000:.1f} ms",
        f"p99 {p99 * 1000:.1f} ms, max {max(waits) * 1000:.1f} ms",
    ))  # fmt: skip


async def _pickups(http: httpx.AsyncClient, body: dict, count: int, waits: list[float]) -> None:
    from ourvidz_dev.loadbench import parse_time

    headers = await _signed_in(http, "pickup@example.com")
    for i in range(count):
        job = await http.post("/v1/jobs", headers=headers, json={**body, "prompt": f"a {i}"})
        if job.status_code != 202:
            raise RuntimeError(f"bench job refused: {job.text}")
        path = f"/v1/jobs/{job.json()['id']}"
        async with http.stream("GET", path + "/events", headers=headers) as stream:
            async for _ in stream.aiter_lines():
                pass
        done = (await http.get(path, headers=headers)).json()
        if done["state"] != "completed":
            raise RuntimeError(f"bench job ended {done['state']}")
        if i:  # the first job warms the worker up
            waits.append(parse_time(done["started_at"]) - parse_time(done["created_at"]))


def bench_up(repeat: int) -> None:
    """Seconds from `python -m ourvidz_dev.up` to a 200 on /readyz (dependencies
    installed; embedded servers and data in a fresh folder each time)."""
    from ourvidz_dev.embedded import free_port

    times, first_job = [], []
    for _ in range(repeat):
        data = Path(tempfile.mkdtemp(prefix="ovu"))
        port = free_port()
        env = {**os.environ, "GATEWAY_PORT": str(port), "OURVIDZ_DATA_DIR": str(data)}
        env.pop("DATABASE_URL", None)
        env.pop("NATS_URL", None)
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ourvidz_dev.up"], cwd=ROOT, env=env,
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
                    raise RuntimeError("ourvidz_dev.up exited early")
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
        account = {"email": "first@example.com", "password": "bench password"}
        http.post("/v1/auth/signup", json=account)
        token = http.post("/v1/auth/login", json=account).json()["access_token"]
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
    del bundle
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()

    from services.wan import generate as wan_generate
    from services.wan import models as wan_models

    wan = wan_models.load("full-random", device="cuda", dtype="bfloat16")
    video = wan_task("video_fast", 832, 480, 81)
    times = _timed(
        lambda: wan_generate.render(wan, video, lambda *_: None, lambda: False),
        repeat,
        sync=torch.cuda.synchronize,
    )
    report(
        f"full-random video_fast 832×480×81, 25 steps bf16 ({torch.cuda.get_device_name()})",
        times,
    )
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", file=sys.stderr)
    wan = None
    torch.cuda.empty_cache()

    from services.enhancer import bench as enhancer_bench

    times = enhancer_bench.run("full-random", 200, repeat, "cuda", "bfloat16")
    report(f"full-random Qwen2.5-7B 200 new tokens bf16 ({torch.cuda.get_device_name()})", times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("parts", nargs="*", help="the parts to run (default: --only's)")
    parser.add_argument("--only", default="render,job,pickup,batch,up,control-plane,gpu")
    parser.add_argument("--repeat", type=int, default=3)
    from ourvidz_dev import loadbench

    loadbench.add_arguments(parser.add_argument_group("control-plane"))
    opts = parser.parse_args()
    parts = opts.parts or opts.only.split(",")
    unknown = set(parts) - {"render", "job", "pickup", "batch", "up", "control-plane", "gpu"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if "render" in parts:
        bench_render(opts.repeat)
    if "job" in parts:
        asyncio.run(_bench_job(opts.repeat))
    if "pickup" in parts:
        asyncio.run(_bench_pickup(opts.repeat))
    if "batch" in parts:
        asyncio.run(_bench_batch(opts.repeat))
    if "up" in parts:
        bench_up(max(1, opts.repeat - 1))
    if "control-plane" in parts:
        control_plane = loadbench.run(loadbench.options(opts))
    if "gpu" in parts:
        bench_gpu(opts.repeat)
    if RESULTS:
        print("\n| measurement | median s | range |\n| --- | --- | --- |")
        for name, median, spread in RESULTS:
            print(f"| {name} | {median} | {spread} |")
    if "control-plane" in parts and len(parts) > 1:
        print(f"\nControl plane:\n\n{control_plane}")  # again, after the other parts' logs


if __name__ == "__main__":
    main()
