"""The dispatcher: a queued job's task goes to the queue only when a worker
waits for one, users take turns, fast goes before high without starving it,
and a queued job shows its place in line."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from nats.js.errors import NotFoundError

from ourvidz import queue
from ourvidz.v1 import job_pb2, job_service_pb2
from services.jobs.dispatch import Capacity, choose, expected_wait
from tests.jobs.helpers import owner_query, pull_task

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(user: str, n: int, *, seconds: float = 0.0, images: int = 1, **fields) -> dict:
    values = {
        "id": f"{user}-{n}",
        "user_id": user,
        "job_type": "sdxl_image_fast",
        "rank_time": T0 + timedelta(seconds=seconds),
        "num_images": images,
        "width": 64,
        "height": 64,
        "steps": 4,
        "guidance_scale": 5.0,
        "reference_key": None,
    }
    return {**values, **fields}


def ids(groups: list[list[dict]]) -> list[list[str]]:
    return [[r["id"] for r in group] for group in groups]


# --- the choice -----------------------------------------------------------------------


def test_users_take_turns_oldest_first():
    rows = [row("a", 1, seconds=0), row("a", 2, seconds=1), row("a", 3, seconds=2)]
    rows.append(row("b", 1, seconds=10))
    assert ids(choose(rows, {}, 3, 0, 0)) == [["a-1"], ["b-1"], ["a-2"]]


def test_a_user_with_jobs_in_flight_waits_for_one_without():
    rows = [row("a", 1, seconds=0), row("b", 1, seconds=10)]
    assert ids(choose(rows, {"a": 1}, 1, 0, 0)) == [["b-1"]]


def test_the_per_user_limit_holds_jobs_back():
    rows = [row("a", 1), row("a", 2, seconds=1)]
    assert ids(choose(rows, {"a": 1}, 5, 2, 0)) == [["a-1"]]
    assert choose(rows, {"a": 2}, 5, 2, 0) == []
    assert len(choose(rows, {"a": 2}, 5, 0, 0)) == 2  # 0: no limit


def test_compatible_jobs_share_a_batch_up_to_the_image_budget():
    rows = [
        row("a", 1, seconds=0),
        row("a", 2, seconds=1, width=128),  # another size: not with a-1
        row("b", 1, seconds=2),
        row("c", 1, seconds=3, images=3),
        row("d", 1, seconds=4, reference_key="u/ref.png"),  # a reference: alone
    ]
    groups = ids(choose(rows, {}, 3, 0, 4))
    # Then d (nothing in flight) before a's second job.
    assert groups == [["a-1", "b-1"], ["c-1"], ["d-1"]]
    # No budget: one job per task.
    assert ids(choose(rows, {}, 2, 0, 0)) == [["a-1"], ["b-1"]]


def test_the_expected_wait_counts_idle_workers_then_turns():
    assert expected_wait(0, Capacity(idle=1, busy=0), 10.0) == 0.0
    assert expected_wait(0, Capacity(idle=0, busy=1), 10.0) == 5.0
    assert expected_wait(3, Capacity(idle=0, busy=2), 10.0) == 20.0


# --- against the queue --------------------------------------------------------------------


@pytest.fixture
async def clear_line(harness):
    """The line holds this test's jobs alone: other tests' queued jobs end;
    and the dispatcher has seen that no worker waits now (a job submitted to
    a family it saw idle goes out at once)."""
    owner_query(
        harness.settings.database_url,
        "UPDATE jobs.jobs SET state = 'cancelled' WHERE state IN ('queued', 'running') "
        "RETURNING id",
    )
    await harness.running.dispatcher.dispatch_all()


async def queued(harness, md, job_id: str) -> job_pb2.Job:
    response = await harness.stub.GetJob(job_service_pb2.GetJobRequest(job_id=job_id), metadata=md)
    return response.job


async def test_nothing_goes_to_the_queue_until_a_worker_waits(harness, clear_line):
    _, md = harness.user()
    job = await harness.create(md, job_type="sdxl_image_high")
    await harness.running.dispatcher.dispatch_all()
    await harness.drain_relay()
    subject = queue.job_task_subject("tasks.sdxl.high", job.id)
    assert await queue.task_held(harness.js, [subject]) == set()
    line = (await queued(harness, md, job.id)).queue
    assert (line.position, line.dispatched) == (0, False)
    # A worker waits: the task goes out at once.
    msg = await pull_task(harness, "tasks.sdxl.high", job.id)
    assert msg.subject == subject


async def test_another_users_first_job_goes_before_a_backlog(harness, clear_line):
    _, a = harness.user()
    _, b = harness.user()
    # Sizes that cannot share a batch: one job per task.
    backlog = [await harness.create(a, prompt=f"a {n}", width=512 + 64 * n) for n in range(3)]
    first_of_b = await harness.create(b, prompt="b 1", width=768)
    # Places in line, users taking turns: a1, b1, a2, a3.
    positions = [(await queued(harness, a, j.id)).queue.position for j in backlog]
    assert positions == [0, 2, 3]
    assert (await queued(harness, b, first_of_b.id)).queue.position == 1

    order = []
    mine = {j.id for j in [*backlog, first_of_b]}
    for _ in range(4):
        order.append(await next_task(harness, "sdxl", mine))
    assert order == [backlog[0].id, first_of_b.id, backlog[1].id, backlog[2].id]


async def test_fast_goes_first_but_a_long_wait_goes_before_it(harness, clear_line):
    _, md = harness.user()
    high = await harness.create(md, job_type="sdxl_image_high")
    fast = await harness.create(md, job_type="sdxl_image_fast")
    mine = {high.id, fast.id}
    assert await next_task(harness, "sdxl", mine) == fast.id
    assert await next_task(harness, "sdxl", mine) == high.id

    # A high job that waited longer than the fast head start goes first.
    _, md = harness.user()
    high = await harness.create(md, job_type="sdxl_image_high")
    head_start = harness.settings.jobs_fast_head_start_seconds
    owner_query(
        harness.settings.database_url,
        "UPDATE jobs.jobs SET created_at = now() - make_interval(secs => %s) "
        "WHERE id = %s RETURNING id",
        (head_start + 30, high.id),
    )
    fast = await harness.create(md, job_type="sdxl_image_fast")
    mine = {high.id, fast.id}
    assert await next_task(harness, "sdxl", mine) == high.id
    assert await next_task(harness, "sdxl", mine) == fast.id


async def next_task(harness, family: str, mine: set[str], wait: float = 15.0) -> str:
    """The job id of the next task of `mine` a worker of `family` is given (a
    pull request at a time, each task acked at once)."""
    durable = queue.consumer_name(family)
    try:
        await harness.js.consumer_info(queue.TASKS_STREAM, durable)
    except NotFoundError:
        await queue.declare_task_consumer(harness.js, queue.family_subject(family), durable)
        harness.created_consumers.append(durable)  # removed again at teardown
    sub = await harness.js.pull_subscribe_bind(durable=durable, stream=queue.TASKS_STREAM)
    deadline = asyncio.get_running_loop().time() + wait
    try:
        while asyncio.get_running_loop().time() < deadline:
            try:
                (msg,) = await sub.fetch(1, timeout=1)
            except TimeoutError:
                continue
            await msg.ack()
            job_id = msg.subject.rsplit(".", 1)[-1]
            if job_id in mine:
                return job_id
        raise AssertionError("no task given")
    finally:
        await sub.unsubscribe()


def test_a_uuid_is_a_task_subject_tail():
    job_id = str(uuid.uuid4())
    assert queue.job_task_subject("tasks.sdxl.fast", job_id).rsplit(".", 1)[-1] == job_id
