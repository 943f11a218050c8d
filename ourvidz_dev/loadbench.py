"""The control-plane load bench: many users submitting and watching jobs over
HTTP and SSE against the real mesh, with the SDXL `control-plane` preset (no
model: every step reported, none computed; flat PNGs), so that what is timed
is the gateway, Jobs, the queue, the worker loop's bookkeeping (StartJob,
progress, uploads, CompleteJob, acks) and Workspace filing.

Part `control-plane` of `make bench` (`python -m ourvidz_dev.bench --only
control-plane`); alone and with its options: `python -m ourvidz_dev.loadbench`.

Every service runs as its own process (`python -m services.<name>`, as `make
up` runs them) on embedded PostgreSQL, NATS JetStream and an S3 server (moto,
its own process too), so each process's memory (RSS) and CPU time are read
from /proc. The load comes from this process.

Phases, in order:

1. idle: the services up, users signed up, nothing happening;
2. serial: one user, one job at a time, each after a pause of 0–`--think` s
   (so that jobs reach an idle worker at any point of its wait for work): the
   latencies of an unloaded mesh;
3. load: `--users` users × `--jobs` jobs each, every user holding at most
   `--inflight` jobs at once (closed loop), watching each job over SSE
   (`/v1/jobs/{id}/events`) and its workspace session over SSE, as the studio
   does; submit→start (server: created_at→started_at; client: POST → the
   `running` event), submit→completed, completed→filed, jobs/s;
4. queue: the workers stopped, `--queue` jobs submitted (at most the per-user
   limit each, so by queue/limit users), held in Jobs' line; then the
   workers started (all at once), and the drain timed until no job is queued
   or running, every job completed and every output filed;
5. watchers: `--watchers` idle SSE streams on workspace sessions (a studio
   page left open), spread over the users; last, since a process seldom gives
   memory back.

`--workers` SDXL worker processes (default 2) share the queue's durable
consumer, as replicas do in production.

The gateway's abuse limits on sign-ups per address and job submissions per
user are lifted (the bench signs every user up from one address and submits
faster than a person). The per-user active-job limit (JOBS_MAX_ACTIVE_PER_USER)
keeps its default (10): the load holds at most `--inflight` (≤ 10) jobs per user, and the queue
is built by many users. Each job is a 1-image `sdxl_image_fast` at 64×64
(the dev profile's smallest size): 15 steps reported, one small PNG uploaded.

Memory is each service's RSS (PostgreSQL: PSS summed over its processes, so
shared buffers count once) at the end of each phase and at its peak (sampled
every 0.5 s); CPU is each process's user+system time over a phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from ourvidz_cli.sse import SseParser

DEFAULT_LIMIT = 10  # JOBS_MAX_ACTIVE_PER_USER's default, which the bench keeps
JOB_TYPE = "sdxl_image_fast"
SIZE = 64
SECRET = "bench-secret-0123456789-0123456789-0123"
PASSWORD = "bench password 0123"
MIB = 1024 * 1024


# --- statistics -------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation between the two
    nearest ranks (numpy's default, `statistics.quantiles(method="inclusive")`):
    rank (n-1)·q/100 of the sorted values. NaN when there are none."""
    data = sorted(values)
    if not data:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not in [0, 100]")
    rank = (len(data) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    n: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        data = [v for v in values if v is not None and not math.isnan(v)]
        return cls(
            n=len(data),
            p50=percentile(data, 50),
            p99=percentile(data, 99),
            max=max(data) if data else math.nan,
        )


def rate(count: int, seconds: float) -> float:
    """Events per second; NaN over no time."""
    return count / seconds if seconds > 0 else math.nan


def parse_time(value: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp (the API's `...Z`)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def span(starts: Iterable[float], ends: Iterable[float]) -> float:
    """From the earliest start to the latest end."""
    return max(ends) - min(starts)


def ms(seconds: float) -> str:
    return "–" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


# --- processes: memory and CPU from /proc ---------------------------------------------------


def parse_status_kib(text: str, key: str) -> int | None:
    """A `kB` field of /proc/<pid>/status or smaps_rollup (VmRSS, Pss), in bytes."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            parts = value.split()
            if parts and parts[0].isdigit():
                return int(parts[0]) * 1024
    return None


def rss_bytes(pid: int) -> int | None:
    """The resident set size of `pid` (VmRSS), None when it is gone."""
    try:
        return parse_status_kib(Path(f"/proc/{pid}/status").read_text(), "VmRSS")
    except OSError:
        return None


def pss_bytes(pid: int) -> int | None:
    """The proportional set size of `pid`: shared pages divided among their users."""
    try:
        return parse_status_kib(Path(f"/proc/{pid}/smaps_rollup").read_text(), "Pss")
    except OSError:
        return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time `pid` has used."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The direct children of `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


@dataclass
class Probe:
    """One measured thing: a process, or a process with its children (PostgreSQL
    runs a process per connection; their sum of PSS counts shared memory once)."""

    name: str
    pid: Callable[[], int | None]
    with_children: bool = False

    def pids(self) -> list[int]:
        pid = self.pid()
        if pid is None:
            return []
        return [pid, *children(pid)] if self.with_children else [pid]

    def memory(self) -> int | None:
        pids = self.pids()
        if not pids:
            return None
        read = pss_bytes if self.with_children else rss_bytes
        values = [read(p) for p in pids]
        return sum(v for v in values if v is not None)

    def cpu(self) -> float | None:
        pids = self.pids()
        if not pids:
            return None
        return sum(c for c in (cpu_seconds(p) for p in pids) if c is not None)


class Sampler:
    """Samples every probe's memory every `interval` seconds in a thread, and
    keeps each phase's peak; `snapshot()` reads every probe now."""

    def __init__(self, probes: Sequence[Probe], interval: float = 0.5) -> None:
        self.probes = list(probes)
        self.interval = interval
        self.phase = ""
        self.peaks: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def snapshot(self) -> dict[str, int | None]:
        return {p.name: p.memory() for p in self.probes}

    def cpu(self) -> dict[str, float | None]:
        return {p.name: p.cpu() for p in self.probes}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            phase = self.phase
            if not phase:
                continue
            peaks = self.peaks.setdefault(phase, {})
            for name, value in self.snapshot().items():
                if value is not None:
                    peaks[name] = max(peaks.get(name, 0), value)


def cpu_used(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float]:
    """CPU seconds each probe used between two readings (a process that was
    not running at one of them counts from what it had at the other)."""
    return {k: (after.get(k) or 0.0) - (before.get(k) or 0.0) for k in after}


# --- the HTTP client side ---------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


@dataclass
class User:
    email: str
    token: str
    session_id: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Trace:
    """One job as the client saw it (monotonic seconds) and as the server
    recorded it (its created/started/completed times, epoch seconds)."""

    user: int
    posted: float = math.nan
    accepted: float = math.nan
    running: float = math.nan
    completed: float = math.nan
    filed: float = math.nan
    job_id: str = ""
    state: str = ""
    created_at: float = math.nan
    started_at: float = math.nan
    completed_at: float = math.nan
    filed_at: float = math.nan  # its workspace item's created_at (server)
    refused: int = 0  # 429s before it was accepted

    def seen_running(self, at: float) -> None:
        if math.isnan(self.running) or at < self.running:
            self.running = at

    def record(self, job: dict) -> None:
        self.state = job.get("state") or self.state
        for name in ("created_at", "started_at", "completed_at"):
            if job.get(name):
                setattr(self, name, parse_time(job[name]))


def latencies(traces: Sequence[Trace]) -> dict[str, Summary]:
    """The latency lines of a set of finished jobs."""
    return {
        "POST /v1/jobs answered": Summary.of(t.accepted - t.posted for t in traces),
        "submit → start (server: created_at → started_at)": Summary.of(
            t.started_at - t.created_at for t in traces
        ),
        "submit → `running` event (client)": Summary.of(t.running - t.posted for t in traces),
        "start → completed (server: the worker's StartJob → CompleteJob)": Summary.of(
            t.completed_at - t.started_at for t in traces
        ),
        "submit → completed (server)": Summary.of(t.completed_at - t.created_at for t in traces),
        "submit → `completed` event (client)": Summary.of(t.completed - t.posted for t in traces),
        "`completed` → filed in the workspace (client)": Summary.of(
            t.filed - t.completed for t in traces
        ),
    }


async def read_sse(
    http: httpx.AsyncClient,
    path: str,
    user: User,
    on_event: Callable[[str, dict, float], bool | None],
    opened: asyncio.Event | None = None,
) -> None:
    """Read an SSE stream; `on_event(name, data, t)` for each event, until it
    returns True or the server ends the stream."""
    parser = SseParser()
    timeout = httpx.Timeout(None, connect=30.0)
    async with http.stream("GET", path, headers=user.headers, timeout=timeout) as response:
        if response.status_code != 200:
            raise BenchError(f"GET {path}: {response.status_code} {await response.aread()!r}")
        if opened is not None:
            opened.set()
        async for chunk in response.aiter_text():
            now = time.monotonic()
            for event in parser.feed(chunk):
                if on_event(event.event, event.json(), now):
                    return


class SessionWatch:
    """A user's workspace session stream: the live `state` events of the
    user's jobs and the `item` events of their filed outputs."""

    def __init__(self, http: httpx.AsyncClient, user: User) -> None:
        self.http = http
        self.user = user
        self.running: dict[str, float] = {}
        self.filed: dict[str, float] = {}
        self.changed = asyncio.Event()
        self.opened = asyncio.Event()
        self.task: asyncio.Task | None = None

    def _on_event(self, name: str, data: dict, now: float) -> None:
        if name == "state" and data.get("state") == "running":
            self.running.setdefault(data.get("job_id", ""), now)
        elif name == "item":
            self.filed.setdefault(data.get("item", {}).get("job_id", ""), now)
            self.changed.set()

    async def open(self) -> None:
        path = f"/v1/workspace/sessions/{self.user.session_id}/events"
        self.task = asyncio.create_task(
            read_sse(self.http, path, self.user, self._on_event, self.opened)
        )
        await asyncio.wait_for(self.opened.wait(), 30)
        await asyncio.sleep(0.2)  # the gateway's WatchSession reaches Workspace

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


def job_body(user: User, seed: int) -> dict:
    return {
        "job_type": JOB_TYPE,
        "prompt": f"a lighthouse at dusk, study {seed}",
        "num_images": 1,
        "seed": seed,
        "width": SIZE,
        "height": SIZE,
        "workspace_session_id": user.session_id,
    }


async def submit(http: httpx.AsyncClient, user: User, trace: Trace, seed: int) -> dict:
    """POST the job; a 429 (the user's active-job limit) waits and retries."""
    trace.posted = time.monotonic()
    while True:
        response = await http.post("/v1/jobs", headers=user.headers, json=job_body(user, seed))
        if response.status_code == 202:
            trace.accepted = time.monotonic()
            job = response.json()
            trace.job_id = job["id"]
            trace.record(job)
            return job
        if response.status_code == 429:
            trace.refused += 1
            await asyncio.sleep(0.2)
            continue
        raise BenchError(f"POST /v1/jobs: {response.status_code} {response.text}")


async def run_and_watch(
    http: httpx.AsyncClient, user: User, index: int, session: SessionWatch, seed: int
) -> Trace:
    """Submit one job and watch it over SSE until it ends."""
    trace = Trace(user=index)
    job = await submit(http, user, trace, seed)

    def on_event(name: str, data: dict, now: float) -> bool:
        if name == "state" and data.get("state") == "running":
            trace.seen_running(now)
        if name in ("completed", "failed", "cancelled"):
            trace.completed = now
            if data.get("job"):
                trace.record(data["job"])
            return True
        return False

    await read_sse(http, f"/v1/jobs/{job['id']}/events", user, on_event)
    if job["id"] in session.running:
        trace.seen_running(session.running[job["id"]])
    return trace


async def wait_filed(
    sessions: Mapping[int, SessionWatch], traces: Sequence[Trace], within: float
) -> None:
    """Until every trace's job was filed (its `item` event seen), or `within` s."""
    by_user: dict[int, list[Trace]] = {}
    for t in traces:
        by_user.setdefault(t.user, []).append(t)
    deadline = time.monotonic() + within
    for index, user_traces in by_user.items():
        session = sessions[index]
        while not all(t.job_id in session.filed for t in user_traces):
            session.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.changed.wait(), left)
        for t in user_traces:
            t.filed = session.filed.get(t.job_id, math.nan)


# --- the bench ----------------------------------------------------------------------------------


@dataclass
class Options:
    users: int = 10
    jobs: int = 50
    inflight: int = 5
    serial: int = 20
    think: float = 1.0
    watchers: int = 500
    queue: int = 1000
    workers: int = 2
    keep: bool = False


@dataclass
class Results:
    machine: str = ""
    setup_seconds: float = 0.0
    memory: dict[str, dict[str, int | None]] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    latency: dict[str, dict[str, Summary]] = field(default_factory=dict)
    lines: list[tuple[str, str]] = field(default_factory=list)

    def line(self, name: str, value: str) -> None:
        self.lines.append((name, value))
        print(f"  {name}: {value}", file=sys.stderr, flush=True)


def machine() -> str:
    model, total = "", 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    with contextlib.suppress(OSError):
        total = parse_status_kib(Path("/proc/meminfo").read_text(), "MemTotal") or 0
    return (
        f"{os.cpu_count()} CPUs ({model or platform.machine()}), "
        f"{total / 2**30:.0f} GiB, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def raise_file_limit() -> None:
    """Every SSE stream is a socket here and in the gateway: lift the soft
    limit on open files to the hard one (the services inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _gather_limited(coros: Iterable, limit: int) -> list:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro):
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def signup(http: httpx.AsyncClient, tag: str, i: int) -> User:
    email = f"{tag}-{i}@bench.example.com"
    account = {"email": email, "password": PASSWORD}
    response = await http.post("/v1/auth/signup", json=account)
    if response.status_code != 202:
        raise BenchError(f"signup: {response.status_code} {response.text}")
    # Sign-up hands out no tokens: log in.
    response = await http.post("/v1/auth/login", json=account)
    if response.status_code != 200:
        raise BenchError(f"login: {response.status_code} {response.text}")
    user = User(email=email, token=response.json()["access_token"])
    session = await http.post(
        "/v1/workspace/sessions", headers=user.headers, json={"name": "bench"}
    )
    if session.status_code != 201:
        raise BenchError(f"session: {session.status_code} {session.text}")
    user.session_id = session.json()["id"]
    return user


async def jobs_not_started(database_url: str) -> int:
    """Jobs queued (in Jobs' line or on the queue) or running: Jobs holds a
    job until a worker has room, so the queue alone does not show them."""
    import psycopg

    def count() -> int:
        with psycopg.connect(database_url) as conn:
            query = "SELECT count(*) FROM jobs.jobs WHERE state IN ('queued', 'running')"
            return conn.execute(query).fetchone()[0]

    return await asyncio.to_thread(count)


async def run_bench(opts: Options) -> Results:
    from ourvidz import db
    from ourvidz.migrate import migration_folders
    from ourvidz_dev.embedded import Embedded, start_nats, start_postgres, start_s3_process
    from ourvidz_dev.stack import ServiceProcesses
    from ourvidz_dev.up import dev_keys

    if not 1 <= opts.inflight <= DEFAULT_LIMIT:
        raise BenchError(f"--inflight must be 1..{DEFAULT_LIMIT} (the per-user active-job limit)")
    results = Results(machine=machine())
    raise_file_limit()
    tmp = Path(tempfile.mkdtemp(prefix="ovcp"))  # short: PostgreSQL's socket lives here
    emb = Embedded()
    procs: ServiceProcesses | None = None
    sampler: Sampler | None = None
    started = time.monotonic()
    try:
        start_postgres(tmp / "pg", emb)
        start_nats(tmp / "nats", emb)
        start_s3_process(tmp / "logs", emb)
        passwords = db.dev_passwords("bench")
        db.prepare(emb.database_url, passwords, migration_folders())
        key_settings, worker_keys = dev_keys(tmp / "keys", ("worker",))
        env = {
            **os.environ,
            "OURVIDZ_ENV": "dev", **db.service_url_env(emb.database_url, passwords),
            "NATS_URL": emb.nats_url, "STORAGE_BACKEND": "s3", "S3_ENDPOINT": emb.s3_endpoint,
            "S3_ACCESS_KEY": "bench", "S3_SECRET_KEY": "bench", **key_settings,
            "WORKER_KEY_FILE": worker_keys["worker"],
            "STORAGE_SIGNING_KEY": SECRET, "SDXL_MODEL": "control-plane",
            "LOG_LEVEL": "WARNING", "LOG_JSON": "false",
            # Every bench user signs up from one address and submits faster than
            # a person: the gateway's abuse limits would measure themselves.
            "GATEWAY_SIGNUPS_PER_ADDRESS": "100000", "GATEWAY_JOBS_PER_MINUTE": "100000",
            "GATEWAY_JOBS_BURST": "100000",
        }  # fmt: skip
        for key in ("JOBS_MAX_ACTIVE_PER_USER", "ENHANCER_ADDR"):
            env.pop(key, None)
        procs = ServiceProcesses(env=env, log_dir=tmp / "logs")
        for name in ("workspace", "jobs", "gateway"):
            procs.start(name)
        workers = [f"sdxl-{i + 1}" for i in range(opts.workers)]

        async def start_workers() -> None:
            """All at once, so that none drains the queue alone for long."""
            await asyncio.gather(
                *(
                    asyncio.to_thread(
                        procs.start, name, "sdxl", env={"SDXL_WORKER_ID": f"bench-{name}"}
                    )
                    for name in workers
                )
            )

        await start_workers()
        probes = [Probe(n, lambda n=n: procs.pid(n)) for n in ("gateway", "jobs", "workspace")]
        probes += [Probe(n, lambda n=n: procs.pid(n)) for n in workers]
        probes += [
            Probe("nats-server", lambda: emb.pids.get("nats")),
            Probe("postgres (PSS, all its processes)", lambda: emb.pids.get("postgres"), True),
            Probe("s3 (moto)", lambda: emb.pids.get("s3")),
            Probe("bench client (this process)", os.getpid),
        ]
        sampler = Sampler(probes)
        sampler.start()

        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=procs.url, timeout=60, limits=limits) as http:
            queue_users = math.ceil(opts.queue / DEFAULT_LIMIT)
            n_users = max(opts.users + 1, queue_users)
            users = await _gather_limited((signup(http, "u", i) for i in range(n_users)), 4)
            results.setup_seconds = time.monotonic() - started
            results.line("set-up (servers, services, signups)", f"{results.setup_seconds:.1f} s")

            # 1. idle
            await asyncio.sleep(2)
            results.memory["idle"] = sampler.snapshot()

            # 2. serial: one user, one job at a time (warms every path up first)
            solo, solo_index = users[-1], n_users - 1
            session = SessionWatch(http, solo)
            await session.open()
            await run_and_watch(http, solo, solo_index, session, 0)
            traces = []
            think = random.Random(0)
            for i in range(opts.serial):
                # a pause like a person's, so jobs reach an idle worker at any point of its wait
                await asyncio.sleep(think.uniform(0, opts.think))
                traces.append(await run_and_watch(http, solo, solo_index, session, i + 1))
            await wait_filed({solo_index: session}, traces, 30)
            await session.close()
            name = f"serial: 1 user, {opts.serial} jobs one at a time, 0–{opts.think:g} s apart"
            results.latency[name] = latencies(traces)

            # 3. load
            load_users = users[: opts.users]
            sessions = [SessionWatch(http, u) for u in load_users]
            await asyncio.gather(*(s.open() for s in sessions))
            sampler.phase = "load"
            cpu_before = sampler.cpu()
            t0 = time.monotonic()

            async def user_load(index: int) -> list[Trace]:
                gate = asyncio.Semaphore(opts.inflight)

                async def one(j: int) -> Trace:
                    async with gate:
                        return await run_and_watch(
                            http, load_users[index], index, sessions[index], 1000 + j
                        )

                return await asyncio.gather(*(one(j) for j in range(opts.jobs)))

            per_user = await asyncio.gather(*(user_load(i) for i in range(opts.users)))
            t1 = time.monotonic()
            load = [t for ts in per_user for t in ts]
            await wait_filed(dict(enumerate(sessions)), load, 60)
            results.cpu["load"] = cpu_used(cpu_before, sampler.cpu())
            sampler.phase = ""
            await asyncio.gather(*(s.close() for s in sessions))
            name = (
                f"load: {opts.users} users × {opts.jobs} jobs, ≤ {opts.inflight} in flight each, "
                f"{opts.workers} worker(s)"
            )
            results.latency[name] = latencies(load)
            bad = [t for t in load if t.state != "completed"]
            if bad:
                raise BenchError(f"{len(bad)} load jobs ended {bad[0].state!r}")
            n = len(load)
            results.line(
                "load: jobs/s, first POST → last `completed` event (client)",
                f"{rate(n, t1 - t0):.1f} ({n} jobs in {t1 - t0:.1f} s)",
            )
            server = span([t.created_at for t in load], [t.completed_at for t in load])
            results.line(
                "load: jobs/s, first created_at → last completed_at (server)",
                f"{rate(n, server):.1f}",
            )
            results.line(
                "load: 429 answers (per-user limit) while submitting",
                str(sum(t.refused for t in load)),
            )
            results.line(
                "load: CPU seconds per job, by process",
                ", ".join(f"{k} {v / n * 1000:.0f} ms" for k, v in results.cpu["load"].items()),
            )

            # 4. the queue
            for name in workers:
                procs.stop(name)
            queued: list[Trace] = []
            cpu_before = sampler.cpu()
            t0 = time.monotonic()

            async def fill(index: int) -> None:
                user = users[index]
                for j in range(min(DEFAULT_LIMIT, opts.queue - index * DEFAULT_LIMIT)):
                    trace = Trace(user=index)
                    await submit(http, user, trace, 5000 + j)
                    queued.append(trace)

            await _gather_limited((fill(i) for i in range(queue_users)), 20)
            t_posted = time.monotonic()
            while await jobs_not_started(emb.database_url) < opts.queue:
                if time.monotonic() - t_posted > 60:
                    left = await jobs_not_started(emb.database_url)
                    raise BenchError(f"only {left} jobs are queued")
                await asyncio.sleep(0.1)
            t_published = time.monotonic()
            results.cpu["queue: submit"] = cpu_used(cpu_before, sampler.cpu())
            results.line(
                f"queue: {opts.queue} jobs submitted (no worker), jobs/s accepted",
                f"{rate(opts.queue, t_posted - t0):.1f} "
                f"(all queued {t_published - t_posted:.1f} s after the last 202)",
            )
            submit_summary = Summary.of(t.accepted - t.posted for t in queued)
            results.line(
                "queue: POST /v1/jobs answered, p50 / p99 ms",
                f"{ms(submit_summary.p50)} / {ms(submit_summary.p99)} (20 clients at once)",
            )
            await asyncio.sleep(2)
            results.memory[f"{opts.queue} jobs queued"] = sampler.snapshot()

            sampler.phase = "drain"
            t_start = time.monotonic()
            await start_workers()
            t_ready = time.monotonic()
            # From here on: the workers' start-up (imports) left out, and the
            # jobs a worker ready first took meanwhile too.
            cpu_before = sampler.cpu()
            left_at_ready = await jobs_not_started(emb.database_url)
            while await jobs_not_started(emb.database_url) > 0:
                if time.monotonic() - t_ready > 600:
                    raise BenchError("the queue did not drain in 10 minutes")
                await asyncio.sleep(0.2)
            t_drained = time.monotonic()
            results.cpu["queue: drain"] = cpu_used(cpu_before, sampler.cpu())
            sampler.phase = ""
            await _collect(http, users[:queue_users], queued)
            not_done = [t for t in queued if t.state != "completed"]
            if not_done:
                raise BenchError(f"{len(not_done)} queued jobs ended {not_done[0].state!r}")
            await _all_filed(http, users, queued)
            server = span([t.started_at for t in queued], [t.completed_at for t in queued])
            results.line(
                f"queue: {opts.workers} worker(s) start → ready (process, imports, preset)",
                f"{t_ready - t_start:.1f} s",
            )
            results.line(
                f"queue: drain, jobs/s ({opts.workers} worker(s) ready → queue empty, client)",
                f"{rate(left_at_ready, t_drained - t_ready):.1f} "
                f"({left_at_ready} jobs in {t_drained - t_ready:.1f} s)",
            )
            results.line(
                "queue: drain, jobs/s (server: first started_at → last completed_at)",
                f"{rate(opts.queue, server):.1f}",
            )
            results.line(
                "queue: the last output filed (server), after the last job completed",
                f"{max(t.filed_at for t in queued) - max(t.completed_at for t in queued):.1f} s",
            )
            results.latency[f"drain: {len(queued)} queued jobs, {opts.workers} worker(s)"] = {
                "start → completed (server: the worker's StartJob → CompleteJob)": Summary.of(
                    t.completed_at - t.started_at for t in queued
                ),
                "completed → filed (server: completed_at → workspace item created_at)": Summary.of(
                    t.filed_at - t.completed_at for t in queued
                ),
            }
            results.memory["after the drain"] = sampler.snapshot()
            drained = max(left_at_ready, 1)
            results.line(
                "queue: CPU seconds per drained job, by process",
                ", ".join(
                    f"{k} {v / drained * 1000:.0f} ms"
                    for k, v in results.cpu["queue: drain"].items()
                ),
            )

            # 5. idle watchers (last: a process seldom gives memory back)
            await asyncio.sleep(1)
            watches = [SessionWatch(http, users[i % n_users]) for i in range(opts.watchers)]
            t0 = time.monotonic()
            await _gather_limited((w.open() for w in watches), 50)
            results.line(
                f"watchers: {opts.watchers} session streams opened in",
                f"{time.monotonic() - t0:.1f} s",
            )
            cpu_before = sampler.cpu()
            await asyncio.sleep(5)
            results.memory[f"{opts.watchers} idle SSE watchers"] = sampler.snapshot()
            results.cpu["watchers (5 s idle)"] = cpu_used(cpu_before, sampler.cpu())
            await asyncio.gather(*(w.close() for w in watches))
        # Columns in the order of the run, with each phase's peak after it.
        measured = results.memory
        results.memory = {"idle": measured["idle"]}
        results.memory["peak during the load"] = sampler.peaks.get("load", {})
        results.memory.update({k: v for k, v in measured.items() if k.endswith("queued")})
        results.memory["peak during the drain"] = sampler.peaks.get("drain", {})
        results.memory.update({k: v for k, v in measured.items() if k not in results.memory})
        return results
    except BaseException:
        if procs is not None:
            for name in list(procs.procs):
                print(f"--- {name} log ---\n{procs.log_tail(name)}", file=sys.stderr)
        raise
    finally:
        if sampler is not None:
            sampler.stop()
        if procs is not None:
            procs.stop_all()
        emb.stop()
        if opts.keep:
            print(f"logs kept in {tmp / 'logs'}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


async def _pages(http: httpx.AsyncClient, user: User, path: str) -> list[dict]:
    """Every item of a paged list."""
    items, token = [], ""
    while True:
        params = {"page_size": 100, "page_token": token}
        response = await http.get(path, headers=user.headers, params=params)
        if response.status_code != 200:
            raise BenchError(f"GET {path}: {response.status_code} {response.text}")
        body = response.json()
        items += body["items"]
        token = body.get("next_page_token") or ""
        if not token:
            return items


async def _collect(http: httpx.AsyncClient, users: Sequence[User], traces: Sequence[Trace]) -> None:
    """Fill the traces' server times from each user's job list."""
    by_id = {t.job_id: t for t in traces}

    async def one(user: User) -> None:
        for job in await _pages(http, user, "/v1/jobs"):
            if job["id"] in by_id:
                by_id[job["id"]].record(job)

    await _gather_limited((one(u) for u in users), 10)


async def _all_filed(
    http: httpx.AsyncClient, users: Sequence[User], traces: Sequence[Trace]
) -> None:
    """Poll the users' sessions until every job of `traces` has its output
    filed; each trace's `filed_at` is its item's created_at (server time)."""
    by_id = {t.job_id: t for t in traces}
    pending = sorted({t.user for t in traces})
    deadline = time.monotonic() + 120
    while pending:
        left = []
        for index in pending:
            user = users[index]
            path = f"/v1/workspace/sessions/{user.session_id}/items"
            for item in await _pages(http, user, path):
                trace = by_id.get(item["job_id"])
                if trace is not None and item.get("created_at"):
                    trace.filed_at = parse_time(item["created_at"])
            if any(math.isnan(t.filed_at) for t in traces if t.user == index):
                left.append(index)
        pending = left
        if pending:
            if time.monotonic() > deadline:
                raise BenchError(f"{len(pending)} users' outputs not filed after 120 s")
            await asyncio.sleep(0.5)


# --- the report --------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(results: Results) -> str:
    out = [f"Machine: {results.machine}", ""]
    for phase, lines in results.latency.items():
        out.append(f"{phase}:")
        out.append("")
        out.append(
            markdown_table(
                ("latency", "n", "p50 ms", "p99 ms", "max ms"),
                ((k, str(s.n), ms(s.p50), ms(s.p99), ms(s.max)) for k, s in lines.items()),
            )
        )
        out.append("")
    out.append(markdown_table(("measurement", "value"), results.lines))
    out.append("")
    columns = list(results.memory)
    names: list[str] = []
    for snapshot in results.memory.values():
        names += [n for n in snapshot if n not in names]

    def cell(value: int | None) -> str:
        return "–" if not value else f"{value / MIB:.0f}"

    out.append("Memory, MiB (RSS of each process; PostgreSQL: PSS summed over its processes):")
    out.append("")
    out.append(
        markdown_table(
            ("process", *columns),
            ((n, *(cell(results.memory[c].get(n)) for c in columns)) for n in names),
        )
    )
    out.append("")
    phases = list(results.cpu)
    out.append("CPU seconds by process and phase:")
    out.append("")
    out.append(
        markdown_table(
            ("process", *phases),
            ((n, *(f"{results.cpu[p].get(n, 0.0):.1f}" for p in phases)) for n in names),
        )
    )
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Options()
    parser.add_argument("--users", type=int, default=defaults.users, help="users in the load")
    parser.add_argument("--jobs", type=int, default=defaults.jobs, help="jobs per load user")
    parser.add_argument(
        "--inflight", type=int, default=defaults.inflight, help="jobs each load user holds at once"
    )
    parser.add_argument("--serial", type=int, default=defaults.serial, help="one-at-a-time jobs")
    parser.add_argument(
        "--think", type=float, default=defaults.think, help="most seconds between serial jobs"
    )
    parser.add_argument("--watchers", type=int, default=defaults.watchers, help="idle SSE streams")
    parser.add_argument("--queue", type=int, default=defaults.queue, help="jobs queued, no worker")
    parser.add_argument(
        "--workers", type=int, default=defaults.workers, help="SDXL worker processes"
    )
    parser.add_argument("--keep", action="store_true", help="keep the services' logs")


def options(args: argparse.Namespace) -> Options:
    return Options(
        users=args.users, jobs=args.jobs, inflight=args.inflight, serial=args.serial, think=args.think,
        watchers=args.watchers, queue=args.queue, workers=args.workers, keep=args.keep,
    )  # fmt: skip


def run(opts: Options) -> str:
    text = report(asyncio.run(run_bench(opts)))
    print(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ourvidz_dev.loadbench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    run(options(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
