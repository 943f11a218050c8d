"""Apply every service's migrations: `python -m ourvidz.migrate`.

Run by the owner of the database (DATABASE_URL) before the services start: by
`make up`, by the test fixtures, and as a Kubernetes Job before a rollout. It
creates the database and the service login roles when they are missing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ourvidz import db, logs
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


if __name__ == "__main__":
    main()
