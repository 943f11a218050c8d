"""The admin page in the browser: prompt templates (edit as a new version with
inline field errors, test on a sample prompt, activate), queue depth and the
live workers; a plain user never reaches it."""

from __future__ import annotations

import asyncio
import re
import uuid

from tests.browser.conftest import create_account, make_admin, shot, sign_in


async def test_admin_edits_tests_and_activates_a_template(page, http, base_env, expected_statuses):
    expected_statuses.add(422)  # the out-of-range temperature, on purpose
    admin_email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    await create_account(http, admin_email)
    await make_admin(base_env, admin_email)
    await sign_in(page, admin_email)
    await page.get_by_role("link", name="Admin").click()
    await page.get_by_role("heading", name="Admin", exact=True).wait_for()

    wan = page.get_by_role("table", name="WAN templates")
    await wan.wait_for()
    assert await wan.get_by_text("active", exact=True).count() >= 1
    # The newest version of the first WAN template.
    first_open = wan.get_by_role("button", name=re.compile(r"^Open .+ version \d+$")).first
    label = await first_open.get_attribute("aria-label")
    name, version = re.match(r"^Open (.+) version (\d+)$", label).groups()
    await first_open.click()
    panel_heading = page.get_by_role("heading", name=re.compile(rf"^{re.escape(name)} v{version} "))
    await panel_heading.wait_for()
    await page.get_by_label("Stats of this version").get_by_text("Enhancements").wait_for()

    # A bad field comes back from the API and is shown beside its control.
    edit = page.get_by_role("form", name="Edit template")
    await edit.get_by_label("Description").fill("sharper camera wording")
    await edit.get_by_label("Temperature").fill("5")
    await edit.get_by_role("button", name="Save as new version").click()
    error = edit.locator(".field-error")
    await error.wait_for()
    assert "2" in await error.inner_text()
    assert await edit.get_by_label("Temperature").get_attribute("aria-invalid") == "true"

    await edit.get_by_label("Temperature").fill("0.7")
    await edit.get_by_role("button", name="Save as new version").click()
    new_version = int(version) + 1
    new_heading = page.get_by_role(
        "heading", name=re.compile(rf"^{re.escape(name)} v{new_version} ")
    )
    await new_heading.wait_for()
    await wan.get_by_role("button", name=f"Open {name} version {new_version}").wait_for()
    assert await edit.locator(".field-error").count() == 0

    # Test the new version on a sample prompt: the enhancement and its figures.
    test = page.get_by_role("form", name="Test template")
    await test.get_by_label("Sample prompts").fill("a lighthouse in a storm")
    await test.get_by_role("button", name="Run test").click()
    result = test.get_by_role("list", name="Test results").get_by_role("listitem")
    await result.get_by_text("Enhanced:").wait_for(timeout=120_000)
    text = await result.first.inner_text()
    assert "a lighthouse in a storm" in text and "tokens in" in text
    assert re.search(r"no fallback|fallback:", text)

    # Activate it: the panel and the table say so.
    await page.get_by_role("button", name="Activate this version").click()
    await page.get_by_role("heading", name=re.compile(rf"v{new_version} .*active$")).wait_for()
    assert await page.get_by_role("button", name="Activate this version").is_hidden()
    assert await result.get_by_text("Enhanced:").is_visible()  # the results stay
    row = wan.get_by_role("row").filter(
        has=page.get_by_role("button", name=f"Open {name} version {new_version}")
    )
    await row.get_by_text("active", exact=True).wait_for()

    # Queues and the in-process workers (SDXL, WAN and the enhancer).
    queues = page.get_by_role("table", name="Queue depth per worker family")
    await queues.wait_for()
    for consumer in ("sdxl", "wan", "enhancer"):
        name = re.compile(rf"^{consumer}( \(not declared\))?$")
        await queues.get_by_role("cell", name=name).wait_for()
    workers = page.get_by_role("table", name="Workers and enhancer replicas")
    for family in ("sdxl", "wan", "enhancer"):
        await workers.get_by_role("cell", name=family, exact=True).first.wait_for()
    await workers.get_by_text("healthy").first.wait_for()
    await shot(page, "admin")

    # Leaving the page stops the refresh.
    polls: list[str] = []
    page.on("request", lambda req: polls.append(req.url) if "/v1/admin/queues" in req.url else None)
    await page.get_by_role("link", name="Workspace").click()
    await page.wait_for_url(re.compile(r"#/workspace$"))
    await asyncio.sleep(4)  # longer than one refresh period: proving that nothing comes
    assert polls == []


async def test_a_user_never_reaches_the_admin_page(page, http):
    email = f"plain-{uuid.uuid4().hex[:8]}@example.com"
    await create_account(http, email)
    await sign_in(page, email)
    assert await page.get_by_role("link", name="Admin").is_hidden()
    await page.goto("/#/admin")
    await page.wait_for_url(re.compile(r"#/workspace$"))
    assert await page.get_by_role("heading", name="Admin").count() == 0
