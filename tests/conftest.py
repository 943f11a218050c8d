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
import psycopg
import pytest

from ourvidz import db, keys
from ourvidz.auth import GATEWAY_ROLES, WORKER_ROLES, TokenSigner, TokenVerifier
from ourvidz.errors import RemoteError, parse_rpc_error
from ourvidz.migrate import migration_folders
from ourvidz_dev.embedded import Embedded, start_nats, start_postgres, start_s3
from ourvidz_dev.stack import settings_from

ROOT = Path(__file__).resolve().parent.parent
# Each service role's own password (service name -> password).
ROLE_PASSWORDS = db.dev_passwords("ourvidz-test")
# Signs the local store's URLs in tests.
SECRET = "test-secret-0123456789-0123456789-abcdef"
# The test session's token keys: the gateway's (user and admin tokens) and a
# worker's (worker tokens). Their files and JWKS documents are in `base_env`.
GATEWAY_KEY = keys.generate_private_key()
WORKER_KEY = keys.generate_private_key()
GATEWAY_SIGNER = TokenSigner(GATEWAY_KEY, GATEWAY_ROLES)
WORKER_SIGNER = TokenSigner(WORKER_KEY, WORKER_ROLES)
# What every service of the test session verifies with.
VERIFIER = TokenVerifier([keys.public_jwk(GATEWAY_KEY)], [keys.public_jwk(WORKER_KEY)])


def token(subject: str, role: str = "user", ttl: int = 600, email: str = "") -> str:
    """An access token as the mesh issues it: signed with the test gateway key,
    or with the test worker key for role "worker"."""
    signer = WORKER_SIGNER if role == "worker" else GATEWAY_SIGNER
    return signer.mint(subject, role, ttl, email=email)


def foreign_token(subject: str, role: str = "user", ttl: int = 600) -> str:
    """A well-formed token signed with a key that no service trusts."""
    roles = WORKER_ROLES if role == "worker" else GATEWAY_ROLES
    return TokenSigner(keys.generate_private_key(), roles).mint(subject, role, ttl)


def write_keys(folder: Path) -> dict[str, str]:
    """The test keys as files, and the settings that name them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, key, jwks in (
        ("gateway", GATEWAY_KEY, "jwks.json"),
        ("worker", WORKER_KEY, "worker-jwks.json"),
    ):
        keys.write_private_key(folder / f"{name}.pem", key)
        keys.add_to_jwks(folder / jwks, keys.public_jwk(key))
    return {
        "AUTH_SIGNING_KEY_FILE": str(folder / "gateway.pem"),
        "AUTH_JWKS_FILE": str(folder / "jwks.json"),
        "AUTH_WORKER_JWKS_FILE": str(folder / "worker-jwks.json"),
        "WORKER_KEY_FILE": str(folder / "worker.pem"),
    }


# The session's servers once `infra` started them.
_STARTED: list[Embedded] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After the last test of each test folder (its stacks stopped), the jobs
    it left queued or running end: the database is shared, and a later
    folder's Jobs service would otherwise dispatch them to its own workers
    (a generated test's video at 832×480 on a CPU)."""
    yield
    # (After the last test of all, nothing follows: the servers are gone too.)
    if _STARTED and nextitem is not None and nextitem.path.parent != item.path.parent:
        end_active_jobs(_STARTED[0].database_url)


def end_active_jobs(owner_url: str) -> None:
    """Cancel every job still queued, enhancing or running (as the owner)."""
    with psycopg.connect(owner_url) as conn:
        conn.execute(
            "UPDATE jobs.jobs SET state = 'cancelled', completed_at = now() "
            "WHERE state IN ('queued', 'enhancing', 'running')"
        )


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
        _STARTED.append(emb)
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
        **write_keys(tmp_path_factory.mktemp("keys")),
        "LOG_JSON": "false",
        # The shared test database keeps the jobs of finished tests, whose
        # tasks are gone on purpose; the reconciler must not publish them
        # again for the next test's workers. Its own tests set their bounds.
        "JOBS_QUEUED_CHECK_SECONDS": "3600",
        # Every test client signs up and signs in from 127.0.0.1; the per-address
        # abuse limits are tested with their own settings.
        "GATEWAY_SIGNUPS_PER_ADDRESS": "100000",
        "GATEWAY_LOGIN_MAX_FAILURES_PER_ADDRESS": "100000",
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
