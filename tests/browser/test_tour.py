"""A new user's first minutes, as the README's screenshots show them: sign up,
generate three images, find one in the library; the workspace photographed
with a finished job and a running one."""

from __future__ import annotations

from playwright.async_api import expect

from tests.browser.test_workspace import RESULT, act, fill_job, shot, sign_up


async def test_first_three_images_then_a_running_job_then_the_library(page):
    await sign_up(page)
    await fill_job(page, "a lighthouse on a cliff at dusk", "sdxl_image_fast", 256, 256, quantity=3)
    await page.get_by_role("button", name="Generate").click()
    finished = page.get_by_role("listitem", name="Job: a lighthouse on a cliff at dusk")
    await expect(finished.locator(".badge")).to_have_text("Completed", timeout=60_000)
    await expect(page.locator(RESULT)).to_have_count(3, timeout=30_000)

    # A bigger job keeps running long enough to be seen with its progress.
    await fill_job(page, "a slow mountain sunrise", "sdxl_image_high", 1024, 1024, quantity=6)
    await page.get_by_role("button", name="Generate").click()
    running = page.get_by_role("listitem", name="Job: a slow mountain sunrise")
    await expect(running.locator(".badge")).to_have_text("Running", timeout=60_000)
    await expect(running.get_by_text("step 2 of 25")).to_be_visible(timeout=60_000)
    await shot(page, "tour-workspace")
    await running.get_by_role("button", name="Cancel").click()
    await expect(running.locator(".badge")).to_have_text("Cancelled", timeout=60_000)

    await act(page.locator(RESULT).first, "Save to library")
    await page.get_by_role("link", name="Library").click()
    await expect(page.locator("img[src*='/v1/files/']").first).to_be_visible(timeout=30_000)
