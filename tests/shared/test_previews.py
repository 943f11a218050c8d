"""Live previews: the latent -> RGB projections, the byte cap, when a preview
is due, and how the progress reporter sends one."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from ourvidz.genworker import previews
from ourvidz.genworker.previews import Previews
from ourvidz.genworker.progress import ProgressReporter, step_callback


def test_zero_latents_show_the_projection_bias():
    rgb = previews.latents_to_rgb(
        torch.zeros(4, 3, 5), previews.SDXL_RGB_FACTORS, previews.SDXL_RGB_BIAS
    )
    assert rgb.shape == (3, 5, 3) and rgb.dtype == np.uint8
    expected = [round((b + 1) / 2 * 255) for b in previews.SDXL_RGB_BIAS]
    assert rgb[1, 2].tolist() == expected


def test_one_channel_maps_through_its_row():
    latents = torch.zeros(16, 2, 2)
    latents[2] = 1.0  # channel 2 alone: its row plus the bias
    rgb = previews.latents_to_rgb(latents, previews.WAN21_RGB_FACTORS, previews.WAN21_RGB_BIAS)
    row, bias = previews.WAN21_RGB_FACTORS[2], previews.WAN21_RGB_BIAS
    assert rgb[0, 0].tolist() == [
        round((r + b + 1) / 2 * 255) for r, b in zip(row, bias, strict=True)
    ]


def test_a_latent_of_another_width_is_refused():
    with pytest.raises(ValueError, match="latent channels"):
        previews.latents_to_rgb(torch.zeros(4, 2, 2), previews.WAN21_RGB_FACTORS, (0, 0, 0))


def test_the_family_projections_take_the_first_image_and_the_middle_frame():
    sdxl = torch.zeros(2, 4, 8, 8)
    sdxl[1] = 5.0  # the second image must not show
    assert previews.sdxl_project(sdxl).shape == (8, 8, 3)
    assert (previews.sdxl_project(sdxl) == previews.sdxl_project(torch.zeros(1, 4, 8, 8))).all()
    wan = torch.zeros(1, 16, 5, 6, 4)
    wan[0, :, 2] = 1.0  # the middle of five latent frames
    assert (previews.wan_project(wan) != previews.wan_project(torch.zeros(1, 16, 5, 6, 4))).any()


def test_a_preview_is_an_upscaled_png_under_the_cap():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # incompressible
    roomy = previews.encode(noise, max_bytes=10**6)
    assert Image.open(io.BytesIO(roomy)).size == (128, 128)
    capped = previews.encode(noise, max_bytes=4096)
    assert 0 < len(capped) <= 4096 < len(roomy)
    image = Image.open(io.BytesIO(capped))
    assert image.format == "PNG" and image.size[0] < 128
    assert previews.encode(noise, max_bytes=64) == b""  # nothing that small shows anything


def test_due_every_n_steps_never_the_last():
    p = Previews(2, min_seconds=0)
    assert [s for s in range(1, 7) if p.due(s, 6)] == [2, 4]
    assert not any(Previews(0).due(s, 6) for s in range(1, 7))


def test_due_at_most_once_per_min_seconds():
    now = [0.0]
    p = Previews(1, min_seconds=1.0, clock=lambda: now[0])
    seen = []
    for step in range(1, 10):
        now[0] = step * 0.4
        if p.due(step, 10):
            seen.append(step)
    assert seen == [1, 4, 7]


def test_the_hook_sends_the_due_previews_and_is_absent_when_off():
    assert Previews(0).hook(previews.sdxl_project, lambda *a: None) is None
    sent = []
    hook = Previews(2, min_seconds=0, max_bytes=4096).hook(
        previews.sdxl_project, lambda step, total, png: sent.append((step, total, png))
    )
    for step in range(1, 6):
        hook(step, 5, torch.randn(1, 4, 16, 16))
    assert [(s, t) for s, t, _ in sent] == [(2, 5), (4, 5)]
    assert all(Image.open(io.BytesIO(png)).format == "PNG" for *_, png in sent)


def test_a_failing_projection_skips_the_preview():
    def broken(latents):
        raise RuntimeError("no")

    sent = []
    hook = Previews(1, min_seconds=0).hook(broken, lambda *a: sent.append(a))
    hook(1, 3, torch.zeros(1, 4, 4, 4))
    assert sent == []


def test_the_step_callback_hands_over_the_latents_before_the_step():
    calls = []

    class Pipe:
        num_timesteps = 3

    callback = step_callback(
        lambda step, total: calls.append(("step", step)),
        lambda: False,
        on_latents=lambda step, total, latents: calls.append(("latents", step, latents)),
    )
    callback(Pipe(), 0, 999, {"latents": "L"})
    callback(Pipe(), 1, 998, {})  # a pipeline that passes no latents
    assert calls == [("latents", 1, "L"), ("step", 1), ("step", 2)]


async def test_the_reporter_sends_a_preview_with_its_step_once():
    sent = []

    async def send(progress, preview=b"") -> bool:
        sent.append((progress.stage, progress.step, preview))
        return False

    reporter = ProgressReporter(send, threading.Event(), 0.0, asyncio.get_running_loop())

    def work() -> None:
        reporter.step(1, 4)
        reporter.preview(2, 4, b"png")
        reporter.step(2, 4)  # already sent with the preview
        reporter.step(3, 4)
        reporter.step(4, 4)

    await asyncio.to_thread(work)
    await reporter.close()
    assert sent == [
        ("denoising", 1, b""),
        ("denoising", 2, b"png"),
        ("denoising", 3, b""),
        ("denoising", 4, b""),
    ]
