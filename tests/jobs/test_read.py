"""GetJob and ListJobs (its pages and filters), and the isolation of one
user's jobs from another's, down to the database's row level security."""

from __future__ import annotations

import grpc
import psycopg

from ourvidz.v1 import job_pb2
from ourvidz.v1 import job_service_pb2 as pb
from tests.conftest import rpc_error


async def test_list_pages_newest_first_and_filters_by_state(harness):
    _, md = harness.user()
    created = [await harness.create(md, prompt=f"p{i}", request_id=f"r{i}") for i in range(3)]
    await harness.stub.CancelJob(pb.CancelJobRequest(job_id=created[0].id), metadata=md)

    seen, token = [], ""
    while True:
        page = await harness.stub.ListJobs(
            pb.ListJobsRequest(page_size=2, page_token=token), metadata=md
        )
        assert len(page.jobs) <= 2
        seen.extend(j.id for j in page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert seen == [j.id for j in reversed(created)]

    queued = await harness.stub.ListJobs(
        pb.ListJobsRequest(state=job_pb2.JOB_STATE_QUEUED), metadata=md
    )
    assert {j.id for j in queued.jobs} == {created[1].id, created[2].id}
    err = await rpc_error(
        harness.stub.ListJobs(pb.ListJobsRequest(page_token="garbage!"), metadata=md)
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.violations[0].field == "page_token"


async def test_list_filters_by_job_type_alone_and_with_state(harness):
    _, md = harness.user()
    sdxl = [await harness.create(md, prompt=f"s{i}", request_id=f"s{i}") for i in range(2)]
    wan = await harness.create(md, job_type="image_fast", prompt="w", request_id="w")
    await harness.stub.CancelJob(pb.CancelJobRequest(job_id=sdxl[0].id), metadata=md)

    async def listed(**filters) -> list[str]:
        page = await harness.stub.ListJobs(pb.ListJobsRequest(**filters), metadata=md)
        return [j.id for j in page.jobs]

    assert await listed(job_type="sdxl_image_fast") == [sdxl[1].id, sdxl[0].id]
    assert await listed(job_type="image_fast") == [wan.id]
    assert await listed(job_type="video_fast") == []
    cancelled = job_pb2.JOB_STATE_CANCELLED
    assert await listed(job_type="sdxl_image_fast", state=cancelled) == [sdxl[0].id]
    assert await listed(job_type="image_fast", state=cancelled) == []

    # A page token carries on under the same filter.
    first = await harness.stub.ListJobs(
        pb.ListJobsRequest(job_type="sdxl_image_fast", page_size=1), metadata=md
    )
    assert [j.id for j in first.jobs] == [sdxl[1].id]
    rest = await listed(job_type="sdxl_image_fast", page_token=first.next_page_token)
    assert rest == [sdxl[0].id]

    err = await rpc_error(harness.stub.ListJobs(pb.ListJobsRequest(job_type="nope"), metadata=md))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.violations[0].field == "job_type"


async def test_another_users_job_is_not_found(harness):
    _, md1 = harness.user()
    job = await harness.create(md1)
    _, md2 = harness.user()
    for call in (
        harness.stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=md2),
        harness.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=md2),
    ):
        err = await rpc_error(call)
        assert err.code == grpc.StatusCode.NOT_FOUND
    listed = await harness.stub.ListJobs(pb.ListJobsRequest(), metadata=md2)
    assert list(listed.jobs) == []
    mine = await harness.stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=md1)
    assert mine.job.state == job_pb2.JOB_STATE_QUEUED


async def test_row_level_security_hides_other_users_rows(harness, base_env):
    user1, md1 = harness.user()
    job = await harness.create(md1)
    user2, _ = harness.user()
    url = base_env["JOBS_DATABASE_URL"]

    def visible(user_id: str) -> tuple[int, int]:
        with psycopg.connect(url) as conn:
            conn.execute("SELECT set_config('app.user_id', %s, true)", (user_id,))
            conn.execute("SELECT set_config('app.role', 'user', true)")
            (jobs,) = conn.execute("SELECT count(*) FROM jobs.jobs").fetchone()
            (events,) = conn.execute("SELECT count(*) FROM jobs.job_events").fetchone()
            return jobs, events

    assert visible(user2) == (0, 0)
    assert visible(user1) == (1, 1)
    with psycopg.connect(url) as conn:
        conn.execute("SELECT set_config('app.user_id', %s, true)", (user2,))
        found = conn.execute("SELECT id FROM jobs.jobs WHERE id = %s", (job.id,)).fetchall()
        assert found == []


def test_the_outbox_is_written_by_anyone_but_read_by_trusted_roles_only(base_env):
    url = base_env["JOBS_DATABASE_URL"]
    for role, sees in (("user", 0), ("system", 1)):
        with psycopg.connect(url) as conn:
            conn.execute("SELECT set_config('app.role', %s, true)", (role,))
            conn.execute(
                "INSERT INTO jobs.outbox (subject, msg_id, payload) VALUES ('t.x', 'rls-probe', '')"
            )
            (n,) = conn.execute(
                "SELECT count(*) FROM jobs.outbox WHERE msg_id = 'rls-probe'"
            ).fetchone()
            conn.rollback()
        assert n == sees, role
