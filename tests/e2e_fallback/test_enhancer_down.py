"""With no enhancer running, an enhanced job still completes: Jobs times the
enhance stage out and renders the original prompt, marking the fallback."""

from __future__ import annotations

import httpx

from ourvidz_dev.stack import running_stack
from tests.e2e.conftest import signup
from tests.e2e.test_generate import run_job
from tests.e2e_media.conftest import media_env
from tests.e2e_media.test_media import wan_body


async def test_enhanced_job_falls_back_when_the_enhancer_is_down(base_env):
    env = media_env(base_env, JOBS_ENHANCE_TIMEOUT_SECONDS="2")
    async with (
        running_stack(env, workers=("wan",), enhancer=False) as stack,
        httpx.AsyncClient(base_url=stack.url, timeout=120) as http,
    ):
        user = await signup(http)
        job, events = await run_job(user, wan_body("image7b_fast_enhanced"))
    assert job["state"] == "completed", job
    assert job["enhancement_fallback"] is True
    assert job["enhancement_fallback_reason"]
    assert not job["enhanced_prompt"]
    states = [e["data"]["state"] for e in events if e["event"] == "state"]
    assert "enhancing" in states and "running" in states, states
