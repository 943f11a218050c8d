"""Settings of the enhancer (env: ENHANCER_MODEL, ENHANCER_DEVICE, ...)."""

from __future__ import annotations

import os
import socket
from typing import ClassVar

from pydantic import Field, SecretStr

from ourvidz import queue
from ourvidz.settings import WorkerKeySettings


def _default_worker_id() -> str:
    return f"enhancer-{socket.gethostname()}-{os.getpid()}"


class EnhancerSettings(WorkerKeySettings):
    # This service's own database login (ENHANCER_DATABASE_URL); in dev/test
    # it may be derived from DATABASE_URL and DB_PASSWORD_ENHANCER instead.
    db_service: ClassVar[str | None] = "enhancer"
    enhancer_database_url: SecretStr = SecretStr("")
    db_password_enhancer: SecretStr = SecretStr("")
    # "tiny", "full-random" or a local folder with a Qwen2.5 instruct model.
    enhancer_model: str = "tiny"
    enhancer_device: str = "auto"  # auto: cuda when available, else cpu
    enhancer_dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    enhancer_host: str = "127.0.0.1"
    enhancer_port: int = 50053
    enhancer_worker_id: str = Field(default_factory=_default_worker_id)

    # Generation defaults, used where neither the request nor the template says.
    enhancer_temperature: float = 0.7
    enhancer_top_p: float = 0.9
    enhancer_max_new_tokens_wan: int = 200
    # SDXL prompts must fit CLIP's 77 tokens: a short generation budget.
    enhancer_max_new_tokens_sdxl: int = 80
    enhancer_chat_max_new_tokens: int = 256
    # At least this many new tokens (0: none). Forces long outputs in tests.
    enhancer_min_new_tokens: int = 0
    # A generation that takes longer falls back to the original prompt.
    enhancer_timeout_seconds: float = 30.0

    # How long a replica keeps the active templates before re-reading them (a
    # change also drops every replica's cache at once through NATS).
    enhancer_template_cache_seconds: float = 60.0
    enhancer_templates_subject: str = "enhancer.templates.changed"

    # A folder with a real CLIP tokenizer (e.g. an SDXL model's `tokenizer/`) to
    # measure SDXL prompts; empty: the offline one of ourvidz.tokenizers.
    enhancer_clip_tokenizer: str = ""

    # Chat playground limits.
    enhancer_chat_max_messages: int = 50
    enhancer_chat_max_chars: int = 16000
    enhancer_chat_timeout_seconds: float = 120.0

    # The enhance stage's consumer of tasks.enhance.
    enhancer_consumer: str = queue.ENHANCE_CONSUMER
    enhancer_ack_wait_seconds: float = 60.0
    enhancer_max_attempts: int = 3
    enhancer_retry_backoff_seconds: tuple[float, ...] = (2.0, 5.0, 15.0)
    enhancer_fetch_timeout_seconds: float = 1.0
    enhancer_shutdown_grace_seconds: float = 30.0

    def max_new_tokens(self, target_model: str) -> int:
        if target_model == "sdxl":
            return self.enhancer_max_new_tokens_sdxl
        return self.enhancer_max_new_tokens_wan
