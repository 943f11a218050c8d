"""EnhancerService over gRPC: checks who calls, turns requests into calls on
the service layer and its results into responses. No rules live here."""

from __future__ import annotations

from ourvidz.auth import Principal, current_principal
from ourvidz.v1 import enhancer_service_pb2 as pb
from ourvidz.v1 import enhancer_service_pb2_grpc
from services.enhancer import convert
from services.enhancer.service import EnhancerCore

SERVICE_NAME = "ourvidz.v1.EnhancerService"


def _user() -> Principal:
    return current_principal().require("user", "admin")


def _admin() -> Principal:
    return current_principal().require("admin")


class EnhancerServicer(enhancer_service_pb2_grpc.EnhancerServiceServicer):
    def __init__(self, core: EnhancerCore) -> None:
        self._core = core

    async def EnhancePrompt(self, request, context):
        caller = _user()
        return await self._core.preview(
            caller.user_id,
            request.prompt,
            request.target_model,
            request.job_type,
            convert.override(request.settings),
        )

    async def Chat(self, request, context):
        _user()
        messages = [(m.role, m.content) for m in request.messages]
        async for item in self._core.chat(messages, convert.override(request.settings)):
            if isinstance(item, str):
                yield pb.ChatResponse(delta=item)
            else:
                generated, sampling, model = item
                yield pb.ChatResponse(
                    done=True,
                    tokens_out=generated.tokens_out,
                    model=model,
                    settings=convert.settings_proto(sampling),
                )

    async def ListPromptTemplates(self, request, context):
        admin = _admin()
        rows = await self._core.list_templates(
            admin.user_id, request.target_model, request.active_only
        )
        return pb.ListPromptTemplatesResponse(templates=[convert.template_proto(r) for r in rows])

    async def GetPromptTemplate(self, request, context):
        admin = _admin()
        row = await self._core.get_template(admin.user_id, request.template_id)
        return pb.GetPromptTemplateResponse(template=convert.template_proto(row))

    async def CreatePromptTemplate(self, request, context):
        admin = _admin()
        row = await self._core.create_template(
            admin.user_id, convert.template_fields(request.template), request.activate
        )
        return pb.CreatePromptTemplateResponse(template=convert.template_proto(row))

    async def UpdatePromptTemplate(self, request, context):
        admin = _admin()
        fields = convert.template_fields(
            pb.PromptTemplate(
                system_prompt=request.system_prompt,
                user_template=request.user_template,
                description=request.description,
                settings=request.settings,
            )
        )
        row = await self._core.update_template(
            admin.user_id, request.template_id, fields, request.activate
        )
        return pb.UpdatePromptTemplateResponse(template=convert.template_proto(row))

    async def ActivatePromptTemplate(self, request, context):
        admin = _admin()
        row = await self._core.activate_template(admin.user_id, request.template_id)
        return pb.ActivatePromptTemplateResponse(template=convert.template_proto(row))

    async def TestPromptTemplate(self, request, context):
        admin = _admin()
        results, rows = await self._core.test_template(
            admin.user_id,
            request.template_id,
            list(request.sample_prompts),
            convert.override(request.settings),
        )
        return pb.TestPromptTemplateResponse(
            results=results, tests=[convert.test_proto(r) for r in rows]
        )

    async def ListPromptTests(self, request, context):
        admin = _admin()
        rows = await self._core.list_tests(admin.user_id, request.template_id, request.page_size)
        return pb.ListPromptTestsResponse(tests=[convert.test_proto(r) for r in rows])

    async def GetPromptTemplateStats(self, request, context):
        admin = _admin()
        template, stats = await self._core.stats(admin.user_id, request.template_id)
        return pb.GetPromptTemplateStatsResponse(
            template_id=str(template["id"]),
            template_version=template["version"],
            enhancements=stats["enhancements"],
            fallbacks=stats["fallbacks"],
            mean_latency_seconds=float(stats["mean_latency"]),
            mean_tokens_in=float(stats["mean_tokens_in"]),
            mean_tokens_out=float(stats["mean_tokens_out"]),
            ratings=stats["ratings"],
            mean_rating=float(stats["mean_rating"]),
        )

    async def RateEnhancement(self, request, context):
        caller = _user()
        row = await self._core.rate(caller.user_id, request.job_id, request.rating)
        return pb.RateEnhancementResponse(job_id=str(row["job_id"]), rating=row["rating"])
