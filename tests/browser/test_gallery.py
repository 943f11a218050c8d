"""The workspace's results seen large: the lightbox (Previous/Next and the arrow
keys across the session's results, Escape back to the tile), the download
link, two results compared side by side, the actions menu by keyboard only,
and the lightbox on a phone."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from playwright.async_api import expect

from tests.browser.conftest import create_account, shot
from tests.browser.conftest import sign_in as signed_in
from tests.browser.test_library import _finished

RESULT = ".ws-result"
JOB = {
    "job_type": "sdxl_image_fast",
    "prompt": "a paper boat on a pond",
    "num_images": 3,
    "width": 128,
    "height": 128,
}


@pytest.fixture(scope="module")
async def gallery_user(stack) -> str:
    """A new user whose active session holds three images of one job."""
    email = f"gallery-{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
        session = await create_account(client, email)
        client.headers["Authorization"] = f"Bearer {session['access_token']}"
        job = await client.post("/v1/jobs", json=JOB)
        assert job.status_code == 202, job.text
        await _finished(client, job.json()["id"])
    return email


async def sign_in(page, email: str, results: int = 3) -> None:
    await signed_in(page, email)
    await expect(page.locator(RESULT)).to_have_count(results, timeout=30_000)
    # The page has settled once it puts focus in the prompt (after the results and running jobs load).
    await expect(page.get_by_label("Prompt", exact=True)).to_be_focused()


def dialog_image_src(dialog):
    return dialog.get_by_role("img").get_attribute("src")


async def test_lightbox_moves_across_results_and_downloads(page, gallery_user, stack):
    await sign_in(page, gallery_user)
    tiles = page.locator(RESULT)
    srcs = [await tiles.nth(i).locator("img").get_attribute("src") for i in range(3)]

    await tiles.first.get_by_role("button", name=re.compile(r"^Enlarge: ")).click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_role("img")).to_have_attribute("src", srcs[0])
    await expect(dialog.locator(".gallery-position")).to_have_text("1 of 3")
    await expect(dialog.get_by_role("button", name="Previous")).to_be_disabled()
    # The prompt, the type by its name for people (never the raw id), the size.
    await expect(dialog).to_contain_text("a paper boat on a pond")
    await expect(dialog).to_contain_text("SDXL image · fast")
    await expect(dialog).not_to_contain_text("sdxl_image_fast")
    await expect(dialog).to_contain_text("128×128")

    # → shows the next result, ← the one before; the buttons do the same.
    await page.keyboard.press("ArrowRight")
    await expect(dialog.get_by_role("img")).to_have_attribute("src", srcs[1])
    await expect(dialog.locator(".gallery-position")).to_have_text("2 of 3")
    await page.keyboard.press("ArrowLeft")
    await expect(dialog.get_by_role("img")).to_have_attribute("src", srcs[0])
    await dialog.get_by_role("button", name="Next").click()
    await dialog.get_by_role("button", name="Next").click()
    await expect(dialog.get_by_role("img")).to_have_attribute("src", srcs[2])
    await expect(dialog.get_by_role("button", name="Next")).to_be_disabled()
    # The focused Next went disabled at the end: focus moved to Previous, not lost.
    await expect(dialog.get_by_role("button", name="Previous")).to_be_focused()
    await page.keyboard.press("ArrowLeft")
    await expect(dialog.get_by_role("img")).to_have_attribute("src", srcs[1])
    await page.wait_for_function(
        "() => { const i = document.querySelector('dialog img'); return i && i.naturalWidth > 0; }"
    )
    await shot(page, "gallery-lightbox")

    # The download link: the file's URL under a file name; the URL answers with the image.
    link = dialog.get_by_role("link", name="Download")
    await expect(link).to_have_attribute("href", srcs[1])
    name = await link.get_attribute("download")
    assert re.fullmatch(r"a-paper-boat-on-a-pond-seed-\d+\.png", name), name
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        response = await client.get(srcs[1])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/")

    # Escape closes; focus goes back to the tile of the result last shown.
    await page.keyboard.press("Escape")
    await expect(dialog).to_have_count(0)
    await expect(tiles.nth(1).get_by_role("button", name=re.compile(r"^Enlarge: "))).to_be_focused()


async def test_the_actions_menu_by_keyboard_only(page, gallery_user, stack):
    await sign_in(page, gallery_user)
    tile = page.locator(RESULT).first
    menu_button = tile.get_by_role("button", name="Actions")
    menu = tile.get_by_role("menu")
    await expect(menu_button).to_have_attribute("aria-haspopup", "menu")
    await expect(menu_button).to_have_attribute("aria-expanded", "false")

    # From the tile's image: Tab reaches the menu button, Enter opens it on its first item.
    await tile.get_by_role("button", name=re.compile(r"^Enlarge: ")).focus()
    await page.keyboard.press("Tab")
    await expect(menu_button).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(menu).to_be_visible()
    await expect(menu_button).to_have_attribute("aria-expanded", "true")
    await expect(menu.get_by_role("menuitem").first).to_be_focused()
    await shot(page, "gallery-menu")

    # ↓ moves on, ↑ from the first wraps round to the last, Escape closes and returns focus.
    await page.keyboard.press("ArrowUp")
    await expect(menu.get_by_role("menuitem", name="Delete")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(menu).to_be_hidden()
    await expect(menu_button).to_be_focused()
    await expect(menu_button).to_have_attribute("aria-expanded", "false")

    # Enter, ↓, Enter: "Save to library", the second item, saves the result.
    await page.keyboard.press("Enter")
    await page.keyboard.press("ArrowDown")
    await expect(menu.get_by_role("menuitem", name="Save to library")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(menu).to_be_hidden()
    await expect(menu_button).to_be_focused()
    await expect(page.get_by_text("Saved to your library.")).to_be_visible()
    token = await page.evaluate("JSON.parse(localStorage.getItem('ourvidz.session')).access")
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        library = await client.get(
            "/v1/library/assets", headers={"Authorization": f"Bearer {token}"}
        )
    assert len(library.json()["items"]) == 1
    await page.keyboard.press("Enter")
    await expect(menu.get_by_role("menuitem", name="Saved")).to_be_disabled()
    await page.keyboard.press("Escape")


async def test_compare_two_results_side_by_side(page, gallery_user):
    await sign_in(page, gallery_user)
    tiles = page.locator(RESULT)
    first_src = await tiles.nth(0).locator("img").get_attribute("src")
    third_src = await tiles.nth(2).locator("img").get_attribute("src")

    await tiles.nth(0).get_by_role("button", name="Actions").click()
    await tiles.nth(0).get_by_role("menuitem", name="Compare", exact=True).click()
    await expect(page.get_by_role("status").filter(has_text="Chosen to compare")).to_be_visible()
    third_menu = tiles.nth(2).get_by_role("button", name="Actions")
    await third_menu.click()
    await tiles.nth(2).get_by_role("menuitem", name="Compare with the chosen one").click()

    dialog = page.get_by_role("dialog", name="Compare results")
    figures = dialog.get_by_role("figure")
    await expect(figures).to_have_count(2)
    await expect(figures.nth(0).get_by_role("img")).to_have_attribute("src", first_src)
    await expect(figures.nth(1).get_by_role("img")).to_have_attribute("src", third_src)
    for i in range(2):
        await expect(figures.nth(i)).to_contain_text("a paper boat on a pond")
        await expect(figures.nth(i)).to_contain_text("Seed")
        # The job's settings arrive from the API.
        await expect(figures.nth(i)).to_contain_text("Steps")
    await page.wait_for_function(
        "() => [...document.querySelectorAll('dialog img')].every((i) => i.naturalWidth > 0)"
    )
    await shot(page, "gallery-compare")
    await page.keyboard.press("Escape")
    await expect(dialog).to_have_count(0)
    await expect(third_menu).to_be_focused()
    # The choice is spent: the menus offer a fresh Compare.
    await expect(page.get_by_role("status").filter(has_text="Chosen to compare")).to_have_count(0)


async def test_the_lightbox_fits_a_phone(phone_page, gallery_user):
    page = phone_page
    await sign_in(page, gallery_user)
    await page.locator(RESULT).first.get_by_role("button", name=re.compile(r"^Enlarge: ")).click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    await page.wait_for_function(
        "() => { const i = document.querySelector('dialog img'); return i && i.naturalWidth > 0; }"
    )
    box = await dialog.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    # Nothing in it is wider than the dialog, and the page does not scroll sideways.
    assert await dialog.evaluate("d => d.scrollWidth <= d.clientWidth"), (
        "the lightbox scrolls sideways"
    )
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways ({width}px)"
    for name in ("Previous", "Next", "Close"):
        button = await dialog.get_by_role("button", name=name).bounding_box()
        assert button["x"] >= 0 and button["x"] + button["width"] <= 390, (name, button)
    await shot(page, "gallery-phone")
    await page.keyboard.press("Escape")
    await expect(dialog).to_have_count(0)
