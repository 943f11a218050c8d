"""The worker boundary and ownership in Jobs itself: a completion names only
the job's own outputs, in the number and kind the job asked for; every worker
call is bound to the start that holds the job; a user token calls no worker
method; CreateJob takes only the caller's own workspace session. Whatever is
refused changes nothing."""

from __future__ import annotations

import uuid

import grpc
import pytest

from ourvidz import catalog
from ourvidz.v1 import job_pb2
from ourvidz.v1 import job_service_pb2 as pb
from ourvidz_dev.embedded import free_port
from services.jobs.uploads import WorkspaceUploads
from tests.conftest import rpc_error
from tests.jobs.helpers import owner_query
from tests.jobs.test_worker import Worker, asset


@pytest.fixture
def worker(harness) -> Worker:
    return Worker(harness)


def snapshot(harness, job_id: str) -> tuple:
    """Everything a worker call could change about a job: its row, its assets
    and its events (each written with the outbox row that carries it)."""
    return owner_query(
        harness.settings.database_url,
        "SELECT j.state, j.attempt, j.last_sequence, j.start_token, j.heartbeat_at, "
        "j.progress_step, j.error_code, j.updated_at, "
        "(SELECT count(*) FROM jobs.assets a WHERE a.job_id = j.id), "
        "(SELECT count(*) FROM jobs.job_events e WHERE e.job_id = j.id) "
        "FROM jobs.jobs j WHERE j.id = %s",
        (job_id,),
    )[0]


async def complete(harness, worker: Worker, job: job_pb2.Job, assets) -> job_pb2.Job:
    response = await harness.stub.CompleteJob(
        pb.CompleteJobRequest(job_id=job.id, assets=assets, start_token=worker.token(job.id)),
        metadata=harness.worker_md,
    )
    return response.job


async def refused(harness, worker, job, assets, code: grpc.StatusCode, field: str):
    """CompleteJob with `assets` is refused with `code`, naming `field`, and
    the job is as it was."""
    before = snapshot(harness, job.id)
    err = await rpc_error(complete(harness, worker, job, assets))
    assert err.code == code, err
    named = [v.field for v in err.violations] or [err.message.split(":", 1)[0]]
    assert field in named, err
    assert snapshot(harness, job.id) == before
    return err


async def running_job(harness, worker, **spec) -> tuple[str, tuple, job_pb2.Job]:
    user_id, md = harness.user()
    job = await harness.create(md, **spec)
    assert (await worker.start(job.id)).proceed
    return user_id, md, job


# --- what a completion may name --------------------------------------------------


async def test_another_users_upload_is_not_an_asset(harness, worker):
    _, md, job = await running_job(harness, worker)
    stranger, _ = harness.user()
    upload_id = harness.workspace.add(stranger)
    _, upload = harness.workspace.uploads[upload_id]
    theirs = job_pb2.Asset(index=0, bucket=upload.bucket, key=upload.key, content_type="image/png")
    err = await refused(
        harness, worker, job, [theirs], grpc.StatusCode.PERMISSION_DENIED, "assets[0].bucket"
    )
    assert err.reason == "FOREIGN_OBJECT"
    # Its key in the job type's bucket is refused too.
    in_bucket = job_pb2.Asset(
        index=0, bucket="sdxl-image-fast", key=upload.key, content_type="image/png"
    )
    await refused(
        harness, worker, job, [in_bucket], grpc.StatusCode.PERMISSION_DENIED, "assets[0].key"
    )
    got = (await harness.stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=md)).job
    assert got.state == job_pb2.JOB_STATE_RUNNING and list(got.assets) == []


async def test_another_jobs_outputs_are_not_an_asset(harness, worker):
    _, md, job = await running_job(harness, worker)
    other = await harness.create(md)  # the same user's other job
    mine_elsewhere = asset(other)
    await refused(
        harness, worker, job, [mine_elsewhere], grpc.StatusCode.PERMISSION_DENIED, "assets[0].key"
    )
    _, _, foreign = await running_job(harness, worker)  # another user's job
    await refused(
        harness, worker, job, [asset(foreign)], grpc.StatusCode.PERMISSION_DENIED, "assets[0].key"
    )
    # A key of this job's shape under another user's folder.
    moved = asset(job)
    moved.key = f"{uuid.uuid4()}/{job.id}_0.png"
    await refused(harness, worker, job, [moved], grpc.StatusCode.PERMISSION_DENIED, "assets[0].key")


@pytest.mark.parametrize("bucket", ["sdxl-image-high", "reference-images", "thumbnails"])
async def test_the_right_key_in_another_bucket_is_refused(harness, worker, bucket):
    _, _, job = await running_job(harness, worker)
    wrong = asset(job)
    wrong.bucket = bucket
    await refused(
        harness, worker, job, [wrong], grpc.StatusCode.PERMISSION_DENIED, "assets[0].bucket"
    )


async def test_too_many_or_too_few_assets_are_refused(harness, worker):
    _, _, job = await running_job(harness, worker, num_images=3)
    for n in (0, 2, 4):
        await refused(
            harness,
            worker,
            job,
            [asset(job, i) for i in range(n)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "assets",
        )
    repeated = [asset(job, 0), asset(job, 1), asset(job, 1)]
    await refused(
        harness, worker, job, repeated, grpc.StatusCode.INVALID_ARGUMENT, "assets[2].index"
    )
    beyond = [asset(job, 0), asset(job, 1), asset(job, 3)]
    await refused(harness, worker, job, beyond, grpc.StatusCode.INVALID_ARGUMENT, "assets[2].index")
    done = await complete(harness, worker, job, [asset(job, i) for i in range(3)])
    assert done.state == job_pb2.JOB_STATE_COMPLETED and len(done.assets) == 3
    # An identical completion again answers as the first did.
    again = await complete(harness, worker, job, [asset(job, i) for i in range(3)])
    assert again.last_sequence == done.last_sequence and len(again.assets) == 3


def video(job: job_pb2.Job, user_id: str) -> job_pb2.Asset:
    jt = catalog.CATALOG[job.job_type]
    return job_pb2.Asset(
        index=0,
        bucket=jt.bucket,
        key=catalog.video_key(user_id, job.id),
        content_type="video/mp4",
        thumbnail_bucket=catalog.THUMBNAIL_BUCKET,
        thumbnail_key=catalog.thumbnail_key(user_id, job.id),
        num_frames=81,
    )


async def test_a_video_job_completes_with_its_video_only(harness, worker):
    user_id, _, job = await running_job(harness, worker, job_type="video_fast")
    images = [
        job_pb2.Asset(
            index=0,
            bucket="video-fast",
            key=catalog.image_key(user_id, job.id, 0),
            content_type="image/png",
        )
    ]
    await refused(
        harness, worker, job, images, grpc.StatusCode.INVALID_ARGUMENT, "assets[0].content_type"
    )
    two = [video(job, user_id), video(job, user_id)]
    two[1].index = 1
    await refused(harness, worker, job, two, grpc.StatusCode.INVALID_ARGUMENT, "assets")
    foreign_thumb = video(job, user_id)
    foreign_thumb.thumbnail_key = f"{user_id}/{uuid.uuid4()}.png"
    await refused(
        harness,
        worker,
        job,
        [foreign_thumb],
        grpc.StatusCode.PERMISSION_DENIED,
        "assets[0].thumbnail_key",
    )
    thumb_elsewhere = video(job, user_id)
    thumb_elsewhere.thumbnail_bucket = "video-fast"
    await refused(
        harness,
        worker,
        job,
        [thumb_elsewhere],
        grpc.StatusCode.PERMISSION_DENIED,
        "assets[0].thumbnail_key",
    )
    done = await complete(harness, worker, job, [video(job, user_id)])
    assert done.state == job_pb2.JOB_STATE_COMPLETED
    assert [(a.key, a.thumbnail_key) for a in done.assets] == [
        (f"{user_id}/{job.id}.mp4", f"{user_id}/{job.id}.png")
    ]


async def test_an_image_has_no_thumbnail(harness, worker):
    user_id, _, job = await running_job(harness, worker)
    with_thumb = asset(job)
    with_thumb.thumbnail_bucket = catalog.THUMBNAIL_BUCKET
    with_thumb.thumbnail_key = catalog.thumbnail_key(user_id, job.id)
    await refused(
        harness,
        worker,
        job,
        [with_thumb],
        grpc.StatusCode.INVALID_ARGUMENT,
        "assets[0].thumbnail_key",
    )


# --- who may report on a job ---------------------------------------------------


def calls(harness, job: job_pb2.Job, token: str, md=None) -> dict:
    """Every worker call on `job` under `token`, made with `md`, each made
    when it is called."""
    md = md or harness.worker_md
    return {
        "Heartbeat": lambda: harness.stub.Heartbeat(
            pb.HeartbeatRequest(job_id=job.id, start_token=token), metadata=md
        ),
        "ReportProgress": lambda: harness.stub.ReportProgress(
            pb.ReportProgressRequest(
                job_id=job.id,
                start_token=token,
                progress=job_pb2.Progress(step=3, total=15, stage="denoising"),
            ),
            metadata=md,
        ),
        "CompleteJob": lambda: harness.stub.CompleteJob(
            pb.CompleteJobRequest(job_id=job.id, assets=[asset(job)], start_token=token),
            metadata=md,
        ),
        "FailJob": lambda: harness.stub.FailJob(
            pb.FailJobRequest(
                job_id=job.id,
                error=job_pb2.JobError(code="OUT_OF_MEMORY", message="m"),
                will_retry=False,
                start_token=token,
            ),
            metadata=md,
        ),
    }


async def all_refused(harness, job, token: str, code: grpc.StatusCode, md=None) -> None:
    before = snapshot(harness, job.id)
    for name, call in calls(harness, job, token, md).items():
        err = await rpc_error(call())
        assert err.code == code, (name, err)
        assert snapshot(harness, job.id) == before, name


async def test_a_stale_start_token_is_refused_and_changes_nothing(harness, worker):
    _, _, job = await running_job(harness, worker)
    stale = worker.token(job.id)
    # Another delivery starts the job again (the first worker was judged lost).
    assert (await worker.start(job.id, delivery=2)).proceed
    current = worker.token(job.id)
    assert current != stale
    await all_refused(harness, job, stale, grpc.StatusCode.FAILED_PRECONDITION)
    err = await rpc_error(calls(harness, job, stale)["CompleteJob"]())
    assert err.reason == "NOT_JOB_HOLDER"
    # A token made up from the delivery alone is not the start's token either.
    await all_refused(harness, job, current.rsplit(":", 1)[0], grpc.StatusCode.FAILED_PRECONDITION)
    await all_refused(harness, job, "", grpc.StatusCode.FAILED_PRECONDITION)
    # The holder goes on.
    assert await worker.progress(job.id, 5) is False
    assert (await worker.complete(job)).state == job_pb2.JOB_STATE_COMPLETED
    # Once the job ended, the stale start learns nothing and changes nothing.
    await all_refused(harness, job, stale, grpc.StatusCode.FAILED_PRECONDITION)


async def test_a_job_never_started_refuses_every_worker_call(harness):
    _, md = harness.user()
    job = await harness.create(md)
    await all_refused(harness, job, "", grpc.StatusCode.FAILED_PRECONDITION)
    await all_refused(harness, job, "0:1", grpc.StatusCode.FAILED_PRECONDITION)


async def test_a_user_token_calls_no_worker_method(harness, worker):
    _, md, job = await running_job(harness, worker)
    token = worker.token(job.id)
    # The owner's own token, with the right start token: still not a worker.
    await all_refused(harness, job, token, grpc.StatusCode.PERMISSION_DENIED, md=md)
    err = await rpc_error(
        harness.stub.StartJob(pb.StartJobRequest(job_id=job.id, delivery=9), metadata=md)
    )
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    err = await rpc_error(
        harness.stub.CompleteEnhancement(pb.CompleteEnhancementRequest(job_id=job.id), metadata=md)
    )
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert snapshot(harness, job.id)[:4] == ("running", 1, 2, token)


# --- the workspace session of a new job -------------------------------------------


def jobs_of(harness, user_id: str) -> int:
    return owner_query(
        harness.settings.database_url,
        "SELECT count(*) FROM jobs.jobs WHERE user_id = %s",
        (user_id,),
    )[0][0]


async def test_create_takes_only_the_callers_own_session(harness):
    owner, owner_md = harness.user()
    session_id = harness.workspace.add_session(owner)
    mine = await harness.create(owner_md, workspace_session_id=session_id)
    assert mine.workspace_session_id == session_id

    stranger, md = harness.user()
    for other in (session_id, str(uuid.uuid4())):  # another user's; none at all
        err = await rpc_error(harness.create(md, workspace_session_id=other))
        assert err.code == grpc.StatusCode.NOT_FOUND, err
        assert err.message.startswith("workspace_session_id")
        assert err.reason == "WORKSPACE_SESSION_NOT_FOUND"
    assert jobs_of(harness, stranger) == 0
    assert harness.workspace.calls[-1] == stranger  # asked with the caller's own token


async def test_a_workspace_that_is_away_is_unavailable(harness):
    user_id, md = harness.user()
    session_id = harness.workspace.add_session(user_id)
    core = harness.running.core
    kept = core.uploads
    away = WorkspaceUploads(f"127.0.0.1:{free_port()}", 2.0)  # nothing listens there
    core.uploads = away
    try:
        err = await rpc_error(harness.create(md, workspace_session_id=session_id))
    finally:
        core.uploads = kept
        await away.close()
    assert err.code == grpc.StatusCode.UNAVAILABLE, err
    assert jobs_of(harness, user_id) == 0
