"""Previews on: an SDXL image job and a WAN video job show `preview` events
with decodable PNGs under the byte cap in their SSE history."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import signup
from tests.e2e.test_generate import run_job
from tests.e2e_previews.conftest import MAX_BYTES, client, preview_images, stack_with_previews


@pytest.fixture(scope="module")
async def stack(base_env):
    async for s in stack_with_previews(base_env, every_steps=2):
        yield s


@pytest.fixture
async def http(stack):
    async for h in client(stack):
        yield h


def _checked(job: dict, events: list[dict]) -> list:
    assert job["state"] == "completed", job
    names = [e["event"] for e in events]
    assert names[-1] == "completed", names
    images = preview_images(events)
    assert len(images) >= 1, names
    for data, image in images:
        assert image.format == "PNG" and len(data) <= MAX_BYTES
    # a preview follows the progress event of the step it shows, never the last step
    steps = [e["data"]["step"] for e in events if e["event"] == "preview"]
    totals = {e["data"]["total"] for e in events if e["event"] == "progress"}
    assert all(step < max(totals) for step in steps), (steps, totals)
    return images


async def test_an_sdxl_job_shows_previews(http):
    user = await signup(http)
    body = {
        "job_type": "sdxl_image_fast",
        "prompt": "a lighthouse on a cliff at dusk",
        "num_images": 1,
        "seed": 5,
        "width": 256,
        "height": 256,
    }
    job, events = await run_job(user, body)
    images = _checked(job, events)
    # sdxl_image_fast has 15 steps: a preview at every second one but the last
    assert len(images) == 7
    # 32x32 latents shown at 64x64 do not fit the cap: smaller ones are sent
    assert all(image.size[0] == image.size[1] < 64 for _, image in images)


async def test_a_wan_video_job_shows_previews(http):
    user = await signup(http)
    body = {
        "job_type": "video_fast",
        "prompt": "a red kite over a windy beach",
        "seed": 7,
        "width": 64,
        "height": 48,
        "num_frames": 9,
    }
    job, events = await run_job(user, body)
    images = _checked(job, events)
    assert len(images) >= 1
    assert all(image.size == (16, 12) for _, image in images)  # 8x6 latents, twice as large
