"""JobService over gRPC: checks who calls, turns requests into calls on the
service layer and its results into responses. No rules live here."""

from __future__ import annotations

from ourvidz import catalog
from ourvidz.auth import Principal, current_principal
from ourvidz.settings import CatalogLimits
from ourvidz.v1 import job_service_pb2 as pb
from ourvidz.v1 import job_service_pb2_grpc
from services.jobs import convert
from services.jobs.service import JobsCore
from services.jobs.watch import Watcher

SERVICE_NAME = "ourvidz.v1.JobService"


def _client() -> Principal:
    return current_principal().require("user", "admin")


def _worker() -> Principal:
    return current_principal().require("worker")


def _forwarded_auth(context) -> tuple[tuple[str, str], ...]:
    """The caller's own credentials, for calls made on their behalf."""
    return tuple((k, v) for k, v in context.invocation_metadata() or () if k == "authorization")


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self, core: JobsCore, watcher: Watcher, limits: CatalogLimits) -> None:
        self._core = core
        self._watcher = watcher
        self._job_types = [convert.job_type_proto(jt, limits) for jt in catalog.CATALOG.values()]

    async def ListJobTypes(self, request, context):
        current_principal()
        return pb.ListJobTypesResponse(job_types=self._job_types)

    async def CreateJob(self, request, context):
        caller = _client()
        job, existing = await self._core.create(
            caller.user_id,
            convert.submission(request.job),
            request.request_id,
            _forwarded_auth(context),
        )
        convert.sign_assets(job, self._core.blobs)
        return pb.CreateJobResponse(job=job, existing=existing)

    async def RerunJob(self, request, context):
        caller = _client()
        job, existing = await self._core.rerun(
            caller.user_id,
            request.job_id,
            request.request_id,
            request.workspace_session_id,
            _forwarded_auth(context),
        )
        convert.sign_assets(job, self._core.blobs)
        return pb.RerunJobResponse(job=job, existing=existing)

    async def GetJob(self, request, context):
        caller = _client()
        return pb.GetJobResponse(job=await self._core.get(caller.user_id, request.job_id))

    async def ListJobs(self, request, context):
        caller = _client()
        jobs, token = await self._core.list(
            caller.user_id,
            request.page_size,
            request.page_token,
            convert.state_name(request.state),
            request.job_type,
        )
        return pb.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelJob(self, request, context):
        caller = _client()
        return pb.CancelJobResponse(job=await self._core.cancel(caller.user_id, request.job_id))

    async def WatchJob(self, request, context):
        caller = _client()

        async def opened() -> None:
            # Tells the caller the watch is set up (the gateway answers 200 then).
            await context.send_initial_metadata(())

        async for event in self._watcher.watch(
            caller.user_id, request.job_id, request.after_sequence, opened
        ):
            yield pb.WatchJobResponse(event=event)

    async def StartJob(self, request, context):
        _worker()
        job, proceed, token, held = await self._core.start(
            request.job_id, request.delivery, request.task_sequence
        )
        return pb.StartJobResponse(job=job, proceed=proceed, start_token=token, held_elsewhere=held)

    async def Heartbeat(self, request, context):
        _worker()
        cancel, finished = await self._core.heartbeat(request.job_id, request.start_token)
        return pb.HeartbeatResponse(cancel_requested=cancel, finished=finished)

    async def ReportProgress(self, request, context):
        _worker()
        cancel = await self._core.progress(
            request.job_id, request.start_token, request.progress, request.preview_png
        )
        return pb.ReportProgressResponse(cancel_requested=cancel)

    async def CompleteJob(self, request, context):
        _worker()
        return pb.CompleteJobResponse(
            job=await self._core.complete(
                request.job_id,
                request.start_token,
                list(request.assets),
                request.provenance if request.HasField("provenance") else None,
            )
        )

    async def FailJob(self, request, context):
        _worker()
        job = await self._core.fail(
            request.job_id,
            request.start_token,
            request.error.code,
            request.error.message,
            request.will_retry,
            request.dependency_failure,
        )
        return pb.FailJobResponse(job=job)

    async def CompleteEnhancement(self, request, context):
        _worker()
        job = await self._core.complete_enhancement(
            request.job_id,
            request.enhanced_prompt,
            request.fallback,
            request.fallback_reason,
            (request.template_id, request.template_version),
        )
        return pb.CompleteEnhancementResponse(job=job)
