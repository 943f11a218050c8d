"""The studio with the keyboard alone: sign in, reach the prompt, generate,
and save a result, by Tab, Enter and the arrow keys (the result's actions menu)."""

from __future__ import annotations

import re
import uuid

from playwright.async_api import expect

from tests.browser.conftest import PASSWORD, create_account
from tests.browser.test_workspace import RESULT


async def tab_to(page, predicate_js: str, limit: int = 60) -> None:
    """Press Tab until the focused element satisfies `predicate_js` (el => bool)."""
    for _ in range(limit):
        if await page.evaluate(f"({predicate_js})(document.activeElement)"):
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"never reached an element matching {predicate_js}")


async def test_sign_in_generate_and_save_with_the_keyboard(page, http):
    email = f"keys-{uuid.uuid4().hex[:8]}@example.com"
    await create_account(http, email)

    await page.goto("/")
    await page.get_by_label("Email").wait_for()
    await page.keyboard.type(email)  # the email field has the focus
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")
    await page.wait_for_url(re.compile(r"#/workspace$"))
    await page.get_by_role("button", name="Generate").wait_for()

    # The raw size is under "Advanced": unfold it, then the width.
    await tab_to(page, "el => el.tagName === 'SUMMARY' && el.textContent === 'Advanced'")
    await page.keyboard.press("Enter")
    await tab_to(page, "el => el.tagName === 'SELECT' && el.labels[0]?.textContent === 'Width'")
    await page.keyboard.press("Home")  # the smallest size keeps the tiny model quick
    await tab_to(page, "el => el.tagName === 'TEXTAREA' && el.labels[0]?.textContent === 'Prompt'")
    await page.keyboard.type("a paper boat on a pond")
    await tab_to(page, "el => el.tagName === 'BUTTON' && el.type === 'submit'")
    await page.keyboard.press("Enter")

    result = page.locator(RESULT).first
    await expect(result).to_be_visible(timeout=60_000)
    await tab_to(page, "el => el.getAttribute('aria-haspopup') === 'menu'")
    await page.keyboard.press("Enter")
    await page.keyboard.press("ArrowDown")
    await expect(result.get_by_role("menuitem", name="Save to library")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.get_by_text("Saved to your library.")).to_be_visible(timeout=30_000)
    await page.keyboard.press("Enter")
    await expect(result.get_by_role("menuitem", name="Saved")).to_be_disabled()
