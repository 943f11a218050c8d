"""A jobs service in process (port 0) against the session's real servers, a
small stand-in WorkspaceService that owns a few uploads and sessions, and
helpers to call the service as a user or as a worker."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import pytest

from ourvidz import queue
from ourvidz.auth import current_principal
from ourvidz.errors import NotFound
from ourvidz.grpcserver import build_server, channel
from ourvidz.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)
from services.jobs.main import start
from services.jobs.settings import JobsSettings
from tests.conftest import VERIFIER, make_settings, token
from tests.jobs.helpers import MAX_ACTIVE, owner_query


class FakeWorkspace(workspace_service_pb2_grpc.WorkspaceServiceServicer):
    """Only GetUpload and GetSession: an upload or a session is visible to its
    owner alone, and an id that is not one is not found, as in the real
    service (which the jobs service must call with the user's own token)."""

    def __init__(self) -> None:
        self.uploads: dict[str, tuple[str, workspace_service_pb2.Upload]] = {}
        self.sessions: dict[str, str] = {}  # session id -> owner
        self.calls: list[str] = []

    def add(self, owner: str) -> str:
        upload_id = str(uuid.uuid4())
        self.uploads[upload_id] = (
            owner,
            workspace_service_pb2.Upload(
                id=upload_id, bucket="reference-images", key=f"{owner}/{upload_id}.png"
            ),
        )
        return upload_id

    def add_session(self, owner: str) -> str:
        session_id = str(uuid.uuid4())
        self.sessions[session_id] = owner
        return session_id

    async def GetSession(self, request, context):
        caller = current_principal()
        self.calls.append(caller.subject)
        try:
            session_id = str(uuid.UUID(request.session_id))
        except ValueError:
            raise NotFound("session not found") from None
        if self.sessions.get(session_id) != caller.user_id:
            raise NotFound("session not found")
        return workspace_service_pb2.GetSessionResponse(
            session=workspace_service_pb2.Session(id=session_id, active=True)
        )

    async def GetUpload(self, request, context):
        caller = current_principal()
        self.calls.append(caller.subject)
        owner, upload = self.uploads.get(request.upload_id, ("", None))
        if upload is None or owner != caller.user_id:
            raise NotFound("upload not found")
        return workspace_service_pb2.GetUploadResponse(upload=upload)


@dataclass
class Harness:
    settings: JobsSettings
    port: int
    stub: job_service_pb2_grpc.JobServiceStub
    workspace: FakeWorkspace
    running: object
    js: object
    nc: object
    worker_md: tuple = field(default=())
    created_consumers: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)

    def user(self) -> tuple[str, tuple]:
        """A fresh user id and its call metadata."""
        user_id = str(uuid.uuid4())
        self.users.append(user_id)
        return user_id, (("authorization", f"Bearer {token(user_id)}"),)

    async def create(self, md, request_id: str = "", **spec) -> job_pb2.Job:
        spec.setdefault("job_type", "sdxl_image_fast")
        spec.setdefault("prompt", "a lighthouse at dusk")
        response = await self.stub.CreateJob(
            job_service_pb2.CreateJobRequest(job=job_pb2.JobSpec(**spec), request_id=request_id),
            metadata=md,
        )
        return response.job

    async def drain_relay(self) -> None:
        """Return once the outbox is empty: everything written so far is
        published (by this call or by the relay running in the background,
        whose claimed rows this call skips)."""
        for _ in range(400):
            _, ok = await self.running.relay.drain_once()
            assert ok
            async with self.running.database.tx(role="system") as conn:
                cur = await conn.execute("SELECT count(*) AS n FROM jobs.outbox")
                if (await cur.fetchone())["n"] == 0:
                    return
            await asyncio.sleep(0.05)
        raise AssertionError("the outbox does not empty")


# The prompt policy of these tests: one term from the setting, one from a file.
DENIED_TERM = "gore"
DENIED_FILE_TERM = "bad thing"


@pytest.fixture(scope="module")
async def harness(base_env, tmp_path_factory):
    deny_file = tmp_path_factory.mktemp("policy") / "deny.txt"
    deny_file.write_text(f"# terms, one per line\n{DENIED_FILE_TERM}\n", encoding="utf-8")
    workspace = FakeWorkspace()
    ws = build_server(
        verifier=VERIFIER,
        register=lambda s: workspace_service_pb2_grpc.add_WorkspaceServiceServicer_to_server(
            workspace, s
        ),
        service_names=["ourvidz.v1.WorkspaceService"],
        port=0,
    )
    await ws.start()
    settings = make_settings(
        JobsSettings,
        base_env,
        WORKSPACE_ADDR=f"127.0.0.1:{ws.port}",
        JOBS_MAX_ACTIVE_PER_USER=MAX_ACTIVE,
        JOBS_WATCH_POLL_SECONDS=1,
        JOBS_ENHANCE_CHECK_SECONDS=0.5,
        PROMPT_DENY_LIST=DENIED_TERM,
        PROMPT_DENY_LIST_FILE=str(deny_file),
        # The reconciler's passes are called by the tests that are about it.
        JOBS_RECONCILE_SECONDS=3600,
        # A new delivery here stands for a dead worker's task; the test of a
        # delivery while the holder lives raises this.
        JOBS_WORKER_SILENT_SECONDS=0.001,
    )
    running = await start(settings, port=0)
    nc, js = await queue.connect(settings.nats_url, name="jobs-tests")
    ch = channel(f"127.0.0.1:{running.port}")
    worker_token = token("test-worker", "worker")
    h = Harness(
        settings=settings,
        port=running.port,
        stub=job_service_pb2_grpc.JobServiceStub(ch),
        workspace=workspace,
        running=running,
        js=js,
        nc=nc,
        worker_md=(("authorization", f"Bearer {worker_token}"),),
    )
    try:
        yield h
    finally:
        await ch.close()
        await running.stop()
        await ws.stop(0)
        # Jobs these tests left active would otherwise be taken up by a later
        # Jobs service (its enhancement timeout, its reconciler) or worker.
        owner_query(
            base_env["DATABASE_URL"],
            "UPDATE jobs.jobs SET state = 'cancelled' "
            "WHERE user_id = ANY(%s::uuid[]) AND state IN ('queued', 'enhancing', 'running') "
            "RETURNING id",
            (h.users,),
        )
        # Leave no test task behind for the workers' tests that share the stream.
        await js.purge_stream(queue.TASKS_STREAM)
        for durable in h.created_consumers:
            await js.delete_consumer(queue.TASKS_STREAM, durable)
        await nc.close()
