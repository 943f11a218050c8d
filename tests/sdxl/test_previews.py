"""Previews of a real (tiny) SDXL pipeline's latents during a render."""

from __future__ import annotations

import io

from PIL import Image

from ourvidz.genworker import previews
from ourvidz.genworker.previews import Previews
from services.sdxl import generate


def _render(bundle, task, every: int, max_bytes: int = 4096):
    sent = []
    hook = Previews(every, min_seconds=0, max_bytes=max_bytes).hook(
        previews.sdxl_project, lambda step, total, png: sent.append((step, total, png))
    )
    steps = []
    images = generate.render(
        bundle, task, None, lambda s, t: steps.append(s), lambda: False, on_latents=hook
    )
    return images, steps, sent


def test_previews_every_two_steps_of_the_first_image(tiny_bundle, make_task):
    task = make_task(num_images=3, steps=5, width=256, height=256)
    images, steps, sent = _render(tiny_bundle, task, every=2)
    assert [(s, t) for s, t, _ in sent] == [(2, 5), (4, 5)]
    assert steps == [1, 2, 3, 4, 5]
    for *_, png in sent:
        assert len(png) <= 4096
        image = Image.open(io.BytesIO(png))
        image.load()
        assert image.format == "PNG" and image.size[0] == image.size[1] <= 64
    # previews change nothing of the images
    _, _, none = _render(tiny_bundle, task, every=0)
    again = generate.render(tiny_bundle, task, None, lambda s, t: None, lambda: False)
    assert none == [] and [i.png_bytes for i in images] == [i.png_bytes for i in again]


def test_previews_count_the_steps_of_every_batch(tiny_bundle, make_task):
    from ourvidz.genworker.memory import MemoryFallback

    task = make_task(num_images=3, steps=3)
    sent = []
    hook = Previews(2, min_seconds=0).hook(
        previews.sdxl_project, lambda step, total, png: sent.append((step, total))
    )
    generate.render(
        tiny_bundle,
        task,
        None,
        lambda s, t: None,
        lambda: False,
        memory=MemoryFallback(max_batch=1),
        on_latents=hook,
    )
    assert sent == [(2, 9), (4, 9), (6, 9), (8, 9)]
