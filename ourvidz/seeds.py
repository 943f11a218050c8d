"""Seeds that mean the same thing on every device.

A `torch.Generator` on a GPU draws other numbers than one on the CPU for the
same seed, so a generator made on the pipeline's device would give seed 42 a
different image on a GPU than on a CPU. Here every generator lives on the CPU:
each image's starting noise is drawn there, in float32, from that image's own
seed, and only then cast to the pipeline's dtype and moved to its device. The
noise of a seed is then the same whatever the device and dtype, and an image
of a batch starts from exactly the noise of its one-image rerun.

Imports torch: only model services import this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def cpu_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with that image's seed. diffusers
    accepts them for a pipeline on any device: it draws on the CPU and moves
    the result."""
    return [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]


def initial_noise(
    generators: Sequence[torch.Generator],
    shape: Sequence[int],
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The starting latents of a batch, `(len(generators), *shape)`: row `i`
    drawn from `generators[i]` on the CPU in float32 (what diffusers' own
    `randn_tensor` draws there for a float32 pipeline), then cast to `dtype`
    and moved to `device`."""
    rows = [
        torch.randn((1, *shape), generator=g, device="cpu", dtype=torch.float32) for g in generators
    ]
    return torch.cat(rows).to(device=device, dtype=dtype)
