"""The fault suite (`make test-faults`): real processes on loopback, killed
and stopped by the tests, with the invariant of `Cluster.check` after each
fault. Figures go to `.artifacts/faults/report.json` (see docs/RELIABILITY.md).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path

import grpc
import httpx
import pytest

from ourvidz.auth import TokenSource
from ourvidz.v1 import worker_service_pb2, worker_service_pb2_grpc
from tests.conftest import GATEWAY_SIGNER
from tests.faults.cluster import ROOT, Accepted, Cluster, Tally
from tests.faults.proxy import serve as serve_lossy

pytestmark = pytest.mark.faults

REPORT: dict[str, dict] = {}
WORKER_KILLS = 20


@pytest.fixture(scope="module")
async def cluster():
    # A short path of its own: the PostgreSQL socket lives there, and the
    # server's own user must reach it (pytest's folders are private to root).
    work = Path(tempfile.mkdtemp(prefix="ovf"))
    c = Cluster(work)
    c.start_engines()
    c.build_env(workers=2)
    try:
        await c.start_all()
        yield c
    finally:
        await c.stop_all()
        out = ROOT / ".artifacts" / "faults"
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(REPORT, indent=2) + "\n")
        shutil.copytree(c.logs, out / "logs", dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
async def http():
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
async def users(cluster, http):
    return [await cluster.signup(http) for _ in range(6)]


async def _outage(cluster, http, tally: Tally, seconds: float, jobs) -> None:
    """While a dependency is away: clients keep reading and submitting (what
    is accepted meanwhile joins `jobs`)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        accepted = await cluster.probe(http, random.choice(jobs), tally)
        if accepted is not None:
            jobs.append(accepted)
        await asyncio.sleep(1.0)


async def _some_running(cluster, jobs: list[Accepted], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        states = await cluster.states([j.id for j in jobs])
        if any(s == "running" for s in states.values()):
            return
        await asyncio.sleep(0.1)


def _assert_api_answers(tally: Tally) -> None:
    assert not tally.server_errors, f"server errors other than 503: {tally.statuses}"
    assert tally.without_retry_after == 0, "503 without Retry-After"


async def _worker_job(proc, port: int, tokens: TokenSource) -> str:
    """The job a worker holds now, the first of a batch ("" when none or when
    it does not answer)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            info = await worker_service_pb2_grpc.WorkerServiceStub(channel).GetWorkerInfo(
                worker_service_pb2.GetWorkerInfoRequest(), metadata=tokens.metadata(), timeout=1
            )
        except grpc.aio.AioRpcError:
            return ""
    # A batch's jobs are listed comma-separated; they share one render.
    return info.current_job_id.split(",")[0] if info.ready else ""


async def test_workers_killed_mid_render_and_at_the_upload(cluster, http, users):
    """SIGKILL a worker while it renders (a denoising step done) or while it
    finishes (last step, decoding, uploading), 20 times; some of the jobs
    killed at the end are cancelled, leaving blobs that no asset will own."""
    tally = Tally()
    jobs = await cluster.submit_many(http, users, 60, tally)
    tokens = TokenSource(GATEWAY_SIGNER, "fault-ops", role="admin")
    kills = {"render": 0, "end": 0}
    killed_jobs: dict[str, int] = {}  # at most 3 kills per job: the kills are spread
    restarts: set[asyncio.Task] = set()
    deadline = time.monotonic() + 900
    while sum(kills.values()) < WORKER_KILLS:
        assert time.monotonic() < deadline, f"only {kills} kills in time"
        want = "render" if kills["render"] <= kills["end"] else "end"
        for proc in cluster.workers:
            if not proc.alive:
                continue
            port = int(proc.env["SDXL_PORT"])
            job_id = await _worker_job(proc, port, tokens)
            if not job_id or killed_jobs.get(job_id, 0) >= 3:
                continue
            row = cluster.query(
                "SELECT progress_step AS step, progress_total AS total, progress_stage AS stage "
                "FROM jobs.jobs WHERE id = %s",
                (job_id,),
            )
            if not row:
                continue
            step, total, stage = row[0]["step"], row[0]["total"], row[0]["stage"]
            at_end = stage in ("decoding", "uploading") or (total and step >= total - 1)
            if (want == "render" and stage == "denoising" and step >= 1 and not at_end) or (
                want == "end" and at_end
            ):
                await proc.signal(signal.SIGKILL)
                kills[want] += 1
                killed_jobs[job_id] = killed_jobs.get(job_id, 0) + 1
                if want == "end" and kills["end"] % 3 == 0:
                    job = next((j for j in jobs if j.id == job_id), None)
                    if job is not None:
                        user = job.user
                        await http.post(
                            f"{cluster.gateway_url}/v1/jobs/{job_id}/cancel", headers=user.headers
                        )
                        job.cancelled = True
                task = asyncio.create_task(cluster.restart(proc.name))
                restarts.add(task)
                task.add_done_callback(restarts.discard)
                break
        states = await cluster.states([j.id for j in jobs])
        if all(s in ("completed", "failed", "cancelled") for s in states.values()):
            jobs += await cluster.submit_many(http, users, 20, tally)
        await asyncio.sleep(0.05)
    await asyncio.gather(*restarts)
    report = await cluster.check(jobs)
    _assert_api_answers(tally)
    REPORT["worker SIGKILL mid-render / at the upload"] = {
        **report,
        "kills_mid_render": kills["render"],
        "kills_at_the_end": kills["end"],
        "jobs_killed": len(killed_jobs),
    }


@pytest.mark.parametrize("seconds", [30, 120])
async def test_jobs_service_away_with_a_queue(cluster, http, users, seconds):
    tally = Tally()
    jobs = await cluster.submit_many(http, users, 30, tally)
    await _some_running(cluster, jobs)
    await cluster.procs["jobs"].signal(signal.SIGKILL)
    try:
        await _outage(cluster, http, tally, seconds, jobs)
    finally:
        await cluster.restart("jobs")
    report = await cluster.check(jobs)
    _assert_api_answers(tally)
    REPORT[f"jobs service down {seconds} s"] = {**report, "api_statuses": tally.statuses}


@pytest.mark.parametrize("seconds", [10, 90])
async def test_postgres_away_with_a_queue(cluster, http, users, seconds):
    tally = Tally()
    jobs = await cluster.submit_many(http, users, 30, tally)
    await _some_running(cluster, jobs)
    await asyncio.to_thread(cluster.stop_postgres)
    try:
        await _outage(cluster, http, tally, seconds, jobs)
    finally:
        await asyncio.to_thread(cluster.start_postgres)
    report = await cluster.check(jobs)
    _assert_api_answers(tally)
    REPORT[f"PostgreSQL down {seconds} s"] = {**report, "api_statuses": tally.statuses}


async def test_nats_away_30_s(cluster, http, users):
    tally = Tally()
    jobs = await cluster.submit_many(http, users, 30, tally)
    await _some_running(cluster, jobs)
    await asyncio.to_thread(cluster.stop_nats)
    try:
        await _outage(cluster, http, tally, 30, jobs)
    finally:
        await asyncio.to_thread(cluster.start_nats)
    report = await cluster.check(jobs)
    _assert_api_answers(tally)
    REPORT["NATS down 30 s"] = {**report, "api_statuses": tally.statuses}


async def test_completion_answers_lost(cluster, http, users):
    """A worker whose every other CompleteJob commits and then loses its answer."""
    server, port, lossy = await serve_lossy(cluster.env["JOBS_ADDR"])
    lossy_worker = cluster.procs["sdxl-0"]
    await lossy_worker.signal(signal.SIGTERM)
    lossy_worker.env = {**lossy_worker.env, "JOBS_ADDR": f"127.0.0.1:{port}"}
    try:
        await cluster.restart("sdxl-0")
        await cluster.procs["sdxl-1"].signal(signal.SIGTERM)  # all work goes through the proxy
        tally = Tally()
        jobs = await cluster.submit_many(http, users, 20, tally)
        report = await cluster.check(jobs)
        assert lossy.lost >= 5, lossy.lost
        REPORT["CompleteJob answer lost (every other)"] = {**report, "answers_lost": lossy.lost}
    finally:
        lossy_worker.env = {**lossy_worker.env, "JOBS_ADDR": cluster.env["JOBS_ADDR"]}
        await lossy_worker.signal(signal.SIGTERM)
        await cluster.restart("sdxl-0")
        await cluster.restart("sdxl-1")
        await server.stop(0)
        await lossy.close()


async def test_sigterm_to_each_service_under_load(cluster, http, users):
    tally = Tally()
    jobs: list[Accepted] = []
    exits = {}
    for name in ("jobs", "workspace", "sdxl-0", "sdxl-1", "gateway"):
        batch = await cluster.submit_many(http, users, 8, tally)
        jobs += batch
        await _some_running(cluster, batch)
        code, took = await cluster.procs[name].signal(signal.SIGTERM, wait=60)
        exits[name] = {"exit_status": code, "seconds": round(took, 2)}
        await cluster.restart(name)
    report = await cluster.check(jobs)
    _assert_api_answers(tally)
    assert all(e["exit_status"] == 0 for e in exits.values()), exits
    REPORT["SIGTERM to each service under load"] = {**report, "exits": exits}
