"""The studio's messages (toasts): info ones go by themselves, an error stays
until dismissed (by keyboard too) and shows once however often it happens, a
new view starts with none, and they leave the results' buttons usable."""

from __future__ import annotations

import re
import uuid

from playwright.async_api import expect

from tests.browser.conftest import PASSWORD, create_account
from tests.browser.test_workspace import RESULT, act, fill_job, sign_up

TOAST = ".toast"
# The buttons shown in `tile` that something else covers (or that are off screen),
# at their centre or near a corner (inside its rounding).
COVERED_BUTTONS = """tile => [...tile.querySelectorAll("button")].filter((b) => b.checkVisibility()).filter((b) => {
  const r = b.getBoundingClientRect();
  const points = [[r.x + r.width / 2, r.y + r.height / 2], [r.x + 4, r.y + 4], [r.right - 4, r.y + 4],
                  [r.x + 4, r.bottom - 4], [r.right - 4, r.bottom - 4]];
  return points.some(([x, y]) => !b.contains(document.elementFromPoint(x, y)));
}).map((b) => b.textContent.trim())"""


async def sign_in_wrongly(page) -> None:
    """Submit the sign-in form (a wrong password filled in) and wait until its answer is shown."""
    submit = page.get_by_role("button", name="Sign in")
    async with page.expect_response(re.compile(r"/v1/auth/login$")):
        await submit.click()
    await expect(submit).to_be_enabled()


async def test_an_error_shows_once_and_stays_until_dismissed_by_keyboard(
    page, http, expected_statuses
):
    expected_statuses.add(401)
    email = f"toast-{uuid.uuid4().hex[:8]}@example.com"
    await create_account(http, email)
    await page.goto("/")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill("not the password")
    await sign_in_wrongly(page)
    await sign_in_wrongly(page)
    await sign_in_wrongly(page)
    error = page.get_by_role("alert")
    await expect(error).to_have_count(1)
    await expect(page.locator(TOAST)).to_have_count(1)

    # Its close button is next in the tab order before the form.
    await page.get_by_label("Email").focus()
    await page.keyboard.press("Shift+Tab")
    await expect(error.get_by_role("button", name="Dismiss")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator(TOAST)).to_have_count(0)
    await expect(page.locator("#main")).to_be_focused()


async def test_a_new_view_starts_without_the_last_ones_messages(page, http, expected_statuses):
    expected_statuses.add(401)
    email = f"toast-{uuid.uuid4().hex[:8]}@example.com"
    await create_account(http, email)
    await page.goto("/")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill("not the password")
    await sign_in_wrongly(page)
    await expect(page.get_by_role("alert")).to_have_count(1)

    # Signed in: the workspace does not bring the sign-in error along.
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(r"#/workspace$"))
    await page.get_by_role("button", name="Generate").wait_for()
    await expect(page.locator(TOAST)).to_have_count(0)

    # Nor does the library bring the workspace's.
    await page.get_by_role("button", name="Clear session").click()
    await page.get_by_role("dialog").get_by_role("button", name="Clear").click()
    await expect(page.locator(TOAST)).to_have_count(1)
    await page.get_by_role("link", name="Library").click()
    await page.get_by_role("heading", name="Library").wait_for()
    await expect(page.locator(TOAST)).to_have_count(0)


async def test_info_goes_by_itself_and_leaves_the_results_buttons_usable(phone_page):
    page = phone_page
    await sign_up(page)
    await fill_job(page, "a green lantern at night", "sdxl_image_fast", 128, 128, quantity=1)
    await page.get_by_role("button", name="Generate").click()
    started = page.locator(f"{TOAST}.ok", has_text="Started")
    await started.wait_for()
    await expect(started).to_have_attribute("role", "status")
    await expect(page.locator(RESULT)).to_have_count(1, timeout=60_000)
    await expect(started).to_have_count(0, timeout=30_000)

    # The result's buttons where a thumb reaches them, at the foot of the screen.
    tile = page.locator(RESULT)
    await expect(tile.locator("img")).to_have_js_property("complete", True)
    await tile.evaluate("el => el.scrollIntoView({ block: 'end' })")
    await act(tile, "Save to library")
    saved = page.locator(TOAST, has_text="Saved to your library.")
    await saved.wait_for()
    assert await tile.evaluate(COVERED_BUTTONS) == []
    await expect(saved).to_have_count(0, timeout=30_000)
