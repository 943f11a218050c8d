"""Peer-service doubles: small in-process JobService and WorkspaceService
servers (on port 0, behind the real auth interceptor) that record what the
gateway sent and answer with scripted messages. The real end-to-end test of
gateway + jobs + workspace lives with the integration suite."""

from __future__ import annotations

import asyncio
import uuid

from google.protobuf import timestamp_pb2

from ourvidz.auth import current_principal
from ourvidz.errors import FieldViolation, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from ourvidz.grpcserver import build_server, set_serving
from ourvidz.v1 import (
    events_pb2,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    workspace_service_pb2_grpc,
)
from ourvidz.v1 import (
    workspace_service_pb2 as ws_pb2,
)

JOB_SERVICE = "ourvidz.v1.JobService"
WORKSPACE_SERVICE = "ourvidz.v1.WorkspaceService"


def ts(seconds: int = 1_700_000_000) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


class FakeJobs(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object, str]] = []  # (method, request, caller user id)
        self.jobs: dict[str, job_pb2.Job] = {}
        self.by_request_id: dict[str, str] = {}
        self.events: dict[str, list[events_pb2.JobEvent]] = {}
        self.hold_stream: asyncio.Event | None = None
        self.watch_closed = asyncio.Event()

    def _record(self, method: str, request) -> None:
        self.calls.append((method, request, current_principal().user_id))

    def last(self, method: str):
        return next(c for c in reversed(self.calls) if c[0] == method)

    async def ListJobTypes(self, request, context):
        self._record("ListJobTypes", request)
        return job_service_pb2.ListJobTypesResponse(
            job_types=[
                job_pb2.JobType(
                    name="sdxl_image_fast",
                    worker="sdxl",
                    output="image",
                    quality="fast",
                    steps=15,
                    guidance_scale=6.0,
                    default_width=1024,
                    default_height=1024,
                    size_multiple=64,
                    allowed_num_images=[1, 3, 6],
                    bucket="sdxl-image-fast",
                    content_type="image/png",
                    expected_seconds=5,
                    accepts_reference=True,
                )
            ]
        )

    async def CreateJob(self, request, context):
        self._record("CreateJob", request)
        spec = request.job
        if spec.prompt == "trigger-quota":
            raise ResourceExhausted("too many queued jobs", subject="user")
        if spec.prompt == "trigger-unavailable":
            raise Unavailable("nats down: secret internal detail")
        violations = []
        if not spec.prompt.strip():
            violations.append(FieldViolation("prompt", "must not be empty"))
        if spec.num_images not in (0, 1, 3, 6):
            violations.append(FieldViolation("num_images", "must be 1, 3 or 6"))
        if violations:
            raise InvalidArgument(violations)
        if request.request_id and request.request_id in self.by_request_id:
            job = self.jobs[self.by_request_id[request.request_id]]
            return job_service_pb2.CreateJobResponse(job=job, existing=True)
        job = self.make_job(
            job_type=spec.job_type,
            prompt=spec.prompt,
            seed=spec.seed if spec.HasField("seed") else 42,
            destination=spec.destination or job_pb2.DESTINATION_WORKSPACE,
            workspace_session_id=spec.workspace_session_id,
            request_id=request.request_id,
            user_id=current_principal().user_id,
        )
        if spec.reference_image_id:
            job.reference.CopyFrom(
                job_pb2.Reference(
                    upload_id=spec.reference_image_id,
                    type=spec.reference_type,
                    strength=spec.reference_strength
                    if spec.HasField("reference_strength")
                    else 0.5,
                )
            )
        if request.request_id:
            self.by_request_id[request.request_id] = job.id
        return job_service_pb2.CreateJobResponse(job=job)

    def make_job(self, **fields) -> job_pb2.Job:
        job = job_pb2.Job(
            id=str(uuid.uuid4()),
            state=job_pb2.JOB_STATE_QUEUED,
            num_images=1,
            width=1024,
            height=1024,
            num_frames=1,
            steps=15,
            guidance_scale=6.0,
            negative_prompt="lowres",
            create_time=ts(),
            update_time=ts(),
            progress=job_pb2.Progress(step=0, total=15),
            **fields,
        )
        self.jobs[job.id] = job
        return job

    def _own(self, job_id: str) -> job_pb2.Job:
        job = self.jobs.get(job_id)
        if job is None or job.user_id != current_principal().user_id:
            raise NotFound("job not found")
        return job

    async def GetJob(self, request, context):
        self._record("GetJob", request)
        return job_service_pb2.GetJobResponse(job=self._own(request.job_id))

    async def ListJobs(self, request, context):
        self._record("ListJobs", request)
        mine = [
            j
            for j in self.jobs.values()
            if j.user_id == current_principal().user_id
            and (not request.state or j.state == request.state)
        ]
        return job_service_pb2.ListJobsResponse(jobs=mine, next_page_token="next-1")

    async def CancelJob(self, request, context):
        self._record("CancelJob", request)
        job = self._own(request.job_id)
        job.state = job_pb2.JOB_STATE_CANCELLED
        job.complete_time.CopyFrom(ts(1_700_000_100))
        return job_service_pb2.CancelJobResponse(job=job)

    async def WatchJob(self, request, context):
        self._record("WatchJob", request)
        self._own(request.job_id)
        try:
            for event in self.events.get(request.job_id, []):
                if event.sequence > request.after_sequence:
                    yield job_service_pb2.WatchJobResponse(event=event)
                    if self.hold_stream is not None:
                        await self.hold_stream.wait()
        finally:
            self.watch_closed.set()


class FakeWorkspace(workspace_service_pb2_grpc.WorkspaceServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object, str]] = []
        self.sessions: dict[str, ws_pb2.Session] = {}
        self.active: dict[str, str] = {}

    def _record(self, method: str, request) -> None:
        self.calls.append((method, request, current_principal().user_id))

    def methods(self) -> list[str]:
        return [c[0] for c in self.calls]

    def last(self, method: str):
        return next(c for c in reversed(self.calls) if c[0] == method)

    def _new_session(self, name: str = "", active: bool = False) -> ws_pb2.Session:
        user = current_principal().user_id
        s = ws_pb2.Session(
            id=str(uuid.uuid4()),
            user_id=user,
            name=name,
            active=active,
            create_time=ts(),
            last_activity_time=ts(),
        )
        self.sessions[s.id] = s
        return s

    def _own(self, session_id: str) -> ws_pb2.Session:
        s = self.sessions.get(session_id)
        if s is None or s.user_id != current_principal().user_id:
            raise NotFound("workspace session not found")
        return s

    async def CreateSession(self, request, context):
        self._record("CreateSession", request)
        return ws_pb2.CreateSessionResponse(session=self._new_session(request.name))

    async def GetSession(self, request, context):
        self._record("GetSession", request)
        return ws_pb2.GetSessionResponse(session=self._own(request.session_id))

    async def GetActiveSession(self, request, context):
        self._record("GetActiveSession", request)
        user = current_principal().user_id
        if user not in self.active:
            self.active[user] = self._new_session("active", active=True).id
        return ws_pb2.GetActiveSessionResponse(session=self.sessions[self.active[user]])

    async def ListSessions(self, request, context):
        self._record("ListSessions", request)
        user = current_principal().user_id
        return ws_pb2.ListSessionsResponse(
            sessions=[s for s in self.sessions.values() if s.user_id == user]
        )

    async def ClearSession(self, request, context):
        self._record("ClearSession", request)
        self._own(request.session_id)
        return ws_pb2.ClearSessionResponse(deleted_items=3)

    def item(self, session_id: str) -> ws_pb2.WorkspaceItem:
        return ws_pb2.WorkspaceItem(
            id=str(uuid.uuid4()),
            session_id=session_id,
            job_id=str(uuid.uuid4()),
            index=0,
            job_type="sdxl_image_fast",
            content_type="image/png",
            prompt="a cat",
            seed=7,
            width=1024,
            height=1024,
            url="http://files/x.png",
            create_time=ts(),
        )

    async def ListSessionItems(self, request, context):
        self._record("ListSessionItems", request)
        self._own(request.session_id)
        return ws_pb2.ListSessionItemsResponse(items=[self.item(request.session_id)])

    async def WatchSession(self, request, context):
        self._record("WatchSession", request)
        self._own(request.session_id)
        yield ws_pb2.WatchSessionResponse(
            job_event=ws_pb2.JobEventSummary(
                job_id="j1",
                sequence=2,
                state=job_pb2.JOB_STATE_RUNNING,
                progress=job_pb2.Progress(step=3, total=15),
                event_type="progress",
            )
        )
        yield ws_pb2.WatchSessionResponse(item=self.item(request.session_id))

    def asset(self, asset_id: str, title: str = "") -> ws_pb2.LibraryAsset:
        return ws_pb2.LibraryAsset(
            id=asset_id,
            user_id=current_principal().user_id,
            job_id=str(uuid.uuid4()),
            job_type="video_fast",
            content_type="video/mp4",
            title=title,
            prompt="a wave",
            seed=9,
            width=832,
            height=480,
            size_bytes=1234,
            url="http://files/v.mp4",
            thumbnail_url="http://files/v.png",
            create_time=ts(),
        )

    async def SaveItem(self, request, context):
        self._record("SaveItem", request)
        return ws_pb2.SaveItemResponse(asset=self.asset(str(uuid.uuid4()), request.title))

    async def DeleteItem(self, request, context):
        self._record("DeleteItem", request)
        return ws_pb2.DeleteItemResponse()

    async def ListAssets(self, request, context):
        self._record("ListAssets", request)
        return ws_pb2.ListAssetsResponse(assets=[self.asset(str(uuid.uuid4()))], next_page_token="")

    async def GetAsset(self, request, context):
        self._record("GetAsset", request)
        if request.asset_id.startswith("0"):
            raise NotFound("asset not found")
        return ws_pb2.GetAssetResponse(asset=self.asset(request.asset_id, "kept"))

    async def UpdateAsset(self, request, context):
        self._record("UpdateAsset", request)
        return ws_pb2.UpdateAssetResponse(asset=self.asset(request.asset_id, request.title))

    async def DeleteAsset(self, request, context):
        self._record("DeleteAsset", request)
        return ws_pb2.DeleteAssetResponse()

    async def CreateUpload(self, request, context):
        self._record("CreateUpload", request)
        if not request.data.startswith(b"\x89PNG"):
            raise InvalidArgument.field("file", "is not a PNG, JPEG or WebP image")
        return ws_pb2.CreateUploadResponse(
            upload=ws_pb2.Upload(
                id=str(uuid.uuid4()),
                content_type="image/png",
                width=64,
                height=32,
                size_bytes=len(request.data),
                bucket="reference-images",
                key="u/x.png",
                create_time=ts(),
            )
        )


async def start_fakes(secret: str):
    """Both doubles on one server (port 0), health SERVING. Returns (served, jobs, workspace)."""
    jobs, workspace = FakeJobs(), FakeWorkspace()

    def register(server) -> None:
        job_service_pb2_grpc.add_JobServiceServicer_to_server(jobs, server)
        workspace_service_pb2_grpc.add_WorkspaceServiceServicer_to_server(workspace, server)

    served = build_server(
        secret=secret, register=register, service_names=[JOB_SERVICE, WORKSPACE_SERVICE], port=0
    )
    await served.start()
    await set_serving(served, [JOB_SERVICE, WORKSPACE_SERVICE])
    return served, jobs, workspace
