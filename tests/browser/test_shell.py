"""The studio's shell: served by the gateway with nothing from elsewhere,
signed out it offers the sign-in form alone, sign-up lands in the workspace,
the session survives a reload."""

from __future__ import annotations

import re
import uuid

from playwright.async_api import expect

from tests.browser.conftest import PASSWORD, create_account, shot

# What a signed-out visitor can see and use outside the sign-in form (the
# skip link, the brand, the app's nav and account controls...): should be nothing.
OUTSIDE_THE_FORM = """() => [...document.querySelectorAll("a[href], button, input, select, textarea, nav")]
  .filter((el) => el.checkVisibility() && !el.closest("main form") && !el.matches(".skip, .brand"))
  .map((el) => el.textContent.trim() || el.tagName)"""


async def expect_only_the_sign_in_form(page) -> None:
    await page.get_by_role("heading", name="Sign in").wait_for()
    await expect(page.locator("#nav")).to_be_hidden()
    await expect(page.get_by_role("link", name="Workspace")).to_have_count(0)
    await expect(page.get_by_role("link", name="Library")).to_have_count(0)
    await expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    assert await page.evaluate(OUTSIDE_THE_FORM) == []


async def test_studio_is_served_from_the_gateway_alone(page, stack):
    hosts: set[str] = set()
    page.on("request", lambda req: hosts.add(re.sub(r"^(\w+://[^/]+).*$", r"\1", req.url)))
    await page.goto("/")
    await page.get_by_role("heading", name="Sign in").wait_for()
    assert hosts == {stack.url}, hosts


async def test_signed_out_the_page_is_the_sign_in_form_alone(page, phone_page, http):
    email = f"shell-{uuid.uuid4().hex[:8]}@example.com"
    await create_account(http, email)
    await phone_page.goto("/")
    await expect_only_the_sign_in_form(phone_page)
    await page.goto("/#/library")
    await expect_only_the_sign_in_form(page)
    await shot(page, "shell-signed-out")

    # Signed in, the app's links and sign-out are there; signed out again, gone.
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(r"#/workspace$"))
    await expect(page.get_by_role("link", name="Library")).to_be_visible()
    await page.get_by_role("button", name="Sign out").click()
    await expect_only_the_sign_in_form(page)


async def test_sign_up_then_reload_keeps_the_session(page):
    email = f"shell-{uuid.uuid4().hex[:8]}@example.com"
    await page.goto("/")
    await page.get_by_role("button", name="New here? Create an account").click()
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await page.wait_for_url(re.compile(r"#/workspace$"))
    await page.reload()
    await page.get_by_text(email).wait_for()
    assert "#/workspace" in page.url
    await shot(page, "shell-signed-in")


async def test_a_guessable_password_is_refused_with_its_reason(page, expected_statuses):
    expected_statuses.add(422)
    await page.goto("/")
    await page.get_by_role("button", name="New here? Create an account").click()
    await page.get_by_label("Email").fill(f"shell-{uuid.uuid4().hex[:8]}@example.com")
    await page.get_by_label("Password").fill("password")
    await page.get_by_role("button", name="Sign up").click()
    error = page.locator(".field-error")
    await error.wait_for()
    assert "too easy to guess" in await error.inner_text()
    assert await page.get_by_label("Password").get_attribute("aria-invalid") == "true"
    assert "#/signin" in page.url
    # Shown next to the field, and not a second time as a message.
    await expect(page.get_by_role("button", name="Sign up")).to_be_enabled()
    await expect(page.locator(".toast")).to_have_count(0)


async def test_a_wrong_password_is_shown_as_a_message(page, http, expected_statuses):
    expected_statuses.add(401)
    email = f"shell-{uuid.uuid4().hex[:8]}@example.com"
    await create_account(http, email)
    await page.goto("/")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("alert").first.wait_for()
    assert "#/signin" in page.url
