"""The studio's shell: served by the gateway with nothing from elsewhere,
sign-up lands in the workspace, the session survives a reload."""

from __future__ import annotations

import re
import uuid

from tests.browser.conftest import PASSWORD, create_account, shot


async def test_studio_is_served_from_the_gateway_alone(page, stack):
    hosts: set[str] = set()
    page.on("request", lambda req: hosts.add(re.sub(r"^(\w+://[^/]+).*$", r"\1", req.url)))
    await page.goto("/")
    await page.get_by_role("heading", name="Sign in").wait_for()
    assert hosts == {stack.url}, hosts


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
