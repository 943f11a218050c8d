"""/v1/admin/prompt-templates: the enhancer's templates, their versions, tests
and analytics. Admins only: the gateway refuses anyone else (403) before a
call is made, and the enhancer checks the role again."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BeforeValidator

from ourvidz.v1 import enhancer_service_pb2 as enh_pb2
from services.gateway import mapping
from services.gateway.deps import AdminDep, gateway, resource_id
from services.gateway.models import (
    CreateTemplateBody,
    PromptTestsOut,
    TemplateOut,
    TemplatesOut,
    TemplateStatsOut,
    TemplateTestBody,
    UpdateTemplateBody,
    problem_responses,
)

router = APIRouter(prefix="/v1/admin/prompt-templates", tags=["admin"])

WHAT = "prompt template"


async def _call(gw, caller, method_name: str, request, deadline: float | None = None):
    method = getattr(gw.backends.enhancer_stub(), method_name)
    return await gw.backends.call(method, request, caller.token, deadline=deadline)


@router.get("", response_model=TemplatesOut)
async def list_templates(
    caller: AdminDep,
    target_model: Literal["sdxl", "wan", ""] = "",  # empty: every target
    active_only: Annotated[bool, BeforeValidator(lambda v: v or False)] = False,
    gw=Depends(gateway),
) -> dict:
    reply = await _call(
        gw,
        caller,
        "ListPromptTemplates",
        enh_pb2.ListPromptTemplatesRequest(target_model=target_model, active_only=active_only),
    )
    return {"templates": [mapping.template(t) for t in reply.templates]}


@router.post("", status_code=201, response_model=TemplateOut, responses=problem_responses(409))
async def create_template(body: CreateTemplateBody, caller: AdminDep, gw=Depends(gateway)) -> dict:
    template = enh_pb2.PromptTemplate(
        name=body.name.strip(),
        target_model=body.target_model,
        system_prompt=body.system_prompt,
        user_template=body.user_template or "",
        description=body.description or "",
        settings=mapping.generation_settings(body.settings),
    )
    reply = await _call(
        gw,
        caller,
        "CreatePromptTemplate",
        enh_pb2.CreatePromptTemplateRequest(template=template, activate=body.activate),
    )
    return mapping.template(reply.template)


@router.get("/{template_id}", response_model=TemplateOut)
async def get_template(template_id: str, caller: AdminDep, gw=Depends(gateway)) -> dict:
    reply = await _call(
        gw,
        caller,
        "GetPromptTemplate",
        enh_pb2.GetPromptTemplateRequest(template_id=resource_id(template_id, WHAT)),
    )
    return mapping.template(reply.template)


@router.post("/{template_id}/versions", status_code=201, response_model=TemplateOut)
async def update_template(
    template_id: str, body: UpdateTemplateBody, caller: AdminDep, gw=Depends(gateway)
) -> dict:
    """A new version (the latest + 1); absent fields are copied from the latest."""
    reply = await _call(
        gw,
        caller,
        "UpdatePromptTemplate",
        enh_pb2.UpdatePromptTemplateRequest(
            template_id=resource_id(template_id, WHAT),
            system_prompt=body.system_prompt or "",
            user_template=body.user_template or "",
            description=body.description or "",
            settings=mapping.generation_settings(body.settings),
            activate=body.activate,
        ),
    )
    return mapping.template(reply.template)


@router.post("/{template_id}/activate", response_model=TemplateOut)
async def activate_template(template_id: str, caller: AdminDep, gw=Depends(gateway)) -> dict:
    """Make this version the active template of its target model (every replica)."""
    reply = await _call(
        gw,
        caller,
        "ActivatePromptTemplate",
        enh_pb2.ActivatePromptTemplateRequest(template_id=resource_id(template_id, WHAT)),
    )
    return mapping.template(reply.template)


@router.post("/{template_id}/tests", response_model=PromptTestsOut)
async def test_template(
    template_id: str, body: TemplateTestBody, caller: AdminDep, gw=Depends(gateway)
) -> dict:
    """Run the template over sample prompts; the results are stored."""
    reply = await _call(
        gw,
        caller,
        "TestPromptTemplate",
        enh_pb2.TestPromptTemplateRequest(
            template_id=resource_id(template_id, WHAT),
            sample_prompts=[p.strip() for p in body.sample_prompts or ()],
            settings=mapping.generation_settings(body.settings),
        ),
        deadline=gw.settings.gateway_template_test_deadline_seconds,
    )
    return {"tests": [mapping.prompt_test(t) for t in reply.tests]}


@router.get("/{template_id}/tests", response_model=PromptTestsOut)
async def list_template_tests(
    template_id: str,
    caller: AdminDep,
    page_size: Annotated[int, Query(ge=0, le=1000)] = 0,
    gw=Depends(gateway),
) -> dict:
    reply = await _call(
        gw,
        caller,
        "ListPromptTests",
        enh_pb2.ListPromptTestsRequest(
            template_id=resource_id(template_id, WHAT), page_size=page_size
        ),
    )
    return {"tests": [mapping.prompt_test(t) for t in reply.tests]}


@router.get("/{template_id}/stats", response_model=TemplateStatsOut)
async def template_stats(template_id: str, caller: AdminDep, gw=Depends(gateway)) -> dict:
    """Enhancements, fallbacks, latency, tokens and users' ratings of this version."""
    reply = await _call(
        gw,
        caller,
        "GetPromptTemplateStats",
        enh_pb2.GetPromptTemplateStatsRequest(template_id=resource_id(template_id, WHAT)),
    )
    return mapping.template_stats(reply)
