"""Previews off (every 0 steps): no `preview` event for either family."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import signup
from tests.e2e.test_generate import run_job
from tests.e2e_previews.conftest import client, stack_with_previews


@pytest.fixture(scope="module")
async def stack(base_env):
    async for s in stack_with_previews(base_env, every_steps=0):
        yield s


@pytest.fixture
async def http(stack):
    async for h in client(stack):
        yield h


async def test_no_previews_when_off(http):
    user = await signup(http)
    sdxl = {"job_type": "sdxl_image_fast", "prompt": "a quiet harbour", "num_images": 1,
            "seed": 5, "width": 256, "height": 256}  # fmt: skip
    wan = {"job_type": "video_fast", "prompt": "a quiet harbour", "seed": 7, "width": 64,
           "height": 48, "num_frames": 9}  # fmt: skip
    for body in (sdxl, wan):
        job, events = await run_job(user, body)
        names = [e["event"] for e in events]
        assert job["state"] == "completed" and "preview" not in names, names
        assert "progress" in names
