"""The workspace's schema changes applied to a database that already holds
rows, by an owner who is no superuser (as in production, where row level
security binds the owner too): rows filed before the rendered prompt was
recorded get their prompt as their original."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ourvidz import db
from ourvidz.migrate import migration_folders
from tests.conftest import ROLE_PASSWORDS

BACKFILL = "workspace_0003_rendered_prompt"


def folders_before(tmp: Path, migration_id: str) -> list[Path]:
    """Copies of the service migration folders without `migration_id` and
    what follows it in its service."""
    service, number = migration_id.split("_")[0], migration_id.split("_")[1]
    out = []
    for folder in migration_folders():
        copy = tmp / folder.parent.name / "migrations"
        copy.mkdir(parents=True)
        for f in folder.glob("*.sql"):
            parts = f.stem.split("_")
            if parts[0] == service and parts[1] >= number:
                continue
            shutil.copy(f, copy / f.name)
        out.append(copy)
    return out


def test_existing_items_and_assets_get_their_prompt_as_the_original(infra, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    owner, password, dbname = f"owner_{suffix}", uuid.uuid4().hex, f"ourvidz_mig_{suffix}"
    with psycopg.connect(infra.database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS PASSWORD {}").format(
                sql.Identifier(owner), sql.Literal(password)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(dbname), sql.Identifier(owner)
            )
        )
    params = conninfo_to_dict(infra.database_url)
    owner_url = make_conninfo(
        "", **{**params, "dbname": dbname, "user": owner, "password": password}
    )
    service_url = db.service_url_env(owner_url, ROLE_PASSWORDS)["WORKSPACE_DATABASE_URL"]
    try:
        db.apply_migrations(owner_url, folders_before(tmp_path, BACKFILL))
        user_id, session_id = uuid.uuid4(), uuid.uuid4()
        with psycopg.connect(service_url) as conn:
            conn.execute(
                "SELECT set_config('app.user_id', %s, true), set_config('app.role', 'system', true)",
                (str(user_id),),
            )
            conn.execute(
                "INSERT INTO workspace.sessions (id, user_id) VALUES (%s, %s)",
                (session_id, user_id),
            )
            conn.execute(
                """INSERT INTO workspace.items
                     (id, session_id, user_id, job_id, index, content_type, prompt, bucket, key)
                   VALUES (%s, %s, %s, 'j1', 0, 'image/png', 'a typed prompt', 'b', 'k')""",
                (uuid.uuid4(), session_id, user_id),
            )
            conn.execute(
                """INSERT INTO workspace.library_assets
                     (id, user_id, job_id, index, content_type, title, prompt, bucket, key)
                   VALUES (%s, %s, 'j1', 0, 'image/png', 't', 'a saved prompt', 'b', 'k')""",
                (uuid.uuid4(), user_id),
            )

        assert db.apply_migrations(owner_url, migration_folders()) == [BACKFILL]

        with psycopg.connect(service_url) as conn:
            conn.execute(
                "SELECT set_config('app.user_id', %s, true), set_config('app.role', 'user', true)",
                (str(user_id),),
            )
            item = conn.execute(
                "SELECT prompt, original_prompt, negative_prompt FROM workspace.items"
            ).fetchall()
            asset = conn.execute(
                "SELECT prompt, original_prompt, negative_prompt FROM workspace.library_assets"
            ).fetchall()
        assert item == [("a typed prompt", "a typed prompt", "")]
        assert asset == [("a saved prompt", "a saved prompt", "")]
        # The owner is held by row level security again after the backfill.
        with psycopg.connect(owner_url) as conn:
            forced = conn.execute(
                """SELECT relname, relforcerowsecurity FROM pg_class
                   WHERE relnamespace = 'workspace'::regnamespace
                     AND relname IN ('items', 'library_assets')"""
            ).fetchall()
            assert dict(forced) == {"items": True, "library_assets": True}
            assert conn.execute("SELECT count(*) FROM workspace.items").fetchone() == (0,)
    finally:
        with psycopg.connect(infra.database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(owner)))
