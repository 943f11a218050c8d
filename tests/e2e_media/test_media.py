"""Every WAN job type over HTTP: videos that decode to the frames asked for,
one-frame images, the enhanced types through the enhancer (and without it),
and what the API refuses for WAN."""

from __future__ import annotations

import io
import uuid

import av
import pytest
from PIL import Image

from tests.e2e.conftest import signup
from tests.e2e.test_generate import download, run_job, wait_for
from tests.e2e_media.conftest import DENIED

W, H, FRAMES = 64, 48, 9  # small sizes keep the tiny model fast; the defaults run in `make bench`


def wan_body(job_type: str, **overrides) -> dict:
    body = {
        "job_type": job_type,
        "prompt": "a red kite over a windy beach, camera tracking left",
        "seed": 777,
        "width": W,
        "height": H,
        **overrides,
    }
    if "video" in job_type:
        body.setdefault("num_frames", FRAMES)
    return body


def decode_video(data: bytes) -> tuple[int, tuple[int, int], str, str]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return (
            len(frames),
            (frames[0].width, frames[0].height),
            stream.codec_context.name,
            (frames[0].format.name),
        )


def stages(events: list[dict]) -> list[str]:
    out: list[str] = []
    for e in events:
        if (
            e["event"] == "progress"
            and e["data"].get("stage")
            and (not out or out[-1] != e["data"]["stage"])
        ):
            out.append(e["data"]["stage"])
    return out


async def test_video_fast_gives_an_mp4_and_a_thumbnail(http):
    user = await signup(http)
    job, events = await run_job(user, wan_body("video_fast"))
    assert job["state"] == "completed", job
    (asset,) = job["assets"]
    assert asset["content_type"] == "video/mp4"
    count, size, codec, pix = decode_video(await download(asset["url"]))
    assert (count, size) == (FRAMES, (W, H))
    assert codec == "h264" and pix == "yuv420p"
    thumb = Image.open(io.BytesIO(await download(asset["thumbnail_url"])))
    assert thumb.format == "PNG" and thumb.size == (W, H)
    seen = stages(events)
    assert "denoising" in seen and "encoding_video" in seen, seen
    assert seen.index("denoising") < seen.index("encoding_video")
    steps = [
        e["data"]["step"]
        for e in events
        if e["event"] == "progress" and e["data"].get("stage") == "denoising"
    ]
    assert steps[-1] == 25


async def test_image_fast_gives_a_png(http):
    user = await signup(http)
    job, _ = await run_job(user, wan_body("image_fast"))
    assert job["state"] == "completed", job
    (asset,) = job["assets"]
    image = Image.open(io.BytesIO(await download(asset["url"])))
    assert image.format == "PNG" and image.size == (W, H)
    assert asset["seed"] == 777


@pytest.mark.parametrize(
    "job_type",
    [
        "image7b_fast_enhanced",
        "image7b_high_enhanced",
        "video7b_fast_enhanced",
        "video7b_high_enhanced",
    ],
)
async def test_enhanced_types_run_through_the_enhancer(http, job_type):
    user = await signup(http)
    job, events = await run_job(
        user, wan_body(job_type, num_frames=5) if "video" in job_type else wan_body(job_type)
    )
    assert job["state"] == "completed", job
    states = [e["data"]["state"] for e in events if e["event"] == "state"]
    assert states.index("enhancing") < states.index("running"), states
    assert job["enhanced_prompt"], job
    assert job["enhancement_fallback"] is False


async def test_the_enhanced_prompt_is_the_one_rendered(http):
    """An enhanced image and a plain image of its enhanced prompt with the same
    seed are the same bytes: the worker rendered the enhanced prompt."""
    user = await signup(http)
    enhanced, _ = await run_job(user, wan_body("image7b_fast_enhanced", seed=99))
    assert enhanced["state"] == "completed" and enhanced["enhanced_prompt"], enhanced
    plain, _ = await run_job(
        user, wan_body("image_fast", seed=99, prompt=enhanced["enhanced_prompt"])
    )
    first = await download(enhanced["assets"][0]["url"])
    second = await download(plain["assets"][0]["url"])
    assert first == second


async def filed_item(user, job: dict) -> dict:
    """The job's (one) workspace item, once the filer has filed it."""
    session_id = job["workspace_session_id"]

    async def item():
        response = await user.get(f"/v1/workspace/sessions/{session_id}/items")
        assert response.status_code == 200, response.text
        mine = [i for i in response.json()["items"] if i["job_id"] == job["id"]]
        return mine[0] if mine else None

    return await wait_for(item)


async def test_workspace_and_library_carry_the_rendered_prompt_and_the_typed_one(http):
    user = await signup(http)
    typed = "a red kite over a windy beach, camera tracking left"
    job, _ = await run_job(user, wan_body("image7b_fast_enhanced", prompt=typed))
    assert job["state"] == "completed" and job["enhancement_fallback"] is False, job
    enhanced = job["enhanced_prompt"]
    assert enhanced and enhanced != typed, job

    item = await filed_item(user, job)
    assert (item["prompt"], item["original_prompt"]) == (enhanced, typed)
    assert item["negative_prompt"] == job["negative_prompt"] != ""
    saved = await user.post(f"/v1/workspace/items/{item['id']}/save")
    assert saved.status_code == 201, saved.text
    asset = (await user.get(f"/v1/library/assets/{saved.json()['id']}")).json()
    assert (asset["prompt"], asset["original_prompt"]) == (enhanced, typed)
    assert asset["negative_prompt"] == job["negative_prompt"]


async def test_a_plain_job_carries_the_typed_prompt_as_both(http):
    user = await signup(http)
    job, _ = await run_job(user, wan_body("image_fast"))
    assert job["state"] == "completed" and job["enhanced_prompt"] is None, job
    item = await filed_item(user, job)
    assert item["prompt"] == item["original_prompt"] == job["prompt"]
    assert item["negative_prompt"] == job["negative_prompt"]
    saved = await user.post(f"/v1/workspace/items/{item['id']}/save")
    assert saved.status_code == 201, saved.text
    assert saved.json()["prompt"] == saved.json()["original_prompt"] == job["prompt"]


BAD_WAN_JOBS = [
    ({"width": 72}, "width"),
    ({"height": 40 + 1}, "height"),
    ({"num_frames": 10}, "num_frames"),
    ({"num_frames": 125}, "num_frames"),
    ({"reference_image_id": str(uuid.uuid4())}, "reference_image_id"),
    ({"prompt": f"a {DENIED} in the rain"}, "prompt"),
]


@pytest.mark.parametrize(
    "change,field", BAD_WAN_JOBS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_WAN_JOBS)]
)
async def test_bad_wan_jobs_are_refused_and_nothing_is_queued(http, change, field):
    user = await signup(http)
    response = await user.post("/v1/jobs", json=wan_body("video_fast", **change))
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert field in [e["field"] for e in problem.get("errors", [])], problem
    assert "Traceback" not in response.text
    assert (await user.get("/v1/jobs")).json()["items"] == []


async def test_a_completed_wan_job_names_what_rendered_it(http):
    from tests.e2e.test_provenance import check_common

    user = await signup(http)
    job, _ = await run_job(user, wan_body("video_fast", num_frames=5))
    assert job["state"] == "completed", job
    p = job["provenance"]
    check_common(p)
    assert p["scheduler"] == "UniPCMultistepScheduler"
    assert '"flow_shift"' in p["scheduler_config"]
    assert (p["steps"], p["guidance_scale"]) == (job["steps"], job["guidance_scale"])
    assert p["img2img_strength"] is None
