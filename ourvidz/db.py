"""PostgreSQL access: a pool per service, transactions that carry the caller,
and migrations.

Row level security keys on two per-transaction settings, `app.user_id` and
`app.role`, set by `Database.tx()`. Services connect as their own login role
(`ourvidz_<service>`), which is neither the tables' owner nor BYPASSRLS, so a
query that forgets a `WHERE user_id = ...` still sees only the caller's rows.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

SERVICE_ROLES = ("ourvidz_gateway", "ourvidz_jobs", "ourvidz_workspace", "ourvidz_enhancer")
COMMON_MIGRATIONS = Path(__file__).parent / "migrations"


def role_url(owner_url: str, role: str, password: str) -> str:
    """The owner URL with the user swapped for a service role."""
    params = conninfo_to_dict(owner_url)
    params["user"] = role
    params["password"] = password
    return make_conninfo("", **params)


class Database:
    """An async connection pool whose transactions carry the caller's identity."""

    def __init__(
        self, url: str, *, max_size: int = 10, name: str = "ourvidz", timeout: float = 5.0
    ) -> None:
        # `timeout`: how long a transaction waits for a connection. While
        # PostgreSQL is down no connection comes, and the PoolTimeout that ends
        # the wait is the "database unavailable" (UNAVAILABLE, 503) a caller
        # sees; it stays under the mesh's gRPC deadline so the service answers
        # that itself rather than leaving the caller to time out.
        self.pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            name=name,
            timeout=timeout,
            kwargs={"row_factory": dict_row, "autocommit": False},
            # Each connection is checked as it is handed out (an empty query,
            # one round trip): after PostgreSQL restarts, a pooled connection
            # to the old server is replaced instead of failing a request.
            check=AsyncConnectionPool.check_connection,
        )

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def tx(
        self, *, user_id: str | None = None, role: str = "user"
    ) -> AsyncIterator[psycopg.AsyncConnection]:
        """A transaction scoped to a caller. `role` is "user", "worker",
        "admin" or "system" (the service acting for itself)."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "SELECT set_config('app.user_id', %s, true), set_config('app.role', %s, true)",
                (user_id or "", role),
            )
            yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        async with self.pool.connection() as conn:
            yield conn


# --- provisioning and migrations ---------------------------------------------------


def ensure_database(owner_url: str) -> None:
    """Create the database named in `owner_url` when it does not exist."""
    params = conninfo_to_dict(owner_url)
    dbname = params.get("dbname", "postgres")
    admin = make_conninfo("", **{**params, "dbname": "postgres"})
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            log.info("created database %s", dbname)


def ensure_roles(owner_url: str, password: str, roles: Iterable[str] = SERVICE_ROLES) -> None:
    """Create (or update) the service login roles. They own nothing and cannot
    bypass row level security."""
    with psycopg.connect(owner_url, autocommit=True) as conn:
        for role in roles:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(
                    "{} ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD {}"
                ).format(sql.SQL(verb), sql.Identifier(role), sql.Literal(password))
            )


def apply_migrations(owner_url: str, folders: Iterable[Path]) -> list[str]:
    """Apply pending migrations (yoyo) from each folder, common ones first.
    Migration file names are unique across services (`<service>_NNNN_*.sql`)."""
    from yoyo import get_backend, read_migrations

    url = owner_url
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    elif "://" not in url:
        params = conninfo_to_dict(url)
        url = _dsn_to_url(params)
    backend = get_backend(url)
    migrations = read_migrations(*(str(f) for f in [COMMON_MIGRATIONS, *folders]))
    applied: list[str] = []
    with backend.lock():
        pending = backend.to_apply(migrations)
        applied = [m.id for m in pending]
        backend.apply_migrations(pending)
    if applied:
        log.info("applied migrations %s", applied)
    return applied


def _dsn_to_url(params: dict) -> str:
    from urllib.parse import quote

    user = params.get("user", "postgres")
    password = params.get("password")
    auth = quote(user) + (":" + quote(password) if password else "")
    host = params.get("host", "")
    port = params.get("port", "5432")
    dbname = params.get("dbname", "postgres")
    if host.startswith("/"):
        return f"postgresql+psycopg://{auth}@/{dbname}?host={quote(host)}&port={port}"
    return f"postgresql+psycopg://{auth}@{host}:{port}/{dbname}"


def prepare(owner_url: str, role_password: str, folders: Iterable[Path]) -> None:
    """Everything a fresh database needs before services connect."""
    ensure_database(owner_url)
    ensure_roles(owner_url, role_password)
    apply_migrations(owner_url, folders)
