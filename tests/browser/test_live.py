"""A job card while its job runs: a preview of the image in the making before
the job completes, and how long the job has waited, run and taken. And the
top bar on a phone: one tidy layout, the links and Sign out in view."""

from __future__ import annotations

import itertools
import re
import uuid

from playwright.async_api import expect

from tests.browser.conftest import PHONE, create_account, make_admin, shot, sign_in
from tests.browser.test_workspace import fill_job, sign_up

# Records, per job card (by its label), whether its preview got a data: image
# while the card was not yet completed, and every text its stage line showed.
WATCH_CARDS = """() => {
  window.cardLog = { previewBeforeDone: {}, stages: [] };
  const seen = (node) => {
    const card = node.closest?.("li.ws-job");
    if (!card) return;
    const name = card.getAttribute("aria-label");
    const img = card.querySelector("img.ws-preview");
    if (img?.src.startsWith("data:") && card.dataset.state !== "completed") {
      window.cardLog.previewBeforeDone[name] = true;
    }
    const stage = card.querySelector(".ws-stage")?.textContent;
    if (stage && window.cardLog.stages.at(-1)?.text !== stage) {
      window.cardLog.stages.push({ name, state: card.dataset.state, text: stage });
    }
  };
  new MutationObserver((records) => {
    for (const r of records) {
      seen(r.target.nodeType === Node.TEXT_NODE ? r.target.parentElement : r.target);
      for (const n of r.addedNodes) if (n.nodeType === Node.ELEMENT_NODE) seen(n.querySelector?.("li.ws-job") || n);
    }
  }).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true,
                              attributeFilter: ["src", "data-state"] });
}"""


def middle(box: dict) -> float:
    """The vertical middle of a bounding box."""
    return box["y"] + box["height"] / 2


async def test_an_image_job_shows_a_preview_in_its_card_before_it_completes(page):
    await sign_up(page)
    prompt = "a lighthouse on a cliff at dusk"
    # sdxl_image_fast: 15 steps; the worker sends a preview every 5th.
    await fill_job(page, prompt, "sdxl_image_fast", 256, 256, quantity=1)
    await page.evaluate(WATCH_CARDS)
    await page.get_by_role("button", name="Generate").click()

    card = page.get_by_role("listitem", name=f"Job: {prompt}")
    await expect(card.locator(".badge")).to_have_text("Completed", timeout=60_000)
    # A finished card says how long the job took, and shows no preview any more.
    await expect(card.locator(".ws-stage")).to_have_text(re.compile(r"^Done in \d+ s$"))
    await expect(card.locator("img.ws-preview")).to_be_hidden()

    log = await page.evaluate("window.cardLog")
    assert log["previewBeforeDone"].get(f"Job: {prompt}"), log
    # While active, the stage line said how long the job had waited or run.
    active = [s["text"] for s in log["stages"] if s["state"] in ("queued", "enhancing", "running")]
    elapsed = re.compile(r"(waiting \d+ s|step \d+ of 15 · \d+ s)$")
    assert any(elapsed.search(t) for t in active), log["stages"]
    await shot(page, "live-preview-done")


async def test_a_running_card_counts_its_seconds(page):
    await sign_up(page)
    # A finished job first, so the workspace shows a finished card and a running one.
    done = "a quiet harbour at dawn"
    await fill_job(page, done, "sdxl_image_fast", 256, 256, quantity=3)
    await page.get_by_role("button", name="Generate").click()
    await expect(
        page.get_by_role("listitem", name=f"Job: {done}").locator(".ws-stage")
    ).to_have_text(re.compile(r"^Done in \d+ s$"), timeout=60_000)
    await expect(page.locator(".ws-result img")).to_have_count(3)
    for img in await page.locator(".ws-result img").all():
        await expect(img).to_have_js_property("complete", True)

    prompt = "a long slow tide"
    # Big enough to be caught running with the tiny model for a few seconds.
    await fill_job(page, prompt, "sdxl_image_high", 1024, 1024, quantity=6)
    await page.get_by_role("button", name="Generate").click()
    card = page.get_by_role("listitem", name=f"Job: {prompt}")
    stage = card.locator(".ws-stage")
    await expect(card.locator(".badge")).to_have_text("Running", timeout=60_000)
    await expect(stage).to_have_text(re.compile(r"step \d+ of \d+ · \d+ s$"))
    seconds = "el => Number(el.textContent.match(/(\\d+) s$/)?.[1] ?? -1)"
    first = await stage.evaluate(seconds)
    # The time moves on by itself, between the job's own progress events too.
    await page.wait_for_function(
        f"el => ({seconds})(el) > {first}", arg=await stage.element_handle(), timeout=10_000
    )
    # The running card shows the image in the making (a preview every 5th step).
    await expect(card.locator("img.ws-preview")).to_be_visible(timeout=30_000)
    await page.evaluate("document.querySelector('.ws-side')?.scrollTo(0, 0)")
    await shot(page, "live-workspace-running")
    # The ticking line is not a live region (it would be read out every second).
    announced = "el => el.closest('[aria-live], [role=status], [role=log]')"
    assert await stage.evaluate(announced) is None
    await card.get_by_role("button", name="Cancel").click()
    await expect(stage).to_have_text("Cancelled")


async def test_the_top_bar_fits_a_phone(phone_page, http, base_env):
    page = phone_page
    email = f"phone-{uuid.uuid4().hex[:8]}@example.com"
    await create_account(http, email)
    await make_admin(base_env, email)  # an admin has the most links
    await sign_in(page, email)

    header = page.locator("header.topbar")
    nav = page.get_by_role("navigation", name="Main")
    names = ("Workspace", "Jobs", "Library", "Admin")
    links = [nav.get_by_role("link", name=n, exact=True) for n in names]
    signout = page.get_by_role("button", name="Sign out")
    for item in (*links, signout):
        await expect(item).to_be_in_viewport(ratio=1)
    # The email hides on a phone; the button still says whose session it ends.
    await expect(page.locator("#account-email")).to_be_hidden()
    await expect(signout).to_have_attribute("title", f"Signed in as {email}")

    box = await header.bounding_box()
    assert box["height"] < 120, box
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    # Brand and Sign out share the first row; the links all sit on one row of their own below.
    brand = await page.get_by_role("link", name="ourvidz").bounding_box()
    out = await signout.bounding_box()
    assert abs(middle(brand) - middle(out)) < 8, (brand, out)
    tops = {round((await link.bounding_box())["y"]) for link in links}
    assert len(tops) == 1 and min(tops) >= out["y"] + out["height"] - 2, (tops, out)
    await shot(page, "live-phone-header")

    # Wider, the same two rows up to a tablet's width; then all on one row, the email shown.
    for width, rows in ((800, 2), (1280, 1)):
        await page.set_viewport_size({"width": width, "height": PHONE["height"]})
        assert await page.evaluate("document.documentElement.scrollWidth") <= width
        await expect(page.locator("#account-email")).to_be_visible(visible=rows == 1)
        middles = sorted([middle(await item.bounding_box()) for item in (*links, signout)])
        seen = 1 + sum(b - a > 10 for a, b in itertools.pairwise(middles))
        assert seen == rows, (width, middles)
