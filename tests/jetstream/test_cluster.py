"""The queue on a real 3-node NATS JetStream cluster on loopback.

- The replicas rule: a stream is created with QUEUE_REPLICAS, raised to it
  when it has fewer, never lowered by a service started with fewer (which
  says so in a warning); consumers follow their stream; the same for the
  worker registry's bucket.
- The mesh (gateway, jobs, workspace and a tiny sdxl worker in this process,
  NATS_URL listing the three servers, QUEUE_REPLICAS=3) loses one node while
  jobs run, a follower of the TASKS stream first, then, once the first is back
  and caught up, the TASKS stream's leader: every job completes, exactly once,
  with exactly its images, and the streams keep their three replicas.

Nodes are killed with SIGKILL; every condition is polled with a deadline.
The figures of the mesh run go to `.artifacts/jetstream/cluster.json`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from ourvidz import queue, registry
from ourvidz_dev.stack import running_stack
from tests.e2e.conftest import mesh_env, signup
from tests.jetstream.natscluster import NatsCluster

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 3


@pytest.fixture(scope="module")
def cluster():
    work = Path(tempfile.mkdtemp(prefix="ovjs"))
    nats = NatsCluster(work, size=REPLICAS)
    try:
        nats.start()
        yield nats
    finally:
        nats.stop()
        shutil.rmtree(work, ignore_errors=True)


@contextlib.asynccontextmanager
async def client(cluster: NatsCluster, name: str):
    nc, js = await queue.connect(cluster.url, name=name)
    try:
        yield js
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def eventually(check, within: float = 60.0, interval: float = 0.2, what: str = ""):
    """Poll `check` (an async callable) until it gives a true value; JetStream
    errors while the cluster elects a leader count as "not yet"."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            value = await check()
        except Exception as exc:  # a leader being elected, a node reconnecting
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {within} s: {what} (last error: {last!r})")
        await asyncio.sleep(interval)


def replicated(cluster_info, size: int = REPLICAS) -> bool:
    """A leader, and every other peer present and current."""
    if cluster_info is None or not cluster_info.leader:
        return False
    peers = cluster_info.replicas or []
    return len(peers) == size - 1 and all(p.current and not p.offline for p in peers)


async def stream_replicas(js, stream: str) -> tuple[int, bool]:
    info = await js.stream_info(stream)
    return info.config.num_replicas, replicated(info.cluster)


def warnings_naming_the_setting(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and queue.REPLICAS_SETTING in r.getMessage()
    ]


# --- the replicas rule ------------------------------------------------------------------


async def test_replicas_are_raised_to_the_setting_and_never_lowered(cluster, caplog):
    bucket = f"workers-{uuid.uuid4().hex[:6]}"
    async with client(cluster, "replicas-rule") as js:
        # A service started without the setting creates everything with one replica.
        one = queue.QueueSettings(replicas=1)
        await queue.declare_streams(js, one)
        await queue.declare_task_consumer(js, queue.family_subject("sdxl"), "sdxl", one)
        await queue.declare_events_consumer(js)
        await registry.declare_bucket(js, replicas=1, bucket=bucket)
        for stream in (queue.TASKS_STREAM, queue.EVENTS_STREAM, f"KV_{bucket}"):
            assert (await js.stream_info(stream)).config.num_replicas == 1

        # One with QUEUE_REPLICAS=3 raises them, and says so.
        three = queue.QueueSettings(replicas=REPLICAS)
        with caplog.at_level(logging.WARNING, logger="ourvidz.queue"):
            await queue.declare_streams(js, three)
            await registry.declare_bucket(js, replicas=REPLICAS, bucket=bucket)
        assert len(warnings_naming_the_setting(caplog)) == 3
        for stream in (queue.TASKS_STREAM, queue.EVENTS_STREAM, f"KV_{bucket}"):
            await eventually(
                lambda s=stream: _is(stream_replicas(js, s), (REPLICAS, True)),
                what=f"{stream} on {REPLICAS} current peers",
            )

        # The consumers declared before follow their stream (no replicas of their own).
        async def consumer_replicated(stream: str, durable: str) -> bool:
            info = await js.consumer_info(stream, durable)
            return not info.config.num_replicas and replicated(info.cluster)

        await eventually(lambda: consumer_replicated(queue.TASKS_STREAM, "sdxl"))
        await eventually(lambda: consumer_replicated(queue.EVENTS_STREAM, queue.WORKSPACE_CONSUMER))
        # Declared again, by a service with the setting, they keep following it.
        await queue.declare_task_consumer(js, queue.family_subject("sdxl"), "sdxl", three)
        assert await consumer_replicated(queue.TASKS_STREAM, "sdxl")

        # A service started without the setting again: nothing shrinks, and it says so.
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ourvidz.queue"):
            await queue.declare_streams(js, one)
            await queue.declare_task_consumer(js, queue.family_subject("sdxl"), "sdxl", one)
            await registry.declare_bucket(js, replicas=1, bucket=bucket)
        said = warnings_naming_the_setting(caplog)
        assert len(said) == 3 and all("never" in line for line in said), said
        for stream in (queue.TASKS_STREAM, queue.EVENTS_STREAM, f"KV_{bucket}"):
            assert await stream_replicas(js, stream) == (REPLICAS, True), stream
        assert await consumer_replicated(queue.TASKS_STREAM, "sdxl")

        # The mesh test starts from nothing: its services create what they need.
        await js.delete_key_value(bucket)
        for stream in (queue.TASKS_STREAM, queue.EVENTS_STREAM):
            await js.delete_stream(stream)


async def _is(awaitable, expected) -> bool:
    return (await awaitable) == expected


# --- the mesh losing a node ---------------------------------------------------------------

TERMINAL = ("completed", "failed", "cancelled")


class Truth:
    """What PostgreSQL says about the test's jobs (the owner's view)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def query(self, sql: str, params=()) -> list[dict]:
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            return conn.execute(sql, params).fetchall()

    async def states(self, ids: list[str]) -> dict[str, str]:
        rows = await asyncio.to_thread(
            self.query, "SELECT id::text, state FROM jobs.jobs WHERE id = ANY(%s::uuid[])", (ids,)
        )
        return {r["id"]: r["state"] for r in rows}


async def mesh_caught_up(js, consumers: list[tuple[str, str]]) -> bool:
    """Every stream and consumer of the mesh has its leader and all its peers current."""
    for stream in (queue.TASKS_STREAM, queue.EVENTS_STREAM, f"KV_{registry.WORKERS_BUCKET}"):
        info = await js.stream_info(stream)
        if info.config.num_replicas != REPLICAS or not replicated(info.cluster):
            return False
    for stream, durable in consumers:
        if not replicated((await js.consumer_info(stream, durable)).cluster):
            return False
    return True


async def test_the_mesh_loses_a_follower_then_the_leader_and_no_job_is_lost_or_doubled(
    cluster, base_env
):
    began = time.monotonic()
    env = mesh_env(
        base_env,
        NATS_URL=cluster.url,
        QUEUE_REPLICAS=str(REPLICAS),
        # One user submits in bursts far above a person's pace.
        GATEWAY_JOBS_PER_MINUTE="100000",
        GATEWAY_JOBS_BURST="100000",
    )
    truth = Truth(base_env["DATABASE_URL"])
    consumers = [
        (queue.TASKS_STREAM, queue.consumer_name("sdxl")),
        (queue.EVENTS_STREAM, queue.WORKSPACE_CONSUMER),
    ]
    figures: dict = {"jobs": 0}
    async with (
        running_stack(env) as stack,
        client(cluster, "mesh-watch") as js,
        httpx.AsyncClient(base_url=stack.url, timeout=60) as http,
    ):
        # The mesh's own declarations, with QUEUE_REPLICAS=3: three replicas
        # everywhere (the registry's bucket is made by the worker's first beat).
        await eventually(
            lambda: mesh_caught_up(js, consumers), what="the mesh's streams on 3 peers"
        )
        for stream, durable in consumers:
            assert not (await js.consumer_info(stream, durable)).config.num_replicas
        figures["setup_seconds"] = round(time.monotonic() - began, 1)

        user = await signup(http)
        jobs: dict[str, int] = {}  # job id -> images asked

        async def submit(count: int) -> list[str]:
            ids = []
            for n in range(count):
                body = {
                    "job_type": "sdxl_image_fast",
                    "prompt": "a lighthouse in a storm, replicated queue",
                    "num_images": (1, 3)[n % 2],
                    "seed": n,
                    "width": 64,
                    "height": 64,
                }
                response = await http.post(
                    "/v1/jobs",
                    json=body,
                    headers={**user.headers, "Idempotency-Key": uuid.uuid4().hex},
                )
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
                jobs[ids[-1]] = body["num_images"]
            return ids

        async def one_running(ids: list[str]) -> bool:
            states = await truth.states(ids)
            return any(s in ("running", "completed") for s in states.values())

        async def all_terminal(ids: list[str]) -> bool:
            states = await truth.states(ids)
            return len(states) == len(ids) and all(s in TERMINAL for s in states.values())

        async def kill_and_recover(pick) -> dict:
            """Kill a node (chosen by `pick` from the TASKS stream's cluster
            info) while jobs run, submit more while it is gone, let them all
            end, start the node again and wait until it has caught up."""
            batch = await submit(4)
            await eventually(lambda: one_running(batch), what="a job of the batch running")
            info = await js.stream_info(queue.TASKS_STREAM)
            victim = cluster.node(pick(info.cluster))
            was_leader = victim.name == info.cluster.leader
            led = [
                durable
                for stream, durable in consumers
                if (await js.consumer_info(stream, durable)).cluster.leader == victim.name
            ]
            victim.kill()
            killed_at = time.monotonic()
            in_flight = sum(s not in TERMINAL for s in (await truth.states(batch)).values())
            batch += await submit(3)
            new_leader = await eventually(
                lambda: _leader_other_than(js, victim.name), what="a TASKS leader among the living"
            )
            await eventually(lambda: all_terminal(batch), within=180, what="every job ended")
            ended = time.monotonic() - killed_at
            cluster.restart(victim)
            await eventually(lambda: mesh_caught_up(js, consumers), within=120, what="caught up")
            return {
                "node": victim.name,
                "was_tasks_leader": was_leader,
                "consumer_leaders_lost": led,
                "jobs_unfinished_at_the_kill": in_flight,
                "tasks_leader_after": new_leader,
                "jobs": len(batch),
                "seconds_to_end_every_job": round(ended, 1),
                "seconds_to_catch_up_after_restart": round(time.monotonic() - killed_at - ended, 1),
            }

        async def undisturbed() -> float:
            """The same batch with no node lost: what the figures compare with."""
            batch = await submit(4)
            await eventually(lambda: one_running(batch), what="a job of the batch running")
            began = time.monotonic()
            batch += await submit(3)
            await eventually(lambda: all_terminal(batch), within=180, what="every job ended")
            return round(time.monotonic() - began, 1)

        figures["undisturbed_seconds_to_end_every_job"] = await undisturbed()
        follower = await kill_and_recover(
            lambda c: next(p.name for p in c.replicas if p.name != c.leader)
        )
        assert not follower["was_tasks_leader"]
        leader = await kill_and_recover(lambda c: c.leader)
        assert leader["was_tasks_leader"] and leader["tasks_leader_after"] != leader["node"]

        # Every job completed, once, with exactly its images, filed once.
        ids = list(jobs)
        states = await truth.states(ids)
        assert {i: s for i, s in states.items() if s != "completed"} == {}
        assert len(states) == len(ids)
        assets = truth.query(
            "SELECT job_id::text, index FROM jobs.assets WHERE job_id = ANY(%s::uuid[])", (ids,)
        )
        by_job: dict[str, list[int]] = {}
        for a in assets:
            by_job.setdefault(a["job_id"], []).append(a["index"])
        wrong = {
            i: sorted(by_job.get(i, []))
            for i in ids
            if sorted(by_job.get(i, [])) != list(range(jobs[i]))
        }
        assert not wrong, f"jobs without exactly their images: {wrong}"
        completions = truth.query(
            "SELECT job_id::text, count(*) AS n FROM jobs.job_events "
            "WHERE type = 'completed' AND job_id = ANY(%s::uuid[]) GROUP BY job_id",
            (ids,),
        )
        assert sorted(r["job_id"] for r in completions) == sorted(ids)
        assert [r for r in completions if r["n"] != 1] == []

        async def filed() -> list[dict] | None:
            rows = await asyncio.to_thread(
                truth.query,
                "SELECT job_id, index, count(*) AS n FROM workspace.items "
                "WHERE job_id = ANY(%s) GROUP BY job_id, index",
                (ids,),
            )
            return rows if len(rows) == len(assets) else None

        items = await eventually(filed, what="every image filed in the workspace")
        assert all(r["n"] == 1 for r in items)
        # No task left behind, and the streams still have their three replicas.
        await eventually(
            lambda: _is(_messages(js, queue.TASKS_STREAM), 0), what="the TASKS stream drained"
        )
        assert await mesh_caught_up(js, consumers)
        attempts = truth.query(
            "SELECT max(attempt) AS n FROM jobs.jobs WHERE id = ANY(%s::uuid[])", (ids,)
        )[0]["n"]

    figures.update(
        jobs=len(ids),
        images=len(assets),
        lost=0,
        duplicated=0,
        most_attempts=attempts,
        follower_kill=follower,
        leader_kill=leader,
        wall_seconds=round(time.monotonic() - began, 1),
    )
    out = ROOT / ".artifacts" / "jetstream"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.json").write_text(json.dumps(figures, indent=2) + "\n")


async def _leader_other_than(js, node: str) -> str | None:
    leader = (await js.stream_info(queue.TASKS_STREAM)).cluster.leader
    return leader if leader and leader != node else None


async def _messages(js, stream: str) -> int:
    return (await js.stream_info(stream)).state.messages
