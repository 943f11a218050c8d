"""Admins are made by an operator: `ourvidz admin grant|revoke|list` and the
migration-time OURVIDZ_BOOTSTRAP_ADMINS, against the test database with its
owner URL; the gateway sees the change at the account's next refresh."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import pytest

from ourvidz.operator import OperatorSettings
from ourvidz_cli import main as cli
from tests.conftest import ROLE_PASSWORDS, ROOT, make_settings
from tests.gateway.gateway_helpers import assert_problem, auth

PASSWORD = "correct horse battery"
ADMIN_ROUTE = "/v1/admin/prompt-templates"


def _email() -> str:
    return f"op{uuid.uuid4().hex[:10]}@example.com"


async def _account(client, email: str) -> dict:
    """The login answer of a new account."""
    body = {"email": email, "password": PASSWORD}
    assert (await client.post("/v1/auth/signup", json=body)).status_code == 202
    login = await client.post("/v1/auth/login", json=body)
    assert login.status_code == 200, login.text
    return login.json()


async def _refresh(client, session: dict) -> dict:
    r = await client.post("/v1/auth/refresh", json={"refresh_token": session["refresh_token"]})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def owner_url(base_env, monkeypatch) -> str:
    monkeypatch.setenv("DATABASE_URL", base_env["DATABASE_URL"])
    return base_env["DATABASE_URL"]


async def test_grant_list_and_revoke_reach_the_next_refresh(client, owner_url, capsys):
    email = _email()
    session = await _account(client, email)
    assert session["user"]["role"] == "user"
    assert_problem(await client.get(ADMIN_ROUTE, headers=auth(session["access_token"])), 403)

    assert cli.main(["admin", "grant", email.upper()]) == 0
    assert f"{email} is an admin" in capsys.readouterr().err
    session = await _refresh(client, session)
    assert session["user"]["role"] == "admin"
    allowed = await client.get(ADMIN_ROUTE, headers=auth(session["access_token"]))
    assert allowed.status_code == 200, allowed.text
    login = await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.json()["user"]["role"] == "admin"

    assert cli.main(["admin", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line for line in listed if line.startswith(f"{email} ")], listed

    assert cli.main(["admin", "revoke", email]) == 0
    assert f"{email} is a user" in capsys.readouterr().err
    session = await _refresh(client, session)
    assert session["user"]["role"] == "user"
    assert_problem(await client.get(ADMIN_ROUTE, headers=auth(session["access_token"])), 403)
    assert cli.main(["admin", "list"]) == 0
    assert email not in capsys.readouterr().out


async def test_grant_of_an_unknown_address_fails_and_changes_nothing(client, owner_url, capsys):
    unknown = _email()
    assert cli.main(["admin", "grant", unknown]) == 1
    assert f"no account has the address '{unknown}'" in capsys.readouterr().err
    # Signing up later with that address still makes a user.
    assert (await _account(client, unknown))["user"]["role"] == "user"
    assert cli.main(["admin", "revoke", _email()]) == 1


def test_an_unreachable_database_is_a_clear_failure(monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/ourvidz")
    assert cli.main(["admin", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the database")
    assert "Traceback" not in err


def test_admin_without_an_action_is_bad_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["admin"])
    assert exc.value.code == 2
    assert "grant" in capsys.readouterr().err


def test_bootstrap_admins_setting_is_a_list_of_addresses(base_env):
    settings = make_settings(
        OperatorSettings, base_env, ourvidz_bootstrap_admins=" A@x.io; b@y.io ,"
    )
    assert settings.bootstrap_admins == ["a@x.io", "b@y.io"]
    assert make_settings(OperatorSettings, base_env).bootstrap_admins == []


async def test_migrate_bootstraps_the_listed_accounts_and_names_the_missing(client, base_env):
    email, missing = _email(), _email()
    session = await _account(client, email)
    # The migration sets each role's password: give it the test session's, as
    # an operator gives it the deployment's.
    passwords = {f"DB_PASSWORD_{name.upper()}": pw for name, pw in ROLE_PASSWORDS.items()}
    env = {
        **os.environ,
        **base_env,
        **passwords,
        "OURVIDZ_BOOTSTRAP_ADMINS": f"{email.upper()}, {missing}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ourvidz.migrate",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
    text = output.decode()
    assert proc.returncode == 0, text
    assert missing in text and "no account has" in text
    assert "Traceback" not in text
    session = await _refresh(client, session)
    assert session["user"]["role"] == "admin"
