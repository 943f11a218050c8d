"""Prompt enhancement over HTTP: the preview, the admin's templates (versions
that take effect at once), the chat playground and ratings."""

from __future__ import annotations

import json

from tests.e2e.conftest import signup, signup_admin
from tests.e2e.test_generate import run_job
from tests.e2e_media.conftest import DENIED
from tests.e2e_media.test_media import wan_body


async def test_enhance_preview(http):
    user = await signup(http)
    response = await user.post(
        "/v1/prompts/enhance",
        json={"prompt": "a fox in the snow", "job_type": "video7b_fast_enhanced", "seed": 5},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["original_prompt"] == "a fox in the snow"
    assert body["target_model"] == "wan"
    assert body["enhanced_prompt"]
    assert body["template"]["version"] >= 1
    assert body["settings"]["seed"] == 5
    again = await user.post(
        "/v1/prompts/enhance",
        json={"prompt": "a fox in the snow", "job_type": "video7b_fast_enhanced", "seed": 5},
    )
    assert again.json()["enhanced_prompt"] == body["enhanced_prompt"], "same seed, same text"


async def test_enhance_preview_refuses_bad_input(http):
    user = await signup(http)
    for payload, field in (
        ({"prompt": "", "target_model": "wan"}, "prompt"),
        ({"prompt": f"a {DENIED}", "target_model": "wan"}, "prompt"),
        ({"prompt": "ok"}, "target_model"),
        ({"prompt": "ok", "target_model": "dalle"}, "target_model"),
        ({"prompt": "ok", "target_model": "wan", "temperature": 9}, "temperature"),
    ):
        response = await user.post("/v1/prompts/enhance", json=payload)
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        fields = [e["field"] for e in response.json().get("errors", [])]
        assert any(field in f for f in fields), (payload, response.json())


async def test_template_routes_are_for_admins_only(http):
    user = await signup(http)
    assert (await user.get("/v1/admin/prompt-templates")).status_code == 403
    created = await user.post(
        "/v1/admin/prompt-templates",
        json={"name": "x", "target_model": "wan", "system_prompt": "be brief"},
    )
    assert created.status_code == 403
    assert (await http.get("/v1/admin/prompt-templates")).status_code == 401


async def test_a_new_template_version_takes_effect(http, base_env):
    admin = await signup_admin(http, base_env["DATABASE_URL"])
    listed = await admin.get("/v1/admin/prompt-templates", params={"target_model": "sdxl"})
    assert listed.status_code == 200, listed.text
    active = [t for t in listed.json()["templates"] if t["active"]]
    assert len(active) == 1

    bad = await admin.post(
        f"/v1/admin/prompt-templates/{active[0]['id']}/versions",
        json={"user_template": "no placeholder here"},
    )
    assert bad.status_code == 422 or bad.status_code == 400, bad.text
    assert "user_template" in bad.text

    version = await admin.post(
        f"/v1/admin/prompt-templates/{active[0]['id']}/versions",
        json={"system_prompt": "List visual descriptors, comma separated.", "activate": True},
    )
    assert version.status_code == 201, version.text
    new = version.json()
    assert new["version"] > active[0]["version"] and new["active"]

    user = await signup(http)
    preview = await user.post(
        "/v1/prompts/enhance", json={"prompt": "a castle", "target_model": "sdxl"}
    )
    assert preview.status_code == 200, preview.text
    assert preview.json()["template"] == {"id": new["id"], "version": new["version"]}
    assert preview.json()["target_tokens"] <= 77

    tests = await admin.post(
        f"/v1/admin/prompt-templates/{new['id']}/tests", json={"sample_prompts": ["a cat", "a dog"]}
    )
    assert tests.status_code in (200, 201), tests.text
    assert len(tests.json()["tests"]) == 2
    stored = await admin.get(f"/v1/admin/prompt-templates/{new['id']}/tests")
    assert len(stored.json()["tests"]) >= 2
    stats = await admin.get(f"/v1/admin/prompt-templates/{new['id']}/stats")
    assert stats.status_code == 200 and stats.json()["enhancements"] >= 1, stats.text

    # Put the earlier version back for the other tests.
    back = await admin.post(f"/v1/admin/prompt-templates/{active[0]['id']}/activate")
    assert back.status_code == 200 and back.json()["active"], back.text


async def test_playground_streams_tokens(http):
    user = await signup(http)
    frames: list[tuple[str, dict]] = []
    async with http.stream(
        "POST",
        "/v1/playground/chat",
        headers=user.headers,
        json={
            "messages": [{"role": "user", "content": "describe a storm"}],
            "seed": 3,
            "max_new_tokens": 16,
        },
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event, data = None, None
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
            elif not line and event:
                frames.append((event, data))
                event, data = None, None
    names = [name for name, _ in frames]
    assert names[-1] == "done", names
    assert names.count("token") >= 1
    assert frames[-1][1]["tokens_out"] >= 1


async def test_rating_an_enhanced_job(http):
    user = await signup(http)
    job, _ = await run_job(user, wan_body("image7b_fast_enhanced"))
    assert job["state"] == "completed"
    rated = await user.put(f"/v1/jobs/{job['id']}/rating", json={"rating": 4})
    assert rated.status_code == 200, rated.text
    assert rated.json()["rating"] == 4
    assert (await user.put(f"/v1/jobs/{job['id']}/rating", json={"rating": 9})).status_code == 422
    other = await signup(http)
    assert (await other.put(f"/v1/jobs/{job['id']}/rating", json={"rating": 3})).status_code == 404


async def test_rating_a_job_without_an_enhancement_is_409(http):
    """A plain job of the caller's has nothing to rate: 409, not the 404 of a
    job that is not theirs."""
    user = await signup(http)
    job, _ = await run_job(user, wan_body("image_fast"))
    assert job["state"] == "completed"
    rated = await user.put(f"/v1/jobs/{job['id']}/rating", json={"rating": 4})
    assert rated.status_code == 409, rated.text
    assert rated.json()["reason"] == "NOT_ENHANCED"
