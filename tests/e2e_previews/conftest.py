"""The mesh with the SDXL and WAN workers (tiny models) in this process, for
live previews. Each module starts its own stack with its own preview settings
(one at a time: two workers of a family would share its queue)."""

from __future__ import annotations

import base64
import io

import httpx
from PIL import Image

from ourvidz_dev.stack import running_stack

# Small enough that a 256x256 SDXL preview must be made smaller to fit.
MAX_BYTES = 2048


def previews_env(base_env: dict, every_steps: int) -> dict:
    return {
        **base_env,
        "SDXL_MODEL": "tiny",
        "WAN_MODEL": "tiny",
        "SDXL_PROGRESS_INTERVAL_SECONDS": "0",
        "WAN_PROGRESS_INTERVAL_SECONDS": "0",
        "SDXL_PREVIEW_EVERY_STEPS": str(every_steps),
        "WAN_PREVIEW_EVERY_STEPS": str(every_steps),
        # No throttle, so the count of previews depends on the steps alone.
        "SDXL_PREVIEW_MIN_SECONDS": "0",
        "WAN_PREVIEW_MIN_SECONDS": "0",
        "SDXL_PREVIEW_MAX_BYTES": str(MAX_BYTES),
        "WAN_PREVIEW_MAX_BYTES": str(MAX_BYTES),
    }


async def stack_with_previews(base_env: dict, every_steps: int):
    async with running_stack(previews_env(base_env, every_steps), workers=("sdxl", "wan")) as s:
        yield s


async def client(stack):
    async with httpx.AsyncClient(base_url=stack.url, timeout=120) as http:
        yield http


def preview_images(events: list[dict]) -> list[tuple[bytes, Image.Image]]:
    """The PNG bytes and decoded image of each `preview` event of a job's SSE history."""
    out = []
    for e in events:
        if e["event"] != "preview":
            continue
        prefix = "data:image/png;base64,"
        url = e["data"]["preview"]
        assert url.startswith(prefix), url[:40]
        data = base64.b64decode(url.removeprefix(prefix))
        image = Image.open(io.BytesIO(data))
        image.load()
        out.append((data, image))
    return out
