"""Peer-service doubles: small in-process JobService and WorkspaceService
servers (on port 0, behind the real auth interceptor) that record what the
gateway sent and answer with scripted messages. The real end-to-end test of
gateway + jobs + workspace lives with the integration suite."""

from __future__ import annotations

import asyncio
import uuid

from google.protobuf import timestamp_pb2

from ourvidz.auth import TokenVerifier, current_principal
from ourvidz.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from ourvidz.grpcserver import build_server, set_serving
from ourvidz.v1 import enhancer_service_pb2 as enh_pb2
from ourvidz.v1 import (
    enhancer_service_pb2_grpc,
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
                ),
                job_pb2.JobType(
                    name="video7b_fast_enhanced",
                    worker="wan",
                    output="video",
                    quality="fast",
                    enhanced=True,
                    steps=25,
                    default_width=832,
                    default_height=480,
                    size_multiple=16,
                    default_num_frames=33,
                    bucket="video7b-fast-enhanced",
                    content_type="video/mp4",
                    expected_seconds=120,
                ),
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

    # The weights digest of the model the fake's workers run "now".
    CURRENT_DIGEST = "d1" * 32

    async def RerunJob(self, request, context):
        """As Jobs: the caller's completed job, rendered by the current model,
        submitted again with its parameters (idempotent per request id)."""
        self._record("RerunJob", request)
        source = self._own(request.job_id)
        if request.request_id in self.by_request_id:
            job = self.jobs[self.by_request_id[request.request_id]]
            return job_service_pb2.RerunJobResponse(job=job, existing=True)
        if source.state != job_pb2.JOB_STATE_COMPLETED:
            raise FailedPrecondition(
                "only a completed job can be re-run", reason="JOB_NOT_COMPLETED"
            )
        if source.provenance.weights_digest != self.CURRENT_DIGEST:
            raise FailedPrecondition("the model changed", reason="MODEL_CHANGED")
        job = self.make_job(
            user_id=source.user_id,
            job_type=source.job_type,
            prompt=source.enhanced_prompt or source.prompt,
            seed=source.seed,
            destination=source.destination,
            workspace_session_id=request.workspace_session_id or source.workspace_session_id,
            request_id=request.request_id,
            rerun_of=source.id,
        )
        if request.request_id:
            self.by_request_id[request.request_id] = job.id
        return job_service_pb2.RerunJobResponse(job=job)

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
            and (not request.job_type or j.job_type == request.job_type)
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
            prompt="a cat asleep on a sunny windowsill, soft light",
            original_prompt="a cat",
            negative_prompt="blurry",
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
            original_prompt="a wave",
            negative_prompt="static",
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


async def start_fakes(verifier: TokenVerifier):
    """Both doubles on one server (port 0), health SERVING. Returns (served, jobs, workspace)."""
    jobs, workspace = FakeJobs(), FakeWorkspace()

    def register(server) -> None:
        job_service_pb2_grpc.add_JobServiceServicer_to_server(jobs, server)
        workspace_service_pb2_grpc.add_WorkspaceServiceServicer_to_server(workspace, server)

    served = build_server(
        verifier=verifier,
        register=register,
        service_names=[JOB_SERVICE, WORKSPACE_SERVICE],
        port=0,
    )
    await served.start()
    await set_serving(served, [JOB_SERVICE, WORKSPACE_SERVICE])
    return served, jobs, workspace


ENHANCER_SERVICE = "ourvidz.v1.EnhancerService"


class FakeEnhancer(enhancer_service_pb2_grpc.EnhancerServiceServicer):
    """EnhancerService double. Like the real one it refuses non-admins on the
    template methods. Scripted prompts: "trigger-unavailable" (UNAVAILABLE),
    "trigger-fallback" (a fallback answer); chat contents "fail-first" (an
    error before any token), "fail-mid" (an error after two tokens), "hold"
    (one token, then the stream stays open until the client goes away)."""

    REPLY = ("A ", "misty ", "harbour ", "at ", "dawn")

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, str]] = []  # (method, request, caller subject)
        self.templates: dict[str, enh_pb2.PromptTemplate] = {}
        self.tests: dict[str, list[enh_pb2.PromptTest]] = {}
        self.ratings: dict[str, int] = {}
        # Jobs it has no enhancement of (a plain job type, or an enhancement
        # still to come): like the real one, it cannot rate them (NOT_FOUND).
        self.not_enhanced: set[str] = set()
        self.chat_closed = asyncio.Event()

    def _record(self, method: str, request) -> None:
        self.calls.append((method, request, current_principal().subject))

    def methods(self) -> list[str]:
        return [c[0] for c in self.calls]

    def last(self, method: str):
        return next(c for c in reversed(self.calls) if c[0] == method)

    def _admin(self) -> None:
        current_principal().require("admin")

    def _result(self, prompt: str, target: str, settings) -> enh_pb2.EnhancePromptResponse:
        used = enh_pb2.GenerationSettings(
            temperature=settings.temperature or 0.7,
            top_p=settings.top_p or 0.9,
            max_new_tokens=settings.max_new_tokens or 77,
            seed=settings.seed or 1234,
        )
        fallback = prompt == "trigger-fallback"
        return enh_pb2.EnhancePromptResponse(
            enhanced_prompt=prompt if fallback else f"{prompt}, golden light, detailed",
            template_id="7d0c4a53-0000-4000-8000-000000000001",
            template_version=2,
            model="qwen2.5-tiny",
            tokens_in=31,
            tokens_out=12,
            latency_seconds=0.123456,
            settings=used,
            fallback=fallback,
            fallback_reason="MODEL_ERROR: boom" if fallback else "",
            enhancement_id=str(uuid.uuid4()),
            target_model=target,
            target_tokens=15,
        )

    async def EnhancePrompt(self, request, context):
        self._record("EnhancePrompt", request)
        if request.prompt == "trigger-unavailable":
            raise Unavailable("model not loaded: secret internal detail")
        target = request.target_model or ("sdxl" if request.job_type.startswith("sdxl") else "wan")
        return self._result(request.prompt, target, request.settings)

    async def Chat(self, request, context):
        self._record("Chat", request)
        content = request.messages[-1].content
        try:
            if content == "fail-first":
                raise InvalidArgument.field("messages", "too long for the model")
            for i, piece in enumerate(self.REPLY):
                if content == "fail-mid" and i == 2:
                    raise Unavailable("the model crashed")
                yield enh_pb2.ChatResponse(delta=piece)
                if content == "hold":
                    await asyncio.Event().wait()  # until the call is cancelled
            yield enh_pb2.ChatResponse(
                done=True,
                tokens_out=len(self.REPLY),
                model="qwen2.5-tiny",
                settings=enh_pb2.GenerationSettings(
                    temperature=request.settings.temperature or 0.7,
                    top_p=0.9,
                    max_new_tokens=200,
                    seed=request.settings.seed or 99,
                ),
            )
        finally:
            self.chat_closed.set()

    def _template(self, template_id: str) -> enh_pb2.PromptTemplate:
        found = self.templates.get(template_id)
        if found is None:
            raise NotFound("prompt template not found")
        return found

    def _store(self, template: enh_pb2.PromptTemplate, activate: bool) -> enh_pb2.PromptTemplate:
        template.id = str(uuid.uuid4())
        template.created_by = current_principal().subject
        template.create_time.CopyFrom(ts())
        if activate:
            for other in self.templates.values():
                if other.target_model == template.target_model:
                    other.active = False
            template.active = True
        self.templates[template.id] = template
        return template

    async def ListPromptTemplates(self, request, context):
        self._admin()
        self._record("ListPromptTemplates", request)
        found = [
            t
            for t in self.templates.values()
            if (not request.target_model or t.target_model == request.target_model)
            and (not request.active_only or t.active)
        ]
        return enh_pb2.ListPromptTemplatesResponse(templates=found)

    async def GetPromptTemplate(self, request, context):
        self._admin()
        self._record("GetPromptTemplate", request)
        return enh_pb2.GetPromptTemplateResponse(template=self._template(request.template_id))

    async def CreatePromptTemplate(self, request, context):
        self._admin()
        self._record("CreatePromptTemplate", request)
        if any(t.name == request.template.name for t in self.templates.values()):
            raise AlreadyExists("a template with this name exists")
        template = enh_pb2.PromptTemplate()
        template.CopyFrom(request.template)
        template.version = 1
        template.user_template = template.user_template or "{prompt}"
        return enh_pb2.CreatePromptTemplateResponse(
            template=self._store(template, request.activate)
        )

    async def UpdatePromptTemplate(self, request, context):
        self._admin()
        self._record("UpdatePromptTemplate", request)
        base = self._template(request.template_id)
        latest = max(
            (t for t in self.templates.values() if t.name == base.name), key=lambda t: t.version
        )
        template = enh_pb2.PromptTemplate()
        template.CopyFrom(latest)
        template.version = latest.version + 1
        template.active = False
        for name in ("system_prompt", "user_template", "description"):
            if getattr(request, name):
                setattr(template, name, getattr(request, name))
        if request.HasField("settings"):
            template.settings.CopyFrom(request.settings)
        return enh_pb2.UpdatePromptTemplateResponse(
            template=self._store(template, request.activate)
        )

    async def ActivatePromptTemplate(self, request, context):
        self._admin()
        self._record("ActivatePromptTemplate", request)
        template = self._template(request.template_id)
        for other in self.templates.values():
            if other.target_model == template.target_model:
                other.active = False
        template.active = True
        return enh_pb2.ActivatePromptTemplateResponse(template=template)

    async def TestPromptTemplate(self, request, context):
        self._admin()
        self._record("TestPromptTemplate", request)
        template = self._template(request.template_id)
        tests = []
        for prompt in request.sample_prompts or ["a cat"]:
            result = self._result(prompt, template.target_model, request.settings)
            tests.append(
                enh_pb2.PromptTest(
                    id=str(uuid.uuid4()),
                    template_id=template.id,
                    template_version=template.version,
                    sample_prompt=prompt,
                    result=result,
                    create_time=ts(),
                )
            )
        self.tests.setdefault(template.id, []).extend(tests)
        return enh_pb2.TestPromptTemplateResponse(results=[t.result for t in tests], tests=tests)

    async def ListPromptTests(self, request, context):
        self._admin()
        self._record("ListPromptTests", request)
        self._template(request.template_id)
        return enh_pb2.ListPromptTestsResponse(tests=self.tests.get(request.template_id, []))

    async def GetPromptTemplateStats(self, request, context):
        self._admin()
        self._record("GetPromptTemplateStats", request)
        template = self._template(request.template_id)
        rated = bool(self.ratings)
        return enh_pb2.GetPromptTemplateStatsResponse(
            template_id=template.id,
            template_version=template.version,
            enhancements=10,
            fallbacks=1,
            mean_latency_seconds=0.5,
            mean_tokens_in=30.0,
            mean_tokens_out=40.0,
            ratings=len(self.ratings),
            mean_rating=sum(self.ratings.values()) / len(self.ratings) if rated else 0.0,
        )

    async def RateEnhancement(self, request, context):
        self._record("RateEnhancement", request)
        if not 1 <= request.rating <= 5:
            raise InvalidArgument.field("rating", "must be between 1 and 5")
        if request.job_id in self.not_enhanced:
            raise NotFound("enhanced job not found")
        self.ratings[request.job_id] = request.rating
        return enh_pb2.RateEnhancementResponse(job_id=request.job_id, rating=request.rating)


async def start_enhancer_fake(verifier: TokenVerifier):
    """The EnhancerService double on its own server (port 0). Returns (served, fake)."""
    fake = FakeEnhancer()
    served = build_server(
        verifier=verifier,
        register=lambda s: enhancer_service_pb2_grpc.add_EnhancerServiceServicer_to_server(fake, s),
        service_names=[ENHANCER_SERVICE],
        port=0,
    )
    await served.start()
    await set_serving(served, [ENHANCER_SERVICE])
    return served, fake
