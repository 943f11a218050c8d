"""The workspace in a real browser: generate with the tiny models, watch the
cards go live, see and reuse the results, and the failures shown as messages."""

from __future__ import annotations

import io
import re
import uuid

import httpx
from PIL import Image
from playwright.async_api import expect

from tests.browser.conftest import PASSWORD
from tests.browser.conftest import shot as keep_shot

RESULT = ".ws-result"


async def sign_up(page) -> str:
    """A new user, signed up through the UI; lands on the loaded workspace. Returns the email."""
    email = f"ws-{uuid.uuid4().hex[:8]}@example.com"
    await page.goto("/")
    await page.get_by_role("button", name="New here? Create an account").click()
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await page.wait_for_url(re.compile(r"#/workspace$"))
    await page.get_by_role("button", name="Generate").wait_for()
    return email


async def shot(page, name: str) -> None:
    # From the top: a scrolled page draws the sticky header mid-screenshot.
    await page.evaluate("window.scrollTo(0, 0)")
    await keep_shot(page, name)


async def token_of(page) -> str:
    return await page.evaluate("JSON.parse(localStorage.getItem('ourvidz.session')).access")


async def open_advanced(page) -> None:
    """Unfold the form's "Advanced" options (raw size, seed, negative prompt)."""
    fold = page.locator("details.ws-advanced")
    if not await fold.evaluate("d => d.open"):
        await fold.locator("summary").click()
    await expect(page.get_by_label("Width")).to_be_visible()


async def fill_job(page, prompt: str, job_type: str, width: int, height: int, **extra) -> None:
    await page.get_by_label("Prompt", exact=True).fill(prompt)
    await page.get_by_label("Job type").select_option(job_type)
    await open_advanced(page)
    await page.get_by_label("Width").select_option(str(width))
    await page.get_by_label("Height").select_option(str(height))
    if "quantity" in extra:
        await page.get_by_label("Quantity").select_option(str(extra["quantity"]))
    if "frames" in extra:
        await page.get_by_label("Frames").select_option(str(extra["frames"]))


async def act(tile, name: str) -> None:
    """Choose `name` in a result's actions menu."""
    await tile.get_by_role("button", name="Actions").click()
    await tile.get_by_role("menuitem", name=name, exact=True).click()


async def expect_saved(page, tile) -> None:
    """The tile's menu says it is saved, and that item does nothing (then the menu closes)."""
    await tile.get_by_role("button", name="Actions").click()
    await expect(tile.get_by_role("menuitem", name="Saved")).to_be_disabled()
    await page.keyboard.press("Escape")
    await expect(tile.get_by_role("menu")).to_be_hidden()


async def image_bytes(url: str) -> bytes:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(url)
        response.raise_for_status()
        return response.content


def mean_difference(a: bytes, b: bytes) -> float:
    """Mean absolute difference of two same-sized images' pixels (0-255)."""
    with Image.open(io.BytesIO(a)) as x, Image.open(io.BytesIO(b)) as y:
        assert x.size == y.size
        pa, pb = x.convert("RGB").tobytes(), y.convert("RGB").tobytes()
    return sum(abs(p - q) for p, q in zip(pa, pb, strict=True)) / len(pa)


async def test_three_images_saved_reloaded_and_rerun_with_their_seed(page, http):
    await sign_up(page)
    await fill_job(page, "a red fox in snow", "sdxl_image_fast", 128, 128, quantity=3)
    # Ctrl+Enter in the prompt submits the form.
    await page.get_by_label("Prompt", exact=True).press("Control+Enter")

    card = page.get_by_role("listitem", name="Job: a red fox in snow")
    await card.wait_for()
    await expect(card.locator(".badge")).to_have_text("Completed", timeout=60_000)
    results = page.locator(RESULT)
    await expect(results).to_have_count(3, timeout=30_000)
    seeds = []
    for i in range(3):
        tile = results.nth(i)
        await expect(tile.locator("img")).to_have_js_property("complete", True)
        assert await tile.locator("img").evaluate("img => img.naturalWidth") == 128
        seeds.append(int(await tile.locator(".ws-seed-value").inner_text()))
    assert len(set(seeds)) == 3, seeds
    await shot(page, "workspace-finished")

    # Save the first result: the library has it.
    first = results.first
    await act(first, "Save to library")
    await expect_saved(page, first)
    headers = {"Authorization": f"Bearer {await token_of(page)}"}
    library = (await http.get("/v1/library/assets", headers=headers)).json()["items"]
    assert [a["seed"] for a in library] == [seeds[0]]

    # A reload restores the session's results.
    await page.reload()
    await expect(page.locator(RESULT)).to_have_count(3)

    # Run the first again with its seed: a one-image job with the same starting
    # noise (a batch of three computes slightly differently, so: nearly the
    # same pixels), and once more: the very same bytes.
    tile = page.locator(RESULT, has=page.get_by_text(str(seeds[0]), exact=True)).first
    original = await tile.locator("img").get_attribute("src")
    await act(tile, "Run again (same seed)")
    await expect(page.locator(RESULT)).to_have_count(4, timeout=60_000)
    rerun = page.locator(RESULT).first
    await expect(rerun.locator(".ws-seed-value")).to_have_text(str(seeds[0]))
    single = await rerun.locator("img").get_attribute("src")
    assert mean_difference(await image_bytes(single), await image_bytes(original)) < 2
    await act(rerun, "Run again (same seed)")
    await expect(page.locator(RESULT)).to_have_count(5, timeout=60_000)
    twin = page.locator(RESULT).first
    await expect(twin.locator(".ws-seed-value")).to_have_text(str(seeds[0]))
    again = await twin.locator("img").get_attribute("src")
    assert again != single
    assert await image_bytes(again) == await image_bytes(single)

    # A new seed: one more result with another seed.
    await act(twin, "Run again (new seed)")
    await expect(page.locator(RESULT)).to_have_count(6, timeout=60_000)
    newest = int(await page.locator(RESULT).first.locator(".ws-seed-value").inner_text())
    assert newest not in seeds

    # Delete one, then clear the session (after confirming).
    await act(page.locator(RESULT).first, "Delete")
    await expect(page.locator(RESULT)).to_have_count(5)
    await page.get_by_role("button", name="Clear session").click()
    dialog = page.get_by_role("dialog", name="Clear this session?")
    await dialog.get_by_role("button", name="Keep").click()
    await expect(dialog).to_have_count(0)
    await expect(page.locator(RESULT)).to_have_count(5)
    await page.get_by_role("button", name="Clear session").click()
    await dialog.get_by_role("button", name="Clear").click()
    await expect(page.locator(RESULT)).to_have_count(0)
    # The saved image is still in the library.
    library = (await http.get("/v1/library/assets", headers=headers)).json()["items"]
    assert len(library) == 1


async def test_a_running_job_shows_progress_and_can_be_cancelled(page):
    await sign_up(page)
    # Big enough to be caught running with the tiny model.
    await fill_job(page, "a slow mountain sunrise", "sdxl_image_high", 1024, 1024, quantity=6)
    await page.get_by_role("button", name="Generate").click()
    card = page.get_by_role("listitem", name="Job: a slow mountain sunrise")
    await expect(card.locator(".badge")).to_have_text("Running", timeout=60_000)
    bar = card.get_by_role("progressbar", name="Progress")
    await page.wait_for_function("el => el.value >= 1", arg=await bar.element_handle())
    first = await bar.evaluate("el => el.value")
    await page.wait_for_function(f"el => el.value > {first}", arg=await bar.element_handle())
    await expect(card.locator(".ws-stage")).to_contain_text("step")
    await shot(page, "workspace-running")

    await card.get_by_role("button", name="Cancel").click()
    await expect(card.locator(".badge")).to_have_text("Cancelled")
    await expect(card.get_by_role("button", name="Cancel")).to_be_hidden()


async def test_a_refused_submission_is_shown_next_to_the_field(page, expected_statuses):
    expected_statuses.add(422)
    await sign_up(page)
    await page.get_by_label("Prompt", exact=True).fill("   ")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator(".field-error")).to_have_text("must not be empty")
    await expect(page.get_by_label("Prompt", exact=True)).to_have_attribute("aria-invalid", "true")
    # Next to the field only: no message repeats it.
    await expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    await expect(page.locator(".toast")).to_have_count(0)
    await expect(page.locator(".ws-job")).to_have_count(0)


async def test_enhance_previews_the_prompt_and_can_replace_it(page):
    await sign_up(page)
    prompt = page.get_by_label("Prompt", exact=True)
    await prompt.fill("a cat on a windowsill")
    await page.get_by_role("button", name="Enhance prompt").click()
    region = page.get_by_role("region", name="Enhanced prompt")
    await region.wait_for()
    enhanced = (await region.locator("blockquote").inner_text()).strip()
    assert enhanced
    await region.get_by_role("button", name="Use it").click()
    await expect(region).to_be_hidden()
    assert (await prompt.input_value()).strip() == enhanced


async def test_a_wan_video_plays_inline(page):
    await sign_up(page)
    await fill_job(page, "waves on a beach", "video_fast", 64, 48, frames=5)
    # SDXL-only controls are gone for WAN.
    await expect(page.get_by_label("Quantity")).to_be_hidden()
    await expect(page.get_by_label("Negative prompt")).to_be_hidden()
    await page.get_by_role("button", name="Generate").click()
    video = page.locator(f"{RESULT} video")
    await video.wait_for(timeout=90_000)
    assert await video.evaluate("v => v.controls && v.muted")
    await page.wait_for_function(
        "v => v.readyState >= 1 && v.duration > 0", arg=await video.element_handle()
    )
    await expect(page.locator(RESULT).locator(".ws-seed-value")).to_have_text(re.compile(r"^\d+$"))


async def test_reference_from_a_result_and_the_phone_layout(phone_page):
    page = phone_page
    await sign_up(page)
    await fill_job(page, "a blue teapot", "sdxl_image_fast", 128, 128, quantity=1)
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator(RESULT)).to_have_count(1, timeout=60_000)

    # The form stacks above the results.
    form = await page.get_by_role("form", name="Generate").bounding_box()
    results = await page.get_by_role("list", name="Results").bounding_box()
    assert form["y"] + form["height"] <= results["y"]
    assert form["width"] <= 390

    # From the library, in a dialog that Escape closes.
    await act(page.locator(RESULT), "Save to library")
    await expect_saved(page, page.locator(RESULT))
    await page.get_by_role("button", name="Pick from library").click()
    dialog = page.get_by_role("dialog", name="Pick a reference from the library")
    await dialog.get_by_role("button", name="Use a blue teapot").wait_for()
    await page.keyboard.press("Escape")
    await expect(dialog).to_have_count(0)
    await expect(page.get_by_role("button", name="Pick from library")).to_be_focused()
    await page.get_by_role("button", name="Pick from library").click()
    await dialog.get_by_role("button", name="Use a blue teapot").click()
    await expect(dialog).to_have_count(0)
    await expect(page.get_by_role("img", name="Reference: a blue teapot")).to_be_visible()
    await page.get_by_role("button", name="Remove reference").click()
    await expect(page.get_by_role("img", name="Reference: a blue teapot")).to_have_count(0)

    # From a result.
    await act(page.locator(RESULT), "Use as reference")
    await expect(page.get_by_role("img", name="Reference: a blue teapot")).to_be_visible()
    strength = page.get_by_label("Reference strength")
    await strength.fill("0.8")
    await expect(page.locator(".ws-ref-value")).to_have_text("0.8")
    await page.get_by_label("Reference type").select_option("composition")
    await page.get_by_label("Prompt", exact=True).fill("a blue teapot, watercolour")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator(RESULT)).to_have_count(2, timeout=60_000)
    # Both results drawn before the screenshot (the README shows it); they load lazily.
    for img in await page.locator(f"{RESULT} img").all():
        await img.scroll_into_view_if_needed()
        await expect(img).to_have_js_property("complete", True)
    await shot(page, "workspace-phone")
    await page.get_by_role("button", name="Remove reference").click()
    await expect(page.get_by_label("Reference strength")).to_be_hidden()
