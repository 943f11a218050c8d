"""Apply every service's migrations: `python -m ourvidz.migrate`.

Run by the owner of the database (DATABASE_URL) before the services start: by
`make up`, by the test fixtures, and as a Kubernetes Job before a rollout. It
creates the database and the service login roles when they are missing,
sets each role's own password (DB_PASSWORD_GATEWAY, DB_PASSWORD_JOBS,
DB_PASSWORD_WORKSPACE, DB_PASSWORD_ENHANCER), then makes admins of the existing
accounts listed in OURVIDZ_BOOTSTRAP_ADMINS (a@x,b@y) and names the addresses
that have no account. This is the only process that holds the owner URL.
"""

from __future__ import annotations

import logging
from pathlib import Path

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


def main() -> None:
    settings = MigrateSettings()
    logs.setup("migrate", settings.log_level, settings.log_json)
    db.prepare(settings.database_url, settings.role_passwords(), migration_folders())
    logging.getLogger(__name__).info("database ready")
    bootstrap(settings.database_url, operator.OperatorSettings().bootstrap_admins)


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
    main()
