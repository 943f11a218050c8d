"""Settings of the WAN worker (env: WAN_MODEL, WAN_DEVICE, ...)."""

from __future__ import annotations

import os
import socket

from pydantic import Field

from ourvidz.settings import WorkerKeySettings


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WanSettings(WorkerKeySettings):
    # "tiny", "full-random" or a local WAN 2.1 text-to-video diffusers folder.
    wan_model: str = "tiny"
    wan_device: str = "auto"  # auto: cuda when available, else cpu
    wan_dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    wan_compile: bool = False
    # Memory: decode the video in tiles / one sample at a time.
    wan_vae_tiling: bool = False
    wan_vae_slicing: bool = False
    # H.264 quality of the MP4 (0 lossless .. 51; 18 looks lossless to the eye).
    wan_mp4_crf: int = Field(18, ge=0, le=51)
    wan_port: int = 50062
    wan_host: str = "127.0.0.1"
    wan_worker_id: str = Field(default_factory=_default_worker_id)
    # A task the worker holds is kept by a heartbeat every third of this; a
    # killed worker's task goes to another replica after at most this long.
    wan_ack_wait_seconds: float = 15.0
    # Delays before a failed job's message is redelivered, by attempt (how
    # many attempts a job gets is JOBS_MAX_ATTEMPTS).
    wan_retry_backoff_seconds: tuple[float, ...] = (5.0, 15.0, 30.0)
    # While the jobs service or storage is away the worker keeps the task and
    # retries; after this long it hands the task back to the queue with
    # wan_dependency_nak_seconds of delay. Neither costs the job an attempt.
    wan_dependency_wait_seconds: float = 600.0
    wan_dependency_nak_seconds: float = 30.0
    wan_progress_interval_seconds: float = 0.5
    # A preview of the denoising latents every this many steps (0: none),
    # at most one per wan_preview_min_seconds, each a PNG of at most
    # wan_preview_max_bytes (smaller images until it fits).
    wan_preview_every_steps: int = Field(2, ge=0)
    wan_preview_min_seconds: float = Field(1.0, ge=0)
    wan_preview_max_bytes: int = Field(64 * 1024, ge=1024)
    # How long one pull request waits for a task before the next one.
    wan_fetch_timeout_seconds: float = 5.0
    # How long SIGTERM waits for the job in hand before handing it back (a
    # video_high job takes about a minute on a GPU).
    wan_shutdown_grace_seconds: float = 90.0
