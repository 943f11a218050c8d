"""Template administration over gRPC: admin only, validated, versioned, one
active version per target, tested over sample prompts, with statistics; and a
change made on one replica takes effect on another without a restart."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from ourvidz.v1 import enhancer_service_pb2 as pb
from services.enhancer.service import Caller
from tests.conftest import rpc_error
from tests.enhancer.conftest import owner_query, replica, user_md

SYSTEM = "You rewrite prompts as comma-separated visual descriptors."


def new_template(target: str = "sdxl", **fields) -> pb.PromptTemplate:
    fields.setdefault("name", f"t-{uuid.uuid4().hex[:8]}")
    fields.setdefault("system_prompt", SYSTEM)
    fields.setdefault("user_template", "Prompt: {prompt}")
    return pb.PromptTemplate(target_model=target, **fields)


@pytest.fixture(scope="module")
def admin():
    return user_md("admin")


async def test_only_admins_manage_templates(enh):
    _, md = user_md()
    _, worker = user_md("worker")
    some_id = str(uuid.uuid4())
    calls = [
        lambda m: enh.stub.ListPromptTemplates(pb.ListPromptTemplatesRequest(), metadata=m),
        lambda m: enh.stub.GetPromptTemplate(
            pb.GetPromptTemplateRequest(template_id=some_id), metadata=m
        ),
        lambda m: enh.stub.CreatePromptTemplate(
            pb.CreatePromptTemplateRequest(template=new_template()), metadata=m
        ),
        lambda m: enh.stub.UpdatePromptTemplate(
            pb.UpdatePromptTemplateRequest(template_id=some_id, system_prompt="x"), metadata=m
        ),
        lambda m: enh.stub.ActivatePromptTemplate(
            pb.ActivatePromptTemplateRequest(template_id=some_id), metadata=m
        ),
        lambda m: enh.stub.TestPromptTemplate(
            pb.TestPromptTemplateRequest(template_id=some_id), metadata=m
        ),
        lambda m: enh.stub.ListPromptTests(pb.ListPromptTestsRequest(), metadata=m),
        lambda m: enh.stub.GetPromptTemplateStats(
            pb.GetPromptTemplateStatsRequest(template_id=some_id), metadata=m
        ),
    ]
    for call in calls:
        for who in (md, worker):
            err = await rpc_error(call(who))
            assert err.code == grpc.StatusCode.PERMISSION_DENIED


async def test_the_seeded_defaults_are_active(enh, admin):
    _, md = admin
    listed = await enh.stub.ListPromptTemplates(
        pb.ListPromptTemplatesRequest(active_only=True), metadata=md
    )
    by_target = {t.target_model: t for t in listed.templates}
    assert set(by_target) == {"sdxl", "wan"} and len(listed.templates) == 2
    sdxl, wan = by_target["sdxl"], by_target["wan"]
    assert "77" in sdxl.system_prompt and "comma-separated" in sdxl.system_prompt
    assert "paragraph" in wan.system_prompt and "camera" in wan.system_prompt
    assert "{prompt}" in sdxl.user_template and "{prompt}" in wan.user_template
    assert sdxl.settings.max_new_tokens == 80 and wan.settings.max_new_tokens == 200
    got = await enh.stub.GetPromptTemplate(
        pb.GetPromptTemplateRequest(template_id=sdxl.id), metadata=md
    )
    assert got.template == sdxl


async def test_create_validates_and_names_fields(enh, admin):
    _, md = admin
    bad = pb.PromptTemplate(
        name="",
        target_model="flux",
        system_prompt="",
        user_template="no placeholder",
        settings=pb.GenerationSettings(temperature=3, top_p=-0.1, max_new_tokens=2048),
    )
    err = await rpc_error(
        enh.stub.CreatePromptTemplate(pb.CreatePromptTemplateRequest(template=bad), metadata=md)
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in err.violations} == {
        "template.name",
        "template.target_model",
        "template.system_prompt",
        "template.user_template",
        "template.settings.temperature",
        "template.settings.top_p",
        "template.settings.max_new_tokens",
    }
    err = await rpc_error(
        enh.stub.CreatePromptTemplate(
            pb.CreatePromptTemplateRequest(template=new_template(system_prompt="x" * 8001)),
            metadata=md,
        )
    )
    assert [v.field for v in err.violations] == ["template.system_prompt"]
    err = await rpc_error(
        enh.stub.CreatePromptTemplate(
            pb.CreatePromptTemplateRequest(template=new_template(system_prompt="be\x00brief")),
            metadata=md,
        )
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in err.violations] == ["template.system_prompt"]


async def test_create_update_activate(enh, admin, infra):
    admin_id, md = admin
    created = (
        await enh.stub.CreatePromptTemplate(
            pb.CreatePromptTemplateRequest(
                template=new_template("wan", description="first", name="wan-story")
            ),
            metadata=md,
        )
    ).template
    assert (created.version, created.active, created.created_by) == (1, False, admin_id)
    assert created.settings.max_new_tokens == 200 and created.settings.temperature > 0
    err = await rpc_error(
        enh.stub.CreatePromptTemplate(
            pb.CreatePromptTemplateRequest(template=new_template("wan", name="WAN-story")),
            metadata=md,
        )
    )
    assert err.code == grpc.StatusCode.ALREADY_EXISTS

    updated = (
        await enh.stub.UpdatePromptTemplate(
            pb.UpdatePromptTemplateRequest(
                template_id=created.id,
                system_prompt="One vivid paragraph.",
                settings=pb.GenerationSettings(temperature=0.5),
            ),
            metadata=md,
        )
    ).template
    assert (updated.name, updated.version, updated.active) == ("wan-story", 2, False)
    assert updated.id != created.id
    assert updated.system_prompt == "One vivid paragraph."
    assert updated.user_template == created.user_template
    assert updated.description == "first"
    assert updated.settings.temperature == pytest.approx(0.5)
    assert updated.settings.top_p == pytest.approx(created.settings.top_p)
    # Any version names the template; the next is always latest + 1.
    third = (
        await enh.stub.UpdatePromptTemplate(
            pb.UpdatePromptTemplateRequest(template_id=created.id, activate=True), metadata=md
        )
    ).template
    assert (third.version, third.active) == (3, True)

    err = await rpc_error(
        enh.stub.UpdatePromptTemplate(
            pb.UpdatePromptTemplateRequest(template_id=created.id, user_template="no slot"),
            metadata=md,
        )
    )
    assert [v.field for v in err.violations] == ["user_template"]

    active = await enh.stub.ActivatePromptTemplate(
        pb.ActivatePromptTemplateRequest(template_id=updated.id), metadata=md
    )
    assert active.template.active and active.template.version == 2
    rows = owner_query(
        infra.database_url,
        "SELECT name, version FROM enhancer.prompt_templates WHERE target_model = 'wan' AND active",
    )
    assert rows == [("wan-story", 2)]
    listed = await enh.stub.ListPromptTemplates(
        pb.ListPromptTemplatesRequest(target_model="wan"), metadata=md
    )
    mine = [t.version for t in listed.templates if t.name == "wan-story"]
    assert mine == [3, 2, 1]


async def test_unknown_ids_are_not_found(enh, admin):
    _, md = admin
    for template_id in ("", "nope", str(uuid.uuid4())):
        for call in (
            enh.stub.GetPromptTemplate(
                pb.GetPromptTemplateRequest(template_id=template_id), metadata=md
            ),
            enh.stub.ActivatePromptTemplate(
                pb.ActivatePromptTemplateRequest(template_id=template_id), metadata=md
            ),
            enh.stub.UpdatePromptTemplate(
                pb.UpdatePromptTemplateRequest(template_id=template_id), metadata=md
            ),
            enh.stub.GetPromptTemplateStats(
                pb.GetPromptTemplateStatsRequest(template_id=template_id), metadata=md
            ),
        ):
            err = await rpc_error(call)
            assert err.code == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(
        enh.stub.ListPromptTemplates(pb.ListPromptTemplatesRequest(target_model="x"), metadata=md)
    )
    assert [v.field for v in err.violations] == ["target_model"]


async def test_testing_a_template_stores_its_results(enh, admin):
    _, md = admin
    created = (
        await enh.stub.CreatePromptTemplate(
            pb.CreatePromptTemplateRequest(template=new_template("sdxl")), metadata=md
        )
    ).template
    ran = await enh.stub.TestPromptTemplate(
        pb.TestPromptTemplateRequest(
            template_id=created.id,
            sample_prompts=["a red fox", "a castle at dawn"],
            settings=pb.GenerationSettings(seed=11, max_new_tokens=30),
        ),
        metadata=md,
    )
    assert len(ran.results) == len(ran.tests) == 2
    pairs = zip(["a red fox", "a castle at dawn"], ran.results, ran.tests, strict=True)
    for prompt, result, test in pairs:
        assert result.template_id == created.id and result.template_version == 1
        assert result.settings.seed == 11 and result.target_model == "sdxl"
        assert result.target_tokens <= 77
        assert (
            test.sample_prompt == prompt and test.result.enhanced_prompt == result.enhanced_prompt
        )
    defaults = await enh.stub.TestPromptTemplate(
        pb.TestPromptTemplateRequest(template_id=created.id), metadata=md
    )
    assert len(defaults.tests) == 3
    listed = await enh.stub.ListPromptTests(
        pb.ListPromptTestsRequest(template_id=created.id), metadata=md
    )
    assert len(listed.tests) == 5
    assert {t.id for t in ran.tests} <= {t.id for t in listed.tests}
    assert (
        len(
            (
                await enh.stub.ListPromptTests(
                    pb.ListPromptTestsRequest(template_id=created.id, page_size=2), metadata=md
                )
            ).tests
        )
        == 2
    )
    err = await rpc_error(
        enh.stub.TestPromptTemplate(
            pb.TestPromptTemplateRequest(template_id=created.id, sample_prompts=["ok", " "]),
            metadata=md,
        )
    )
    assert [v.field for v in err.violations] == ["sample_prompts[1]"]
    # Tests are not enhancements: the template's statistics stay empty.
    stats = await enh.stub.GetPromptTemplateStats(
        pb.GetPromptTemplateStatsRequest(template_id=created.id), metadata=md
    )
    assert stats.enhancements == 0


async def test_statistics_of_a_template_version(enh, admin):
    _, md = admin
    created = (
        await enh.stub.CreatePromptTemplate(
            pb.CreatePromptTemplateRequest(template=new_template("wan")), metadata=md
        )
    ).template
    template = await enh.core.get_template(admin[0], created.id)
    # Two users' enhanced jobs, each rated by its owner, and one failed preview.
    for rating in (2, 5):
        user_id, user = user_md()
        job_id = str(uuid.uuid4())
        await enh.core.enhance(
            "a red fox",
            "wan",
            caller=Caller(user_id=user_id, role="worker", job_id=job_id),
            template=template,
        )
        await enh.stub.RateEnhancement(
            pb.RateEnhancementRequest(job_id=job_id, rating=rating), metadata=user
        )
    enh.core.generate = _broken
    try:
        await enh.core.enhance(
            "a preview", "wan", caller=Caller(user_id=user_id), template=template
        )
    finally:
        from services.enhancer import models

        enh.core.generate = models.generate
    stats = await enh.stub.GetPromptTemplateStats(
        pb.GetPromptTemplateStatsRequest(template_id=created.id), metadata=md
    )
    assert (stats.template_id, stats.template_version) == (created.id, 1)
    assert (stats.enhancements, stats.fallbacks) == (3, 1)
    assert stats.mean_latency_seconds > 0 and stats.mean_tokens_in > 0
    assert (stats.ratings, stats.mean_rating) == (2, pytest.approx(3.5))


def _broken(*args, **kwargs):
    raise RuntimeError("boom")


async def test_a_new_version_reaches_every_replica(enh, admin, base_env):
    """Replica B caches for ten minutes; the NATS message makes it see A's change."""
    _, md = admin
    _, user = user_md()
    async with replica(base_env, ENHANCER_TEMPLATE_CACHE_SECONDS=600) as b:
        request = pb.EnhancePromptRequest(prompt="a red fox", target_model="sdxl")
        before = await b.stub.EnhancePrompt(request, metadata=user)  # fills B's cache
        created = (
            await enh.stub.CreatePromptTemplate(
                pb.CreatePromptTemplateRequest(template=new_template("sdxl"), activate=True),
                metadata=md,
            )
        ).template
        assert created.active and before.template_id != created.id
        seen = None
        for _ in range(100):
            seen = await b.stub.EnhancePrompt(request, metadata=user)
            if seen.template_id == created.id:
                break
            await asyncio.sleep(0.05)
        assert (seen.template_id, seen.template_version) == (created.id, 1)
        # And back: activating the old version on B reaches A.
        await b.stub.ActivatePromptTemplate(
            pb.ActivatePromptTemplateRequest(template_id=before.template_id), metadata=md
        )
        for _ in range(100):
            seen = await enh.stub.EnhancePrompt(request, metadata=user)
            if seen.template_id == before.template_id:
                break
            await asyncio.sleep(0.05)
        assert seen.template_id == before.template_id
