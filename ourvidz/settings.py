"""Settings shared by every service, read from the environment.

Each service subclasses `CommonSettings` with its own fields (named with the
service's prefix, e.g. `jobs_port` <- JOBS_PORT), builds the object once in its
`main`, and passes it down. Defaults suit a developer's machine; outside
`dev`/`test` the validator refuses the well-known development secrets and
missing keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "ourvidz-dev-secret-change-me-0123456789"


# Images one SDXL denoising batch may hold when Jobs groups compatible jobs
# into one message (SDXL_BATCH_MAX_IMAGES; `ourvidz.batching`).
SDXL_BATCH_MAX_IMAGES = 6
# The shortest database role password accepted outside dev/test.
MIN_DB_PASSWORD = 16


def dev_password(service: str) -> str:
    """The development password of a service's database role (dev/test only)."""
    return f"ourvidz-dev-{service}"


class CatalogLimits(BaseSettings):
    """Size and frame limits of the job catalog. A deployment may narrow them;
    the dev/test profile allows the small sizes that keep CPU runs fast."""

    model_config = SettingsConfigDict(env_prefix="CATALOG_", extra="ignore")

    sdxl_min_size: int = 512
    sdxl_max_size: int = 1536
    wan_min_size: int = 256
    wan_max_size: int = 1280
    wan_max_frames: int = 121
    max_prompt_chars: int = 2000
    max_negative_prompt_chars: int = 2000


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    env: Literal["dev", "test", "prod"] = Field("dev", validation_alias="OURVIDZ_ENV")
    log_level: str = "INFO"
    log_json: bool = True

    # PostgreSQL: the owner URL runs migrations (`python -m ourvidz.migrate`)
    # and nothing else. A service connects with its own role's URL
    # (<SERVICE>_DATABASE_URL, see `service_database_url`).
    database_url: str = "postgresql://postgres@127.0.0.1:5432/ourvidz"
    db_pool_size: int = 10
    # How long a request waits for a database connection before it answers
    # "database unavailable" (keep it under grpc_deadline_seconds).
    db_pool_timeout_seconds: float = 5.0

    # One server, or several of a cluster, comma separated
    # (nats://a:4222,nats://b:4222): the client moves to another when one is lost.
    nats_url: str = "nats://127.0.0.1:4222"
    # Replicas of the JetStream streams and key-value buckets a service creates
    # (3 on a 3-node cluster; at most 5). Every service that declares them reads
    # it; an existing stream's replicas are raised to it, never lowered.
    queue_replicas: int = Field(1, ge=1, le=5)

    # Blob storage: "local" (a folder, URLs served by the gateway) or "s3".
    storage_backend: Literal["local", "s3"] = "local"
    storage_root: str = ".data/blobs"
    s3_endpoint: str = ""
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    # The S3 endpoint that users download from, when it is not S3_ENDPOINT
    # (e.g. https://s3.example.com in front of a cluster-internal MinIO):
    # signed URLs name it. "http://host" for plain HTTP; empty: S3_ENDPOINT.
    s3_public_endpoint: str = ""
    storage_signing_key: SecretStr = SecretStr(DEV_SECRET)
    signed_url_ttl_seconds: int = 3600
    # Base of the gateway that serves local signed URLs.
    public_base_url: str = "http://127.0.0.1:8080"

    # Identity: EdDSA tokens, verified with public keys only. AUTH_JWKS (an
    # inline JWKS document) and/or AUTH_JWKS_FILE: the gateway's keys, which
    # sign user and admin tokens; AUTH_WORKER_JWKS(_FILE): the workers' keys,
    # which sign worker tokens. Several keys in a set: rotation.
    auth_jwks: str = ""
    auth_jwks_file: str = ""
    auth_worker_jwks: str = ""
    auth_worker_jwks_file: str = ""
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600

    # Where the gRPC services listen (clients) — host:port.
    jobs_addr: str = "127.0.0.1:50051"
    workspace_addr: str = "127.0.0.1:50052"
    enhancer_addr: str = "127.0.0.1:50053"

    grpc_deadline_seconds: float = 10.0

    # Prometheus metrics (ourvidz.metrics): /metrics of this process on an
    # internal address, never on the service's public port. 0 = off; the k8s
    # deployment sets 0.0.0.0 and 9464 (the pods' `metrics` port).
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    # The prompt policy (ourvidz.policy): deny-listed terms, comma-separated,
    # and/or a file with one term per line. Checked by Jobs at submit and by the
    # enhancer on its input and its output.
    prompt_deny_list: str = ""
    prompt_deny_list_file: str = ""
    # The image budget of a batch of SDXL jobs: Jobs puts jobs of at most this
    # many images together in one message, and the SDXL worker runs a batch
    # in pipeline calls of at most this many images (a single job runs whole).
    sdxl_batch_max_images: int = Field(SDXL_BATCH_MAX_IMAGES, ge=1)

    def token_verifier(self):
        from ourvidz.auth import TokenVerifier

        return TokenVerifier.from_settings(self)

    # The service whose database role these settings connect as ("jobs", ...);
    # None for a process without a database connection.
    db_service: ClassVar[str | None] = None

    def service_database_url(self) -> str:
        """This service's own database URL: <SERVICE>_DATABASE_URL, or in
        dev/test, when that is unset, the owner URL with the service's role
        and DB_PASSWORD_<SERVICE> (by default the development password that
        `python -m ourvidz.migrate` gives the role in dev/test)."""
        service = self.db_service
        if service is None:
            raise ValueError(f"{type(self).__name__} has no database connection")
        own = getattr(self, f"{service}_database_url").get_secret_value()
        if own:
            return own
        if self.env not in ("dev", "test"):
            raise ValueError(f"{service.upper()}_DATABASE_URL must be set outside dev/test")
        from ourvidz.db import SERVICE_ROLE, role_url

        password = getattr(self, f"db_password_{service}").get_secret_value()
        return role_url(self.database_url, SERVICE_ROLE[service], password or dev_password(service))

    def prompt_policy(self):
        from ourvidz.policy import PromptPolicy

        return PromptPolicy.from_settings(self.prompt_deny_list, self.prompt_deny_list_file)

    @model_validator(mode="after")
    def _refuse_dev_secrets(self) -> CommonSettings:
        if self.env == "prod":
            # Only the local backend signs URLs with it; S3 presigns with its own keys.
            value = self.storage_signing_key.get_secret_value()
            if self.storage_backend == "local" and (value == DEV_SECRET or len(value) < 32):
                raise ValueError(
                    "STORAGE_SIGNING_KEY must be set to a secret of 32+ characters in prod"
                )
            if not (self.auth_jwks.strip() or self.auth_jwks_file):
                raise ValueError("AUTH_JWKS_FILE (or AUTH_JWKS) must be set in prod")
            service = self.db_service
            if service and not getattr(self, f"{service}_database_url").get_secret_value():
                raise ValueError(
                    f"{service.upper()}_DATABASE_URL (the service's own database role) "
                    "must be set in prod"
                )
        return self

    def limits(self) -> CatalogLimits:
        if self.env in ("dev", "test"):
            # Small sizes keep CPU runs of the tiny models fast.
            return CatalogLimits(sdxl_min_size=64, wan_min_size=16)
        return CatalogLimits()


class WorkerKeySettings(CommonSettings):
    """A worker's own credential: the Ed25519 private key (PKCS8 PEM) its
    worker tokens are signed with, from WORKER_KEY_FILE (or WORKER_KEY inline).
    Its public key belongs in the AUTH_WORKER_JWKS of the services it calls."""

    worker_key_file: str = ""
    worker_key: SecretStr = SecretStr("")

    @model_validator(mode="after")
    def _require_worker_key(self) -> WorkerKeySettings:
        if self.env == "prod" and not (self.worker_key_file or self.worker_key.get_secret_value()):
            raise ValueError("WORKER_KEY_FILE (or WORKER_KEY) must be set in prod")
        return self

    def worker_signer(self):
        """The signer of this worker's tokens; ValueError with what to set when
        there is no usable key."""
        from ourvidz.auth import WORKER_ROLES, TokenSigner

        return TokenSigner.from_pem(
            read_key("WORKER_KEY", self.worker_key, self.worker_key_file), WORKER_ROLES
        )


def read_key(name: str, inline: SecretStr, path: str) -> bytes:
    """A PEM private key from the setting `name` (inline) or `name`_FILE."""
    if inline.get_secret_value():
        return inline.get_secret_value().encode()
    if not path:
        raise ValueError(
            f"{name}_FILE is not set: make a key with `python -m ourvidz.keys generate DIR`"
        )
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from exc
