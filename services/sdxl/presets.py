"""The names SDXL_MODEL accepts besides a local path, and which of them a
production deployment refuses (kept apart from `models`, which imports torch,
so that the settings can check them cheaply at start).

- `tiny`: the real classes at tiny widths, seeded random weights (tests, dev);
- `full-random`: the real architecture at full size, random weights (GPU
  benchmarks);
- `control-plane`: no model at all (`models.ControlPlanePipeline`): every
  denoising step is reported but none is computed, and the images are flat
  PNGs at the requested size. It exists for the control-plane load bench
  (`python -m ourvidz_dev.bench --only control-plane`) and for tests, so that
  they measure the gateway, Jobs, the queue, the worker loop's bookkeeping and
  Workspace filing rather than a model. It is refused when OURVIDZ_ENV=prod.
"""

from __future__ import annotations

TINY = "tiny"
FULL_RANDOM = "full-random"
CONTROL_PLANE = "control-plane"

# Presets for benchmarks and tests only: SdxlSettings refuses them in prod.
NOT_FOR_PRODUCTION = frozenset({CONTROL_PLANE})


def check_allowed(model: str, env: str) -> None:
    """Raise ValueError when `model` is a bench/test preset and `env` is prod."""
    if env == "prod" and model.strip().lower() in NOT_FOR_PRODUCTION:
        raise ValueError(
            f"SDXL_MODEL={model!r} is a bench/test preset that renders nothing; "
            "it is refused when OURVIDZ_ENV=prod"
        )
