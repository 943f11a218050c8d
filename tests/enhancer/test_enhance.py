"""EnhancePrompt, Chat and RateEnhancement over gRPC against one enhancer with
the tiny model: every response field, the CLIP budget of SDXL prompts, the
fallbacks (error, timeout, policy), the analytics rows, and who may call."""

from __future__ import annotations

import uuid

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ourvidz.v1 import enhancer_service_pb2 as pb
from services.enhancer import models
from services.enhancer.service import Caller
from tests.conftest import rpc_error
from tests.enhancer.conftest import DENIED, owner_query, replica, user_md

MAX_CLIP = 77


async def test_health_serves_once_the_model_is_loaded(enh):
    health = health_pb2_grpc.HealthStub(enh.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="ourvidz.v1.EnhancerService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_stays_not_serving_when_the_model_cannot_load(base_env):
    from services.enhancer.main import start
    from services.enhancer.settings import EnhancerSettings
    from tests.conftest import make_settings

    settings = make_settings(EnhancerSettings, base_env, ENHANCER_MODEL="/no/such/model")
    running = await start(settings, port=0)
    try:
        from ourvidz.grpcserver import channel

        async with channel(f"127.0.0.1:{running.port}") as ch:
            try:
                await running.wait_ready(60)
            except ValueError:
                pass
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            _, md = user_md()
            err = await rpc_error(
                enhancer_stub(ch).EnhancePrompt(
                    pb.EnhancePromptRequest(prompt="a cat", target_model="wan"), metadata=md
                )
            )
            assert err.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop()


def enhancer_stub(ch):
    from ourvidz.v1 import enhancer_service_pb2_grpc

    return enhancer_service_pb2_grpc.EnhancerServiceStub(ch)


async def test_enhance_for_sdxl_fills_every_field_and_records_it(enh, infra):
    user_id, md = user_md()
    r = await enh.stub.EnhancePrompt(
        pb.EnhancePromptRequest(prompt="a red fox in the snow", job_type="sdxl_image_fast"),
        metadata=md,
    )
    assert r.target_model == "sdxl"
    assert r.model == "qwen2.5-tiny"
    assert r.template_version == 1 and uuid.UUID(r.template_id)
    assert r.tokens_in > 0 and r.latency_seconds > 0
    assert r.settings.temperature > 0 and 0 < r.settings.top_p <= 1
    assert r.settings.max_new_tokens == 80 and r.settings.seed > 0
    assert r.enhanced_prompt
    assert 0 < r.target_tokens <= MAX_CLIP
    assert not r.fallback or r.fallback_reason
    rows = owner_query(
        infra.database_url,
        "SELECT user_id::text, job_id, template_id::text, enhanced_prompt, seed, fallback, "
        "target_tokens FROM enhancer.enhancements WHERE id = %s",
        (r.enhancement_id,),
    )
    assert rows == [
        (
            user_id,
            None,
            r.template_id,
            r.enhanced_prompt,
            r.settings.seed,
            r.fallback,
            r.target_tokens,
        )
    ]


async def test_same_settings_and_seed_reproduce_the_enhancement(enh):
    _, md = user_md()
    request = pb.EnhancePromptRequest(
        prompt="a lighthouse at dusk",
        target_model="wan",
        settings=pb.GenerationSettings(temperature=0.9, top_p=0.8, max_new_tokens=40, seed=1234),
    )
    a = await enh.stub.EnhancePrompt(request, metadata=md)
    b = await enh.stub.EnhancePrompt(request, metadata=md)
    assert (a.enhanced_prompt, a.tokens_out, a.settings) == (
        b.enhanced_prompt,
        b.tokens_out,
        b.settings,
    )
    assert a.settings == request.settings
    assert a.enhancement_id != b.enhancement_id


async def test_long_sdxl_outputs_never_exceed_77_clip_tokens(base_env, infra):
    async with replica(base_env, ENHANCER_MIN_NEW_TOKENS=200) as long:
        _, md = user_md()
        counter = long.core.counter
        for seed in range(1, 9):
            r = await long.stub.EnhancePrompt(
                pb.EnhancePromptRequest(
                    prompt="a castle on a hill",
                    target_model="sdxl",
                    settings=pb.GenerationSettings(seed=seed, max_new_tokens=200),
                ),
                metadata=md,
            )
            assert r.tokens_out == 200
            if not r.fallback:
                assert counter.clip_tokens(r.enhanced_prompt) == r.target_tokens <= MAX_CLIP
    await _cleanup(infra)


async def _cleanup(infra):
    from tests.enhancer.conftest import remove_enhance_consumer

    await remove_enhance_consumer(infra.nats_url)


async def test_bad_input_names_the_field(enh):
    _, md = user_md()
    cases = [
        (pb.EnhancePromptRequest(prompt="", target_model="wan"), "prompt"),
        (pb.EnhancePromptRequest(prompt="x" * 2001, target_model="wan"), "prompt"),
        (pb.EnhancePromptRequest(prompt="a\x00cat", target_model="wan"), "prompt"),
        (pb.EnhancePromptRequest(prompt="a cat"), "target_model"),
        (pb.EnhancePromptRequest(prompt="a cat", target_model="flux"), "target_model"),
        (pb.EnhancePromptRequest(prompt="a cat", job_type="nope"), "job_type"),
        (pb.EnhancePromptRequest(prompt=f"a {DENIED} here", target_model="wan"), "prompt"),
        (
            pb.EnhancePromptRequest(
                prompt="a cat", target_model="wan", settings=pb.GenerationSettings(top_p=1.5)
            ),
            "settings.top_p",
        ),
        (
            pb.EnhancePromptRequest(
                prompt="a cat",
                target_model="wan",
                settings=pb.GenerationSettings(max_new_tokens=5000),
            ),
            "settings.max_new_tokens",
        ),
    ]
    for request, field in cases:
        err = await rpc_error(enh.stub.EnhancePrompt(request, metadata=md))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert [v.field for v in err.violations] == [field]


async def test_a_model_error_falls_back_to_the_original_prompt(enh, infra):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    enh.core.generate = broken
    try:
        _, md = user_md()
        r = await enh.stub.EnhancePrompt(
            pb.EnhancePromptRequest(prompt="a quiet harbour", target_model="sdxl"), metadata=md
        )
    finally:
        enh.core.generate = models.generate
    assert r.fallback and r.fallback_reason.startswith("model_error")
    assert "CUDA" not in r.fallback_reason and "RuntimeError" not in r.fallback_reason
    assert r.enhanced_prompt == "a quiet harbour"
    assert r.target_tokens > 0 and r.template_id and r.settings.seed
    rows = owner_query(
        infra.database_url,
        "SELECT fallback, fallback_reason, enhanced_prompt FROM enhancer.enhancements "
        "WHERE id = %s",
        (r.enhancement_id,),
    )
    assert rows == [(True, r.fallback_reason, "a quiet harbour")]


async def test_a_timeout_falls_back_to_the_original_prompt(enh):
    original = enh.core.settings
    enh.core.settings = original.model_copy(update={"enhancer_timeout_seconds": 0.0})
    try:
        _, md = user_md()
        r = await enh.stub.EnhancePrompt(
            pb.EnhancePromptRequest(prompt="a quiet harbour", target_model="wan"), metadata=md
        )
    finally:
        enh.core.settings = original
    assert r.fallback and r.fallback_reason.startswith("timeout")
    assert r.enhanced_prompt == "a quiet harbour"


async def test_an_output_against_the_policy_falls_back(enh):
    def writes_denied(lm, messages, sampling, **kwargs):
        return models.Generated(
            text=f"a harbour, {DENIED.upper()}, dusk", tokens_in=5, tokens_out=6
        )

    enh.core.generate = writes_denied
    try:
        _, md = user_md()
        r = await enh.stub.EnhancePrompt(
            pb.EnhancePromptRequest(prompt="a quiet harbour", target_model="sdxl"), metadata=md
        )
    finally:
        enh.core.generate = models.generate
    assert r.fallback and r.fallback_reason.startswith("policy")
    assert r.enhanced_prompt == "a quiet harbour"
    assert DENIED not in r.enhanced_prompt.lower()


async def test_who_may_call(enh):
    _, worker = user_md("worker")
    request = pb.EnhancePromptRequest(prompt="a cat", target_model="wan")
    err = await rpc_error(enh.stub.EnhancePrompt(request, metadata=worker))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    err = await rpc_error(enh.stub.EnhancePrompt(request))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED


async def test_chat_streams_deltas_then_a_summary(enh):
    _, md = user_md()
    request = pb.ChatRequest(
        messages=[
            pb.ChatMessage(role="system", content="You are helpful."),
            pb.ChatMessage(role="user", content="describe a sunset"),
        ],
        settings=pb.GenerationSettings(max_new_tokens=24, seed=9),
    )
    replies = [r async for r in enh.stub.Chat(request, metadata=md)]
    *deltas, last = replies
    assert last.done and not any(r.done for r in deltas)
    assert 0 < last.tokens_out <= 24
    assert last.model == "qwen2.5-tiny"
    assert last.settings.seed == 9 and last.settings.max_new_tokens == 24
    again = [r async for r in enh.stub.Chat(request, metadata=md)]
    assert "".join(r.delta for r in again) == "".join(r.delta for r in replies)


async def test_chat_input_is_checked(enh):
    _, md = user_md()
    cases = [
        ([], "messages"),
        ([pb.ChatMessage(role="robot", content="hi")], "messages[0].role"),
        ([pb.ChatMessage(role="user", content="")], "messages[0].content"),
        ([pb.ChatMessage(role="user", content=f"say {DENIED}")], "messages[0].content"),
    ]
    for messages, field in cases:
        call = enh.stub.Chat(pb.ChatRequest(messages=messages), metadata=md)
        err = await rpc_error(_drain(call))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in err.violations] == [field]


async def _drain(call) -> None:
    async for _ in call:
        pass


async def test_rating_an_enhanced_job(enh, infra):
    user_id, md = user_md()
    _, other = user_md()
    job_id = str(uuid.uuid4())
    await enh.core.enhance(
        "a red fox", "wan", caller=Caller(user_id=user_id, role="worker", job_id=job_id)
    )
    err = await rpc_error(
        enh.stub.RateEnhancement(pb.RateEnhancementRequest(job_id=job_id, rating=6), metadata=md)
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in err.violations] == ["rating"]
    for who, job in ((other, job_id), (md, str(uuid.uuid4())), (md, "not-a-uuid")):
        err = await rpc_error(
            enh.stub.RateEnhancement(pb.RateEnhancementRequest(job_id=job, rating=3), metadata=who)
        )
        assert err.code == grpc.StatusCode.NOT_FOUND
    first = await enh.stub.RateEnhancement(
        pb.RateEnhancementRequest(job_id=job_id, rating=2), metadata=md
    )
    second = await enh.stub.RateEnhancement(
        pb.RateEnhancementRequest(job_id=job_id, rating=5), metadata=md
    )
    assert (first.rating, second.rating, second.job_id) == (2, 5, job_id)
    rows = owner_query(
        infra.database_url,
        "SELECT user_id::text, rating FROM enhancer.enhancement_ratings WHERE job_id = %s",
        (job_id,),
    )
    assert rows == [(user_id, 5)]


async def test_users_see_only_their_own_enhancements(enh):
    a, _ = user_md()
    b, _ = user_md()
    await enh.core.enhance("a red fox", "wan", caller=Caller(user_id=a))
    await enh.core.enhance("a blue fox", "wan", caller=Caller(user_id=b))
    async with enh.core.db.tx(user_id=a, role="user") as conn:
        cur = await conn.execute("SELECT DISTINCT user_id::text AS u FROM enhancer.enhancements")
        assert [r["u"] for r in await cur.fetchall()] == [a]
