"""Settings of the SDXL worker (env: SDXL_MODEL, SDXL_DEVICE, ...)."""

from __future__ import annotations

import os
import socket

from pydantic import Field, model_validator

from ourvidz.settings import WorkerKeySettings
from services.sdxl import presets


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class SdxlSettings(WorkerKeySettings):
    # "tiny", "full-random", a diffusers folder or a single-file .safetensors;
    # "control-plane" (no model: benchmarks and tests only, refused in prod).
    sdxl_model: str = "tiny"
    # Local folder with SDXL base's configs and tokenizers, for a single-file checkpoint.
    sdxl_config_dir: str = ""
    sdxl_device: str = "auto"  # auto: cuda when available, else cpu
    sdxl_dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    sdxl_compile: bool = False
    sdxl_port: int = 50061
    sdxl_host: str = "127.0.0.1"
    sdxl_worker_id: str = Field(default_factory=_default_worker_id)
    # A task the worker holds is kept by a heartbeat every third of this; a
    # killed worker's task goes to another replica after at most this long.
    sdxl_ack_wait_seconds: float = 15.0
    # Delays before a failed job's message is redelivered, by attempt (how
    # many attempts a job gets is JOBS_MAX_ATTEMPTS).
    sdxl_retry_backoff_seconds: tuple[float, ...] = (5.0, 15.0, 30.0)
    # While the jobs service or storage is away the worker keeps the task and
    # retries; after this long it hands the task back to the queue with
    # sdxl_dependency_nak_seconds of delay. Neither costs the job an attempt.
    sdxl_dependency_wait_seconds: float = 600.0
    sdxl_dependency_nak_seconds: float = 30.0
    sdxl_progress_interval_seconds: float = 0.5
    # A preview of the denoising latents every this many steps (0: none),
    # at most one per sdxl_preview_min_seconds, each a PNG of at most
    # sdxl_preview_max_bytes (smaller images until it fits).
    sdxl_preview_every_steps: int = Field(5, ge=0)
    sdxl_preview_min_seconds: float = Field(1.0, ge=0)
    sdxl_preview_max_bytes: int = Field(64 * 1024, ge=1024)
    # How long one pull request waits for a task before the next one.
    sdxl_fetch_timeout_seconds: float = 5.0
    # How long SIGTERM waits for the job in hand before handing it back.
    sdxl_shutdown_grace_seconds: float = 30.0

    @model_validator(mode="after")
    def _refuse_bench_presets_in_prod(self) -> SdxlSettings:
        presets.check_allowed(self.sdxl_model, self.env)
        return self
