"""/v1/prompts/enhance and /v1/jobs/{id}/rating against an EnhancerService
double: what is validated before a call, what is sent, how answers and
errors map to HTTP; and the fallback reason in a job's JSON."""

from __future__ import annotations

import uuid

import pytest

from tests.gateway.gateway_helpers import assert_problem, auth, gateway_settings, serve_app

ENHANCEMENT_KEYS = {
    "original_prompt",
    "enhanced_prompt",
    "target_model",
    "template",
    "model",
    "tokens_in",
    "tokens_out",
    "target_tokens",
    "latency_seconds",
    "settings",
    "fallback",
    "fallback_reason",
    "enhancement_id",
}


async def test_enhance_returns_the_enhancement_and_forwards_the_callers_settings(
    client, enhancer, user_token
):
    _, fake = enhancer
    user_id, token = user_token
    body = {
        "prompt": "  a harbour  ",
        "job_type": "image7b_fast_enhanced",
        "temperature": 0.5,
        "seed": 77,
    }
    r = await client.post("/v1/prompts/enhance", json=body, headers=auth(token))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out.keys() == ENHANCEMENT_KEYS
    assert out["original_prompt"] == "a harbour"
    assert out["enhanced_prompt"] == "a harbour, golden light, detailed"
    assert out["target_model"] == "wan"
    assert out["template"] == {"id": "7d0c4a53-0000-4000-8000-000000000001", "version": 2}
    assert (out["tokens_in"], out["tokens_out"], out["target_tokens"]) == (31, 12, 15)
    assert out["settings"] == {"temperature": 0.5, "top_p": 0.9, "max_new_tokens": 77, "seed": 77}
    assert out["fallback"] is False and out["fallback_reason"] is None
    uuid.UUID(out["enhancement_id"])

    _, request, subject = fake.last("EnhancePrompt")
    assert subject == user_id  # the caller's own token reached the enhancer
    assert (request.prompt, request.job_type, request.target_model) == (
        "a harbour",
        "image7b_fast_enhanced",
        "",
    )
    assert request.settings.temperature == pytest.approx(0.5)
    assert request.settings.seed == 77 and request.settings.max_new_tokens == 0


async def test_enhance_reports_a_fallback(client, user_token):
    r = await client.post(
        "/v1/prompts/enhance",
        json={"prompt": "trigger-fallback", "target_model": "sdxl"},
        headers=auth(user_token[1]),
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["fallback"] is True
    assert out["fallback_reason"] == "MODEL_ERROR: boom"
    assert out["enhanced_prompt"] == out["original_prompt"] == "trigger-fallback"
    assert out["target_model"] == "sdxl"


BAD_ENHANCE = [
    ({"target_model": "wan"}, "prompt"),
    ({"prompt": "   ", "target_model": "wan"}, "prompt"),
    ({"prompt": "x" * 2001, "target_model": "wan"}, "prompt"),
    ({"prompt": "a cat", "job_type": "sdxl_image_medium"}, "job_type"),
    ({"prompt": "a cat", "target_model": "flux"}, "target_model"),
    ({"prompt": "a cat", "job_type": "video_fast", "target_model": "sdxl"}, "target_model"),
    ({"prompt": "a cat"}, "target_model"),
    ({"prompt": "a cat", "target_model": "wan", "temperature": 2.5}, "temperature"),
    ({"prompt": "a cat", "target_model": "wan", "temperature": 0}, "temperature"),
    ({"prompt": "a cat", "target_model": "wan", "top_p": 1.5}, "top_p"),
    ({"prompt": "a cat", "target_model": "wan", "max_new_tokens": 0}, "max_new_tokens"),
    ({"prompt": "a cat", "target_model": "wan", "max_new_tokens": 5000}, "max_new_tokens"),
    ({"prompt": "a cat", "target_model": "wan", "seed": -1}, "seed"),
    ({"prompt": "a cat", "target_model": "wan", "seed": 2**40}, "seed"),
]


@pytest.mark.parametrize(
    ("body", "field"), BAD_ENHANCE, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_ENHANCE)]
)
async def test_enhance_validates_before_calling_the_enhancer(
    client, enhancer, user_token, body, field
):
    _, fake = enhancer
    before = fake.methods().count("EnhancePrompt")
    r = await client.post("/v1/prompts/enhance", json=body, headers=auth(user_token[1]))
    problem = assert_problem(r, 422)
    assert field in [e["field"] for e in problem["errors"]], problem
    assert fake.methods().count("EnhancePrompt") == before


async def test_enhance_needs_a_signed_in_caller(client, enhancer):
    _, fake = enhancer
    before = len(fake.calls)
    r = await client.post("/v1/prompts/enhance", json={"prompt": "a", "target_model": "wan"})
    assert_problem(r, 401)
    assert len(fake.calls) == before


async def test_enhancer_errors_are_503_without_internal_detail(client, user_token):
    r = await client.post(
        "/v1/prompts/enhance",
        json={"prompt": "trigger-unavailable", "target_model": "wan"},
        headers=auth(user_token[1]),
    )
    problem = assert_problem(r, 503)
    assert "secret" not in r.text and "unavailable" in problem["detail"]


async def test_an_unreachable_enhancer_is_503(base_env, fakes, user_token):
    served, _, _ = fakes
    async with serve_app(gateway_settings(base_env, served.port, enhancer_port=1)) as http:
        r = await http.post(
            "/v1/prompts/enhance",
            json={"prompt": "a cat", "target_model": "wan"},
            headers=auth(user_token[1]),
        )
        ready = await http.get("/readyz")
    assert_problem(r, 503)
    # Readiness does not wait for the enhancer: jobs go on without it.
    assert ready.status_code == 200, ready.text
    assert ready.json()["optional"]["enhancer"] != "SERVING"


# --- ratings -------------------------------------------------------------------------


async def test_rating_the_callers_own_job(client, fakes, enhancer, user_token):
    _, jobs, _ = fakes
    _, fake = enhancer
    user_id, token = user_token
    job = jobs.make_job(user_id=user_id, job_type="image7b_fast_enhanced", prompt="a kite")
    r = await client.put(f"/v1/jobs/{job.id}/rating", json={"rating": 4}, headers=auth(token))
    assert r.status_code == 200, r.text
    assert r.json() == {"job_id": job.id, "rating": 4}
    _, request, subject = fake.last("RateEnhancement")
    assert (request.job_id, request.rating, subject) == (job.id, 4, user_id)
    assert jobs.last("GetJob")[1].job_id == job.id  # ownership checked first


async def test_rating_someone_elses_job_is_404_and_nothing_is_rated(
    client, fakes, enhancer, user_token
):
    _, jobs, _ = fakes
    _, fake = enhancer
    job = jobs.make_job(user_id=str(uuid.uuid4()), job_type="image7b_fast_enhanced", prompt="x")
    before = fake.methods().count("RateEnhancement")
    for path in (f"/v1/jobs/{job.id}/rating", "/v1/jobs/not-a-job/rating"):
        r = await client.put(path, json={"rating": 5}, headers=auth(user_token[1]))
        assert_problem(r, 404)
    assert fake.methods().count("RateEnhancement") == before


async def test_rating_a_job_with_no_enhancement_yet_is_409(client, fakes, enhancer, user_token):
    """The job is the caller's, so not a 404: it has nothing to rate yet (a
    plain job type, or an enhancement still running)."""
    _, jobs, _ = fakes
    _, fake = enhancer
    user_id, token = user_token
    job = jobs.make_job(user_id=user_id, job_type="image7b_fast_enhanced", prompt="a kite")
    fake.not_enhanced.add(job.id)
    r = await client.put(f"/v1/jobs/{job.id}/rating", json={"rating": 4}, headers=auth(token))
    problem = assert_problem(r, 409)
    assert problem["reason"] == "NOT_ENHANCED"
    assert job.id not in fake.ratings


@pytest.mark.parametrize("rating", [0, 6, "five", None])
async def test_rating_is_1_to_5(client, fakes, user_token, rating):
    _, jobs, _ = fakes
    user_id, token = user_token
    job = jobs.make_job(user_id=user_id, job_type="image7b_fast_enhanced", prompt="x")
    r = await client.put(f"/v1/jobs/{job.id}/rating", json={"rating": rating}, headers=auth(token))
    problem = assert_problem(r, 422)
    assert problem["errors"][0]["field"] == "rating"


async def test_rating_needs_a_signed_in_caller(client):
    r = await client.put(f"/v1/jobs/{uuid.uuid4()}/rating", json={"rating": 3})
    assert_problem(r, 401)


# --- the fallback reason on a job ----------------------------------------------------


async def test_job_json_carries_the_enhancement_fallback_reason(client, fakes, user_token):
    _, jobs, _ = fakes
    user_id, token = user_token
    fell_back = jobs.make_job(
        user_id=user_id,
        job_type="video7b_fast_enhanced",
        prompt="a river",
        enhancement_fallback=True,
        enhancement_fallback_reason="ENHANCER_TIMEOUT: no enhancement within 60 s",
    )
    enhanced = jobs.make_job(
        user_id=user_id,
        job_type="video7b_fast_enhanced",
        prompt="a lake",
        enhanced_prompt="a still lake at dawn",
    )
    first = (await client.get(f"/v1/jobs/{fell_back.id}", headers=auth(token))).json()
    assert first["enhancement_fallback"] is True
    assert first["enhancement_fallback_reason"] == "ENHANCER_TIMEOUT: no enhancement within 60 s"
    second = (await client.get(f"/v1/jobs/{enhanced.id}", headers=auth(token))).json()
    assert second["enhancement_fallback"] is False
    assert second["enhancement_fallback_reason"] is None
    assert second["enhanced_prompt"] == "a still lake at dawn"
