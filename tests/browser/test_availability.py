"""The studio's type picker says which job types cannot run now, and why:
with no worker in the registry the gateway reads, every type is marked, stays
selectable, and the hint under the picker gives the reason."""

from __future__ import annotations

import uuid

from playwright.async_api import expect

from services.gateway import workers
from tests.browser.test_workspace import sign_up


async def test_types_without_a_ready_worker_are_marked_with_the_reason(page, monkeypatch):
    # A registry bucket nobody writes to: no worker of any family.
    monkeypatch.setattr(workers, "BUCKET", f"empty-{uuid.uuid4().hex[:8]}")
    await sign_up(page)
    picker = page.get_by_label("Job type")
    await expect(picker).to_be_enabled()
    await expect(picker.locator("option[value=sdxl_image_fast]")).to_contain_text(
        "not available now"
    )
    await picker.select_option("video7b_fast_enhanced")
    hint = page.locator("#ws-type-hint")
    await expect(hint).to_contain_text("Not available now: no wan worker is running")
    await expect(hint).to_have_class("hint warn")
    await picker.select_option("sdxl_image_fast")
    await expect(hint).to_contain_text("Not available now: no sdxl worker is running")
