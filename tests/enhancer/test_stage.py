"""The enhance stage with the real jobs service: an enhanced job goes
`enhancing` -> (this consumer) -> `queued` with its enhanced prompt; a model
failure or a timeout still queues it, with the original prompt and the
fallback recorded; heartbeats keep a slow enhancement from being redelivered;
tasks for jobs that no longer wait are acked."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from ourvidz import queue
from ourvidz.grpcserver import channel
from ourvidz.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc, queue_pb2
from services.enhancer import models
from services.jobs.main import start as start_jobs
from services.jobs.settings import JobsSettings
from tests.conftest import make_settings
from tests.enhancer.conftest import (
    owner_query,
    remove_enhance_consumer,
    replica,
    restore_default_templates,
    user_md,
)
from tests.queue_helpers import take_tasks

ACK_WAIT = 1.0


class Mesh:
    def __init__(self, jobs, enh, stub, nc, js, overrides) -> None:
        self.overrides = overrides
        self.jobs = jobs
        self.enh = enh
        self.stub = stub
        self.nc = nc
        self.js = js

    async def create(self, md, job_type: str, prompt: str) -> job_pb2.Job:
        response = await self.stub.CreateJob(
            job_service_pb2.CreateJobRequest(job=job_pb2.JobSpec(job_type=job_type, prompt=prompt)),
            metadata=md,
        )
        return response.job

    async def until_queued(self, md, job_id: str, wait_seconds: float = 60) -> job_pb2.Job:
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            job = (
                await self.stub.GetJob(job_service_pb2.GetJobRequest(job_id=job_id), metadata=md)
            ).job
            if job.state != job_pb2.JOB_STATE_ENHANCING:
                return job
            await asyncio.sleep(0.1)
        raise AssertionError("the job stayed in enhancing")

    async def consumer_idle(self, wait_seconds: float = 30):
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            info = await self.js.consumer_info(queue.TASKS_STREAM, "enhancer")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return info
            await asyncio.sleep(0.1)
        raise AssertionError("the enhance consumer does not settle")


@pytest.fixture(scope="module")
async def mesh(base_env, infra):
    jobs = await start_jobs(make_settings(JobsSettings, base_env), port=0)
    nc, js = await queue.connect(infra.nats_url, name="enhancer-stage-tests")
    ch = channel(f"127.0.0.1:{jobs.port}")
    overrides = {
        "JOBS_ADDR": f"127.0.0.1:{jobs.port}",
        "ENHANCER_MIN_NEW_TOKENS": 16,
        "ENHANCER_ACK_WAIT_SECONDS": ACK_WAIT,
        "ENHANCER_MAX_NEW_TOKENS_WAN": 40,
    }
    try:
        async with replica(base_env, **overrides) as enh:
            yield Mesh(jobs, enh, job_service_pb2_grpc.JobServiceStub(ch), nc, js, overrides)
    finally:
        await ch.close()
        await jobs.stop()
        await nc.close()
        restore_default_templates(infra.database_url)
        await remove_enhance_consumer(infra.nats_url)


def enhancement_template(infra, job_id: str) -> tuple[str, int]:
    """(template id, version) the enhancer recorded for the job's enhancement."""
    [(template_id, version)] = owner_query(
        infra.database_url,
        "SELECT coalesce(template_id::text, ''), template_version "
        "FROM enhancer.enhancements WHERE job_id = %s",
        (job_id,),
    )
    return template_id, version


def enhancement_rows(infra, job_id: str) -> list[tuple]:
    return owner_query(
        infra.database_url,
        "SELECT user_id::text, enhanced_prompt, fallback, fallback_reason, target_model "
        "FROM enhancer.enhancements WHERE job_id = %s",
        (job_id,),
    )


@pytest.mark.parametrize(
    "job_type",
    [
        "image7b_fast_enhanced",
        "image7b_high_enhanced",
        "video7b_fast_enhanced",
        "video7b_high_enhanced",
    ],
)
async def test_enhanced_job_is_queued_with_its_enhanced_prompt(mesh, infra, job_type):
    user_id, md = user_md()
    job = await mesh.create(md, job_type, "a fox running through snow")
    assert job.state == job_pb2.JOB_STATE_ENHANCING
    job = await mesh.until_queued(md, job.id)
    assert job.state == job_pb2.JOB_STATE_QUEUED
    assert not job.enhancement_fallback
    assert job.enhanced_prompt and job.prompt == "a fox running through snow"
    assert enhancement_rows(infra, job.id) == [(user_id, job.enhanced_prompt, False, "", "wan")]
    # The job names the template version that wrote its prompt.
    template = (job.enhancement_template_id, job.enhancement_template_version)
    assert template == enhancement_template(infra, job.id) and template[1] >= 1


async def test_a_failing_model_queues_the_job_as_a_fallback(mesh, infra):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    mesh.enh.core.generate = broken
    try:
        user_id, md = user_md()
        job = await mesh.create(md, "video7b_fast_enhanced", "a lighthouse at dusk")
        job = await mesh.until_queued(md, job.id)
    finally:
        mesh.enh.core.generate = models.generate
    assert job.state == job_pb2.JOB_STATE_QUEUED
    assert job.enhancement_fallback and job.enhanced_prompt == ""
    assert (job.enhancement_template_id, job.enhancement_template_version) == ("", 0)
    [(owner, prompt, fallback, reason, _)] = enhancement_rows(infra, job.id)
    assert (owner, prompt, fallback) == (user_id, "a lighthouse at dusk", True)
    assert reason.startswith("model_error")
    if job.enhancement_fallback_reason:  # stored by Jobs where it keeps the reason
        assert job.enhancement_fallback_reason == reason


async def test_a_timeout_queues_the_job_as_a_fallback(mesh, infra):
    original = mesh.enh.core.settings
    mesh.enh.core.settings = original.model_copy(update={"enhancer_timeout_seconds": 0.0})
    try:
        _, md = user_md()
        job = await mesh.create(md, "image7b_fast_enhanced", "a lighthouse at dusk")
        job = await mesh.until_queued(md, job.id)
    finally:
        mesh.enh.core.settings = original
    assert job.state == job_pb2.JOB_STATE_QUEUED and job.enhancement_fallback
    [(_, _, fallback, reason, _)] = enhancement_rows(infra, job.id)
    assert fallback and reason.startswith("timeout")


async def test_heartbeats_keep_a_slow_enhancement_from_redelivery(mesh, base_env):
    """Two replicas share the consumer; an enhancement three ack waits long is
    not handed to the idle one, because the busy one keeps saying it works."""
    calls = []

    def slow(lm, messages, sampling, **kwargs):
        calls.append(1)
        time.sleep(ACK_WAIT * 3)
        return models.Generated(text="a slow, careful prompt", tokens_in=3, tokens_out=5)

    async with replica(base_env, **mesh.overrides) as other:
        for r in (mesh.enh, other):
            r.core.generate = slow
        try:
            _, md = user_md()
            job = await mesh.create(md, "image7b_fast_enhanced", "a lighthouse at dusk")
            job = await mesh.until_queued(md, job.id)
            info = await mesh.consumer_idle()
        finally:
            for r in (mesh.enh, other):
                r.core.generate = models.generate
    assert job.enhanced_prompt == "a slow, careful prompt"
    assert len(calls) == 1
    assert info.num_redelivered == 0


async def test_tasks_for_jobs_that_no_longer_wait_are_acked(mesh):
    handled = mesh.enh.running.stage.handled
    # A job Jobs does not know, then a cancelled job.
    await mesh.js.publish(
        queue.ENHANCE_SUBJECT,
        queue_pb2.EnhanceTask(
            job_id=str(uuid.uuid4()),
            user_id=str(uuid.uuid4()),
            job_type="image7b_fast_enhanced",
            prompt="a cat",
            target_model="wan",
        ).SerializeToString(),
    )
    await mesh.js.publish(queue.ENHANCE_SUBJECT, b"\xff not a task")
    await mesh.consumer_idle()
    assert mesh.enh.running.stage.handled >= handled + 1
    info = await mesh.js.stream_info(queue.TASKS_STREAM, subjects_filter=queue.ENHANCE_SUBJECT)
    assert not (info.state.subjects or {}).get(queue.ENHANCE_SUBJECT)


async def test_a_task_that_keeps_failing_ends_as_a_fallback(mesh, infra):
    """The enhancement itself fails (here: before the model runs) on every
    attempt; the delivery after the last attempt queues the job with the
    original prompt."""
    stage = mesh.enh.running.stage
    original = stage.settings
    stage.settings = original.model_copy(
        update={"enhancer_max_attempts": 2, "enhancer_retry_backoff_seconds": (0.1,)}
    )
    attempts = []

    async def failing(*args, **kwargs):
        attempts.append(1)
        raise ConnectionError("database unreachable")

    mesh.enh.core.enhance = failing
    try:
        _, md = user_md()
        job = await mesh.create(md, "image7b_high_enhanced", "a lighthouse at dusk")
        job = await mesh.until_queued(md, job.id)
        await mesh.consumer_idle()
    finally:
        del mesh.enh.core.enhance
        stage.settings = original
    assert len(attempts) == 2
    assert job.state == job_pb2.JOB_STATE_QUEUED
    assert job.enhancement_fallback and job.enhanced_prompt == ""


async def test_an_enhanced_job_is_one_trace_through_the_stage(mesh):
    from opentelemetry import trace
    from prometheus_client import REGISTRY

    from ourvidz import telemetry

    labels = {"service": "enhancer", "job_type": "image7b_fast_enhanced", "stage": "enhance"}
    before = REGISTRY.get_sample_value("ourvidz_stage_seconds_count", labels) or 0.0
    _, md = user_md()
    with telemetry.capture() as exporter:
        with telemetry.tracer("client").start_as_current_span("client") as client:
            job = await mesh.create(md, "image7b_fast_enhanced", "a heron in the reeds")
        await mesh.until_queued(md, job.id)
        # A worker of the family waits: Jobs publishes the generation task.
        await take_tasks(mesh.js, "wan", [job.id])
        trace_id = client.get_span_context().trace_id

        def generation_task_published() -> list:
            return [
                s
                for s in exporter.get_finished_spans()
                if s.context.trace_id == trace_id
                and s.name == "jobs.outbox.publish"
                and s.attributes["messaging.destination.name"].startswith("tasks.wan.")
            ]

        deadline = time.monotonic() + 20
        while not generation_task_published():
            assert time.monotonic() < deadline, "the generation task's publish span is missing"
            await asyncio.sleep(0.05)
        spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
    ids = {s.context.span_id: s for s in spans}
    (stage,) = [s for s in spans if s.name == "enhancer.job"]
    assert stage.attributes["job.id"] == job.id
    assert stage.attributes["job.attempt"] == 1
    publish = ids[stage.parent.span_id]
    assert publish.attributes["messaging.destination.name"] == queue.ENHANCE_SUBJECT
    assert ids[publish.parent.span_id].name == "/ourvidz.v1.JobService/CreateJob"
    (enhance,) = [s for s in spans if s.name == "enhancer.enhance"]
    assert enhance.parent.span_id == stage.context.span_id
    assert enhance.attributes["job.attempt"] == 1
    (completed,) = [
        s
        for s in spans
        if s.name == "/ourvidz.v1.JobService/CompleteEnhancement"
        and s.kind == trace.SpanKind.SERVER
    ]
    assert completed.attributes["ourvidz.service"] == "jobs"
    assert ids[completed.parent.span_id].parent.span_id == stage.context.span_id
    (generation,) = generation_task_published()
    assert generation.parent.span_id == completed.context.span_id
    after = REGISTRY.get_sample_value("ourvidz_stage_seconds_count", labels)
    assert after == before + 1
