"""PostgreSQL access: a pool per service, transactions that carry the caller,
and migrations.

Row level security keys on two per-transaction settings, `app.user_id` and
`app.role`, set by `Database.tx()`. Services connect as their own login role
(`ourvidz_<service>`, with a password of its own), which is neither the
tables' owner nor BYPASSRLS, so a query that forgets a `WHERE user_id = ...`
still sees only the caller's rows. The login role also bounds `app.role`:
`public.app_role()` refuses an app role the login role was not granted
(`public.app_role_grants`), so no service can make itself "system" unless
its role may be. `Database.open()` refuses a login that could bypass all of
this (a superuser, BYPASSRLS, or the tables' owner).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

# The services that hold a database connection, and their login roles.
SERVICE_ROLE = {
    "gateway": "ourvidz_gateway",
    "jobs": "ourvidz_jobs",
    "workspace": "ourvidz_workspace",
    "enhancer": "ourvidz_enhancer",
}
SERVICE_ROLES = tuple(SERVICE_ROLE.values())
COMMON_MIGRATIONS = Path(__file__).parent / "migrations"
# yoyo's record of the applied migrations (one row per migration id).
MIGRATIONS_TABLE = "_yoyo_migration"


class PrivilegedLogin(RuntimeError):
    """A service's database login could bypass row level security."""


def role_url(owner_url: str, role: str, password: str) -> str:
    """The owner URL with the user swapped for a service role."""
    params = conninfo_to_dict(owner_url)
    params["user"] = role
    params["password"] = password
    return make_conninfo("", **params)


class Database:
    """An async connection pool whose transactions carry the caller's identity."""

    def __init__(
        self,
        url: str,
        *,
        max_size: int = 10,
        name: str = "ourvidz",
        timeout: float = 5.0,
        check_connections: bool = False,
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
            # Autocommit: `tx` opens its transaction itself, in the round trip
            # that sets the caller (psycopg would send BEGIN on its own first).
            kwargs={"row_factory": dict_row, "autocommit": True},
            # A pool opened without waiting (the gateway, which serves while
            # PostgreSQL is away) checks each new connection's login instead:
            # a privileged one is discarded, never handed out.
            configure=check_login_role if check_connections else None,
        )

    async def open(self, *, check_login: bool = True) -> None:
        """Open the pool; then, unless told not to, refuse a login that could
        bypass row level security (see `check_login_role`)."""
        await self.pool.open(wait=True, timeout=30)
        if check_login:
            try:
                async with self.pool.connection() as conn:
                    await check_login_role(conn)
            except BaseException:
                await self.pool.close()
                raise

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def tx(
        self, *, user_id: str | None = None, role: str = "user"
    ) -> AsyncIterator[psycopg.AsyncConnection]:
        """A transaction scoped to a caller. `role` is "user", "worker",
        "admin" or "system" (the service acting for itself); the database
        refuses a role not granted to the service's login role. Committed
        when the block ends, rolled back when it raises."""
        # BEGIN and the caller's settings in one round trip.
        begin = _BEGIN.format(sql.Literal(user_id or ""), sql.Literal(role))
        async with self._pooled(begin) as conn:
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(psycopg.Error):  # a broken connection is discarded
                    await conn.rollback()
                raise
            await conn.commit()

    @asynccontextmanager
    async def _pooled(self, first: sql.Composable) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled connection that has run `first`. One found broken there
        (PostgreSQL restarted since it was opened) is discarded and the next
        one tried, so a restart fails no request once the server is back; no
        separate check costs a round trip."""
        tries = self.pool.max_size + 1
        for attempt in range(1, tries + 1):
            async with self.pool.connection() as conn:
                try:
                    await conn.execute(first)
                except psycopg.OperationalError:
                    if not conn.broken or attempt == tries:
                        raise
                    log.info("a pooled database connection was broken; trying another")
                    continue
                yield conn
                return

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled connection that answered (autocommit: each statement
        stands alone)."""
        async with self._pooled(sql.SQL("")) as conn:
            yield conn


_BEGIN = sql.SQL(
    "BEGIN; SELECT set_config('app.user_id', {}, true), set_config('app.role', {}, true)"
)


async def act_as(conn: psycopg.AsyncConnection, user_id: str, role: str = "user") -> None:
    """From here to the end of `conn`'s transaction, act for `user_id` (as
    `Database.tx` does, for a caller known only once the transaction ran a
    lookup)."""
    await conn.execute(
        "SELECT set_config('app.user_id', %s, true), set_config('app.role', %s, true)",
        (user_id, role),
    )


_LOGIN_PRIVILEGES = """
SELECT r.rolname AS role,
       EXISTS (SELECT 1 FROM pg_roles s
               WHERE s.rolsuper AND pg_has_role(r.oid, s.oid, 'MEMBER')) AS superuser,
       EXISTS (SELECT 1 FROM pg_roles s
               WHERE s.rolbypassrls AND pg_has_role(r.oid, s.oid, 'MEMBER')) AS bypassrls,
       EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p')
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                 AND left(n.nspname, 3) <> 'pg_'
                 AND pg_has_role(r.oid, c.relowner, 'MEMBER')) AS owner
FROM pg_roles r WHERE r.rolname = current_user
"""


async def check_login_role(conn: psycopg.AsyncConnection) -> None:
    """Raise PrivilegedLogin when the connection's role is (or may become) a
    superuser, a BYPASSRLS role or the owner of a table: row level security
    would not hold it, so a service must not run with it."""
    cur = await conn.execute(_LOGIN_PRIVILEGES)
    row = await cur.fetchone()
    await conn.rollback()
    found = [name for name in ("superuser", "bypassrls", "owner") if row and row[name]]
    if found:
        what = {"superuser": "a superuser", "bypassrls": "BYPASSRLS", "owner": "a table owner"}
        raise PrivilegedLogin(
            f"the database login {row['role']!r} is {' and '.join(what[f] for f in found)}: "
            "row level security would not bind it. Give the service its own role's URL "
            "(<SERVICE>_DATABASE_URL), never the owner's DATABASE_URL."
        )


async def check_login_url(url: str, *, connect_timeout: int = 5) -> bool:
    """`check_login_role` on a connection of its own: raises PrivilegedLogin;
    False (nothing checked) when the server cannot be reached."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            url, connect_timeout=connect_timeout, row_factory=dict_row
        )
    except psycopg.OperationalError as exc:
        log.warning("database unreachable; its login is checked on first connection: %s", exc)
        return False
    async with conn:
        await check_login_role(conn)
    return True


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


def ensure_roles(owner_url: str, passwords: Mapping[str, str]) -> None:
    """Create (or update) the service login roles, each with its own password
    (`passwords`: role -> password). They own nothing and cannot bypass row
    level security.

    The owner needs CREATEROLE, not SUPERUSER: on an existing role only the
    password is set, plus the NO... of an attribute the role has (PostgreSQL
    16 lets only a superuser name SUPERUSER or BYPASSRLS in ALTER ROLE, even
    to take it away; such a role is refused until a superuser fixes it)."""
    attributes = ("rolsuper", "rolbypassrls", "rolcreatedb", "rolcreaterole")
    clause = {
        "rolsuper": "NOSUPERUSER",
        "rolbypassrls": "NOBYPASSRLS",
        "rolcreatedb": "NOCREATEDB",
        "rolcreaterole": "NOCREATEROLE",
    }
    with psycopg.connect(owner_url, autocommit=True) as conn:
        for role, password in passwords.items():
            row = conn.execute(
                f"SELECT {', '.join(attributes)} FROM pg_roles WHERE rolname = %s", (role,)
            ).fetchone()
            if row is None:
                statement = "CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
            else:
                revoke = " ".join(clause[a] for a, on in zip(attributes, row, strict=True) if on)
                statement = "ALTER ROLE {} LOGIN " + revoke
            conn.execute(
                sql.SQL(statement.strip() + " PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
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
    backend = get_backend(url, migration_table=MIGRATIONS_TABLE)
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


def prepare(owner_url: str, passwords: Mapping[str, str], folders: Iterable[Path]) -> None:
    """Everything a fresh database needs before services connect.
    `passwords`: service name (or role) -> that role's password, for every service."""
    by_role = {SERVICE_ROLE.get(name, name): value for name, value in passwords.items()}
    missing = set(SERVICE_ROLES) - set(by_role)
    if missing:
        raise ValueError(f"no password for the database roles {sorted(missing)}")
    folders = list(folders)
    ensure_database(owner_url)
    ensure_roles(owner_url, by_role)
    apply_migrations(owner_url, folders)
    grant_migration_reads(owner_url, by_role)


def grant_migration_reads(owner_url: str, roles: Iterable[str]) -> None:
    """Let the service roles read which migrations are applied (and nothing
    else of yoyo's): a service's pod waits for its image's migrations with
    its own login before it starts (`python -m ourvidz.migrate --await-schema`)."""
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(
                sql.Identifier(MIGRATIONS_TABLE), sql.SQL(", ").join(map(sql.Identifier, roles))
            )
        )


def migration_ids(folders: Iterable[Path]) -> set[str]:
    """The ids of every migration in the common folder and `folders`."""
    from yoyo import read_migrations

    return {m.id for m in read_migrations(*(str(f) for f in [COMMON_MIGRATIONS, *folders]))}


def pending_migrations(url: str, folders: Iterable[Path], *, connect_timeout: int = 5) -> set[str]:
    """The migrations of `folders` that the database at `url` has not applied
    (all of them when it has no record yet). Connection errors propagate."""
    wanted = migration_ids(folders)
    with psycopg.connect(url, connect_timeout=connect_timeout, autocommit=True) as conn:
        try:
            rows = conn.execute(
                sql.SQL("SELECT migration_id FROM {}").format(sql.Identifier(MIGRATIONS_TABLE))
            ).fetchall()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege):
            return wanted
    return wanted - {row[0] for row in rows}


def dev_passwords(prefix: str) -> dict[str, str]:
    """Distinct passwords for the service roles, for a throwaway database
    (tests, benchmarks): service name -> password."""
    return {name: f"{prefix}-{name}" for name in SERVICE_ROLE}


def own_database_env(service: str, env: Mapping[str, str]) -> dict[str, str]:
    """`env` as one service's process should see it: its own
    <SERVICE>_DATABASE_URL and no other database credential (no owner
    DATABASE_URL, no other role's URL or password). When `env` has no URL
    for the service but has the owner URL and DB_PASSWORD_<SERVICE>, the URL
    is made from them. A service without a database role (a generation
    worker) gets none."""
    credentials = {"DATABASE_URL"}
    credentials |= {f"{name.upper()}_DATABASE_URL" for name in SERVICE_ROLE}
    credentials |= {f"DB_PASSWORD_{name.upper()}" for name in SERVICE_ROLE}
    out = {k: v for k, v in env.items() if k not in credentials}
    if service in SERVICE_ROLE:
        key = f"{service.upper()}_DATABASE_URL"
        own = env.get(key)
        password = env.get(f"DB_PASSWORD_{service.upper()}")
        if not own and password and env.get("DATABASE_URL"):
            own = role_url(env["DATABASE_URL"], SERVICE_ROLE[service], password)
        if own:
            out[key] = own
    return out


def service_url_env(owner_url: str, passwords: Mapping[str, str]) -> dict[str, str]:
    """<SERVICE>_DATABASE_URL for every service: the owner URL with each
    service's own role and password."""
    return {
        f"{name.upper()}_DATABASE_URL": role_url(owner_url, role, passwords[name])
        for name, role in SERVICE_ROLE.items()
    }
