"""Gateway settings: where it listens, who is an admin, and request size limits."""

from __future__ import annotations

import json
from typing import Annotated, ClassVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from ourvidz.settings import CommonSettings

MIB = 1024 * 1024


class GatewaySettings(CommonSettings):
    # This service's own database login (GATEWAY_DATABASE_URL); in dev/test
    # it may be derived from DATABASE_URL and DB_PASSWORD_GATEWAY instead.
    db_service: ClassVar[str | None] = "gateway"
    gateway_database_url: SecretStr = SecretStr("")
    db_password_gateway: SecretStr = SecretStr("")
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # Emails that get the admin role when they sign up (GATEWAY_ADMIN_EMAILS=a@x,b@y).
    gateway_admin_emails: Annotated[list[str], NoDecode] = Field(default_factory=list)
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

    @field_validator("gateway_admin_emails", mode="before")
    @classmethod
    def _split_emails(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.replace(";", ",").split(",")
        if isinstance(value, list | tuple):
            return [str(v).strip().lower() for v in value if str(v).strip()]
        return value
