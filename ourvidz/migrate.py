"""Apply every service's migrations: `python -m ourvidz.migrate`.

Run by the owner of the database (DATABASE_URL) before the services start: by
`make up`, by the test fixtures, and as a Kubernetes Job before a rollout. It
creates the database and the service login roles when they are missing,
sets each role's own password (DB_PASSWORD_GATEWAY, DB_PASSWORD_JOBS,
DB_PASSWORD_WORKSPACE, DB_PASSWORD_ENHANCER), then makes admins of the existing
accounts listed in OURVIDZ_BOOTSTRAP_ADMINS (a@x,b@y) and names the addresses
that have no account. This is the only process that holds the owner URL.

    python -m ourvidz.migrate [--wait SECONDS]
    python -m ourvidz.migrate --await-schema --url-env JOBS_DATABASE_URL [--wait SECONDS]

`--wait` retries the first connection until PostgreSQL answers (a Job that
starts before the database). `--await-schema` migrates nothing: with a
service's own login (the URL in the variable `--url-env` names) it waits
until every migration this image holds is applied, so a pod of a new version
never serves on the old schema (its init step, before the migration Job ran).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from pydantic import SecretStr, model_validator

from ourvidz import db, logs, operator
from ourvidz.settings import MIN_DB_PASSWORD, CommonSettings, dev_password

SERVICES = Path(__file__).resolve().parent.parent / "services"


class MigrateSettings(CommonSettings):
    """The owner URL and every service role's password. In dev/test a
    missing password is the role's development one; in prod each must be
    set, MIN_DB_PASSWORD characters or more, and distinct from the others."""

    db_password_gateway: SecretStr = SecretStr("")
    db_password_jobs: SecretStr = SecretStr("")
    db_password_workspace: SecretStr = SecretStr("")
    db_password_enhancer: SecretStr = SecretStr("")

    def role_passwords(self) -> dict[str, str]:
        """Service name -> its role's password."""
        return {
            name: getattr(self, f"db_password_{name}").get_secret_value() or dev_password(name)
            for name in db.SERVICE_ROLE
        }

    @model_validator(mode="after")
    def _refuse_weak_passwords(self) -> MigrateSettings:
        if self.env in ("dev", "test"):
            return self
        given = {n: getattr(self, f"db_password_{n}").get_secret_value() for n in db.SERVICE_ROLE}
        for name, value in given.items():
            if len(value) < MIN_DB_PASSWORD:
                raise ValueError(
                    f"DB_PASSWORD_{name.upper()} must be set to {MIN_DB_PASSWORD}+ characters"
                    " outside dev/test"
                )
        if len(set(given.values())) < len(given):
            raise ValueError("DB_PASSWORD_* must differ: each service role has its own password")
        return self


def migration_folders(root: Path = SERVICES) -> list[Path]:
    return sorted(p for p in root.glob("*/migrations") if p.is_dir())


def retrying(what: str, action: Callable[[], object], wait_seconds: float, poll: float = 2.0):
    """`action()`, tried again while PostgreSQL cannot be reached, for up to
    `wait_seconds` (0: once)."""
    log = logging.getLogger(__name__)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return action()
        except psycopg.OperationalError as exc:
            if time.monotonic() + poll > deadline:
                raise
            log.info("%s: database not reachable yet (%s); retrying", what, str(exc).strip())
            time.sleep(poll)


def await_schema(url: str, wait_seconds: float, poll: float = 2.0) -> set[str]:
    """Wait until the database at `url` has applied every migration of this
    image; returns those still pending when the time is up (empty: ready)."""
    log = logging.getLogger(__name__)
    deadline = time.monotonic() + wait_seconds
    folders = migration_folders()
    while True:
        try:
            pending = db.pending_migrations(url, folders)
        except psycopg.OperationalError as exc:
            pending = {f"(database not reachable: {str(exc).strip()})"}
        if not pending or time.monotonic() + poll > deadline:
            return pending
        log.info("waiting for the migration Job: %d pending", len(pending))
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ourvidz.migrate")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep trying for this long while the database cannot be reached",
    )
    parser.add_argument(
        "--await-schema",
        action="store_true",
        help="apply nothing; wait until this image's migrations are applied",
    )
    parser.add_argument(
        "--url-env",
        default="",
        metavar="NAME",
        help="with --await-schema: the variable that holds the service's own database URL",
    )
    args = parser.parse_args(argv)
    if args.await_schema:
        logs.setup("migrate", os.environ.get("LOG_LEVEL", "INFO"), True)
        url = os.environ.get(args.url_env, "") if args.url_env else ""
        if not url:
            parser.error("--await-schema needs --url-env NAME of a set variable")
        pending = await_schema(url, args.wait)
        if pending:
            print(f"migrations not applied: {', '.join(sorted(pending))}", file=sys.stderr)
            return 1
        logging.getLogger(__name__).info("schema ready")
        return 0
    settings = MigrateSettings()
    logs.setup("migrate", settings.log_level, settings.log_json)
    passwords = settings.role_passwords()
    retrying(
        "migrate",
        lambda: db.prepare(settings.database_url, passwords, migration_folders()),
        args.wait,
    )
    logging.getLogger(__name__).info("database ready")
    bootstrap(settings.database_url, operator.OperatorSettings().bootstrap_admins)
    return 0


def bootstrap(owner_url: str, emails: list[str]) -> None:
    """Grant admin to the accounts of OURVIDZ_BOOTSTRAP_ADMINS that exist."""
    if not emails:
        return
    log = logging.getLogger(__name__)
    result = operator.bootstrap_admins(owner_url, emails)
    if result.granted:
        log.info("admins: %s", ", ".join(result.granted))
    if result.not_found:
        log.warning(
            "OURVIDZ_BOOTSTRAP_ADMINS: no account has %s (sign up, then migrate again "
            "or run `ourvidz admin grant EMAIL`)",
            ", ".join(result.not_found),
        )


if __name__ == "__main__":
    sys.exit(main())
