"""Real servers for the whole suite: PostgreSQL, NATS JetStream and an S3
protocol server, started once per session (embedded unless DATABASE_URL /
NATS_URL / S3_ENDPOINT point elsewhere), with every service's migrations
applied."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import grpc
import pytest

from ourvidz import db
from ourvidz.dev.embedded import Embedded, start_nats, start_postgres, start_s3
from ourvidz.dev.stack import settings_from
from ourvidz.errors import RemoteError, parse_rpc_error
from ourvidz.migrate import migration_folders

ROOT = Path(__file__).resolve().parent.parent
# Each service role's own password (service name -> password).
ROLE_PASSWORDS = db.dev_passwords("ourvidz-test")
SECRET = "test-secret-0123456789-0123456789-abcdef"


@pytest.fixture(scope="session")
def infra():
    """URLs of the real servers for this test session."""
    tmp = Path(tempfile.mkdtemp(prefix="ovt"))  # short: the PostgreSQL socket lives here
    emb = Embedded()
    try:
        if os.environ.get("DATABASE_URL"):
            base = os.environ["DATABASE_URL"]
            from psycopg.conninfo import conninfo_to_dict, make_conninfo

            params = conninfo_to_dict(base)
            params["dbname"] = f"ourvidz_test_{uuid.uuid4().hex[:8]}"
            emb.database_url = make_conninfo("", **params)
        else:
            start_postgres(tmp / "pg", emb)
        emb.nats_url = os.environ.get("NATS_URL") or start_nats(tmp / "nats", emb)
        emb.s3_endpoint = os.environ.get("S3_ENDPOINT") or start_s3(emb)
        db.prepare(emb.database_url, ROLE_PASSWORDS, migration_folders())
        yield emb
    finally:
        emb.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def base_env(infra, tmp_path_factory) -> dict[str, str]:
    """Environment for any service's settings, pointing at the test servers.
    Each service connects with its own URL (<SERVICE>_DATABASE_URL); the owner
    URL (DATABASE_URL) is here only for tests that inspect the database as
    its owner."""
    return {
        "OURVIDZ_ENV": "test",
        "DATABASE_URL": infra.database_url,
        **db.service_url_env(infra.database_url, ROLE_PASSWORDS),
        "NATS_URL": infra.nats_url,
        "STORAGE_BACKEND": "s3",
        "S3_ENDPOINT": infra.s3_endpoint,
        "S3_ACCESS_KEY": "testing",
        "S3_SECRET_KEY": "testing",
        "STORAGE_ROOT": str(tmp_path_factory.mktemp("blobs")),
        "STORAGE_SIGNING_KEY": SECRET,
        "AUTH_SECRET": SECRET,
        "LOG_JSON": "false",
        # The shared test database keeps the jobs of finished tests, whose
        # tasks are gone on purpose; the reconciler must not publish them
        # again for the next test's workers. Its own tests set their bounds.
        "JOBS_QUEUED_CHECK_SECONDS": "3600",
    }


def make_settings(cls, env: dict[str, str], **overrides):
    """Build a settings object from `env` without touching os.environ."""
    return settings_from(cls, {**env, **{k.upper(): str(v) for k, v in overrides.items()}})


async def rpc_error(call) -> RemoteError:
    """The error a gRPC call ends with, decoded (fails the test when it succeeds)."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return parse_rpc_error(exc)
    raise AssertionError("the call succeeded")
