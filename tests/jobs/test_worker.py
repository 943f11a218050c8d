"""Worker RPCs and the state machine: who may call them, what each does, and
that repeating one changes nothing."""

from __future__ import annotations

import grpc
import pytest

from ourvidz.errors import FailedPrecondition
from ourvidz.v1 import job_pb2
from ourvidz.v1 import job_service_pb2 as pb
from services.jobs import domain
from tests.conftest import rpc_error
from tests.jobs.helpers import owner_query


def asset(job: job_pb2.Job, index: int = 0) -> job_pb2.Asset:
    return job_pb2.Asset(
        index=index,
        bucket="sdxl-image-fast",
        key=f"{job.user_id}/{job.id}_{index}.png",
        content_type="image/png",
        width=job.width,
        height=job.height,
        seed=job.seed + index,
        size_bytes=1234,
    )


class Worker:
    """A worker's calls; each carries the start token of the job's last start."""

    def __init__(self, harness) -> None:
        self.stub = harness.stub
        self.md = harness.worker_md
        self.tokens: dict[str, str] = {}

    async def start(self, job_id: str, delivery: int = 1) -> pb.StartJobResponse:
        response = await self.stub.StartJob(
            pb.StartJobRequest(job_id=job_id, worker_id="w1", delivery=delivery), metadata=self.md
        )
        if response.start_token:
            self.tokens[job_id] = response.start_token
        return response

    def token(self, job_id: str) -> str:
        return self.tokens.get(job_id, "")

    async def progress(self, job_id: str, step: int, total: int = 15, png: bytes = b"") -> bool:
        response = await self.stub.ReportProgress(
            pb.ReportProgressRequest(
                job_id=job_id,
                progress=job_pb2.Progress(step=step, total=total, stage="denoising"),
                preview_png=png,
                start_token=self.token(job_id),
            ),
            metadata=self.md,
        )
        return response.cancel_requested

    async def complete(
        self, job: job_pb2.Job, n: int = 1, provenance: job_pb2.Provenance | None = None
    ) -> job_pb2.Job:
        response = await self.stub.CompleteJob(
            pb.CompleteJobRequest(
                job_id=job.id,
                assets=[asset(job, i) for i in range(n)],
                start_token=self.token(job.id),
                provenance=provenance,
            ),
            metadata=self.md,
        )
        return response.job

    async def fail(self, job_id: str, will_retry: bool) -> job_pb2.Job:
        response = await self.stub.FailJob(
            pb.FailJobRequest(
                job_id=job_id,
                error=job_pb2.JobError(code="OUT_OF_MEMORY", message="CUDA out of memory"),
                will_retry=will_retry,
                start_token=self.token(job_id),
            ),
            metadata=self.md,
        )
        return response.job


@pytest.fixture
def worker(harness) -> Worker:
    return Worker(harness)


def event_types(owner_url: str, job_id: str) -> list[tuple[int, str]]:
    return owner_query(
        owner_url,
        "SELECT sequence, type FROM jobs.job_events WHERE job_id = %s ORDER BY sequence",
        (job_id,),
    )


async def test_worker_rpcs_are_refused_to_users(harness):
    _, md = harness.user()
    job = await harness.create(md)
    calls = [
        harness.stub.StartJob(pb.StartJobRequest(job_id=job.id, delivery=1), metadata=md),
        harness.stub.ReportProgress(pb.ReportProgressRequest(job_id=job.id), metadata=md),
        harness.stub.CompleteJob(
            pb.CompleteJobRequest(job_id=job.id, assets=[asset(job)]), metadata=md
        ),
        harness.stub.FailJob(pb.FailJobRequest(job_id=job.id), metadata=md),
        harness.stub.CompleteEnhancement(pb.CompleteEnhancementRequest(job_id=job.id), metadata=md),
    ]
    for call in calls:
        err = await rpc_error(call)
        assert err.code == grpc.StatusCode.PERMISSION_DENIED
    got = await harness.stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=md)
    assert got.job.state == job_pb2.JOB_STATE_QUEUED
    assert got.job.last_sequence == 1


async def test_a_job_runs_to_completion_and_repeats_change_nothing(harness, worker, base_env):
    _, md = harness.user()
    job = await harness.create(md, num_images=3)

    started = await worker.start(job.id, delivery=1)
    assert started.proceed
    assert started.job.state == job_pb2.JOB_STATE_RUNNING
    assert started.job.attempt == 1
    assert started.job.HasField("start_time")
    same = await worker.start(job.id, delivery=1)
    assert same.proceed and same.job.last_sequence == started.job.last_sequence

    redelivered = await worker.start(job.id, delivery=2)
    assert redelivered.proceed and redelivered.job.attempt == 2
    assert redelivered.job.last_sequence == started.job.last_sequence + 1

    assert await worker.progress(job.id, 5, png=b"\x89PNG small") is False
    done = await worker.complete(job, n=3)
    assert done.state == job_pb2.JOB_STATE_COMPLETED
    assert [a.key for a in done.assets] == [asset(job, i).key for i in range(3)]
    assert done.HasField("complete_time")

    again = await worker.complete(job, n=3)
    assert again.last_sequence == done.last_sequence
    assert len(again.assets) == 3
    assert not (await worker.start(job.id, delivery=3)).proceed

    err = await rpc_error(worker.fail(job.id, will_retry=False))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    err = await rpc_error(harness.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=md))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION

    got = (await harness.stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=md)).job
    assert got.state == job_pb2.JOB_STATE_COMPLETED
    assert all(a.url.startswith("http") and a.HasField("expire_time") for a in got.assets)
    assert event_types(base_env["DATABASE_URL"], job.id) == [
        (1, "state"),
        (2, "state"),
        (3, "state"),
        (4, "progress"),
        (5, "preview"),
        (6, "completed"),
    ]


async def test_fail_with_retry_waits_queued_then_fails(harness, worker):
    _, md = harness.user()
    job = await harness.create(md)
    await worker.start(job.id)
    retrying = await worker.fail(job.id, will_retry=True)
    assert retrying.state == job_pb2.JOB_STATE_QUEUED  # waits for its next delivery
    assert retrying.error.code == "OUT_OF_MEMORY" and retrying.attempt == 1
    again = await worker.start(job.id, delivery=2)
    assert again.proceed and again.job.attempt == 2 and not again.job.HasField("error")
    failed = await worker.fail(job.id, will_retry=False)
    assert failed.state == job_pb2.JOB_STATE_FAILED
    assert failed.error.message == "CUDA out of memory"
    repeat = await worker.fail(job.id, will_retry=False)
    assert repeat.last_sequence == failed.last_sequence
    err = await rpc_error(worker.complete(job))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert await worker.progress(job.id, 3) is True  # stop: nothing more to do


async def test_cancel_a_queued_job(harness, worker, base_env):
    _, md = harness.user()
    job = await harness.create(md)
    cancelled = (await harness.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=md)).job
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    again = (await harness.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=md)).job
    assert again.last_sequence == cancelled.last_sequence
    assert not (await worker.start(job.id)).proceed
    assert event_types(base_env["DATABASE_URL"], job.id) == [(1, "state"), (2, "cancelled")]


async def test_cancel_a_running_job(harness, worker):
    _, md = harness.user()
    job = await harness.create(md)
    await worker.start(job.id)
    assert await worker.progress(job.id, 1) is False
    cancelled = (await harness.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=md)).job
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    assert await worker.progress(job.id, 2) is True
    err = await rpc_error(worker.complete(job))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_cancel_an_enhancing_job_drops_the_enhancement(harness):
    _, md = harness.user()
    job = await harness.create(md, job_type="image7b_high_enhanced")
    await harness.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=md)
    late = await harness.stub.CompleteEnhancement(
        pb.CompleteEnhancementRequest(job_id=job.id, enhanced_prompt="late"),
        metadata=harness.worker_md,
    )
    assert late.job.state == job_pb2.JOB_STATE_CANCELLED
    assert late.job.enhanced_prompt == ""


async def test_illegal_worker_calls(harness, worker):
    _, md = harness.user()
    queued = await harness.create(md)
    for call in (worker.progress(queued.id, 1), worker.complete(queued)):
        err = await rpc_error(call)
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    enhancing = await harness.create(md, job_type="image7b_fast_enhanced")
    err = await rpc_error(worker.start(enhancing.id))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    err = await rpc_error(
        harness.stub.CompleteEnhancement(
            pb.CompleteEnhancementRequest(job_id=queued.id, enhanced_prompt="x"),
            metadata=harness.worker_md,
        )
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    await worker.start(queued.id)
    err = await rpc_error(
        harness.stub.CompleteJob(
            pb.CompleteJobRequest(job_id=queued.id, start_token=worker.token(queued.id)),
            metadata=harness.worker_md,
        )
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    err = await rpc_error(worker.start("00000000-0000-0000-0000-000000000000"))
    assert err.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("current", "target", "changes"),
    [
        ("queued", "running", True),
        ("queued", "cancelled", True),
        ("enhancing", "queued", True),
        ("enhancing", "failed", True),
        ("running", "running", True),
        ("running", "queued", True),
        ("running", "completed", True),
        ("queued", "completed", True),
        ("completed", "completed", False),
        ("failed", "failed", False),
        ("cancelled", "cancelled", False),
    ],
)
def test_legal_transitions(current, target, changes):
    assert domain.transition(current, target) is changes


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("queued", "queued"),
        ("enhancing", "running"),
        ("completed", "failed"),
        ("completed", "cancelled"),
        ("failed", "completed"),
        ("cancelled", "running"),
    ],
)
def test_illegal_transitions(current, target):
    with pytest.raises(FailedPrecondition):
        domain.transition(current, target)


async def test_a_completion_provenance_is_stored_and_returned(harness, worker, base_env):
    from services.gateway import mapping

    _, md = harness.user()
    job = await harness.create(md)
    await worker.start(job.id)
    sent = job_pb2.Provenance(
        weights_digest="ab" * 32,
        preset="tiny",
        scheduler="EulerDiscreteScheduler",
        scheduler_config_json='{"num_train_timesteps": 1000}',
        dtype="float32",
        device="cpu",
        worker_id="w1",
        diffusers_version="1.0",
        transformers_version="2.0",
        torch_version="3.0",
        ourvidz_version="0.1.0",
        steps=3,
        guidance_scale=6.5,
        img2img_strength=0.5,
    )
    done = await worker.complete(job, provenance=sent)
    assert done.provenance == sent
    got = (await harness.stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=md)).job
    assert got.provenance == sent
    stored = owner_query(
        base_env["DATABASE_URL"], "SELECT provenance FROM jobs.jobs WHERE id = %s", (job.id,)
    )
    assert stored[0][0]["weights_digest"] == "ab" * 32
    shown = mapping.job(got)["provenance"]
    assert shown["weights_digest"] == "ab" * 32 and shown["img2img_strength"] == 0.5
    assert shown["scheduler_config"] == '{"num_train_timesteps": 1000}'


async def test_a_completion_without_provenance_leaves_it_null(harness, worker):
    from services.gateway import mapping

    _, md = harness.user()
    job = await harness.create(md)
    await worker.start(job.id)
    done = await worker.complete(job)
    assert not done.HasField("provenance")
    got = (await harness.stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=md)).job
    assert not got.HasField("provenance")
    assert mapping.job(got)["provenance"] is None
