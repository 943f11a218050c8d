"""Gateway settings: where it listens, how strong a password must be, and
request size limits."""

from __future__ import annotations

from pydantic import Field

from ourvidz.settings import CommonSettings

MIB = 1024 * 1024


class GatewaySettings(CommonSettings):
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # The zxcvbn score (0-4) a new password must reach; 3 is about 10^8 guesses.
    gateway_min_password_score: int = Field(3, ge=0, le=4)
    # JSON bodies larger than this are refused with 413 before they are parsed.
    gateway_max_json_bytes: int = 64 * 1024
    # Reference image uploads: the image itself, plus room for the multipart framing.
    gateway_max_upload_bytes: int = 20 * MIB
    gateway_multipart_overhead_bytes: int = 64 * 1024
    # A comment line on idle SSE streams so proxies keep them open.
    gateway_sse_keepalive_seconds: float = 15.0
    # Deadline of an upload call (the workspace decodes and stores the image).
    gateway_upload_deadline_seconds: float = 60.0
    # Deadlines of calls that run the enhancer's model: one enhancement, a
    # template test over several sample prompts, and a whole playground chat.
    gateway_enhance_deadline_seconds: float = 60.0
    gateway_template_test_deadline_seconds: float = 300.0
    gateway_chat_deadline_seconds: float = 300.0
    # Seconds to finish in-flight requests on shutdown.
    gateway_shutdown_grace_seconds: float = 10.0
