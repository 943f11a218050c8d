"""The web studio in a real browser: Debian's Chromium, headless, driven by
Playwright, against the whole mesh in this process (tiny models).

Every test page records console errors, uncaught exceptions and failed
requests; a test fails if any appear. `shot(page, name)` keeps a screenshot in
.artifacts/browser/ (the test artefacts; `make test-browser` prints where)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from ourvidz import operator
from ourvidz_dev.stack import running_stack

pytestmark = pytest.mark.browser

try:
    import playwright  # noqa: F401
except ImportError:  # `make test-browser` installs it; without it these tests are not collected
    collect_ignore_glob = ["test_*.py"]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", ROOT / ".artifacts" / "browser"))
PASSWORD = "a long password"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip("Chromium is not installed (make test-browser installs it)")
    return path


async def create_account(http: httpx.AsyncClient, email: str) -> dict:
    """A new account through the API: sign-up (202, no tokens), then login; the
    login answer."""
    account = {"email": email, "password": PASSWORD}
    r = await http.post("/v1/auth/signup", json=account)
    assert r.status_code == 202, r.text
    r = await http.post("/v1/auth/login", json=account)
    assert r.status_code == 200, r.text
    return r.json()


async def sign_in(page, email: str) -> None:
    """Through the sign-in form, as a person does; on the workspace after."""
    await page.goto("/")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(r"#/workspace$"))


async def make_admin(base_env: dict, email: str) -> None:
    """What an operator does: `ourvidz admin grant EMAIL` with the owner's URL."""
    await asyncio.to_thread(operator.grant_admin, base_env["DATABASE_URL"], email)


@pytest.fixture(scope="package")
async def stack(base_env):
    env = {
        **base_env,
        "SDXL_MODEL": "tiny",
        "SDXL_PROGRESS_INTERVAL_SECONDS": "0",
        "WAN_MODEL": "tiny",
        "WAN_PROGRESS_INTERVAL_SECONDS": "0",
        "ENHANCER_MODEL": "tiny",
        # Signed URLs of the local store are served by the gateway itself.
        "STORAGE_BACKEND": "local",
    }
    async with running_stack(env, workers=("sdxl", "wan"), enhancer=True) as s:
        yield s


@pytest.fixture(scope="package")
async def browser():
    from playwright.async_api import async_playwright

    os.makedirs(ARTIFACTS, exist_ok=True)
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        yield chromium
        await chromium.close()


class PageProblems:
    """What went wrong in a page. Chromium logs every HTTP error answer as a
    console error; a test that provokes one on purpose lists its status in
    `expected_statuses` (the app still has to show it as a message)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.expected_statuses: set[int] = set()

    def _console(self, msg) -> None:
        if msg.type != "error":
            return
        match = re.search(r"status of (\d{3})", msg.text)
        if match and int(match.group(1)) in self.expected_statuses:
            return
        self.errors.append(f"console {msg.type}: {msg.text}")

    def watch(self, page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on(
            "requestfailed",
            lambda req: (
                self.errors.append(f"request failed: {req.url} {req.failure}")
                if "aborted" not in (req.failure or "").lower()
                else None
            ),
        )


async def _new_page(browser, stack, viewport):
    context = await browser.new_context(base_url=stack.url, viewport=viewport)
    page = await context.new_page()
    page.set_default_timeout(30_000)
    problems = PageProblems()
    problems.watch(page)
    return context, page, problems


@pytest.fixture
def expected_statuses() -> set[int]:
    """HTTP error statuses a test provokes on purpose (e.g. {401} for a wrong password)."""
    return set()


@pytest.fixture
async def page(browser, stack, expected_statuses):
    """A desktop-sized page in a fresh browser context (no stored session)."""
    context, page, problems = await _new_page(browser, stack, DESKTOP)
    problems.expected_statuses = expected_statuses
    yield page
    await context.close()
    assert problems.errors == [], problems.errors


@pytest.fixture
async def phone_page(browser, stack, expected_statuses):
    """A phone-sized page (390×844)."""
    context, page, problems = await _new_page(browser, stack, PHONE)
    problems.expected_statuses = expected_statuses
    yield page
    await context.close()
    assert problems.errors == [], problems.errors


async def shot(page, name: str) -> Path:
    """A full-page screenshot, from the top and without passing messages (a
    scrolled page draws the sticky header mid-image; toasts cover content)."""
    await page.evaluate(
        "window.scrollTo(0, 0); document.getElementById('toasts')?.replaceChildren()"
    )
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
async def http(stack):
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
        yield client
