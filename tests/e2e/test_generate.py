"""A user's whole way through the mesh, over HTTP: sign up, submit, watch the
steps arrive, download real PNGs, find them in the workspace, save one."""

from __future__ import annotations

import asyncio
import io
import uuid

import httpx
from PIL import Image

from tests.e2e.conftest import signup

SIZE = 128  # the dev/test limits allow small sizes; the default 1024² is timed in `make bench`


async def download(url: str) -> bytes:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    return response.content


async def wait_for(predicate, within: float = 30.0, interval: float = 0.2):
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def job_body(**overrides) -> dict:
    return {
        "job_type": "sdxl_image_fast",
        "prompt": "a lighthouse on a cliff at dusk, oil painting",
        "num_images": 3,
        "seed": 1234,
        "width": SIZE,
        "height": SIZE,
        **overrides,
    }


async def run_job(user, body: dict) -> tuple[dict, list[dict]]:
    response = await user.post("/v1/jobs", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] in ("queued", "enhancing", "running")
    events = await user.events(f"/v1/jobs/{job['id']}/events")
    final = (await user.get(f"/v1/jobs/{job['id']}")).json()
    return final, events


async def test_three_images_end_to_end(http):
    user = await signup(http)
    job, events = await run_job(user, job_body())

    names = [e["event"] for e in events]
    assert names[-1] == "completed", names
    assert any(e["event"] == "state" and e["data"]["state"] == "running" for e in events)
    steps = [e["data"]["step"] for e in events if e["event"] == "progress"]
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] == 15
    sequence = [int(e["id"]) for e in events]
    assert sequence == sorted(sequence) and len(set(sequence)) == len(sequence)

    assert job["state"] == "completed" and job["attempt"] == 1
    assets = sorted(job["assets"], key=lambda a: a["index"])
    assert [a["index"] for a in assets] == [0, 1, 2]
    assert len({a["seed"] for a in assets}) == 3
    pngs = [await download(a["url"]) for a in assets]
    assert len(set(pngs)) == 3, "the three images differ"
    for data in pngs:
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and image.size == (SIZE, SIZE)

    # The same request again gives byte-identical images.
    again, _ = await run_job(user, job_body())
    assert again["id"] != job["id"]
    again_pngs = [
        await download(a["url"]) for a in sorted(again["assets"], key=lambda a: a["index"])
    ]
    assert again_pngs == pngs

    # The workspace holds the three items of the first job; one is saved.
    session_id = job["workspace_session_id"]

    async def items_of_job():
        response = await user.get(f"/v1/workspace/sessions/{session_id}/items")
        assert response.status_code == 200, response.text
        mine = [i for i in response.json()["items"] if i["job_id"] == job["id"]]
        return mine if len(mine) == 3 else None

    items = await wait_for(items_of_job)
    assert sorted(i["index"] for i in items) == [0, 1, 2]
    assert await download(items[0]["url"]) in pngs

    saved = await user.post(f"/v1/workspace/items/{items[0]['id']}/save")
    assert saved.status_code in (200, 201), saved.text
    asset = saved.json()
    assert asset["job_id"] == job["id"] and asset["content_type"] == "image/png"
    library = (await user.get("/v1/library/assets")).json()["items"]
    assert [a["id"] for a in library] == [asset["id"]]
    assert await download(library[0]["url"]) == await download(items[0]["url"])


async def test_reference_image_runs_img2img(http):
    user = await signup(http)
    reference = io.BytesIO()
    Image.new("RGB", (96, 80), (200, 40, 40)).save(reference, format="PNG")
    upload = await user.post(
        "/v1/uploads", files={"file": ("ref.png", reference.getvalue(), "image/png")}
    )
    assert upload.status_code == 201, upload.text
    assert (upload.json()["width"], upload.json()["height"]) == (96, 80)

    job, events = await run_job(
        user,
        job_body(
            num_images=1,
            reference_image_id=upload.json()["id"],
            reference_type="composition",
            reference_strength=0.5,
        ),
    )
    assert job["state"] == "completed", job
    totals = {e["data"]["total"] for e in events if e["event"] == "progress"}
    # img2img denoises only part of the schedule: fewer steps than text-to-image.
    assert totals and max(totals) < 15
    image = Image.open(io.BytesIO(await download(job["assets"][0]["url"])))
    assert image.size == (SIZE, SIZE)


async def test_cancel_running_job_leaves_no_assets(http, stack):
    user = await signup(http)
    body = job_body(job_type="sdxl_image_high", num_images=6, width=256, height=256)
    response = await user.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    async def running_with_progress():
        job = (await user.get(f"/v1/jobs/{job_id}")).json()
        return job if job["state"] == "running" and job["progress"]["step"] >= 1 else None

    await wait_for(running_with_progress, within=60, interval=0.05)
    cancelled = await user.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    events = await user.events(f"/v1/jobs/{job_id}/events")
    assert events[-1]["event"] == "cancelled"
    job = (await user.get(f"/v1/jobs/{job_id}")).json()
    assert job["state"] == "cancelled" and job["assets"] == []
    steps = [e["data"]["step"] for e in events if e["event"] == "progress"]
    assert max(steps) < 25
    # The worker stops at its next step; give it a moment, then nothing is stored.
    await asyncio.sleep(2)
    from ourvidz.storage import store_from_settings
    from services.jobs.settings import JobsSettings
    from tests.conftest import make_settings

    store = store_from_settings(make_settings(JobsSettings, stack.env))
    for index in range(6):
        assert not await store.exists("sdxl-image-high", f"{user.user['id']}/{job_id}_{index}.png")
