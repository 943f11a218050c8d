"""The migration steps of a deployment against the real PostgreSQL: the Job
waits for the database, and a service's pod (with its own login) waits until
its image's migrations are applied."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ourvidz import db, migrate
from tests.conftest import ROLE_PASSWORDS


def test_a_service_login_sees_its_migrations_applied(infra):
    url = db.role_url(infra.database_url, db.SERVICE_ROLE["jobs"], ROLE_PASSWORDS["jobs"])
    assert db.pending_migrations(url, migrate.migration_folders()) == set()
    assert migrate.await_schema(url, 0) == set()


def test_a_database_without_the_migrations_is_waited_for_then_refused(infra):
    params = conninfo_to_dict(infra.database_url)
    name = f"ourvidz_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(infra.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    empty = make_conninfo("", **{**params, "dbname": name})
    folders = migrate.migration_folders()
    assert db.pending_migrations(empty, folders) == db.migration_ids(folders)
    started = time.monotonic()
    pending = migrate.await_schema(empty, 0.5, poll=0.1)
    assert pending == db.migration_ids(folders)
    assert time.monotonic() - started >= 0.4  # it waited, polling


def test_await_schema_main_needs_a_set_url_variable(monkeypatch):
    monkeypatch.delenv("OURVIDZ_TEST_NO_URL", raising=False)
    with pytest.raises(SystemExit) as exc:
        migrate.main(["--await-schema", "--url-env", "OURVIDZ_TEST_NO_URL"])
    assert exc.value.code == 2


def test_the_job_retries_an_unreachable_database_until_its_deadline():
    calls = []

    def unreachable():
        calls.append(1)
        raise psycopg.OperationalError("connection refused")

    with pytest.raises(psycopg.OperationalError):
        migrate.retrying("migrate", unreachable, 0.3, poll=0.05)
    assert len(calls) > 1
    assert migrate.retrying("migrate", lambda: "done", 0) == "done"


def test_an_owner_with_createrole_but_not_superuser_can_migrate_twice(infra):
    """The deployment's owner (CNPG's managed role) has CREATEROLE only: the
    service roles are made and their passwords set again on every run."""
    suffix = uuid.uuid4().hex[:8]
    owner, service = f"ourvidz_owner_{suffix}", f"ourvidz_svc_{suffix}"
    with psycopg.connect(infra.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {owner} LOGIN CREATEROLE PASSWORD 'owner-pw-0123456789'")
    params = conninfo_to_dict(infra.database_url)
    owner_url = make_conninfo("", **{**params, "user": owner, "password": "owner-pw-0123456789"})
    db.ensure_roles(owner_url, {service: "first-password-0123456"})
    db.ensure_roles(owner_url, {service: "second-password-0123456"})
    url = make_conninfo("", **{**params, "user": service, "password": "second-password-0123456"})
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolbypassrls, rolcreatedb, rolcreaterole FROM pg_roles"
            " WHERE rolname = current_user"
        ).fetchone()
    assert row == (False, False, False, False)
    # A role that gained a privilege the owner cannot take away is refused,
    # never left as it is.
    with psycopg.connect(infra.database_url, autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {service} BYPASSRLS")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.ensure_roles(owner_url, {service: "third-password-01234567"})
