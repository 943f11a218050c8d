"""Gateway settings: where it listens, how strong a password must be, and
request size limits."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr, model_validator

from ourvidz.settings import CommonSettings, read_key

MIB = 1024 * 1024


class GatewaySettings(CommonSettings):
    # This service's own database login (GATEWAY_DATABASE_URL); in dev/test
    # it may be derived from DATABASE_URL and DB_PASSWORD_GATEWAY instead.
    db_service: ClassVar[str | None] = "gateway"
    gateway_database_url: SecretStr = SecretStr("")
    db_password_gateway: SecretStr = SecretStr("")
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # The private key (Ed25519, PKCS8 PEM) that signs access tokens: only the
    # gateway holds it. Its public key must be in AUTH_JWKS.
    auth_signing_key_file: str = ""
    auth_signing_key: SecretStr = SecretStr("")
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

    @model_validator(mode="after")
    def _require_signing_key(self) -> GatewaySettings:
        if self.env == "prod" and not (
            self.auth_signing_key_file or self.auth_signing_key.get_secret_value()
        ):
            raise ValueError("AUTH_SIGNING_KEY_FILE (or AUTH_SIGNING_KEY) must be set in prod")
        return self

    def token_signer(self):
        """The signer of user and admin tokens; ValueError with what to set
        when there is no usable key."""
        from ourvidz.auth import GATEWAY_ROLES, TokenSigner

        return TokenSigner.from_pem(
            read_key("AUTH_SIGNING_KEY", self.auth_signing_key, self.auth_signing_key_file),
            GATEWAY_ROLES,
        )
