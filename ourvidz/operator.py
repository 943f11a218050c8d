"""Operator commands: who is an admin.

    ourvidz admin grant EMAIL      # the account EMAIL becomes an admin
    ourvidz admin revoke EMAIL     # ... and a user again
    ourvidz admin list             # every admin

An admin is never made at sign-up: an operator, who holds the database owner's
URL (DATABASE_URL, as for `python -m ourvidz.migrate`), grants the role to an
account that exists. `python -m ourvidz.migrate` does the same for the
addresses in OURVIDZ_BOOTSTRAP_ADMINS (a@x,b@y), for a first deployment.

A change reaches the account's sessions at their next token refresh, which
reads the role from the database; an access token already issued keeps its
role until it expires (ACCESS_TOKEN_TTL_SECONDS).

Exit status: 0 done, 1 failed (an unknown address, the database unreachable;
the reason on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import psycopg
from psycopg.rows import dict_row
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ourvidz.settings import CommonSettings


class OperatorSettings(BaseSettings):
    """What the operator commands read: the owner's database URL and the
    addresses to make admins at migration time. Nothing else (no signing key)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    database_url: str = CommonSettings.model_fields["database_url"].default
    bootstrap_admins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="OURVIDZ_BOOTSTRAP_ADMINS"
    )

    @field_validator("bootstrap_admins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.replace(";", ",").split(",")
        if isinstance(value, list | tuple):
            return [str(v).strip().lower() for v in value if str(v).strip()]
        return value


class OperatorError(Exception):
    """The command could not do what was asked; the message says why."""


@dataclass
class Bootstrap:
    granted: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _connect(owner_url: str) -> psycopg.Connection:
    try:
        return psycopg.connect(owner_url, row_factory=dict_row, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise OperatorError(f"cannot reach the database: {_first_line(exc)}") from exc


def _set_role(conn: psycopg.Connection, email: str, role: str) -> dict | None:
    # The owner's own row level security policy on the identity tables lets it
    # see every account (gateway_0002_definer_lookups); no app.role is needed.
    return conn.execute(
        "UPDATE identity.users SET role = %s WHERE lower(email) = lower(%s)"
        " RETURNING id, email, role",
        (role, email.strip()),
    ).fetchone()


def set_role(owner_url: str, email: str, role: str) -> dict:
    """Give the account `email` the role "admin" or "user"; its row, or
    OperatorError when no account has that address."""
    with _connect(owner_url) as conn, conn.transaction():
        user = _set_role(conn, email, role)
    if user is None:
        raise OperatorError(f"no account has the address {email.strip()!r}: sign up first")
    return user


def grant_admin(owner_url: str, email: str) -> dict:
    return set_role(owner_url, email, "admin")


def revoke_admin(owner_url: str, email: str) -> dict:
    return set_role(owner_url, email, "user")


def list_admins(owner_url: str) -> list[dict]:
    with _connect(owner_url) as conn, conn.transaction():
        return conn.execute(
            "SELECT id, email, created_at FROM identity.users WHERE role = 'admin' ORDER BY email"
        ).fetchall()


def bootstrap_admins(owner_url: str, emails: Iterable[str]) -> Bootstrap:
    """Grant admin to each existing account of `emails`, in one transaction;
    the addresses without an account are reported, not created."""
    result = Bootstrap()
    with _connect(owner_url) as conn, conn.transaction():
        for email in emails:
            user = _set_role(conn, email, "admin")
            (result.granted if user else result.not_found).append(email)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ourvidz admin",
        description="Operator commands: grant or revoke the admin role of an existing "
        "account. They connect to DATABASE_URL, the database owner's URL.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    for name, helptext in (
        ("grant", "make the account with this address an admin"),
        ("revoke", "make the admin with this address a user again"),
    ):
        sub.add_parser(name, help=helptext).add_argument("email")
    sub.add_parser("list", help="list the admins")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    owner_url = OperatorSettings().database_url
    try:
        if args.action == "list":
            for row in list_admins(owner_url):
                created = row["created_at"].isoformat(timespec="seconds")
                sys.stdout.write(f"{row['email']}  {row['id']}  {created}\n")
        elif args.action == "grant":
            user = grant_admin(owner_url, args.email)
            sys.stderr.write(f"{user['email']} is an admin (from their next token refresh)\n")
        else:
            user = revoke_admin(owner_url, args.email)
            sys.stderr.write(
                f"{user['email']} is a user (from their next token refresh; "
                "an access token already issued keeps its role until it expires)\n"
            )
    except OperatorError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except psycopg.Error as exc:
        sys.stderr.write(f"error: the database refused: {_first_line(exc)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
