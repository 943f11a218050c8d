"""Settings of the workspace service (env: WORKSPACE_*, plus the common ones)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import SecretStr

from ourvidz.queue import WORKSPACE_CONSUMER
from ourvidz.settings import CommonSettings


class WorkspaceSettings(CommonSettings):
    # This service's own database login (WORKSPACE_DATABASE_URL); in dev/test
    # it may be derived from DATABASE_URL and DB_PASSWORD_WORKSPACE instead.
    db_service: ClassVar[str | None] = "workspace"
    workspace_database_url: SecretStr = SecretStr("")
    db_password_workspace: SecretStr = SecretStr("")
    workspace_host: str = "127.0.0.1"
    workspace_port: int = 50052
    # Idle sessions (no item filed, cleared, saved or opened as the active one)
    # are emptied and retired after this long.
    workspace_session_max_idle_seconds: int = 7 * 24 * 3600
    workspace_cleanup_interval_seconds: float = 3600.0
    # Reference uploads: encoded size and decoded pixel count (decompression bombs).
    workspace_upload_max_bytes: int = 20 * 1024 * 1024
    workspace_upload_max_pixels: int = 40_000_000
    # The durable JetStream consumer that files completed jobs.
    workspace_events_durable: str = WORKSPACE_CONSUMER
    workspace_filer_batch: int = 16
    workspace_filer_ack_wait_seconds: float = 30.0
    # Lists: page size when the caller sends none, and the most a page holds.
    workspace_default_page_size: int = 50
    workspace_max_page_size: int = 200
    workspace_shutdown_grace_seconds: float = 10.0
