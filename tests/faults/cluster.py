"""A whole platform as real processes on loopback, for the fault suite: its
own embedded PostgreSQL and NATS JetStream (so the tests may kill them), an S3
protocol server, and jobs, workspace, the gateway and sdxl workers (tiny
model) as `python -m services.<name>` processes that the tests stop, kill and
start again.

`Cluster.check()` is the one invariant every fault must leave true: every
accepted job ended; each completed job has exactly its assets, whose blobs
exist; no job completed twice; no duplicate workspace item; no blob that no
asset points at once the collector ran."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg.rows import dict_row

from ourvidz import catalog
from ourvidz.db import own_database_env, service_url_env
from ourvidz_dev.embedded import Embedded, free_port, nats_binary, wait_for_port
from tests.conftest import write_keys

ROOT = Path(__file__).resolve().parents[2]
SECRET = "fault-suite-secret-0123456789-0123456789"
ROLE_PASSWORDS = {
    name: f"ourvidz-faults-{name}" for name in ("gateway", "jobs", "workspace", "enhancer")
}
OUTPUT_BUCKETS = (*sorted({jt.bucket for jt in catalog.CATALOG.values()}), "thumbnails")


class Proc:
    """One service process; its output goes to `<log_dir>/<name>.log`."""

    def __init__(self, name: str, module: str, env: dict, log_dir: Path, ready) -> None:
        self.name = name
        self.module = module
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self._ready = ready
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: ASYNC230 - a local file, handed to the child
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, cwd=ROOT, env=self.env,
                stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def ready(self, within: float = 180.0) -> None:
        deadline = time.monotonic() + within
        while not await self._ready():
            if not self.alive:
                raise AssertionError(f"{self.name} exited: {self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready after {within} s: {self.tail()}")
            await asyncio.sleep(0.2)

    async def signal(self, sig: int, wait: float = 60.0) -> tuple[int, float]:
        """Send `sig`; (exit status, seconds it took to exit)."""
        assert self.proc is not None
        began = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), wait)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        return code, time.monotonic() - began

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def grpc_serving(port: int):
    async def check() -> bool:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.aio.AioRpcError:
                return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING

    return check


def http_ready(url: str):
    async def check() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    return check


@dataclass
class Accepted:
    """A job the API accepted (202), with the user who owns it."""

    id: str
    user: User
    num_images: int
    # The test cancelled it: it may end cancelled (then with no assets and no blobs).
    cancelled: bool = False


@dataclass
class User:
    token: str
    id: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Tally:
    """What the clients saw during a fault."""

    statuses: dict[int, int] = field(default_factory=dict)
    without_retry_after: int = 0

    def add(self, response: httpx.Response) -> None:
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        if response.status_code == 503 and "retry-after" not in response.headers:
            self.without_retry_after += 1

    @property
    def server_errors(self) -> dict[int, int]:
        return {s: n for s, n in self.statuses.items() if s >= 500 and s != 503}


class Cluster:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.emb = Embedded()
        self.pg = None
        self.nats_port = free_port()
        self.nats_proc = None
        self.procs: dict[str, Proc] = {}
        self.env: dict[str, str] = {}
        self.gateway_url = ""

    # --- the engines ---------------------------------------------------------------

    def start_engines(self) -> None:
        import pgserver

        from ourvidz import db
        from ourvidz.migrate import migration_folders
        from ourvidz_dev.embedded import require_passwords, start_s3

        self.pg = pgserver.get_server(self.work / "pg", cleanup_mode="stop")
        self.emb._stops.append(self.pg.cleanup)
        params = psycopg.conninfo.conninfo_to_dict(self.pg.get_uri())
        require_passwords(self.work / "pg", self.pg.get_uri(), params.get("user") or "postgres")
        params["dbname"] = "ourvidz"
        self.database_url = psycopg.conninfo.make_conninfo("", **params)
        self.start_nats()
        self.emb._stops.append(self.stop_nats)
        start_s3(self.emb)
        db.prepare(self.database_url, ROLE_PASSWORDS, migration_folders())

    def stop_postgres(self) -> None:
        """An immediate stop (no checkpoint; crash recovery at the next start)."""
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.pg.pgdata, user=self.pg.system_user)

    def start_postgres(self) -> None:
        with self.pg._lock:
            self.pg.ensure_postgres_running()

    def start_nats(self) -> None:
        store = self.work / "nats"
        store.mkdir(exist_ok=True)
        log = open(self.logs / "nats.log", "ab")

        self.nats_proc = subprocess.Popen(
            [nats_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.nats_port), "-sd", str(store)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        wait_for_port(self.nats_port)

    def stop_nats(self, sig: int = signal.SIGKILL) -> None:
        if self.nats_proc is not None and self.nats_proc.poll() is None:
            self.nats_proc.send_signal(sig)
            self.nats_proc.wait(30)

    # --- the services --------------------------------------------------------------

    def build_env(self, workers: int) -> None:
        used: set[int] = {self.nats_port}
        gateway_port = free_port(used)
        used.add(gateway_port)
        ports = {}
        for name in ("jobs", "workspace"):
            ports[name] = free_port(used)
            used.add(ports[name])
        self.gateway_url = f"http://127.0.0.1:{gateway_port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("JOBS_", "SDXL_"))},
            "OURVIDZ_ENV": "test",
            "LOG_JSON": "false",
            **service_url_env(self.database_url, ROLE_PASSWORDS),
            "NATS_URL": f"nats://127.0.0.1:{self.nats_port}",
            "STORAGE_BACKEND": "s3",
            "S3_ENDPOINT": self.emb.s3_endpoint,
            "S3_ACCESS_KEY": "testing",
            "S3_SECRET_KEY": "testing",
            "STORAGE_SIGNING_KEY": SECRET,
            **write_keys(self.work / "keys"),
            "PUBLIC_BASE_URL": self.gateway_url,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(gateway_port),
            "JOBS_PORT": str(ports["jobs"]),
            "JOBS_ADDR": f"127.0.0.1:{ports['jobs']}",
            "WORKSPACE_PORT": str(ports["workspace"]),
            "WORKSPACE_ADDR": f"127.0.0.1:{ports['workspace']}",
            # Enough attempts that the kills cannot fail a job: every job must complete.
            "JOBS_MAX_ATTEMPTS": "10",
            "JOBS_MAX_ACTIVE_PER_USER": "200",
            # A few users submit in bursts far above a person's pace.
            "GATEWAY_JOBS_PER_MINUTE": "100000",
            "GATEWAY_JOBS_BURST": "100000",
            # Short bounds, so a run takes minutes; the rules are the production ones.
            "JOBS_WORKER_SILENT_SECONDS": "8",
            "JOBS_QUEUED_CHECK_SECONDS": "10",
            "JOBS_RECONCILE_SECONDS": "1",
            "JOBS_GC_GRACE_SECONDS": "0",
            "JOBS_GC_INTERVAL_SECONDS": "3",
            "SDXL_MODEL": "tiny",
            "SDXL_ACK_WAIT_SECONDS": "6",
            "SDXL_PROGRESS_INTERVAL_SECONDS": "0",
            "SDXL_DEPENDENCY_NAK_SECONDS": "2",
            "SDXL_SHUTDOWN_GRACE_SECONDS": "10",
        }
        env = self.env
        # Each process gets its own database login only; the workers none.
        self.procs["jobs"] = Proc(
            "jobs", "services.jobs", own_database_env("jobs", env), self.logs,
            grpc_serving(ports["jobs"]),
        )  # fmt: skip
        self.procs["workspace"] = Proc(
            "workspace", "services.workspace", own_database_env("workspace", env), self.logs,
            grpc_serving(ports["workspace"]),
        )  # fmt: skip
        for n in range(workers):
            port = free_port(used)
            used.add(port)
            worker_env = {
                **own_database_env("sdxl", env), "SDXL_PORT": str(port), "SDXL_WORKER_ID": f"sdxl-{n}"
            }  # fmt: skip
            self.procs[f"sdxl-{n}"] = Proc(
                f"sdxl-{n}", "services.sdxl", worker_env, self.logs, grpc_serving(port)
            )
        self.procs["gateway"] = Proc(
            "gateway", "services.gateway", own_database_env("gateway", env), self.logs,
            http_ready(f"{self.gateway_url}/readyz"),
        )  # fmt: skip

    async def start_all(self) -> None:
        for name in ("workspace", "jobs"):
            await self.procs[name].start()
            await self.procs[name].ready()
        for proc in self.workers:
            await proc.start()
        await self.procs["gateway"].start()
        for proc in self.procs.values():
            await proc.ready()

    @property
    def workers(self) -> list[Proc]:
        return [p for name, p in self.procs.items() if name.startswith("sdxl-")]

    async def restart(self, name: str, wait_ready: bool = True) -> None:
        proc = self.procs[name]
        await proc.start()
        if wait_ready:
            await proc.ready()

    async def stop_all(self) -> None:
        for name in ("gateway", *[p.name for p in self.workers], "jobs", "workspace"):
            proc = self.procs.get(name)
            if proc is not None and proc.alive:
                await proc.signal(signal.SIGTERM, wait=30)
        self.emb.stop()

    # --- clients ---------------------------------------------------------------------

    async def signup(self, http: httpx.AsyncClient) -> User:
        email = f"fault-{uuid.uuid4().hex[:10]}@example.com"
        account = {"email": email, "password": "a long fault password"}
        response = await http.post(f"{self.gateway_url}/v1/auth/signup", json=account)
        assert response.status_code == 202, response.text
        response = await http.post(f"{self.gateway_url}/v1/auth/login", json=account)
        assert response.status_code == 200, response.text
        body = response.json()
        return User(body["access_token"], body["user"]["id"])

    async def submit(
        self, http: httpx.AsyncClient, user: User, tally: Tally, num_images: int = 1
    ) -> Accepted | None:
        """One job; None when the API refused it (a 503 while a dependency is away)."""
        body = {
            "job_type": "sdxl_image_fast",
            "prompt": "a lighthouse in a storm, fault suite",
            "num_images": num_images,
            "seed": int(uuid.uuid4().int % 100_000),
            "width": 64,
            "height": 64,
        }
        key = uuid.uuid4().hex
        for _ in range(3):  # a client retries on a lost answer with the same key
            try:
                response = await http.post(
                    f"{self.gateway_url}/v1/jobs",
                    json=body,
                    headers={**user.headers, "Idempotency-Key": key},
                    timeout=30,
                )
            except httpx.HTTPError:
                await asyncio.sleep(0.5)
                continue
            tally.add(response)
            if response.status_code == 202:
                return Accepted(response.json()["id"], user, num_images)
            return None
        return None

    async def submit_many(
        self, http, users: list[User], count: int, tally: Tally, within: float = 120.0
    ) -> list[Accepted]:
        """`count` accepted jobs. A refusal (503 while a service reconnects
        after the last fault) is retried after its Retry-After, as a client
        would; every answer is in `tally`."""
        accepted = []
        deadline = time.monotonic() + within
        for n in range(count):
            while True:
                job = await self.submit(
                    http, users[n % len(users)], tally, num_images=1 + 2 * (n % 2)
                )
                if job is not None:
                    accepted.append(job)
                    break
                assert time.monotonic() < deadline, f"submits refused for {within} s: {tally}"
                await asyncio.sleep(1.0)
        return accepted

    async def probe(self, http: httpx.AsyncClient, job: Accepted, tally: Tally) -> Accepted | None:
        """What a user's client does meanwhile: read one of its jobs, list its
        jobs, submit (the job, when it was accepted)."""
        user = job.user
        for path in (f"/v1/jobs/{job.id}", "/v1/jobs?page_size=5"):
            with contextlib.suppress(httpx.HTTPError):
                tally.add(await http.get(f"{self.gateway_url}{path}", headers=user.headers))
        return await self.submit(http, user, tally)

    # --- the truth ---------------------------------------------------------------------

    def query(self, sql: str, params=()) -> list[dict]:
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            return conn.execute(sql, params).fetchall()

    async def states(self, job_ids: list[str], within: float = 300.0) -> dict[str, str]:
        deadline = time.monotonic() + within
        while True:
            assert time.monotonic() < deadline, "the database did not answer"
            try:
                rows = self.query(
                    "SELECT id::text, state FROM jobs.jobs WHERE id = ANY(%s::uuid[])", (job_ids,)
                )
                return {r["id"]: r["state"] for r in rows}
            except psycopg.OperationalError:
                await asyncio.sleep(0.5)

    async def wait_terminal(self, jobs: list[Accepted], within: float) -> dict[str, str]:
        ids = [j.id for j in jobs]
        deadline = time.monotonic() + within
        while True:
            states = await self.states(ids)
            active = [i for i in ids if states.get(i) not in ("completed", "failed", "cancelled")]
            if not active:
                return states
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(active)} jobs not terminal: {active[:5]}")
            await asyncio.sleep(0.5)

    def objects(self) -> set[tuple[str, str]]:
        from minio import Minio

        client = Minio(self.emb.s3_endpoint, "testing", "testing", secure=False)
        found = set()
        for bucket in OUTPUT_BUCKETS:
            if client.bucket_exists(bucket):
                for obj in client.list_objects(bucket, recursive=True):
                    found.add((bucket, obj.object_name))
        return found

    async def check(self, jobs: list[Accepted], within: float = 300.0) -> dict:
        """The invariant after a fault; returns the figures for the report."""
        states = await self.wait_terminal(jobs, within)
        cancelled = {j.id for j in jobs if j.cancelled and states[j.id] == "cancelled"}
        wrong_end = {
            j.id: states[j.id]
            for j in jobs
            if j.id not in cancelled and states[j.id] != "completed"
        }
        assert not wrong_end, f"jobs that did not complete: {wrong_end}"
        ids = [j.id for j in jobs if j.id not in cancelled]
        wanted = {j.id: j.num_images for j in jobs}
        stray = self.query(
            "SELECT job_id::text FROM jobs.assets WHERE job_id = ANY(%s::uuid[])",
            (list(cancelled),),
        )
        assert not stray, f"cancelled jobs with assets: {stray}"
        assets = self.query(
            "SELECT job_id::text, index, bucket, key, thumbnail_bucket, thumbnail_key "
            "FROM jobs.assets WHERE job_id = ANY(%s::uuid[])",
            (ids,),
        )
        by_job: dict[str, list[int]] = {}
        for a in assets:
            by_job.setdefault(a["job_id"], []).append(a["index"])
        wrong = {
            i: sorted(by_job.get(i, []))
            for i in ids
            if sorted(by_job.get(i, [])) != list(range(wanted[i]))
        }
        assert not wrong, f"jobs without exactly their assets: {wrong}"
        completions = self.query(
            "SELECT job_id::text, count(*) AS n FROM jobs.job_events "
            "WHERE type = 'completed' AND job_id = ANY(%s::uuid[]) GROUP BY job_id",
            (ids,),
        )
        twice = [r for r in completions if r["n"] != 1]
        assert not twice and len(completions) == len(ids), f"completed twice or never: {twice}"

        # The filer files every asset once (its table refuses a second copy).
        deadline = time.monotonic() + 60
        while True:
            filed = self.query(
                "SELECT job_id, index, count(*) AS n FROM workspace.items "
                "WHERE job_id = ANY(%s) GROUP BY job_id, index",
                (ids,),
            )
            if len(filed) == len(assets) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert len(filed) == len(assets), f"{len(filed)} items filed for {len(assets)} assets"
        assert all(r["n"] == 1 for r in filed)

        # Every blob an asset points at exists; after the collector, nothing
        # else does (jobs of other tests may still be finishing: asked anew).
        deadline = time.monotonic() + 60
        while True:
            every_asset = self.query(
                "SELECT bucket, key, thumbnail_bucket, thumbnail_key FROM jobs.assets"
            )
            kept = {(a["bucket"], a["key"]) for a in every_asset} | {
                (a["thumbnail_bucket"], a["thumbnail_key"])
                for a in every_asset
                if a["thumbnail_key"]
            }
            objects = self.objects()
            orphans = objects - kept
            if not orphans or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        missing = {(a["bucket"], a["key"]) for a in assets} - objects
        assert not missing, f"completed jobs with missing files: {sorted(missing)[:5]}"
        assert not orphans, f"orphan blobs after the collector ran: {sorted(orphans)[:5]}"
        attempts = self.query(
            "SELECT max(attempt) AS most, sum(attempt) AS total FROM jobs.jobs "
            "WHERE id = ANY(%s::uuid[])",
            (ids,),
        )[0]
        return {
            "jobs": len(jobs),
            "completed": len(ids),
            "cancelled": len(cancelled),
            "assets": len(assets),
            "lost": len(jobs) - len(states),
            "duplicate_items": sum(r["n"] - 1 for r in filed),
            "orphan_blobs": len(orphans),
            "missing_blobs": len(missing),
            "most_attempts": attempts["most"],
            "attempts": attempts["total"],
        }
