"""/v1/job-types and /v1/jobs: submitting, re-running, reading, cancelling and
watching jobs."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import StreamingResponse

from ourvidz.errors import InvalidArgument, NotFound
from ourvidz.v1 import job_pb2, job_service_pb2, workspace_service_pb2
from services.gateway import mapping, sse, workers
from services.gateway.deps import CallerDep, gateway, resource_id
from services.gateway.models import (
    INT64_MAX,
    CreateJobBody,
    JobOut,
    JobState,
    JobTypeName,
    JobTypesOut,
    Page,
    PageToken,
    RerunJobBody,
    problem_responses,
)

log = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])

MAX_IDEMPOTENCY_KEY = 200
TERMINAL_EVENTS = ("completed", "failed", "cancelled")


@router.get("/v1/job-types", response_model=JobTypesOut)
async def job_types(caller: CallerDep, gw=Depends(gateway)) -> dict:
    """The whole catalog; each type says whether it can run now and, if not,
    why (its worker family is not ready, or the enhancer it needs is down)."""
    reply, states, optional = await asyncio.gather(
        gw.backends.call(
            gw.backends.jobs.ListJobTypes, job_service_pb2.ListJobTypesRequest(), caller.token
        ),
        workers.family_states(gw.nats),
        gw.backends.optional_health(),
    )
    items = []
    for t in reply.job_types:
        reason = workers.unavailable_reason(t.worker, t.enhanced, states, optional["enhancer"])
        items.append(
            {**mapping.job_type(t), "available": reason is None, "unavailable_reason": reason}
        )
    return {"items": items}


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobOut,
    # 404: the workspace session or reference image is not the caller's;
    # 429: the caller submits too fast, or its queued and running jobs are at
    # their limit.
    responses=problem_responses(404, 429),
)
async def create_job(
    body: CreateJobBody,
    caller: CallerDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    gw=Depends(gateway),
) -> dict:
    key = _idempotency_key(idempotency_key)
    await gw.throttle.submit_job(caller.user_id)
    session_id = ""
    if body.destination == "workspace":
        session_id = await _workspace_session(gw, caller, body.workspace_session_id)
    spec = mapping.job_spec(body, session_id)
    reply = await gw.backends.call(
        gw.backends.jobs.CreateJob,
        job_service_pb2.CreateJobRequest(job=spec, request_id=key),
        caller.token,
    )
    return _created(response, reply)


@router.post(
    "/v1/jobs/{job_id}/rerun",
    status_code=202,
    response_model=JobOut,
    # 404: the job or the workspace session is not the caller's; 409: the job
    # cannot be re-run exactly (`reason`: JOB_NOT_COMPLETED, NO_PROVENANCE,
    # MODEL_CHANGED, SETTINGS_CHANGED); 429: as a submit.
    responses=problem_responses(404, 409, 429),
)
async def rerun_job(
    job_id: str,
    caller: CallerDep,
    response: Response,
    body: RerunJobBody | None = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    gw=Depends(gateway),
) -> dict:
    """A new job with exactly the recorded parameters of a completed job of
    the caller's (an enhanced job's rendered prompt, not enhanced again),
    answered as a submit. Outputs go to the job's destination; in the
    workspace, to the session in the body or the caller's active one."""
    key = _idempotency_key(idempotency_key)
    job_id = resource_id(job_id, "job")
    await gw.throttle.submit_job(caller.user_id)
    source = await gw.backends.call(
        gw.backends.jobs.GetJob, job_service_pb2.GetJobRequest(job_id=job_id), caller.token
    )
    session_id = ""
    if source.job.destination == job_pb2.DESTINATION_WORKSPACE:
        requested = body.workspace_session_id if body else None
        session_id = await _workspace_session(gw, caller, requested)
    reply = await gw.backends.call(
        gw.backends.jobs.RerunJob,
        job_service_pb2.RerunJobRequest(
            job_id=job_id, request_id=key, workspace_session_id=session_id
        ),
        caller.token,
    )
    return _created(response, reply)


def _idempotency_key(header: str | None) -> str:
    key = (header or "").strip()
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidArgument.field(
            "Idempotency-Key", f"must be at most {MAX_IDEMPOTENCY_KEY} characters"
        )
    return key


def _created(response: Response, reply) -> dict:
    """The answer to a submit: the job, where it lives, and whether the
    Idempotency-Key named a job made before."""
    response.headers["Location"] = f"/v1/jobs/{reply.job.id}"
    if reply.existing:
        response.headers["Idempotent-Replayed"] = "true"
    return mapping.job(reply.job)


async def _workspace_session(gw, caller, requested: str | None) -> str:
    """The session the job's outputs go to: the one asked for when it is the
    caller's (else 404), or the caller's active one (created if none)."""
    ws = gw.backends.workspace
    if requested:
        try:
            session_id = resource_id(requested, "workspace session")
        except NotFound as exc:
            raise InvalidArgument.field("workspace_session_id", "is not a valid id") from exc
        reply = await gw.backends.call(
            ws.GetSession,
            workspace_service_pb2.GetSessionRequest(session_id=session_id),
            caller.token,
        )
        return reply.session.id
    reply = await gw.backends.call(
        ws.GetActiveSession, workspace_service_pb2.GetActiveSessionRequest(), caller.token
    )
    return reply.session.id


@router.get("/v1/jobs", response_model=Page[JobOut])
async def list_jobs(
    caller: CallerDep,
    page_size: Annotated[int, Query(ge=0, le=1000)] = 0,
    page_token: Annotated[PageToken, Query()] = "",
    state: JobState | None = None,
    job_type: JobTypeName | None = None,
    gw=Depends(gateway),
) -> dict:
    """The caller's jobs, newest first; `state` and `job_type` narrow the
    list (both: jobs with that state and of that type)."""
    reply = await gw.backends.call(
        gw.backends.jobs.ListJobs,
        job_service_pb2.ListJobsRequest(
            page_size=page_size,
            page_token=page_token,
            state=mapping.state_value(state),
            job_type=job_type or "",
        ),
        caller.token,
    )
    return mapping.page([mapping.job(j) for j in reply.jobs], reply.next_page_token)


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
async def get_job(job_id: str, caller: CallerDep, gw=Depends(gateway)) -> dict:
    reply = await gw.backends.call(
        gw.backends.jobs.GetJob,
        job_service_pb2.GetJobRequest(job_id=resource_id(job_id, "job")),
        caller.token,
    )
    return mapping.job(reply.job)


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobOut)
async def cancel_job(job_id: str, caller: CallerDep, gw=Depends(gateway)) -> dict:
    reply = await gw.backends.call(
        gw.backends.jobs.CancelJob,
        job_service_pb2.CancelJobRequest(job_id=resource_id(job_id, "job")),
        caller.token,
    )
    return mapping.job(reply.job)


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {sse.MEDIA_TYPE: {}}, "description": "Server-Sent Events"},
        **problem_responses(429),
    },
)
async def job_events(
    job_id: str,
    caller: CallerDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after_sequence: Annotated[int | None, Query(ge=0, le=INT64_MAX)] = None,
    gw=Depends(gateway),
) -> StreamingResponse:
    """The job's events as SSE: its history after `Last-Event-ID` (or
    `after_sequence`), then live until it reaches a terminal state."""
    job_id = resource_id(job_id, "job")
    # A missing or foreign job is a 404 before the stream starts.
    await gw.backends.call(
        gw.backends.jobs.GetJob, job_service_pb2.GetJobRequest(job_id=job_id), caller.token
    )
    after = after_sequence if after_sequence is not None else sse.parse_last_event_id(last_event_id)
    request = job_service_pb2.WatchJobRequest(job_id=job_id, after_sequence=after)

    lease = await gw.throttle.open_stream(caller.user_id)
    call = gw.backends.stream(gw.backends.jobs.WatchJob, request, caller.token)

    async def events():
        async for reply in call:
            name, data = mapping.job_event(reply.event)
            if name in TERMINAL_EVENTS and "job" not in data:
                # Terminal events carry the job (with its assets' URLs).
                got = await gw.backends.call(
                    gw.backends.jobs.GetJob,
                    job_service_pb2.GetJobRequest(job_id=job_id),
                    caller.token,
                )
                data["job"] = mapping.job(got.job)
            yield sse.event(name, data, reply.event.sequence)

    return await sse.start(
        gw, lease, call, events(), "the event stream was interrupted; reconnect", stream="job"
    )
