"""Previews of a real (tiny) WAN pipeline's latents during a render."""

from __future__ import annotations

import io

from PIL import Image

from ourvidz.genworker import previews
from ourvidz.genworker.previews import Previews
from services.wan import generate


def test_previews_of_the_middle_frame_every_two_steps(tiny_wan, make_task):
    task = make_task(steps=5)
    sent = []
    hook = Previews(2, min_seconds=0, max_bytes=8192).hook(
        previews.wan_project, lambda step, total, png: sent.append((step, total, png))
    )
    out = generate.render(tiny_wan, task, lambda s, t: None, lambda: False, on_latents=hook)
    assert [(s, t) for s, t, _ in sent] == [(2, 5), (4, 5)]
    for *_, png in sent:
        assert len(png) <= 8192
        image = Image.open(io.BytesIO(png))
        image.load()
        # 112x64 pixels are 14x8 latents, shown twice as large
        assert image.format == "PNG" and image.size == (28, 16)
    plain = generate.render(tiny_wan, task, lambda s, t: None, lambda: False)
    assert plain.thumbnail_png == out.thumbnail_png  # previews change nothing of the frames
