"""Fair dispatch over HTTP, with the one tiny SDXL worker of the mesh: a
user's first job is not held behind another user's backlog."""

from __future__ import annotations

from ourvidz_dev.loadbench import parse_time
from services.jobs.settings import JobsSettings
from tests.e2e.conftest import signup

BACKLOG = 10
# Slow enough on a CPU that A's backlog is still there when B comes.
SMALL = {"job_type": "sdxl_image_fast", "num_images": 1, "width": 256, "height": 256}


async def _ended(user, job_id: str) -> dict:
    await user.events(f"/v1/jobs/{job_id}/events")  # ends with the job
    return (await user.get(f"/v1/jobs/{job_id}")).json()


async def test_another_users_first_job_starts_before_a_backlog_is_done(http):
    a, b = await signup(http), await signup(http)
    backlog = []
    for n in range(BACKLOG):
        response = await a.post("/v1/jobs", json={**SMALL, "prompt": f"a lighthouse {n}"})
        assert response.status_code == 202, response.text
        backlog.append(response.json()["id"])
    response = await b.post("/v1/jobs", json={**SMALL, "prompt": "a red fox"})
    assert response.status_code == 202, response.text
    first_of_b = response.json()
    line = first_of_b["queue"]
    assert line is not None and line["position"] >= 0

    ended = [await _ended(a, job_id) for job_id in backlog]  # a stream at a time
    mine = await _ended(b, first_of_b["id"])
    assert {job["state"] for job in [*ended, mine]} == {"completed"}
    assert all(job["queue"] is None for job in [*ended, mine])  # no place in line once done
    b_start = parse_time(mine["started_at"])
    assert b_start < max(parse_time(job["completed_at"]) for job in ended)
    # Ahead of B's job at most A's jobs in flight when it came (on the queue
    # for the worker; a user may have so many at once): A's jobs that ran
    # from its arrival to their end before it started. (Jobs taken into B's
    # batch start with it.)
    b_came = parse_time(first_of_b["created_at"])
    ahead = [
        job
        for job in ended
        if parse_time(job["started_at"]) >= b_came and parse_time(job["completed_at"]) <= b_start
    ]
    # One more may go out while B's submit has not committed yet (its
    # created_at is the start of that transaction).
    limit = JobsSettings.model_fields["jobs_max_running_per_user"].default
    assert len(ahead) <= limit + 1
