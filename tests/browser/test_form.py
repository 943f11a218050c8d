"""The generation form: size presets per model family with the raw size under
"Advanced", a reference image by drag-and-drop or paste, the prompt history,
Ctrl+Enter, the phone layout, the keyboard alone, and the availability marks
kept fresh while the workspace is shown."""

from __future__ import annotations

import base64
import io
import json
import re
import uuid

from PIL import Image
from playwright.async_api import expect

from ourvidz import registry
from services.gateway import workers
from tests.browser.test_keyboard import tab_to
from tests.browser.test_workspace import fill_job, open_advanced, shot, sign_up

JOBS = re.compile(r"/v1/jobs$")
# Hands the page a file as a drag over / drop on `selector`, or as a paste there.
GIVE_FILE = """([kind, selector, b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type }));
  const target = document.querySelector(selector);
  const init = { bubbles: true, cancelable: true };
  const event = kind === "paste"
    ? new ClipboardEvent("paste", { ...init, clipboardData: data })
    : new DragEvent(kind, { ...init, dataTransfer: data });
  target.dispatchEvent(event);
  return event.defaultPrevented;
}"""


def png(size=(32, 24), colour=(200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


async def give_file(page, kind: str, selector: str, name: str, mime: str, data: bytes) -> bool:
    b64 = base64.b64encode(data).decode()
    return await page.evaluate(GIVE_FILE, [kind, selector, b64, name, mime])


async def submitted(page, action) -> dict:
    """The body of the POST /v1/jobs that `action` (a coroutine function) sends."""
    async with page.expect_request(lambda r: r.method == "POST" and JOBS.search(r.url)) as info:
        await action()
    return json.loads((await info.value).post_data)


async def cancel_job(page, prompt: str) -> None:
    """Cancel a job that only had to be submitted (keeps the CPU for the next test)."""
    card = page.get_by_role("listitem", name=f"Job: {prompt}")
    await card.get_by_role("button", name="Cancel").click()
    await expect(card.locator(".badge")).to_have_text(re.compile("Cancelled|Completed"))


async def test_presets_set_the_size_and_the_raw_size_waits_under_advanced(page):
    await sign_up(page)
    form = page.get_by_role("form", name="Generate")
    await page.get_by_label("Job type").select_option("sdxl_image_fast")

    # Folded by default: the raw size is out of sight; the presets are up front.
    fold = page.locator("details.ws-advanced")
    assert not await fold.evaluate("d => d.open")
    await expect(page.get_by_label("Width")).to_be_hidden()
    sizes = page.get_by_role("radiogroup", name="Size")
    await expect(sizes.get_by_role("radio")).to_have_count(9)
    await expect(sizes.get_by_role("radio", name=re.compile(r"^1:1 "))).to_be_checked()

    # 16:9 sets the size, which Advanced shows and can change to a custom one.
    wide = sizes.get_by_role("radio", name=re.compile(r"^16:9 "))
    await wide.check()
    await open_advanced(page)
    await expect(page.get_by_label("Width")).to_have_value("1344")
    await expect(page.get_by_label("Height")).to_have_value("768")
    await page.get_by_label("Width").select_option("512")
    await expect(sizes.locator("input:checked")).to_have_count(0)
    await expect(page.locator(".ws-custom-size")).to_have_text(
        "Custom size: 512×768 (under Advanced)."
    )
    await page.get_by_label("Width").select_option("1344")
    await expect(wide).to_be_checked()
    await shot(page, "form-presets")

    # The request carries the preset's size.
    await page.get_by_label("Prompt", exact=True).fill("a wide valley at noon")
    body = await submitted(page, page.get_by_role("button", name="Generate").click)
    assert (body["width"], body["height"]) == (1344, 768), body
    await cancel_job(page, "a wide valley at noon")

    # WAN's presets are its 480p and 720p; the video's length is said plainly,
    # and no nominal time is shown as a fact.
    await page.get_by_label("Job type").select_option("video_fast")
    names = await sizes.get_by_role("radio").evaluate_all(
        "rs => rs.map((r) => r.labels[0].textContent)"
    )
    assert names == [
        "16:9 480p 832×480",
        "9:16 480p 480×832",
        "16:9 720p 1280×720",
        "9:16 720p 720×1280",
    ], names
    await expect(sizes.get_by_role("radio", name=re.compile(r"^16:9 480p"))).to_be_checked()
    await expect(page.get_by_label("Frames")).to_have_value("81")
    text = await form.inner_text()
    assert "A 5.1 s video: 81 frames at 16 frames a second." in text
    for leak in (r"old system", r"\b83\b", r"4k\+1", r"~"):
        assert not re.search(leak, text), leak
    labels = await page.get_by_label("Job type").locator("option").all_inner_texts()
    assert not [label for label in labels if "~" in label], labels


async def test_a_reference_by_drop_and_by_paste(page):
    await sign_up(page)
    await page.get_by_label("Job type").select_option("sdxl_image_fast")
    zone = "fieldset.ws-ref"

    # Dragged over, the area is highlighted; dropped, the image is the reference.
    assert await give_file(page, "dragover", zone, "drop.png", "image/png", png())
    await expect(page.locator(zone)).to_have_class(re.compile("ws-drop-active"))
    assert await give_file(page, "drop", zone, "drop.png", "image/png", png())
    await expect(page.locator(zone)).not_to_have_class(re.compile("ws-drop-active"))
    await expect(page.get_by_role("img", name="Reference: drop.png")).to_be_visible()
    await page.get_by_role("button", name="Remove reference").click()

    # A dropped text file is refused, in words, in the reference area.
    await give_file(page, "drop", zone, "notes.txt", "text/plain", b"just words")
    await expect(page.locator(".ws-ref-message")).to_have_text(
        "“notes.txt” is not an image; a reference must be a PNG, JPEG or WebP image."
    )
    await expect(page.get_by_role("img", name=re.compile("^Reference:"))).to_have_count(0)

    # Pasted in the prompt box while a WAN type is chosen: the form switches to
    # a type that takes a reference.
    await page.get_by_label("Job type").select_option("video_fast")
    await expect(page.locator(zone)).to_be_hidden()
    prompt = page.get_by_label("Prompt", exact=True)
    await prompt.focus()
    assert await give_file(page, "paste", "textarea[name=prompt]", "image.png", "image/png", png())
    await expect(page.get_by_role("img", name="Reference: image.png")).to_be_visible()
    await expect(page.locator(".ws-ref-message")).to_be_hidden()
    assert (await page.get_by_label("Job type").input_value()).startswith("sdxl_image")
    await shot(page, "form-reference-pasted")

    # A paste without files (text) is left to the browser.
    prevented = await page.evaluate("""() => {
      const data = new DataTransfer();
      data.setData("text/plain", "some words");
      const event = new ClipboardEvent("paste", { bubbles: true, cancelable: true, clipboardData: data });
      document.querySelector("textarea[name=prompt]").dispatchEvent(event);
      return event.defaultPrevented;
    }""")
    assert prevented is False
    await prompt.fill("a paper crane")
    body = await submitted(page, lambda: prompt.press("Control+Enter"))
    assert body["reference_image_id"], body
    await cancel_job(page, "a paper crane")


async def test_prompt_history_and_ctrl_enter(page):
    email = await sign_up(page)
    history = page.get_by_role("button", name="History")
    await expect(history).to_be_disabled()  # nothing submitted yet
    generate = page.get_by_role("button", name="Generate", exact=True)
    await expect(generate).to_have_attribute("aria-keyshortcuts", "Control+Enter Meta+Enter")
    await expect(generate.locator(".ws-shortcut")).to_have_text("Ctrl+Enter")

    # Ctrl+Enter in the prompt box generates, and so does Ctrl+Enter elsewhere in the form.
    await fill_job(page, "an old oak in fog", "sdxl_image_fast", 128, 128, quantity=1)
    prompt = page.get_by_label("Prompt", exact=True)
    body = await submitted(page, lambda: prompt.press("Control+Enter"))
    assert body["prompt"] == "an old oak in fog"
    await expect(generate).to_be_enabled()
    await prompt.fill("a harbour at night")
    body = await submitted(page, lambda: page.get_by_label("Job type").press("Control+Enter"))
    assert body["prompt"] == "a harbour at night"
    await expect(generate).to_be_enabled()

    # Kept in this browser for this account, newest first.
    stored = await page.evaluate(f"localStorage.getItem('ourvidz.prompts.{email}')")
    assert json.loads(stored) == ["a harbour at night", "an old oak in fog"]

    # After a reload the form's last settings are back, its prompt with them;
    # emptied, ↑ recalls the last prompt, ↑ again the one before.
    await page.reload()
    await generate.wait_for()
    await expect(prompt).to_have_value("a harbour at night")
    await prompt.fill("")
    await prompt.focus()
    await prompt.press("ArrowUp")
    await expect(prompt).to_have_value("a harbour at night")
    await prompt.press("ArrowUp")
    await expect(prompt).to_have_value("an old oak in fog")

    # The History button's list: arrows and Enter choose; Escape closes.
    await prompt.fill("")
    await history.click()
    listbox = page.get_by_role("listbox", name="Recent prompts")
    await expect(listbox).to_be_focused()
    await expect(listbox.get_by_role("option")).to_have_text(
        ["a harbour at night", "an old oak in fog"]
    )
    await page.keyboard.press("Escape")
    await expect(listbox).to_be_hidden()
    await expect(history).to_be_focused()
    await expect(history).to_have_attribute("aria-expanded", "false")
    await page.keyboard.press("Enter")
    await expect(listbox).to_be_visible()
    await page.keyboard.press("ArrowDown")
    await expect(listbox.get_by_role("option", name="an old oak in fog")).to_have_attribute(
        "aria-selected", "true"
    )
    await shot(page, "form-history")
    await page.keyboard.press("Enter")
    await expect(listbox).to_be_hidden()
    await expect(prompt).to_have_value("an old oak in fog")
    await expect(prompt).to_be_focused()
    # A click chooses too.
    await history.click()
    await listbox.get_by_role("option", name="a harbour at night").click()
    await expect(prompt).to_have_value("a harbour at night")


async def test_the_phone_layout(phone_page):
    page = phone_page
    await sign_up(page)
    viewport = page.viewport_size
    generate = page.get_by_role("button", name="Generate", exact=True)

    # Generate is on screen without scrolling, at its foot; Advanced is folded.
    await expect(generate).to_be_in_viewport()
    box = await generate.bounding_box()
    assert box["y"] + box["height"] <= viewport["height"], box
    assert box["y"] > viewport["height"] / 2, box
    assert not await page.locator("details.ws-advanced").evaluate("d => d.open")
    assert await page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    await shot(page, "form-phone")

    # While a job runs, its card and the results come before the form.
    await fill_job(page, "a slow tide", "sdxl_image_high", 1024, 1024, quantity=6)
    await expect(generate).to_be_in_viewport()
    await generate.click()
    card = page.get_by_role("listitem", name="Job: a slow tide")
    await expect(card.locator(".badge")).to_have_text(re.compile("Queued|Running"))
    await expect(page.locator(".ws-layout")).to_have_class(re.compile("ws-busy"))
    jobs = await page.get_by_role("list", name="Jobs").bounding_box()
    form = await page.get_by_role("form", name="Generate").bounding_box()
    assert jobs["y"] + jobs["height"] <= form["y"], (jobs, form)
    assert await page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    await shot(page, "form-phone-running")

    # Done (here: cancelled), the form is first again.
    await card.get_by_role("button", name="Cancel").click()
    await expect(card.locator(".badge")).to_have_text("Cancelled")
    await expect(page.locator(".ws-layout")).not_to_have_class(re.compile("ws-busy"))
    jobs = await page.get_by_role("list", name="Jobs").bounding_box()
    form = await page.get_by_role("form", name="Generate").bounding_box()
    assert form["y"] + form["height"] <= jobs["y"], (jobs, form)


async def test_the_form_by_keyboard_alone(page):
    await sign_up(page)
    # The prompt has the focus on arrival.
    prompt = page.get_by_label("Prompt", exact=True)
    await expect(prompt).to_be_focused()
    await page.keyboard.type("a kite over dunes")
    await tab_to(page, "el => el.tagName === 'SELECT' && el.name === 'job_type'")
    await page.keyboard.press("End")  # the last type: a WAN video
    await page.keyboard.press("Home")  # the first: SDXL fast
    assert (await page.get_by_label("Job type").input_value()) == "sdxl_image_fast"
    # Tab reaches the checked preset; the arrows choose another.
    await tab_to(page, "el => el.type === 'radio' && el.checked")
    await expect(page.get_by_role("radio", name=re.compile(r"^1:1 "))).to_be_focused()
    await page.keyboard.press("ArrowRight")
    square_next = page.get_by_role("radio", name=re.compile(r"^9:7 "))
    await expect(square_next).to_be_checked()
    await expect(square_next).to_be_focused()
    body = await submitted(page, lambda: page.keyboard.press("Control+Enter"))
    assert (body["prompt"], body["width"], body["height"]) == ("a kite over dunes", 1152, 896)
    await cancel_job(page, "a kite over dunes")


async def test_availability_is_refreshed_while_the_workspace_is_shown(page, monkeypatch):
    # No worker of any family in the registry the gateway reads, at first.
    monkeypatch.setattr(workers, "BUCKET", f"empty-{uuid.uuid4().hex[:8]}")
    await sign_up(page)
    option = page.get_by_label("Job type").locator("option[value=sdxl_image_fast]")
    await expect(option).to_contain_text("not available now")
    await page.get_by_label("Job type").select_option("sdxl_image_fast")
    hint = page.locator("#ws-type-hint")
    await expect(hint).to_contain_text("Not available now: no sdxl worker is running")

    # The workers appear: within a refresh the type is offered as ready, no reload.
    monkeypatch.setattr(workers, "BUCKET", registry.WORKERS_BUCKET)
    await expect(option).not_to_contain_text("not available now", timeout=40_000)
    await expect(option).to_have_text("SDXL image · fast")
    await expect(hint).to_be_hidden()


async def test_presets_follow_a_narrower_catalogue(page):
    """A deployment that allows smaller sizes only: the presets are scaled down
    to fit, on the type's multiple and keeping their shape, or left out."""
    await sign_up(page)
    presets = await page.evaluate("""async () => {
      const { sizePresets } = await import("/static/js/workspace/form.js");
      const sizes = (lo, hi, step) => Array.from({ length: (hi - lo) / step + 1 }, (_, i) => lo + i * step);
      const sdxl = { worker: "sdxl", size_multiple: 64, allowed_widths: sizes(512, 1024, 64),
                     allowed_heights: sizes(512, 1024, 64) };
      const wan = { worker: "wan", size_multiple: 16, allowed_widths: sizes(256, 832, 16),
                    allowed_heights: sizes(256, 832, 16) };
      const text = (ps) => ps.map((p) => `${p.ratio}${p.tag ? " " + p.tag : ""} ${p.width}x${p.height}`);
      return { sdxl: text(sizePresets(sdxl)), wan: text(sizePresets(wan)) };
    }""")
    # 21:9 would be 1024x448: under the smallest size, so left out.
    assert presets["sdxl"] == [
        "1:1 1024x1024",
        "9:7 1024x768",
        "7:9 768x1024",
        "3:2 1024x704",
        "2:3 704x1024",
        "16:9 1024x576",
        "9:16 576x1024",
    ], presets
    # 720p would be 832x464: the shape 480p already gives, so left out.
    assert presets["wan"] == ["16:9 480p 832x480", "9:16 480p 480x832"], presets
