"""Job routes against a JobService/WorkspaceService double: what the gateway
sends (token, request_id, session), how answers and errors map to HTTP."""

from __future__ import annotations

import uuid

from ourvidz.v1 import events_pb2, job_pb2
from tests.gateway.gateway_fakes import ts
from tests.gateway.gateway_helpers import assert_problem, auth, parse_sse

JOB_KEYS = {
    "id",
    "job_type",
    "state",
    "prompt",
    "enhanced_prompt",
    "negative_prompt",
    "seed",
    "num_images",
    "width",
    "height",
    "num_frames",
    "progress",
    "attempt",
    "assets",
    "error",
    "created_at",
    "started_at",
    "completed_at",
    "reference_image_id",
    "reference_type",
    "reference_strength",
    "destination",
    "workspace_session_id",
}


async def test_job_types(client, user_token):
    r = await client.get("/v1/job-types", headers=auth(user_token[1]))
    assert r.status_code == 200
    jt, video = r.json()["items"]
    assert jt["name"] == "sdxl_image_fast"
    assert jt["allowed_num_images"] == [1, 3, 6]
    assert video["name"] == "video7b_fast_enhanced" and video["enhanced"] is True


async def test_create_job_forwards_token_idempotency_key_and_active_session(
    client, fakes, user_token
):
    _, jobs, workspace = fakes
    user_id, token = user_token
    body = {"job_type": "sdxl_image_fast", "prompt": "a red fox", "seed": 7, "num_images": 3}
    r = await client.post("/v1/jobs", json=body, headers={**auth(token), "Idempotency-Key": "k-1"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert JOB_KEYS <= job.keys()
    assert job["state"] == "queued"
    assert job["destination"] == "workspace"
    assert job["error"] is None and job["completed_at"] is None
    assert job["created_at"].startswith("2023-11-14T")
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"

    _, request, caller = jobs.last("CreateJob")
    assert caller == user_id  # the caller's token reached the service
    assert request.request_id == "k-1"
    assert request.job.seed == 7 and request.job.HasField("seed")
    assert not request.job.HasField("negative_prompt")
    assert request.job.num_images == 3
    active = workspace.last("GetActiveSession")
    assert active[2] == user_id
    assert request.job.workspace_session_id == job["workspace_session_id"]
    assert workspace.sessions[job["workspace_session_id"]].active

    again = await client.post(
        "/v1/jobs", json=body, headers={**auth(token), "Idempotency-Key": "k-1"}
    )
    assert again.status_code == 202
    assert again.json()["id"] == job["id"]
    assert again.headers["idempotent-replayed"] == "true"


async def test_create_job_in_a_given_session_checks_it_is_the_callers(client, fakes, user_token):
    _, jobs, workspace = fakes
    _, token = user_token
    created = await client.post(
        "/v1/workspace/sessions", json={"name": "mine"}, headers=auth(token)
    )
    assert created.status_code == 201
    mine = created.json()["id"]
    body = {"job_type": "image_fast", "prompt": "p", "workspace_session_id": mine}
    r = await client.post("/v1/jobs", json=body, headers=auth(token))
    assert r.status_code == 202
    assert jobs.last("CreateJob")[1].job.workspace_session_id == mine

    other = str(uuid.uuid4())
    body["workspace_session_id"] = other
    assert_problem(await client.post("/v1/jobs", json=body, headers=auth(token)), 404)
    assert workspace.last("GetSession")[1].session_id == other
    body["workspace_session_id"] = "garbage"
    bad = assert_problem(await client.post("/v1/jobs", json=body, headers=auth(token)), 422)
    assert bad["errors"][0]["field"] == "workspace_session_id"


async def test_library_destination_skips_the_workspace(client, fakes, user_token):
    _, jobs, workspace = fakes
    before = len(workspace.calls)
    body = {
        "job_type": "sdxl_image_high",
        "prompt": "p",
        "destination": "library",
        "reference_image_id": str(uuid.uuid4()),
        "reference_type": "style",
        "reference_strength": 0.8,
    }
    r = await client.post("/v1/jobs", json=body, headers=auth(user_token[1]))
    assert r.status_code == 202
    assert len(workspace.calls) == before
    spec = jobs.last("CreateJob")[1].job
    assert spec.destination == job_pb2.DESTINATION_LIBRARY
    assert spec.reference_type == job_pb2.REFERENCE_TYPE_STYLE
    assert abs(spec.reference_strength - 0.8) < 1e-6
    job = r.json()
    assert job["destination"] == "library"
    assert job["reference_type"] == "style"
    assert job["reference_image_id"] == body["reference_image_id"]


async def test_invalid_argument_with_field_violations_is_422(client, user_token):
    # num_images: refused by Jobs (per job type), passed on with its field.
    body = {"job_type": "sdxl_image_fast", "prompt": "a cat", "num_images": 2}
    r = await client.post("/v1/jobs", json=body, headers=auth(user_token[1]))
    problem = assert_problem(r, 422)
    assert {e["field"] for e in problem["errors"]} == {"num_images"}


async def test_a_blank_prompt_is_refused_at_the_edge(client, user_token):
    body = {"job_type": "sdxl_image_fast", "prompt": "  "}
    r = await client.post("/v1/jobs", json=body, headers=auth(user_token[1]))
    problem = assert_problem(r, 422)
    assert {e["field"] for e in problem["errors"]} == {"prompt"}
    # What the studio shows beside the field: our words, not pydantic's wrapping.
    assert problem["errors"][0]["message"] == "must not be empty"
    assert problem["detail"] == "prompt: must not be empty"


async def test_request_validation_names_body_fields(client, user_token):
    r = await client.post(
        "/v1/jobs",
        json={"job_type": "image_fast", "num_images": "lots"},
        headers=auth(user_token[1]),
    )
    problem = assert_problem(r, 422)
    assert {e["field"] for e in problem["errors"]} == {"prompt", "num_images"}


async def test_quota_and_unavailable_map_to_429_and_503(client, user_token):
    r = await client.post(
        "/v1/jobs",
        json={"job_type": "image_fast", "prompt": "trigger-quota"},
        headers=auth(user_token[1]),
    )
    assert_problem(r, 429)
    r = await client.post(
        "/v1/jobs",
        json={"job_type": "image_fast", "prompt": "trigger-unavailable"},
        headers=auth(user_token[1]),
    )
    problem = assert_problem(r, 503)
    assert "secret" not in problem["detail"]


async def test_get_list_cancel(client, fakes, user_token):
    _, jobs, _ = fakes
    user_id, token = user_token
    job = jobs.make_job(user_id=user_id, job_type="video_fast", prompt="waves")
    job.assets.add(
        index=0,
        bucket="video-fast",
        key="k.mp4",
        content_type="video/mp4",
        width=832,
        height=480,
        seed=3,
        url="http://files/k.mp4",
        thumbnail_url="http://files/k.png",
        expire_time=ts(1_700_003_600),
        num_frames=81,
    )
    r = await client.get(f"/v1/jobs/{job.id}", headers=auth(token))
    assert r.status_code == 200
    (asset,) = r.json()["assets"]
    assert asset["url"] == "http://files/k.mp4"
    assert asset["expires_at"] == "2023-11-14T23:13:20Z"

    listed = await client.get("/v1/jobs?state=queued&page_size=5", headers=auth(token))
    assert listed.status_code == 200
    assert [j["id"] for j in listed.json()["items"]] == [job.id]
    assert listed.json()["next_page_token"] == "next-1"
    request = jobs.last("ListJobs")[1]
    assert request.state == job_pb2.JOB_STATE_QUEUED and request.page_size == 5
    assert_problem(await client.get("/v1/jobs?state=bogus", headers=auth(token)), 422)

    cancelled = await client.post(f"/v1/jobs/{job.id}/cancel", headers=auth(token))
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["completed_at"] is not None


async def test_list_filters_by_job_type_and_state(client, fakes, user_token):
    _, jobs, _ = fakes
    user_id, token = user_token
    video = jobs.make_job(user_id=user_id, job_type="video_fast", prompt="waves")
    image = jobs.make_job(user_id=user_id, job_type="sdxl_image_fast", prompt="cliff")
    done = jobs.make_job(user_id=user_id, job_type="sdxl_image_fast", prompt="done")
    done.state = job_pb2.JOB_STATE_COMPLETED

    listed = await client.get("/v1/jobs?job_type=video_fast", headers=auth(token))
    assert listed.status_code == 200
    assert [j["id"] for j in listed.json()["items"]] == [video.id]
    assert jobs.last("ListJobs")[1].job_type == "video_fast"

    both = await client.get("/v1/jobs?job_type=sdxl_image_fast&state=queued", headers=auth(token))
    assert [j["id"] for j in both.json()["items"]] == [image.id]
    request = jobs.last("ListJobs")[1]
    assert request.job_type == "sdxl_image_fast" and request.state == job_pb2.JOB_STATE_QUEUED

    await client.get("/v1/jobs", headers=auth(token))
    assert jobs.last("ListJobs")[1].job_type == ""

    problem = assert_problem(await client.get("/v1/jobs?job_type=nope", headers=auth(token)), 422)
    assert [e["field"] for e in problem["errors"]] == ["job_type"]


async def test_another_users_or_malformed_job_is_404(client, fakes, user_token):
    _, jobs, _ = fakes
    job = jobs.make_job(user_id=str(uuid.uuid4()), job_type="image_fast", prompt="theirs")
    assert_problem(await client.get(f"/v1/jobs/{job.id}", headers=auth(user_token[1])), 404)
    assert_problem(await client.get("/v1/jobs/not-a-uuid", headers=auth(user_token[1])), 404)
    assert_problem(await client.get(f"/v1/jobs/{job.id}"), 401)


def _events(job: job_pb2.Job) -> list[events_pb2.JobEvent]:
    done = job_pb2.Job()
    done.CopyFrom(job)
    done.state = job_pb2.JOB_STATE_COMPLETED
    return [
        events_pb2.JobEvent(
            job_id=job.id,
            sequence=1,
            type=events_pb2.JOB_EVENT_TYPE_STATE,
            state=job_pb2.JOB_STATE_QUEUED,
            job=job,
        ),
        events_pb2.JobEvent(
            job_id=job.id,
            sequence=2,
            type=events_pb2.JOB_EVENT_TYPE_STATE,
            state=job_pb2.JOB_STATE_RUNNING,
        ),
        events_pb2.JobEvent(
            job_id=job.id,
            sequence=3,
            type=events_pb2.JOB_EVENT_TYPE_PROGRESS,
            state=job_pb2.JOB_STATE_RUNNING,
            progress=job_pb2.Progress(step=5, total=15, stage="denoising"),
        ),
        events_pb2.JobEvent(
            job_id=job.id,
            sequence=4,
            type=events_pb2.JOB_EVENT_TYPE_PREVIEW,
            state=job_pb2.JOB_STATE_RUNNING,
            preview_png=b"\x89PNG...",
        ),
        events_pb2.JobEvent(
            job_id=job.id,
            sequence=5,
            type=events_pb2.JOB_EVENT_TYPE_COMPLETED,
            state=job_pb2.JOB_STATE_COMPLETED,
            job=done,
        ),
    ]


async def test_job_events_sse(client, fakes, user_token):
    _, jobs, _ = fakes
    user_id, token = user_token
    job = jobs.make_job(user_id=user_id, job_type="sdxl_image_fast", prompt="sse")
    jobs.events[job.id] = _events(job)
    r = await client.get(f"/v1/jobs/{job.id}/events", headers=auth(token))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    assert [e["id"] for e in events] == ["1", "2", "3", "4", "5"]
    assert [e["event"] for e in events] == ["state", "state", "progress", "preview", "completed"]
    assert all(e["data"]["job_id"] == job.id for e in events)
    assert [e["data"]["state"] for e in events] == [
        "queued",
        "running",
        "running",
        "running",
        "completed",
    ]
    assert (events[2]["data"]["step"], events[2]["data"]["total"]) == (5, 15)
    assert events[3]["data"]["preview"].startswith("data:image/png;base64,")
    assert events[4]["data"]["job"]["state"] == "completed"
    assert events[4]["data"]["job"]["id"] == job.id


async def test_terminal_event_without_a_snapshot_gets_the_job(client, fakes, user_token):
    _, jobs, _ = fakes
    user_id, token = user_token
    job = jobs.make_job(user_id=user_id, job_type="image_fast", prompt="bare")
    job.state = job_pb2.JOB_STATE_FAILED
    job.error.CopyFrom(job_pb2.JobError(code="OUT_OF_MEMORY", message="out of memory"))
    jobs.events[job.id] = [
        events_pb2.JobEvent(
            job_id=job.id,
            sequence=1,
            type=events_pb2.JOB_EVENT_TYPE_FAILED,
            state=job_pb2.JOB_STATE_FAILED,
        )
    ]
    r = await client.get(f"/v1/jobs/{job.id}/events", headers=auth(token))
    (event,) = parse_sse(r.text)
    assert event["event"] == "failed"
    assert event["data"]["job"]["error"] == {"code": "OUT_OF_MEMORY", "message": "out of memory"}


async def test_job_events_resume_after_last_event_id(client, fakes, user_token):
    _, jobs, _ = fakes
    user_id, token = user_token
    job = jobs.make_job(user_id=user_id, job_type="sdxl_image_fast", prompt="resume")
    jobs.events[job.id] = _events(job)
    r = await client.get(f"/v1/jobs/{job.id}/events", headers={**auth(token), "Last-Event-ID": "3"})
    assert r.status_code == 200
    assert jobs.last("WatchJob")[1].after_sequence == 3
    assert [e["id"] for e in parse_sse(r.text)] == ["4", "5"]


async def test_job_events_of_another_users_job_is_404(client, fakes, user_token):
    _, jobs, _ = fakes
    job = jobs.make_job(user_id=str(uuid.uuid4()), job_type="image_fast", prompt="theirs")
    r = await client.get(f"/v1/jobs/{job.id}/events", headers=auth(user_token[1]))
    assert_problem(r, 404)


def _completed(jobs, user_id: str, digest: str = "", **fields) -> job_pb2.Job:
    """A completed job of the double's, rendered by the weights `digest`
    (the model its workers run now by default)."""
    job = jobs.make_job(user_id=user_id, **{"job_type": "sdxl_image_fast", "prompt": "p", **fields})
    job.state = job_pb2.JOB_STATE_COMPLETED
    job.provenance.CopyFrom(
        job_pb2.Provenance(weights_digest=digest or jobs.CURRENT_DIGEST, preset="tiny")
    )
    return job


async def test_rerun_submits_into_the_active_session_and_honours_the_idempotency_key(
    client, fakes, user_token
):
    _, jobs, workspace = fakes
    user_id, token = user_token
    source = _completed(
        jobs,
        user_id,
        job_type="image7b_fast_enhanced",
        prompt="a moth",
        enhanced_prompt="a luna moth on birch bark",
        enhancement_template_id="7f1c0d3e-0000-4000-8000-000000000001",
        enhancement_template_version=3,
        seed=99,
        destination=job_pb2.DESTINATION_WORKSPACE,
    )
    shown = (await client.get(f"/v1/jobs/{source.id}", headers=auth(token))).json()
    assert shown["enhancement_template_id"] == source.enhancement_template_id
    assert shown["enhancement_template_version"] == 3 and shown["rerun_of"] is None

    headers = {**auth(token), "Idempotency-Key": "rerun-1"}
    r = await client.post(f"/v1/jobs/{source.id}/rerun", headers=headers)
    assert r.status_code == 202, r.text  # as POST /v1/jobs answers
    job = r.json()
    assert JOB_KEYS <= job.keys()
    assert job["rerun_of"] == source.id and job["id"] != source.id
    assert (job["prompt"], job["seed"]) == ("a luna moth on birch bark", 99)
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    _, request, caller = jobs.last("RerunJob")
    assert (caller, request.job_id, request.request_id) == (user_id, source.id, "rerun-1")
    assert workspace.last("GetActiveSession")[2] == user_id
    assert request.workspace_session_id == job["workspace_session_id"]
    assert workspace.sessions[request.workspace_session_id].active

    again = await client.post(f"/v1/jobs/{source.id}/rerun", headers=headers)
    assert again.status_code == 202 and again.json()["id"] == job["id"]
    assert again.headers["idempotent-replayed"] == "true"


async def test_rerun_into_a_named_session_checks_it_and_a_library_job_skips_it(
    client, fakes, user_token
):
    _, jobs, workspace = fakes
    user_id, token = user_token
    source = _completed(jobs, user_id, destination=job_pb2.DESTINATION_WORKSPACE)
    mine = (await client.post("/v1/workspace/sessions", json={}, headers=auth(token))).json()
    r = await client.post(
        f"/v1/jobs/{source.id}/rerun",
        json={"workspace_session_id": mine["id"]},
        headers=auth(token),
    )
    assert r.status_code == 202, r.text
    assert jobs.last("RerunJob")[1].workspace_session_id == mine["id"]
    foreign = {"workspace_session_id": str(uuid.uuid4())}
    r = await client.post(f"/v1/jobs/{source.id}/rerun", json=foreign, headers=auth(token))
    assert_problem(r, 404)

    library = _completed(jobs, user_id, destination=job_pb2.DESTINATION_LIBRARY)
    before = len(workspace.calls)
    r = await client.post(f"/v1/jobs/{library.id}/rerun", headers=auth(token))
    assert r.status_code == 202 and r.json()["destination"] == "library"
    assert len(workspace.calls) == before
    assert jobs.last("RerunJob")[1].workspace_session_id == ""


async def test_rerun_refusals_are_409_with_their_reason(client, fakes, user_token):
    _, jobs, _ = fakes
    user_id, token = user_token
    queued = jobs.make_job(user_id=user_id, job_type="sdxl_image_fast", prompt="not yet")
    problem = assert_problem(
        await client.post(f"/v1/jobs/{queued.id}/rerun", headers=auth(token)), 409
    )
    assert problem["reason"] == "JOB_NOT_COMPLETED" and "completed" in problem["detail"]
    stale = _completed(jobs, user_id, digest="0e" * 32)
    problem = assert_problem(
        await client.post(f"/v1/jobs/{stale.id}/rerun", headers=auth(token)), 409
    )
    assert problem["reason"] == "MODEL_CHANGED" and "model changed" in problem["detail"]


async def test_rerun_of_another_users_or_no_job_is_404(client, fakes, user_token):
    _, jobs, _ = fakes
    theirs = _completed(jobs, str(uuid.uuid4()))
    calls = len(jobs.calls)
    for job_id in (theirs.id, str(uuid.uuid4()), "not-a-uuid"):
        r = await client.post(f"/v1/jobs/{job_id}/rerun", headers=auth(user_token[1]))
        assert_problem(r, 404)
    assert "RerunJob" not in [c[0] for c in jobs.calls[calls:]]
    assert_problem(await client.post(f"/v1/jobs/{theirs.id}/rerun"), 401)
