"""CreateJob: validation of every field, defaults, the negative prompt,
reference images, idempotency and the per-user limit."""

from __future__ import annotations

import uuid

import grpc
import pytest

from ourvidz import catalog, queue
from ourvidz.v1 import job_pb2
from tests.conftest import foreign_token, rpc_error
from tests.jobs.helpers import MAX_ACTIVE, owner_query

BAD_INPUTS = [
    ({"job_type": "sdxl_image_medium"}, "job_type"),
    ({"num_images": 4}, "num_images"),
    ({"reference_strength": 1.5}, "reference_strength"),
    ({"reference_strength": 0.05}, "reference_strength"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"prompt": "a cat\x00 at night"}, "prompt"),  # PostgreSQL cannot store a NUL
    ({"negative_prompt": "blurry\x1b[0m"}, "negative_prompt"),
    ({"negative_prompt": "x" * 2001}, "negative_prompt"),
    ({"seed": 2**32}, "seed"),
    ({"seed": -1}, "seed"),
    ({"width": 1000}, "width"),
    ({"height": 4096}, "height"),
    ({"job_type": "video_fast", "num_frames": 80}, "num_frames"),
    ({"job_type": "video_fast", "num_frames": 125}, "num_frames"),
    ({"job_type": "image_fast", "num_frames": 5}, "num_frames"),
    ({"job_type": "image_fast", "num_images": 3}, "num_images"),
    ({"job_type": "image_fast", "width": 840}, "width"),
    ({"job_type": "video_fast", "reference_image_id": str(uuid.uuid4())}, "reference_image_id"),
    ({"workspace_session_id": "not-a-session"}, "workspace_session_id"),
    ({"prompt": "a scene full of GORE"}, "prompt"),  # the deny list (setting)
    ({"prompt": "a Bad-Thing at night", "job_type": "image7b_fast_enhanced"}, "prompt"),  # (file)
]


async def tasks_stored(harness) -> int:
    await harness.drain_relay()
    return (await harness.js.stream_info(queue.TASKS_STREAM)).state.messages


def stored_rows(owner_url: str, user_id: str) -> int:
    (jobs,) = owner_query(
        owner_url, "SELECT count(*) FROM jobs.jobs WHERE user_id = %s", (user_id,)
    )
    (events,) = owner_query(
        owner_url, "SELECT count(*) FROM jobs.job_events WHERE user_id = %s", (user_id,)
    )
    return jobs[0] + events[0]


@pytest.mark.parametrize(("spec", "field"), BAD_INPUTS, ids=[f for _, f in BAD_INPUTS])
async def test_bad_input_is_refused_and_nothing_is_stored_or_queued(harness, base_env, spec, field):
    user_id, md = harness.user()
    before = await tasks_stored(harness)
    err = await rpc_error(harness.create(md, **spec))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in err.violations], err
    assert stored_rows(base_env["DATABASE_URL"], user_id) == 0
    assert await tasks_stored(harness) == before


async def test_every_violation_is_reported_at_once(harness):
    _, md = harness.user()
    err = await rpc_error(
        harness.create(md, prompt="", num_images=4, seed=2**40, width=100, reference_strength=3.0)
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in err.violations} == {
        "prompt",
        "num_images",
        "seed",
        "width",
        "reference_strength",
    }


async def test_a_denied_prompt_is_reported_with_the_other_violations(harness, base_env):
    user_id, md = harness.user()
    err = await rpc_error(harness.create(md, prompt="gore and a bad  thing", num_images=4))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    by_field = {v.field: v.message for v in err.violations}
    assert set(by_field) == {"prompt", "num_images"}
    assert "'gore'" in by_field["prompt"] and "'bad thing'" in by_field["prompt"]
    assert stored_rows(base_env["DATABASE_URL"], user_id) == 0


async def test_the_deny_list_matches_whole_words_and_spares_the_negative_prompt(harness):
    _, md = harness.user()
    job = await harness.create(md, prompt="a gorestone cliff", negative_prompt="gore, bad thing")
    assert job.prompt == "a gorestone cliff"
    assert job.negative_prompt == "gore, bad thing"


async def test_sdxl_defaults_and_negative_prompt(harness):
    _, md = harness.user()
    job = await harness.create(md, prompt="  a red fox in the snow  ")
    assert job.state == job_pb2.JOB_STATE_QUEUED
    assert job.prompt == "a red fox in the snow"
    assert (job.num_images, job.width, job.height, job.num_frames) == (1, 1024, 1024, 1)
    assert (job.steps, job.guidance_scale) == (15, pytest.approx(6.0))
    assert 0 <= job.seed <= catalog.SEED_MAX
    assert job.negative_prompt == catalog.SDXL_BASE_NEGATIVE
    assert job.destination == job_pb2.DESTINATION_WORKSPACE
    assert job.last_sequence == 1
    assert not job.HasField("reference")


async def test_multi_person_prompt_gets_multi_person_negative_terms(harness):
    _, md = harness.user()
    job = await harness.create(
        md, prompt="two women dancing in the rain", job_type="sdxl_image_high"
    )
    assert "merged bodies" in job.negative_prompt
    assert job.negative_prompt.startswith(catalog.SDXL_BASE_NEGATIVE)
    assert (job.steps, job.guidance_scale) == (25, pytest.approx(7.5))


async def test_explicit_values_are_kept(harness):
    _, md = harness.user()
    job = await harness.create(
        md,
        negative_prompt="blurry",
        seed=42,
        num_images=6,
        width=512,
        height=768,
        destination=job_pb2.DESTINATION_LIBRARY,
    )
    assert (job.negative_prompt, job.seed, job.num_images) == ("blurry", 42, 6)
    assert (job.width, job.height) == (512, 768)
    assert job.destination == job_pb2.DESTINATION_LIBRARY


async def test_wan_defaults(harness):
    _, md = harness.user()
    video = await harness.create(md, job_type="video_fast")
    assert (video.width, video.height, video.num_frames) == (832, 480, 81)
    assert video.negative_prompt == catalog.WAN_DEFAULT_NEGATIVE
    image = await harness.create(md, job_type="image_high", num_frames=1)
    assert image.num_frames == 1
    assert image.steps == 50


async def test_enhanced_types_start_in_enhancing(harness):
    _, md = harness.user()
    job = await harness.create(md, job_type="video7b_fast_enhanced")
    assert job.state == job_pb2.JOB_STATE_ENHANCING


async def test_reference_is_resolved_with_the_callers_identity(harness):
    user_id, md = harness.user()
    upload_id = harness.workspace.add(user_id)
    job = await harness.create(md, reference_image_id=upload_id)
    ref = job.reference
    assert ref.upload_id == upload_id
    assert (ref.bucket, ref.key) == ("reference-images", f"{user_id}/{upload_id}.png")
    assert ref.type == job_pb2.REFERENCE_TYPE_STYLE
    assert ref.strength == pytest.approx(0.6)
    assert harness.workspace.calls[-1] == user_id

    job = await harness.create(
        md,
        reference_image_id=upload_id,
        reference_type=job_pb2.REFERENCE_TYPE_CHARACTER,
        reference_strength=0.9,
    )
    assert job.reference.type == job_pb2.REFERENCE_TYPE_CHARACTER
    assert job.reference.strength == pytest.approx(0.9)


async def test_unknown_or_foreign_upload_is_invalid(harness, base_env):
    owner, _ = harness.user()
    upload_id = harness.workspace.add(owner)
    other, md = harness.user()
    for ref in (str(uuid.uuid4()), upload_id):
        err = await rpc_error(harness.create(md, reference_image_id=ref))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in err.violations] == ["reference_image_id"]
    assert stored_rows(base_env["DATABASE_URL"], other) == 0


async def test_request_id_makes_create_idempotent(harness, base_env):
    user_id, md = harness.user()
    first = await harness.stub.CreateJob(_request("a castle", "req-1"), metadata=md)
    again = await harness.stub.CreateJob(_request("a castle", "req-1"), metadata=md)
    assert not first.existing
    assert again.existing
    assert again.job.id == first.job.id
    assert again.job.request_id == "req-1"
    rows = owner_query(
        base_env["DATABASE_URL"], "SELECT count(*) FROM jobs.jobs WHERE user_id = %s", (user_id,)
    )
    assert rows[0][0] == 1

    _other_id, other_md = harness.user()
    theirs = await harness.stub.CreateJob(_request("a castle", "req-1"), metadata=other_md)
    assert not theirs.existing
    assert theirs.job.id != first.job.id


@pytest.mark.parametrize("request_id", ["req\x00-1", "r" * 201])
async def test_bad_request_id_is_refused(harness, base_env, request_id):
    user_id, md = harness.user()
    err = await rpc_error(harness.stub.CreateJob(_request("a castle", request_id), metadata=md))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in err.violations] == ["request_id"]
    assert stored_rows(base_env["DATABASE_URL"], user_id) == 0


async def test_active_job_limit(harness):
    _, md = harness.user()
    jobs = [await harness.create(md) for _ in range(MAX_ACTIVE)]
    err = await rpc_error(harness.create(md))
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    # A retried create of an existing job is not refused by the limit.
    _user2, md2 = harness.user()
    for i in range(MAX_ACTIVE):
        await harness.stub.CreateJob(_request("p", f"k{i}"), metadata=md2)
    again = await harness.stub.CreateJob(_request("p", "k0"), metadata=md2)
    assert again.existing

    # Finishing one frees a slot.
    from ourvidz.v1 import job_service_pb2

    await harness.stub.CancelJob(job_service_pb2.CancelJobRequest(job_id=jobs[0].id), metadata=md)
    assert (await harness.create(md)).state == job_pb2.JOB_STATE_QUEUED


async def test_workers_cannot_create_jobs(harness):
    err = await rpc_error(harness.create(harness.worker_md))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED


async def test_calls_without_a_valid_token_are_refused(harness):
    err = await rpc_error(harness.create((("authorization", "Bearer nonsense"),)))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    forged = foreign_token(str(uuid.uuid4()))
    err = await rpc_error(harness.create((("authorization", f"Bearer {forged}"),)))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED


async def test_list_job_types(harness):
    from ourvidz.v1 import job_service_pb2

    _, md = harness.user()
    response = await harness.stub.ListJobTypes(job_service_pb2.ListJobTypesRequest(), metadata=md)
    by_name = {jt.name: jt for jt in response.job_types}
    assert set(by_name) == set(catalog.CATALOG)
    sdxl = by_name["sdxl_image_fast"]
    assert list(sdxl.allowed_num_images) == [1, 3, 6]
    assert sdxl.subject == "tasks.sdxl.fast"
    assert 1024 in sdxl.allowed_widths and 1000 not in sdxl.allowed_widths
    assert by_name["video_fast"].default_num_frames == 81


def _request(prompt: str, request_id: str):
    from ourvidz.v1 import job_service_pb2

    return job_service_pb2.CreateJobRequest(
        job=job_pb2.JobSpec(job_type="sdxl_image_fast", prompt=prompt), request_id=request_id
    )
