"""The enhancement timeout: a job left `enhancing` (the enhancer stopped) goes
on with its original prompt, recorded as a fallback with its reason, and its
generation task is published; a late CompleteEnhancement is refused; sweeps
racing each other expire a job once. Also the reason an enhancer gives, and
the policy applied to what it writes."""

from __future__ import annotations

import asyncio

import grpc

from ourvidz.v1 import job_pb2, queue_pb2
from ourvidz.v1 import job_service_pb2 as pb
from tests.conftest import rpc_error
from tests.jobs.helpers import owner_query, pull_task

SMALL_VIDEO = {"width": 64, "height": 64, "num_frames": 9}


def backdate(owner_url: str, job_id: str, seconds: int) -> None:
    """As if the job had been waiting for its enhancement `seconds` already."""
    owner_query(
        owner_url,
        "UPDATE jobs.jobs SET created_at = now() - make_interval(secs => %s) "
        "WHERE id = %s RETURNING id",
        (seconds, job_id),
    )


async def get(harness, md, job_id: str) -> job_pb2.Job:
    return (await harness.stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=md)).job


async def wait_for_state(harness, md, job_id: str, state: int, wait: float = 30.0) -> job_pb2.Job:
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        job = await get(harness, md, job_id)
        if job.state == state or asyncio.get_running_loop().time() > deadline:
            return job
        await asyncio.sleep(0.2)


async def test_a_job_left_enhancing_goes_on_with_its_original_prompt(harness, base_env):
    _, md = harness.user()
    job = await harness.create(
        md, job_type="video7b_fast_enhanced", prompt="a quiet harbour", **SMALL_VIDEO
    )
    assert job.state == job_pb2.JOB_STATE_ENHANCING
    backdate(base_env["DATABASE_URL"], job.id, 120)

    # The service's own sweeper (every 0.5 s here, timeout 60 s) takes it.
    queued = await wait_for_state(harness, md, job.id, job_pb2.JOB_STATE_QUEUED)
    assert queued.state == job_pb2.JOB_STATE_QUEUED
    assert queued.enhancement_fallback
    assert queued.enhancement_fallback_reason == ("ENHANCER_TIMEOUT: no enhancement within 60 s")
    assert queued.enhanced_prompt == ""

    msg = await pull_task(harness, "tasks.wan.fast", job.id)
    task = queue_pb2.GenerationTask.FromString(msg.data)
    assert task.prompt == "a quiet harbour"
    assert (task.width, task.num_frames) == (64, 9)
    assert task.output_bucket == "video7b-fast-enhanced"

    # The enhancer, back too late, is told its result is not wanted.
    err = await rpc_error(
        harness.stub.CompleteEnhancement(
            pb.CompleteEnhancementRequest(job_id=job.id, enhanced_prompt="a rich harbour scene"),
            metadata=harness.worker_md,
        )
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "ENHANCEMENT_TIMED_OUT"
    after = await get(harness, md, job.id)
    assert after.enhanced_prompt == "" and after.last_sequence == queued.last_sequence


async def test_a_job_within_the_timeout_is_left_alone(harness):
    _, md = harness.user()
    job = await harness.create(md, job_type="image7b_high_enhanced", prompt="a moth")
    await harness.running.sweeper.sweep_once()
    still = await get(harness, md, job.id)
    assert still.state == job_pb2.JOB_STATE_ENHANCING
    done = await harness.stub.CompleteEnhancement(
        pb.CompleteEnhancementRequest(job_id=job.id, enhanced_prompt="a luna moth at night"),
        metadata=harness.worker_md,
    )
    assert done.job.enhanced_prompt == "a luna moth at night"
    assert not done.job.enhancement_fallback and done.job.enhancement_fallback_reason == ""


async def test_racing_sweeps_expire_a_job_once(harness, base_env):
    _, md = harness.user()
    job = await harness.create(md, job_type="image7b_fast_enhanced", prompt="a kite")
    backdate(base_env["DATABASE_URL"], job.id, 3600)
    core = harness.running.core
    # Two replicas' sweeps at once (and the service's own one may join in).
    results = await asyncio.gather(
        core.expire_enhancements(60, 100), core.expire_enhancements(60, 100)
    )
    expired_here = [j.id for batch in results for j in batch if j.id == job.id]
    assert len(expired_here) <= 1
    queued = await wait_for_state(harness, md, job.id, job_pb2.JOB_STATE_QUEUED)
    assert queued.state == job_pb2.JOB_STATE_QUEUED
    assert queued.last_sequence == 2  # created, then queued: one expiry
    rows = owner_query(
        base_env["DATABASE_URL"],
        "SELECT count(*) FROM jobs.outbox WHERE msg_id = %s",
        (job.id,),
    )
    assert rows[0][0] <= 1  # at most one generation task waiting to be published
    await harness.drain_relay()
    msg = await pull_task(harness, "tasks.wan.fast", job.id)
    assert queue_pb2.GenerationTask.FromString(msg.data).prompt == "a kite"


async def test_a_cancelled_enhancing_job_is_not_expired(harness, base_env):
    _, md = harness.user()
    job = await harness.create(md, job_type="image7b_fast_enhanced", prompt="a gull")
    await harness.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=md)
    backdate(base_env["DATABASE_URL"], job.id, 3600)
    await harness.running.sweeper.sweep_once()
    after = await get(harness, md, job.id)
    assert after.state == job_pb2.JOB_STATE_CANCELLED
    assert not after.enhancement_fallback


async def test_an_enhanced_prompt_against_the_policy_falls_back(harness):
    _, md = harness.user()
    job = await harness.create(md, job_type="image7b_fast_enhanced", prompt="a fox")
    done = await harness.stub.CompleteEnhancement(
        pb.CompleteEnhancementRequest(job_id=job.id, enhanced_prompt="a fox amid gore"),
        metadata=harness.worker_md,
    )
    assert done.job.state == job_pb2.JOB_STATE_QUEUED
    assert done.job.enhancement_fallback and done.job.enhanced_prompt == ""
    assert done.job.enhancement_fallback_reason.startswith("PROMPT_POLICY:")
    assert "'gore'" in done.job.enhancement_fallback_reason
    msg = await pull_task(harness, "tasks.wan.fast", job.id)
    assert queue_pb2.GenerationTask.FromString(msg.data).prompt == "a fox"


async def test_the_enhancers_fallback_reason_is_recorded(harness):
    _, md = harness.user()
    job = await harness.create(md, job_type="image7b_high_enhanced", prompt="a pier")
    done = await harness.stub.CompleteEnhancement(
        pb.CompleteEnhancementRequest(
            job_id=job.id, fallback=True, fallback_reason="MODEL_ERROR: out of memory"
        ),
        metadata=harness.worker_md,
    )
    assert done.job.enhancement_fallback
    assert done.job.enhancement_fallback_reason == "MODEL_ERROR: out of memory"
    again = await harness.stub.CompleteEnhancement(
        pb.CompleteEnhancementRequest(job_id=job.id, enhanced_prompt="late but not timed out"),
        metadata=harness.worker_md,
    )
    assert again.job.last_sequence == done.job.last_sequence  # a repeat changes nothing


def test_an_enhanced_prompt_is_cut_to_the_prompt_limit_at_a_word():
    from services.jobs.service import _fit

    assert _fit("short prompt", 50) == "short prompt"
    assert _fit("alpha beta gamma", 12) == "alpha beta"
    assert _fit("alpha beta, gamma", 11) == "alpha beta"
    assert _fit("x" * 30, 10) == "x" * 10
    assert len(_fit("word " * 1000, 2000)) <= 2000
