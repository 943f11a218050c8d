"""The studio's memory of past work: job cards and the form's settings come
back after a reload, and the jobs page lists, filters, retries, re-runs and
reuses the user's jobs, with the mouse, the keyboard and on a phone.

A job that fails: WAN jobs whose prompt carries REFUSE are refused by the WAN
worker as a task it cannot run (the failure path of a real worker, the
refusal itself patched in for these tests)."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from playwright.async_api import expect

from services.wan import generate as wan_generate
from tests.browser.conftest import create_account, shot
from tests.browser.conftest import sign_in as signed_in
from tests.browser.test_keyboard import tab_to
from tests.browser.test_workspace import fill_job, sign_up

REFUSE = "[refuse]"
REFUSAL = "this test refuses the prompt"


@pytest.fixture
def refusing_wan(monkeypatch):
    plan = wan_generate.plan

    def refusing(task, *args, **kwargs):
        if REFUSE in task.prompt:
            raise wan_generate.InvalidTask(REFUSAL)
        return plan(task, *args, **kwargs)

    monkeypatch.setattr(wan_generate, "plan", refusing)


def card(page, prompt: str):
    return page.get_by_role("listitem", name=f"Job: {prompt}")


def rows(page):
    return page.locator(".jobs-table tbody tr")


def row(page, prompt: str):
    return rows(page).filter(has_text=prompt)


async def jobs_of(http: httpx.AsyncClient, page) -> list[dict]:
    token = await page.evaluate("JSON.parse(localStorage.getItem('ourvidz.session')).access")
    r = await http.get("/v1/jobs?page_size=100", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def test_reload_restores_cards_and_form_and_the_jobs_page_works(page, http, refusing_wan):
    await sign_up(page)
    kite, refused = "a green kite", f"a lighthouse {REFUSE}"

    await fill_job(page, kite, "sdxl_image_fast", 128, 128, quantity=1)
    await page.get_by_label("Negative prompt").fill("blurry")
    await page.get_by_role("button", name="Generate").click()
    await expect(card(page, kite).locator(".badge")).to_have_text("Completed", timeout=60_000)
    await fill_job(page, refused, "image_fast", 64, 48)
    await page.get_by_role("button", name="Generate").click()
    await expect(card(page, refused).locator(".badge")).to_have_text("Failed", timeout=60_000)
    await expect(card(page, refused).locator(".ws-job-error")).to_have_text(f"Failed: {REFUSAL}")

    # Settings not yet submitted are kept as they are typed.
    await fill_job(page, "a draft not sent yet", "sdxl_image_high", 1024, 768, quantity=3)
    await page.get_by_label("Negative prompt").fill("grainy")
    await page.get_by_label("Lock seed").check()
    await page.get_by_label("Seed", exact=True).fill("4321")

    await page.reload()
    await expect(card(page, kite).locator(".badge")).to_have_text("Completed")
    failed = card(page, refused)
    await expect(failed.locator(".badge")).to_have_text("Failed")
    await expect(failed.locator(".ws-job-error")).to_have_text(f"Failed: {REFUSAL}")
    await expect(page.get_by_label("Prompt", exact=True)).to_have_value("a draft not sent yet")
    await expect(page.get_by_label("Job type")).to_have_value("sdxl_image_high")
    await expect(page.get_by_label("Width")).to_have_value("1024")
    await expect(page.get_by_label("Height")).to_have_value("768")
    await expect(page.get_by_label("Quantity")).to_have_value("3")
    await expect(page.get_by_label("Negative prompt")).to_have_value("grainy")
    await expect(page.get_by_label("Lock seed")).to_be_checked()
    await expect(page.get_by_label("Seed", exact=True)).to_have_value("4321")
    await shot(page, "history-workspace-reloaded")

    # Retry on the failed card: a new job with the same settings (and the same refusal).
    await failed.get_by_role("button", name="Retry").click()
    await expect(card(page, refused)).to_have_count(2)
    await expect(card(page, refused).first.locator(".badge")).to_have_text("Failed", timeout=60_000)
    mine = await jobs_of(http, page)
    assert [j["prompt"] for j in mine] == [refused, refused, kite]
    assert (mine[0]["job_type"], mine[0]["width"], mine[0]["height"]) == ("image_fast", 64, 48)

    # The jobs page: every job, newest first, the failed ones with their message.
    await page.get_by_role("link", name="Jobs").click()
    await page.get_by_role("heading", name="Jobs").wait_for()
    await expect(rows(page)).to_have_count(3)
    await expect(rows(page).nth(2)).to_contain_text(kite)
    await expect(row(page, refused).first).to_contain_text(f"Failed: {REFUSAL}")
    await expect(row(page, kite)).to_contain_text("SDXL image · fast")
    await expect(row(page, kite)).to_contain_text("Completed")
    await shot(page, "history-jobs")

    # Filters narrow the list, live in the address, and survive a reload and Back.
    await page.get_by_label("State").select_option("failed")
    await expect(page).to_have_url(re.compile(r"#/jobs\?state=failed$"))
    await expect(rows(page)).to_have_count(2)
    await page.get_by_label("Job type").select_option("sdxl_image_fast")
    await expect(page).to_have_url(re.compile(r"#/jobs\?state=failed&type=sdxl_image_fast$"))
    await expect(page.get_by_text("No jobs match these filters.")).to_be_visible()
    await expect(rows(page)).to_have_count(0)
    await page.get_by_label("State").select_option("")
    await expect(rows(page)).to_have_count(1)
    await expect(rows(page).first).to_contain_text(kite)
    await page.reload()
    await expect(page.get_by_label("Job type")).to_have_value("sdxl_image_fast")
    await expect(page.get_by_label("State")).to_have_value("")
    await expect(rows(page)).to_have_count(1)
    await page.go_back()
    await expect(page).to_have_url(re.compile(r"#/jobs\?state=failed&type=sdxl_image_fast$"))
    await expect(page.get_by_label("State")).to_have_value("failed")
    await expect(rows(page)).to_have_count(0)
    await page.go_back()
    await expect(page.get_by_label("Job type")).to_have_value("")
    await expect(rows(page)).to_have_count(2)

    # Re-run exactly: a new job at the top, completed by itself.
    await page.get_by_label("State").select_option("")
    await expect(rows(page)).to_have_count(3)
    await row(page, kite).get_by_role("button", name="Re-run exactly").click()
    await expect(rows(page)).to_have_count(4)
    await expect(rows(page).first).to_contain_text(kite)
    await expect(rows(page).first.locator(".badge")).to_have_text("Completed", timeout=60_000)
    rerun = (await jobs_of(http, page))[0]
    assert rerun["rerun_of"] == mine[2]["id"]

    # Reuse settings: the workspace's form, filled from that job.
    await rows(page).nth(3).get_by_role("button", name="Reuse settings").click()
    await expect(page).to_have_url(re.compile(r"#/workspace$"))
    await expect(page.get_by_label("Prompt", exact=True)).to_have_value(kite)
    await expect(page.get_by_label("Job type")).to_have_value("sdxl_image_fast")
    await expect(page.get_by_label("Width")).to_have_value("128")
    await expect(page.get_by_label("Quantity")).to_have_value("1")
    await expect(page.get_by_label("Negative prompt")).to_have_value("blurry")
    await expect(page.get_by_label("Lock seed")).not_to_be_checked()
    # ...and they are the form's remembered settings from now on.
    await page.reload()
    await expect(page.get_by_label("Prompt", exact=True)).to_have_value(kite)


async def sign_in(page, email: str) -> None:
    await signed_in(page, email)
    await page.get_by_role("button", name="Generate").wait_for()


async def user_with_jobs(http: httpx.AsyncClient) -> tuple[str, dict]:
    """A new account with a completed SDXL job and a failed WAN one, made
    through the API; (email, auth headers)."""
    email = f"hist-{uuid.uuid4().hex[:8]}@example.com"
    login = await create_account(http, email)
    headers = {"Authorization": f"Bearer {login['access_token']}"}
    bodies = [
        {"job_type": "sdxl_image_fast", "prompt": "a yellow tram", "width": 128, "height": 128},
        {"job_type": "image_fast", "prompt": f"a tower {REFUSE}", "width": 64, "height": 48},
    ]
    for body in bodies:
        key = {"Idempotency-Key": uuid.uuid4().hex}
        r = await http.post("/v1/jobs", json=body, headers={**headers, **key})
        assert r.status_code == 202, r.text
    return email, headers


async def test_the_jobs_page_with_the_keyboard(page, http, refusing_wan):
    email, headers = await user_with_jobs(http)
    await sign_in(page, email)
    await page.goto("/#/jobs")
    await expect(row(page, "a tower").locator(".badge")).to_have_text("Failed", timeout=60_000)
    await expect(row(page, "a yellow tram").locator(".badge")).to_have_text(
        "Completed", timeout=60_000
    )

    await page.locator("#main").focus()
    await tab_to(page, "el => el.tagName === 'SELECT' && el.labels[0]?.textContent === 'State'")
    await page.keyboard.press("End")  # Cancelled
    await page.keyboard.press("ArrowUp")  # Failed
    await expect(page).to_have_url(re.compile(r"#/jobs\?state=failed$"))
    await expect(rows(page)).to_have_count(1)
    # The filter keeps the focus while the list changes under it.
    await expect(page.get_by_label("State")).to_be_focused()

    await tab_to(page, "el => el.tagName === 'BUTTON' && el.textContent === 'Retry'")
    await page.keyboard.press("Enter")
    await expect(page.get_by_text("Started again: WAN image · fast")).to_be_visible()
    await expect(page.get_by_role("button", name="Retry")).to_be_focused()

    listed = (await http.get("/v1/jobs", headers=headers)).json()["items"]
    assert [j["prompt"] for j in listed] == [
        f"a tower {REFUSE}",
        f"a tower {REFUSE}",
        "a yellow tram",
    ]
    # Reuse settings by the keyboard too: Tab to it, Enter.
    await tab_to(page, "el => el.tagName === 'BUTTON' && el.textContent === 'Reuse settings'")
    await page.keyboard.press("Enter")
    await expect(page.get_by_label("Prompt", exact=True)).to_have_value(f"a tower {REFUSE}")
    await expect(page.get_by_label("Job type")).to_have_value("image_fast")


async def test_the_jobs_page_on_a_phone(phone_page, http, refusing_wan):
    page = phone_page
    email, _ = await user_with_jobs(http)

    # The jobs page's requests ask for one job a page: two jobs take two pages.
    async def one_per_page(route):
        await route.continue_(url=route.request.url.replace("page_size=20", "page_size=1"))

    await page.route(re.compile(r"/v1/jobs\?page_size=20"), one_per_page)
    await sign_in(page, email)
    await page.get_by_role("link", name="Jobs").click()
    await expect(rows(page)).to_have_count(1)
    await expect(page.get_by_text("1 job shown; more below.")).to_be_visible()
    await page.get_by_role("button", name="Load more").click()
    await expect(rows(page)).to_have_count(2)
    await expect(page.get_by_role("button", name="Load more")).to_be_hidden()
    await expect(rows(page).first).to_contain_text("a tower")
    await expect(row(page, "a tower").locator(".badge")).to_have_text("Failed", timeout=60_000)
    await expect(row(page, "a yellow tram").locator(".badge")).to_have_text(
        "Completed", timeout=60_000
    )
    await expect(row(page, "a tower")).to_contain_text(f"Failed: {REFUSAL}")
    fits = "document.scrollingElement.scrollWidth <= window.innerWidth"
    assert await page.evaluate(fits)
    buttons = row(page, "a yellow tram").get_by_role("button")
    for i in range(await buttons.count()):
        box = await buttons.nth(i).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    await page.get_by_label("Job type").select_option("image_fast")
    await expect(rows(page)).to_have_count(1)
    assert await page.evaluate(fits)
    await shot(page, "history-jobs-phone")


async def test_a_new_user_sees_the_empty_jobs_page(page):
    await sign_up(page)
    await page.get_by_role("link", name="Jobs").click()
    await expect(page.get_by_text("No jobs yet.")).to_be_visible()
    await expect(page.get_by_role("link", name="Start one in the workspace")).to_be_visible()
    await expect(page.locator(".jobs-table")).to_be_hidden()


async def test_cancel_from_the_jobs_page_and_the_cancelled_card(page, http):
    email = f"hist-{uuid.uuid4().hex[:8]}@example.com"
    login = await create_account(http, email)
    # Big enough to be caught queued or running with the tiny model.
    slow = {
        "job_type": "sdxl_image_high",
        "prompt": "a slow harbour at night",
        "width": 1024,
        "height": 1024,
        "num_images": 6,
    }
    headers = {"Authorization": f"Bearer {login['access_token']}", "Idempotency-Key": "slow-1"}
    r = await http.post("/v1/jobs", json=slow, headers=headers)
    assert r.status_code == 202, r.text
    await sign_in(page, email)
    await page.get_by_role("link", name="Jobs").click()
    job = row(page, "a slow harbour")
    await job.get_by_role("button", name="Cancel").click()
    await expect(job.locator(".badge")).to_have_text("Cancelled")
    await expect(job.get_by_role("button", name="Retry")).to_be_focused()

    # The workspace's card of the cancelled job says so, with its Retry.
    await page.get_by_role("link", name="Workspace").click()
    cancelled = card(page, "a slow harbour at night")
    await expect(cancelled.locator(".badge")).to_have_text("Cancelled")
    await expect(cancelled.locator(".ws-stage")).to_have_text("Cancelled")
    await cancelled.get_by_role("button", name="Retry").click()
    await expect(card(page, "a slow harbour at night")).to_have_count(2)
    again = card(page, "a slow harbour at night").first
    await again.get_by_role("button", name="Cancel").click()
    await expect(again.locator(".badge")).to_have_text("Cancelled")

    # A dismissed card, and those a cleared session took, stay away after a reload.
    await again.get_by_role("button", name="Dismiss").click()
    await expect(card(page, "a slow harbour at night")).to_have_count(1)
    await page.reload()
    await expect(card(page, "a slow harbour at night").locator(".badge")).to_have_text("Cancelled")
    await expect(card(page, "a slow harbour at night")).to_have_count(1)
    await page.get_by_role("button", name="Clear session").click()
    await page.get_by_role("dialog").get_by_role("button", name="Clear").click()
    await expect(page.locator(".ws-job")).to_have_count(0)
    await page.reload()
    # The prompt takes the focus once the cards are restored.
    await expect(page.get_by_label("Prompt", exact=True)).to_be_focused()
    await expect(page.locator(".ws-job")).to_have_count(0)
