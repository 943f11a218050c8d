"""Live previews while a job denoises: the current latents projected to RGB
with a fixed linear map per model family (no VAE decode), upscaled a little
and encoded as a small PNG under a byte cap, sent with a progress report.

A preview is made every `every_steps` denoising steps (0: never), at most one
per `min_seconds`, and never on the last step (the finished image follows at
once). It is best effort: a preview that fails or cannot fit the cap is
skipped and the job goes on.

The projections are the approximate latent -> RGB factors that ComfyUI's
previewer uses (comfy/latent_formats.py, `latent_rgb_factors` and
`latent_rgb_factors_bias` of `SDXL` and `Wan21`). They apply to the latents as
the pipelines hold them during denoising: SDXL's scaled by the VAE's scaling
factor, WAN 2.1's normalised by the VAE's `latents_mean`/`latents_std`. The
result is in [-1, 1] like a VAE's output.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model stack is imported where a worker uses it
    import numpy as np
    import torch

log = logging.getLogger(__name__)

# SDXL VAE, 4 latent channels: rows are channels, columns R, G, B.
# Source: ComfyUI comfy/latent_formats.py, class SDXL.
SDXL_RGB_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_RGB_BIAS = (0.1084, -0.0175, -0.0011)

# WAN 2.1 VAE, 16 latent channels: rows are channels, columns R, G, B.
# Source: ComfyUI comfy/latent_formats.py, class Wan21.
WAN21_RGB_FACTORS = (
    (-0.1299, -0.1692, 0.2932),
    (0.0671, 0.0406, 0.0442),
    (0.3568, 0.2548, 0.1747),
    (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328),
    (0.0296, -0.0956, -0.0665),
    (-0.3477, -0.4059, -0.2925),
    (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364),
    (-0.1293, 0.0740, 0.1636),
    (0.0680, 0.3019, 0.1128),
    (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699),
    (0.0060, -0.0633, 0.0005),
    (0.3477, 0.2275, 0.2950),
    (0.1984, 0.0913, 0.1861),
)
WAN21_RGB_BIAS = (-0.1835, -0.0868, -0.3360)

DEFAULT_MAX_BYTES = 64 * 1024
UPSCALE = 2  # latents are 1/8 of the image: twice that is still 1/4, and cheap
SMALLEST_SIDE = 16  # below this a preview shows nothing; skipped instead


def latents_to_rgb(latents: torch.Tensor, factors, bias) -> np.ndarray:
    """One image's latents (channels, height, width) -> RGB bytes (H, W, 3)."""
    import torch

    weight = torch.tensor(factors, dtype=torch.float32, device=latents.device)
    if latents.shape[0] != weight.shape[0]:
        raise ValueError(
            f"{latents.shape[0]} latent channels; the projection has {weight.shape[0]}"
        )
    shift = torch.tensor(bias, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("chw,cr->hwr", latents.float(), weight) + shift
    rgb = ((rgb + 1.0) / 2.0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return rgb.cpu().numpy()


def encode(rgb: np.ndarray, max_bytes: int = DEFAULT_MAX_BYTES, upscale: int = UPSCALE) -> bytes:
    """RGB bytes -> a PNG of at most `max_bytes`, upscaled by `upscale` and
    halved until it fits; b"" when even the smallest does not."""
    from PIL import Image

    image = Image.fromarray(rgb, mode="RGB")
    width, height = image.width * upscale, image.height * upscale
    while True:
        buffer = io.BytesIO()
        image.resize((width, height), Image.Resampling.BILINEAR).save(buffer, format="PNG")
        if buffer.tell() <= max_bytes:
            return buffer.getvalue()
        if min(width, height) // 2 < SMALLEST_SIDE:
            break
        width, height = width // 2, height // 2
    return b""


class Previews:
    """When a preview is due, and the step-callback hook that makes and sends it."""

    def __init__(
        self,
        every_steps: int,
        min_seconds: float = 1.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_steps = max(int(every_steps), 0)
        self.min_seconds = max(float(min_seconds), 0.0)
        self.max_bytes = max_bytes
        self._clock = clock
        self._last = float("-inf")
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.every_steps > 0

    def due(self, step: int, total: int) -> bool:
        """Whether step `step` (1-based) of `total` gets a preview; a due
        answer counts as sent for the throttle."""
        if not self.enabled or step >= total or step % self.every_steps:
            return False
        now = self._clock()
        with self._lock:
            if now - self._last < self.min_seconds:
                return False
            self._last = now
            return True

    def hook(
        self,
        project: Callable[[torch.Tensor], np.ndarray],
        send: Callable[[int, int, bytes], None],
    ) -> Callable[[int, int, torch.Tensor], None] | None:
        """`on_latents(step, total, latents)` for `step_callback`: when due,
        `project(latents)` gives the RGB image, sent as a PNG through
        `send(step, total, png)`. None when previews are off."""
        if not self.enabled:
            return None

        def on_latents(step: int, total: int, latents: torch.Tensor) -> None:
            if not self.due(step, total):
                return
            try:
                png = encode(project(latents), self.max_bytes)
            except Exception as exc:  # a preview is best effort
                log.warning("preview skipped: %s", exc)
                return
            if png:
                send(step, total, png)

        return on_latents


def sdxl_project(latents: torch.Tensor) -> np.ndarray:
    """The first image of an SDXL batch (batch, 4, h, w)."""
    return latents_to_rgb(latents[0], SDXL_RGB_FACTORS, SDXL_RGB_BIAS)


def wan_project(latents: torch.Tensor) -> np.ndarray:
    """The middle latent frame of a WAN 2.1 video (batch, 16, frames, h, w)."""
    return latents_to_rgb(latents[0, :, latents.shape[2] // 2], WAN21_RGB_FACTORS, WAN21_RGB_BIAS)
