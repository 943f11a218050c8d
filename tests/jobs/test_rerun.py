"""RerunJob: a completed job's recorded parameters submitted again (an
enhanced job's rendered prompt as its plain twin), refused when the job did
not complete with a provenance or its worker family now runs another model;
and the template version an enhanced job records."""

from __future__ import annotations

import uuid

import grpc

from ourvidz import catalog
from ourvidz.v1 import job_pb2
from ourvidz.v1 import job_service_pb2 as pb
from tests.conftest import rpc_error
from tests.jobs.helpers import MAX_ACTIVE, owner_query
from tests.jobs.test_worker import Worker


def provenance(digest: str, preset: str = "tiny") -> job_pb2.Provenance:
    return job_pb2.Provenance(weights_digest=digest, preset=preset, worker_id="w1", steps=2)


async def completed(
    harness, md, digest: str | None = None, **spec
) -> tuple[job_pb2.Job, job_pb2.Job]:
    """(as created, as completed): a new job run to completion with the
    provenance of the weights `digest` (none when None)."""
    job = await harness.create(md, **spec)
    return job, await complete(harness, job, digest)


async def complete(harness, job: job_pb2.Job, digest: str | None) -> job_pb2.Job:
    worker = Worker(harness)
    await worker.start(job.id)
    jt = catalog.CATALOG[job.job_type]
    assets = [
        job_pb2.Asset(
            index=i,
            bucket=jt.bucket,
            key=catalog.output_key(jt, job.user_id, job.id, i),
            content_type=jt.content_type,
        )
        for i in range(catalog.output_count(jt, job.num_images))
    ]
    response = await harness.stub.CompleteJob(
        pb.CompleteJobRequest(
            job_id=job.id,
            assets=assets,
            start_token=worker.token(job.id),
            provenance=provenance(digest) if digest else None,
        ),
        metadata=harness.worker_md,
    )
    assert response.job.state == job_pb2.JOB_STATE_COMPLETED
    return response.job


async def rerun(harness, md, job_id: str, request_id: str = "", session: str = ""):
    return await harness.stub.RerunJob(
        pb.RerunJobRequest(job_id=job_id, request_id=request_id, workspace_session_id=session),
        metadata=md,
    )


def new_digest() -> str:
    return uuid.uuid4().hex * 2


def job_count(owner_url: str, user_id: str) -> int:
    (row,) = owner_query(
        owner_url,
        "SELECT count(*) FROM jobs.jobs WHERE user_id = %s",
        (user_id,),
    )
    return row[0]


# The parameters a re-run repeats.
PARAMETERS = (
    "negative_prompt",
    "seed",
    "num_images",
    "width",
    "height",
    "num_frames",
    "steps",
    "guidance_scale",
    "reference",
    "destination",
)


async def test_a_rerun_repeats_every_recorded_parameter(harness):
    user_id, md = harness.user()
    session = harness.workspace.add_session(user_id)
    source, done = await completed(
        harness,
        md,
        new_digest(),
        prompt="a red fox in the snow",
        negative_prompt="fog",
        seed=1234,
        num_images=3,
        width=256,
        height=192,
        reference_image_id=harness.workspace.add(user_id),
        reference_type=job_pb2.REFERENCE_TYPE_COMPOSITION,
        reference_strength=0.7,
        workspace_session_id=session,
    )
    reply = await rerun(harness, md, source.id, request_id="again-1")
    job = reply.job
    assert not reply.existing
    assert job.id != source.id and job.rerun_of == source.id
    assert job.state == job_pb2.JOB_STATE_QUEUED
    assert (job.job_type, job.prompt) == (source.job_type, "a red fox in the snow")
    for name in PARAMETERS:
        assert getattr(job, name) == getattr(source, name), name
    assert job.workspace_session_id == session  # where the job's outputs went
    assert not job.assets and not job.HasField("provenance")
    assert not done.rerun_of

    again = await rerun(harness, md, source.id, request_id="again-1")
    assert again.existing and again.job.id == job.id
    # Another session of the caller's takes the outputs when named.
    elsewhere = harness.workspace.add_session(user_id)
    moved = (await rerun(harness, md, source.id, session=elsewhere)).job
    assert moved.workspace_session_id == elsewhere and moved.seed == source.seed
    got = (await harness.stub.GetJob(pb.GetJobRequest(job_id=moved.id), metadata=md)).job
    assert got.rerun_of == source.id


async def test_an_enhanced_job_reruns_its_rendered_prompt_as_its_plain_twin(harness):
    _, md = harness.user()
    job = await harness.create(md, job_type="image7b_fast_enhanced", prompt="a moth")
    template_id = str(uuid.uuid4())
    enhanced = await harness.stub.CompleteEnhancement(
        pb.CompleteEnhancementRequest(
            job_id=job.id,
            enhanced_prompt="a luna moth on birch bark, soft light",
            template_id=template_id,
            template_version=3,
        ),
        metadata=harness.worker_md,
    )
    assert enhanced.job.enhancement_template_id == template_id
    assert enhanced.job.enhancement_template_version == 3
    done = await complete(harness, enhanced.job, new_digest())
    assert (done.enhancement_template_id, done.enhancement_template_version) == (template_id, 3)

    again = (await rerun(harness, md, job.id)).job
    assert again.job_type == "image_fast"
    assert again.state == job_pb2.JOB_STATE_QUEUED  # not enhanced again
    assert again.prompt == "a luna moth on birch bark, soft light"
    assert not again.enhanced_prompt and not again.enhancement_template_id
    assert (again.seed, again.width, again.height, again.negative_prompt) == (
        job.seed,
        job.width,
        job.height,
        job.negative_prompt,
    )
    assert again.rerun_of == job.id


async def test_a_fallback_records_no_template(harness, base_env):
    _, md = harness.user()
    job = await harness.create(md, job_type="image7b_fast_enhanced", prompt="a heron")
    done = await harness.stub.CompleteEnhancement(
        pb.CompleteEnhancementRequest(
            job_id=job.id,
            fallback=True,
            fallback_reason="timeout",
            template_id=str(uuid.uuid4()),
            template_version=2,
        ),
        metadata=harness.worker_md,
    )
    assert done.job.enhancement_fallback
    assert (done.job.enhancement_template_id, done.job.enhancement_template_version) == ("", 0)
    (row,) = owner_query(
        base_env["DATABASE_URL"],
        "SELECT enhancement_template_id, enhancement_template_version FROM jobs.jobs WHERE id = %s",
        (job.id,),
    )
    assert row == ("", 0)


async def test_a_rerun_is_refused_once_the_family_runs_other_weights(harness, base_env):
    user_id, md = harness.user()
    source, _ = await completed(harness, md, new_digest())
    # A later job of the same worker family (another type, another user) was
    # rendered by other weights: that is the model the family runs now.
    _, other_md = harness.user()
    later, _ = await completed(harness, other_md, new_digest(), job_type="sdxl_image_high")
    before = job_count(base_env["DATABASE_URL"], user_id)
    err = await rpc_error(rerun(harness, md, source.id))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "MODEL_CHANGED"
    assert "model changed" in err.message and "sdxl" in err.message
    assert job_count(base_env["DATABASE_URL"], user_id) == before
    # The later job is on the current model: it re-runs.
    assert (await rerun(harness, other_md, later.id)).job.rerun_of == later.id


async def test_a_job_that_did_not_complete_with_a_provenance_is_refused(harness):
    _, md = harness.user()
    queued = await harness.create(md)
    err = await rpc_error(rerun(harness, md, queued.id))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "JOB_NOT_COMPLETED")
    assert "queued" in err.message
    unknown, _ = await completed(harness, md, digest=None)
    err = await rpc_error(rerun(harness, md, unknown.id))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_PROVENANCE")


async def test_a_job_rendered_with_other_steps_is_refused(harness, base_env):
    _, md = harness.user()
    source, _ = await completed(harness, md, new_digest())
    # As if the catalog's steps for the type changed since the job ran.
    owner_query(
        base_env["DATABASE_URL"],
        "UPDATE jobs.jobs SET steps = steps + 1 WHERE id = %s RETURNING id",
        (source.id,),
    )
    err = await rpc_error(rerun(harness, md, source.id))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SETTINGS_CHANGED")


async def test_another_users_or_no_job_is_not_found(harness):
    _, md = harness.user()
    source, _ = await completed(harness, md, new_digest())
    _, other_md = harness.user()
    for job_id in (source.id, str(uuid.uuid4()), "not-a-job"):
        err = await rpc_error(rerun(harness, other_md, job_id))
        assert err.code == grpc.StatusCode.NOT_FOUND, job_id


async def test_a_rerun_counts_against_the_active_job_limit(harness):
    _, md = harness.user()
    source, _ = await completed(harness, md, new_digest())
    for _ in range(MAX_ACTIVE):
        await harness.create(md)
    err = await rpc_error(rerun(harness, md, source.id))
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
