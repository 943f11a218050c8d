"""/v1/prompts/enhance (a preview of what the enhancer makes of a prompt) and
/v1/jobs/{id}/rating (a user's 1-5 rating of an enhanced job's result)."""

from __future__ import annotations

import grpc
from fastapi import APIRouter, Depends

from ourvidz.errors import FailedPrecondition, InvalidArgument
from ourvidz.v1 import enhancer_service_pb2 as enh_pb2
from ourvidz.v1 import job_service_pb2
from services.gateway import mapping
from services.gateway.deps import CallerDep, gateway, resource_id
from services.gateway.models import (
    EnhanceBody,
    EnhancementOut,
    RatingBody,
    RatingOut,
    problem_responses,
)

router = APIRouter(tags=["prompts"])


@router.post("/v1/prompts/enhance", response_model=EnhancementOut)
async def enhance_prompt(body: EnhanceBody, caller: CallerDep, gw=Depends(gateway)) -> dict:
    """The enhanced prompt, with the template, model, token counts and the
    settings used (a seed makes it reproducible). When the model fails the
    original prompt comes back with `fallback` true and the reason."""
    if not body.target_model and not body.job_type:
        raise InvalidArgument.field("target_model", "give target_model (sdxl or wan) or job_type")
    prompt = body.prompt.strip()
    enhancer = gw.backends.enhancer_stub()
    reply = await gw.backends.call(
        enhancer.EnhancePrompt,
        enh_pb2.EnhancePromptRequest(
            prompt=prompt,
            target_model=body.target_model or "",
            job_type=body.job_type or "",
            settings=mapping.generation_settings(body),
        ),
        caller.token,
        deadline=gw.settings.gateway_enhance_deadline_seconds,
    )
    return mapping.enhancement(reply, prompt)


@router.put(
    "/v1/jobs/{job_id}/rating",
    response_model=RatingOut,
    tags=["jobs"],
    responses=problem_responses(404, 409),
)
async def rate_job(job_id: str, body: RatingBody, caller: CallerDep, gw=Depends(gateway)) -> dict:
    """Rate what an enhanced job produced (1-5); rating again replaces the rating.
    A job of the caller's with no enhanced prompt yet (a plain job type, or an
    enhancement still to come) is a 409."""
    job_id = resource_id(job_id, "job")
    # Only the caller's own job: anyone else's is a 404, as everywhere.
    await gw.backends.call(
        gw.backends.jobs.GetJob, job_service_pb2.GetJobRequest(job_id=job_id), caller.token
    )
    enhancer = gw.backends.enhancer_stub()
    try:
        reply = await gw.backends.call(
            enhancer.RateEnhancement,
            enh_pb2.RateEnhancementRequest(job_id=job_id, rating=body.rating),
            caller.token,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        # The job is the caller's (checked above): the enhancer has no
        # enhancement of it to rate.
        raise FailedPrecondition(
            "this job has no enhanced prompt to rate: it is not an enhanced job type, "
            "or its enhancement has not finished",
            reason="NOT_ENHANCED",
        ) from None
    return {"job_id": reply.job_id or job_id, "rating": reply.rating or body.rating}
