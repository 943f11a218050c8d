"""Apply every service's migrations: `python -m ourvidz.migrate`.

Run by the owner of the database (DATABASE_URL) before the services start: by
`make up`, by the test fixtures, and as a Kubernetes Job before a rollout. It
creates the database and the service login roles when they are missing, then
makes admins of the existing accounts listed in OURVIDZ_BOOTSTRAP_ADMINS
(a@x,b@y) and names the addresses that have no account.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ourvidz import db, logs, operator
from ourvidz.settings import CommonSettings

SERVICES = Path(__file__).resolve().parent.parent / "services"


def migration_folders(root: Path = SERVICES) -> list[Path]:
    return sorted(p for p in root.glob("*/migrations") if p.is_dir())


def main() -> None:
    settings = CommonSettings()
    logs.setup("migrate", settings.log_level, settings.log_json)
    db.prepare(
        settings.database_url,
        settings.db_role_password.get_secret_value(),
        migration_folders(),
    )
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
