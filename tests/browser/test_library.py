"""The library in the browser: a user's kept image and video in the grid,
filters by type and date, the viewer (the video plays; Previous/Next; the
job's settings and provenance), rename, download and delete, "Open in
workspace"; the empty state; the phone layout."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import date, timedelta

import httpx
import pytest
from playwright.async_api import expect

from tests.browser.conftest import PASSWORD, create_account, shot
from tests.browser.conftest import sign_in as signed_in

SDXL_JOB = {
    "job_type": "sdxl_image_fast",
    "prompt": "a lighthouse on a cliff at dusk",
    "num_images": 1,
    "width": 128,
    "height": 128,
    "seed": 11,
}
WAN_JOB = {
    "job_type": "video_fast",
    "prompt": "a red kite over a windy beach",
    "width": 64,
    "height": 48,
    "num_frames": 5,
    "seed": 12,
    # Straight into the library: the other path (save from the workspace) is the SDXL job's.
    "destination": "library",
}
# Every thumbnail in the grid has loaded (and there is at least one).
LOADED_THUMBS = """() => {
  const imgs = [...document.querySelectorAll('.library-grid img')];
  return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
}"""


async def _until(check, within: float = 120.0):
    """Poll `check` (an async callable) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.3)


async def _finished(client: httpx.AsyncClient, job_id: str) -> dict:
    async def done():
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        assert job["state"] not in ("failed", "cancelled"), job
        return job if job["state"] == "completed" else None

    return await _until(done)


async def _user_with_items(stack) -> tuple[str, dict]:
    """A new user with a saved SDXL image and a WAN video in the library."""
    email = f"library-{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
        session = await create_account(client, email)
        client.headers["Authorization"] = f"Bearer {session['access_token']}"
        image_job = await client.post("/v1/jobs", json=SDXL_JOB)
        video_job = await client.post("/v1/jobs", json=WAN_JOB)
        assert image_job.status_code == video_job.status_code == 202, image_job.text
        image = await _finished(client, image_job.json()["id"])
        await _finished(client, video_job.json()["id"])
        session = image["workspace_session_id"]

        async def item():
            items = (await client.get(f"/v1/workspace/sessions/{session}/items")).json()["items"]
            return next((i for i in items if i["job_id"] == image["id"]), None)

        # The item is filed from the job's completion, a moment after it.
        saved = await client.post(f"/v1/workspace/items/{(await _until(item))['id']}/save")
        assert saved.status_code == 201, saved.text

        async def both():
            assets = (await client.get("/v1/library/assets")).json()["items"]
            return assets if len(assets) == 2 else None

        assets = await _until(both)
    by_kind = {a["content_type"].split("/")[0]: a for a in assets}
    return email, by_kind


@pytest.fixture(scope="module")
async def library_user(stack):
    return await _user_with_items(stack)


async def sign_in(page, email: str) -> None:
    await signed_in(page, email)
    await page.get_by_role("link", name="Library").click()
    await page.get_by_role("heading", name="Library").wait_for()


def cards(page):
    return page.get_by_role("list", name="Library items").get_by_role("listitem")


async def test_grid_filters_and_a_video_that_plays(page, library_user):
    email, _ = library_user
    await sign_in(page, email)
    await page.get_by_role("button", name=re.compile(r"^Open .*\(image\)$")).wait_for()
    await page.get_by_role("button", name=re.compile(r"^Open .*\(video\)$")).wait_for()
    assert await cards(page).count() == 2
    await page.wait_for_function(LOADED_THUMBS)
    await shot(page, "library")

    await page.get_by_label("Type").select_option("video")
    await page.get_by_text("1 item").wait_for()
    assert await page.get_by_role("button", name=re.compile(r"\(image\)$")).count() == 0
    await page.get_by_label("Type").select_option("image")
    await page.get_by_role("button", name=re.compile(r"\(image\)$")).wait_for()
    assert await cards(page).count() == 1

    await page.get_by_label("Type").select_option("")
    await page.get_by_label("Date").select_option("day")
    await page.get_by_text("2 items").wait_for()
    assert await page.get_by_label("From").is_hidden()
    await page.get_by_label("Date").select_option("custom")
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    await page.get_by_label("From").fill(tomorrow)
    await page.get_by_text("Nothing matches these filters.").wait_for()
    assert await cards(page).count() == 0
    await page.get_by_label("Date").select_option("")
    await page.get_by_text("2 items").wait_for()

    # The video plays in the viewer, with controls; Escape closes the viewer.
    await page.get_by_role("button", name=re.compile(r"\(video\)$")).click()
    dialog = page.get_by_role("dialog")
    await dialog.wait_for()
    video = dialog.locator("video")
    assert await video.get_attribute("controls") is not None
    await video.evaluate("v => { v.muted = true; return v.play(); }")
    await page.wait_for_function(
        "() => { const v = document.querySelector('dialog video'); return v && v.currentTime > 0; }"
    )
    await page.keyboard.press("Escape")
    await dialog.wait_for(state="detached")
    # Focus goes back to the card that opened it.
    focused = await page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert focused.endswith("(video)")


async def test_viewer_renames_downloads_and_deletes(page, stack):
    email, assets = await _user_with_items(stack)
    await sign_in(page, email)
    await page.get_by_role("button", name=re.compile(r"\(image\)$")).click()
    dialog = page.get_by_role("dialog")
    await dialog.get_by_role("img").wait_for()
    await page.wait_for_function(
        "() => { const i = document.querySelector('dialog img'); return i && i.naturalWidth > 0; }"
    )
    await shot(page, "library-viewer")

    # Rename: the heading and the card follow, and the API has the new title.
    await dialog.get_by_label("Title").fill("Lighthouse, kept")
    await dialog.get_by_role("button", name="Rename").click()
    await dialog.get_by_role("heading", name="Lighthouse, kept").wait_for()
    await page.get_by_role("button", name="Open Lighthouse, kept (image)").wait_for()

    # Download: the signed URL, under a file name made from the title.
    link = dialog.get_by_role("link", name="Download")
    assert await link.get_attribute("download") == "Lighthouse kept.png"
    async with page.expect_download() as info:
        await link.click()
    download = await info.value
    assert download.suggested_filename == "Lighthouse kept.png"
    assert (await download.failure()) is None

    # Delete asks first; "Keep it" keeps it.
    await dialog.get_by_role("button", name="Delete", exact=True).click()
    await dialog.get_by_role("button", name="Keep it").click()
    assert await dialog.is_visible()
    await dialog.get_by_role("button", name="Delete", exact=True).click()
    await dialog.get_by_role("button", name="Delete for good").click()
    await dialog.wait_for(state="detached")
    await page.get_by_text("1 item").wait_for()
    assert await page.get_by_role("button", name=re.compile(r"\(image\)$")).count() == 0

    async with httpx.AsyncClient(base_url=stack.url) as client:
        token = (
            await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
        ).json()["access_token"]
        gone = await client.get(
            f"/v1/library/assets/{assets['image']['id']}",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert gone.status_code == 404


async def test_a_bad_title_is_shown_beside_the_field(page, library_user, expected_statuses):
    expected_statuses.add(422)
    email, _ = library_user
    await sign_in(page, email)
    await page.get_by_role("button", name=re.compile(r"\(video\)$")).click()
    dialog = page.get_by_role("dialog")
    title = dialog.get_by_label("Title")
    # Longer than the API allows: the browser's maxlength is lifted to reach the server.
    await title.evaluate("el => el.removeAttribute('maxlength')")
    await title.fill("x" * 201)
    await dialog.get_by_role("button", name="Rename").click()
    await dialog.locator(".field-error").wait_for()
    assert await title.get_attribute("aria-invalid") == "true"


async def test_empty_library_says_so(page, http):
    email = f"library-{uuid.uuid4().hex[:8]}@example.com"
    await create_account(http, email)
    await sign_in(page, email)
    await page.get_by_text("Your library is empty.").wait_for()
    assert await page.get_by_role("button", name="Load more").is_hidden()


async def test_library_on_a_phone(phone_page, library_user):
    email, _ = library_user
    await sign_in(phone_page, email)
    await phone_page.get_by_role("button", name=re.compile(r"\(image\)$")).wait_for()
    await phone_page.wait_for_function(LOADED_THUMBS)
    width = await phone_page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways ({width}px)"
    await shot(phone_page, "library-phone")
    await phone_page.get_by_role("button", name=re.compile(r"\(image\)$")).click()
    dialog = phone_page.get_by_role("dialog")
    # The viewer, with Previous/Next in its head, fits the width.
    await expect(dialog.get_by_role("button", name="Next")).to_be_visible()
    assert await dialog.evaluate("d => d.scrollWidth <= d.clientWidth"), (
        "the viewer scrolls sideways"
    )
    await shot(phone_page, "library-viewer-phone")
    await dialog.get_by_role("button", name="Close viewer").click()
    await dialog.wait_for(state="detached")


async def test_load_more_pages_through(page, library_user):
    email, _ = library_user

    # One item a page, so two items take two pages.
    async def one_per_page(route):
        await route.continue_(url=re.sub(r"page_size=\d+", "page_size=1", route.request.url))

    await page.route(re.compile(r"/v1/library/assets\?"), one_per_page)
    await sign_in(page, email)
    await page.get_by_text("1 item shown").wait_for()
    await page.get_by_role("button", name="Load more").click()
    await page.get_by_text("2 items").wait_for()
    assert await cards(page).count() == 2
    assert await page.get_by_role("button", name="Load more").is_hidden()


async def _job(stack, email: str, job_id: str) -> dict:
    """The job behind an asset, as its owner gets it from the API."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        login = await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
        token = login.json()["access_token"]
        response = await client.get(
            f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 200, response.text
    return response.json()


async def test_viewer_steps_through_and_shows_settings_and_provenance(page, library_user, stack):
    email, assets = library_user
    job = await _job(stack, email, assets["image"]["job_id"])
    await sign_in(page, email)
    await cards(page).first.get_by_role("button").click()
    dialog = page.get_by_role("dialog")
    position = dialog.locator(".viewer-position")
    await expect(position).to_have_text("1 of 2")
    await expect(dialog.get_by_role("button", name="Previous")).to_be_disabled()

    # → and ← move across the list, and so do the buttons; the media follows.
    first_kind = "video" if await dialog.locator("video").count() else "img"
    other_kind = "img" if first_kind == "video" else "video"
    await page.keyboard.press("ArrowRight")
    await expect(position).to_have_text("2 of 2")
    await expect(dialog.locator(f".viewer-media {other_kind}")).to_have_count(1)
    await expect(dialog.get_by_role("button", name="Next")).to_be_disabled()
    await page.keyboard.press("ArrowLeft")
    await expect(position).to_have_text("1 of 2")
    await expect(dialog.locator(f".viewer-media {first_kind}")).to_have_count(1)
    await dialog.get_by_role("button", name="Next").click()
    await expect(position).to_have_text("2 of 2")
    if other_kind != "img":
        await dialog.get_by_role("button", name="Previous").click()
    await expect(dialog.locator(".viewer-media img")).to_have_count(1)

    # The image's job type by its name for people, never its id.
    await expect(dialog).to_contain_text("SDXL image · fast")
    await expect(dialog).not_to_contain_text("sdxl_image_fast")
    # The settings: the seed, and the job's steps and guidance from the API.
    meta = dialog.locator(".viewer-meta").first
    await expect(meta).to_contain_text("Seed")
    await expect(meta).to_contain_text(str(SDXL_JOB["seed"]))
    settings = dialog.locator(".viewer-settings")
    await expect(settings).to_contain_text(f"Steps{job['provenance']['steps']}")
    await expect(settings).to_contain_text(job["provenance"]["scheduler"])
    # The provenance, folded: the weights digest (short) with the whole one on hover.
    provenance = dialog.locator("details.viewer-provenance")
    await expect(provenance).not_to_have_attribute("open", "")
    await provenance.locator("summary").click()
    digest = job["provenance"]["weights_digest"]
    weights = provenance.locator("code")
    await expect(weights).to_have_text(digest[:12])
    await expect(weights).to_have_attribute("title", digest)
    await expect(provenance).to_contain_text(job["provenance"]["torch_version"])
    await expect(provenance).to_contain_text(SDXL_JOB["prompt"])
    await shot(page, "library-viewer-provenance")

    # Escape closes; focus goes to the card of the item last shown (the image).
    await page.keyboard.press("Escape")
    await expect(dialog).to_have_count(0)
    focused = await page.evaluate("document.activeElement.getAttribute('aria-label')")
    assert focused.endswith("(image)"), focused


async def test_open_in_workspace_fills_the_form(page, library_user):
    email, _ = library_user
    await sign_in(page, email)
    await page.get_by_role("button", name=re.compile(r"\(image\)$")).click()
    dialog = page.get_by_role("dialog")
    await dialog.get_by_role("button", name="Open in workspace").click()
    await page.wait_for_url(re.compile(r"#/workspace$"))
    prompt = page.get_by_label("Prompt", exact=True)
    await expect(prompt).to_have_value(SDXL_JOB["prompt"])
    await expect(prompt).to_be_focused()
    await expect(page.get_by_label("Job type")).to_have_value(SDXL_JOB["job_type"])
    await expect(page.get_by_label("Width")).to_have_value(str(SDXL_JOB["width"]))
    await expect(page.get_by_label("Height")).to_have_value(str(SDXL_JOB["height"]))
    await expect(page.get_by_label("Lock seed")).to_be_checked()
    await expect(page.get_by_label("Seed", exact=True)).to_have_value(str(SDXL_JOB["seed"]))
    # Handed over once; from then on they are the form's own remembered settings.
    assert await page.evaluate("sessionStorage.getItem('ourvidz.reuse')") is None
    await page.reload()
    await expect(page.get_by_label("Prompt", exact=True)).to_have_value(SDXL_JOB["prompt"])
    assert await page.evaluate("sessionStorage.getItem('ourvidz.reuse')") is None
