"""Running a job in less GPU memory, after it ran out: what to try next
(`memory_fallbacks`) and the decode in slices and tiles (`low_memory_decode`).

A family follows `JobRun.memory`: it splits its batch into pipeline calls of
at most `max_batch` images, each image with the seed it has in the whole
batch, so the retried job gives the same images.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryFallback:
    """How much of the device's memory a render may ask for: at most
    `max_batch` images per pipeline call (None: the whole job at once), and
    with `low_memory_decode` the VAE decodes one image at a time, in tiles
    where it can (`enable_slicing`, `enable_tiling`)."""

    max_batch: int | None = None
    low_memory_decode: bool = False

    def describe(self) -> str:
        parts = []
        if self.low_memory_decode:
            parts.append("VAE slicing and tiling")
        if self.max_batch is not None:
            parts.append(f"batches of {self.max_batch}")
        return " + ".join(parts) or "the full batch"


FULL_MEMORY = MemoryFallback()


def memory_fallbacks(num_images: int) -> list[MemoryFallback]:
    """What an out-of-memory render tries next, in order: the decode in
    slices and tiles, then the batch halved (rounded up) until one image."""
    ladder = [MemoryFallback(low_memory_decode=True)]
    batch = max(num_images, 1)
    while batch > 1:
        batch = (batch + 1) // 2
        ladder.append(MemoryFallback(max_batch=batch, low_memory_decode=True))
    return ladder


@contextlib.contextmanager
def low_memory_decode(vae, enabled: bool = True) -> Iterator[None]:
    """VAE slicing (one image at a time) and tiling on for the block, where
    `enabled` and the VAE has them; as they were afterwards, so later jobs
    decode at full speed."""
    switches = [
        name
        for name in ("slicing", "tiling")
        if enabled and callable(getattr(vae, f"enable_{name}", None))
    ]
    before = {name: bool(getattr(vae, f"use_{name}", False)) for name in switches}
    for name in switches:
        getattr(vae, f"enable_{name}")()
    try:
        yield
    finally:
        for name in switches:
            if not before[name]:
                getattr(vae, f"disable_{name}")()
