"""Each service's database login is its own, and it decides what the
service's transactions may do: the app role a transaction asserts
(`app.role`) must be granted to the login role, each role reaches only its
own schema, a password opens only its own role, and no service starts on a
login that row level security would not bind. Against the real test
PostgreSQL, with the credentials the services get."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ourvidz import db
from ourvidz.migrate import MigrateSettings
from services.jobs.settings import JobsSettings
from services.workspace.main import start as start_workspace
from services.workspace.settings import WorkspaceSettings
from tests.conftest import ROLE_PASSWORDS, make_settings

SCHEMA = {"gateway": "identity", "jobs": "jobs", "workspace": "workspace", "enhancer": "enhancer"}
GRANTED = {
    "gateway": {"user"},
    "jobs": {"user", "worker", "system"},
    "workspace": {"user", "system"},
    "enhancer": {"user", "worker", "admin", "system"},
}
APP_ROLES = ("user", "worker", "admin", "system")
# Tables that hold users' rows, keyed by a user id.
USER_OWNED = [
    "identity.users",
    "identity.refresh_tokens",
    "jobs.jobs",
    "jobs.assets",
    "jobs.job_events",
    "workspace.sessions",
    "workspace.items",
    "workspace.library_assets",
    "workspace.uploads",
    "enhancer.enhancements",
    "enhancer.enhancement_ratings",
]


def url_of(base_env: dict, service: str) -> str:
    return base_env[f"{service.upper()}_DATABASE_URL"]


def as_caller(conn: psycopg.Connection, user_id: str, role: str) -> None:
    conn.execute(
        "SELECT set_config('app.user_id', %s, false), set_config('app.role', %s, false)",
        (user_id, role),
    )


@pytest.fixture
def two_users(infra) -> tuple[str, str]:
    """Two accounts, written by the owner."""
    ids = (str(uuid.uuid4()), str(uuid.uuid4()))
    with psycopg.connect(infra.database_url) as conn:
        for user_id in ids:
            conn.execute(
                "INSERT INTO identity.users (id, email, password_hash) VALUES (%s, %s, 'x')",
                (user_id, f"{user_id}@example.com"),
            )
            conn.execute(
                "INSERT INTO identity.refresh_tokens (id, user_id, token_hash, expires_at)"
                " VALUES (%s, %s, %s, now() + interval '1 day')",
                (uuid.uuid4(), user_id, uuid.uuid4().hex),
            )
    return ids


def test_the_gateway_asserting_system_still_sees_only_its_callers_identity(base_env, two_users):
    mine, theirs = two_users
    with psycopg.connect(url_of(base_env, "gateway"), autocommit=True) as conn:
        as_caller(conn, mine, "system")
        users = {str(r[0]) for r in conn.execute("SELECT id FROM identity.users")}
        tokens = {str(r[0]) for r in conn.execute("SELECT user_id FROM identity.refresh_tokens")}
        assert users == {mine} and tokens == {mine}
        changed = conn.execute(
            "UPDATE identity.users SET password_hash = 'y' WHERE id = %s", (theirs,)
        ).rowcount
        assert changed == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # not even its own role
            conn.execute("UPDATE identity.users SET role = 'admin' WHERE id = %s", (mine,))
        as_caller(conn, "", "system")  # no caller at all: nothing
        assert conn.execute("SELECT count(*) FROM identity.users").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT public.app_is_trusted()")
    with psycopg.connect(url_of(base_env, "gateway")) as conn:  # nor may it add them
        as_caller(conn, mine, "system")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO identity.users (id, email, password_hash) VALUES (%s, %s, 'x')",
                (theirs, "someone@example.com"),
            )


def test_the_gateways_narrow_lookups_answer_the_exact_key_only(base_env, two_users):
    mine, _ = two_users
    with psycopg.connect(url_of(base_env, "gateway"), autocommit=True) as conn:
        found = conn.execute(
            "SELECT id FROM identity.login_candidate(%s)", (f"{mine.upper()}@EXAMPLE.COM",)
        ).fetchall()
        assert [str(r[0]) for r in found] == [mine]
        assert conn.execute("SELECT * FROM identity.login_candidate('%%')").fetchall() == []
        assert conn.execute("SELECT * FROM identity.refresh_token_for_update('')").fetchall() == []
    for service in ("jobs", "workspace", "enhancer"):
        with psycopg.connect(url_of(base_env, service)) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM identity.login_candidate(%s)", (f"{mine}@example.com",))


@pytest.mark.parametrize("service", list(GRANTED))
def test_a_login_role_may_assume_only_the_app_roles_granted_to_it(base_env, service):
    for app_role in APP_ROLES:
        with psycopg.connect(url_of(base_env, service), autocommit=True) as conn:
            as_caller(conn, "", app_role)
            if app_role in GRANTED[service]:
                (trusted,) = conn.execute("SELECT public.app_is_trusted()").fetchone()
                assert trusted == (app_role != "user"), (service, app_role)
            else:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("SELECT public.app_is_trusted()")


def test_an_app_role_not_granted_reads_no_rows(base_env, infra):
    owner = str(uuid.uuid4())
    with psycopg.connect(infra.database_url) as conn:
        conn.execute(
            "INSERT INTO workspace.sessions (id, user_id, active) VALUES (%s, %s, false)",
            (uuid.uuid4(), owner),
        )
    count = "SELECT count(*) FROM workspace.sessions WHERE user_id = %s"
    with psycopg.connect(url_of(base_env, "workspace"), autocommit=True) as conn:
        as_caller(conn, "", "system")  # granted to ourvidz_workspace
        assert conn.execute(count, (owner,)).fetchone() == (1,)
        as_caller(conn, str(uuid.uuid4()), "user")
        assert conn.execute(count, (owner,)).fetchone() == (0,)
        for role in ("admin", "worker"):  # not granted
            as_caller(conn, "", role)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not act as"):
                conn.execute(count, (owner,))


def _user_table(service: str) -> str:
    return next(t for t in USER_OWNED if t.startswith(SCHEMA[service] + ".")).split(".")[1]


@pytest.mark.parametrize("service", list(GRANTED))
def test_each_role_reads_no_other_services_schema(base_env, infra, service):
    for other, schema in SCHEMA.items():
        if other == service:
            continue
        table = _user_table(other)
        with psycopg.connect(url_of(base_env, service)) as conn:
            as_caller(conn, "", "user")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT count(*) FROM {schema}.{table}")
    # And the catalogue agrees: outside its own schema the role may touch only
    # the grants table that app_role() reads, and read the record of applied
    # migrations (a pod waits for its image's migrations with its own login).
    role = db.SERVICE_ROLE[service]
    with psycopg.connect(infra.database_url) as conn:
        reachable = conn.execute(
            """
            SELECT n.nspname || '.' || c.relname FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S')
              AND n.nspname NOT IN ('pg_catalog', 'information_schema', %s)
              AND left(n.nspname, 3) <> 'pg_'
              AND (has_table_privilege(%s, c.oid,
                       'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
                   OR (c.relkind = 'S' AND has_sequence_privilege(%s, c.oid, 'USAGE')))
            """,
            (SCHEMA[service], role, role),
        ).fetchall()
        schemas = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)"
            " AND has_schema_privilege(%s, oid, 'USAGE')",
            (list(SCHEMA.values()), role),
        ).fetchall()
        create_public = conn.execute(
            "SELECT has_schema_privilege(%s, 'public', 'CREATE')", (role,)
        ).fetchone()
        record_writable = conn.execute(
            "SELECT has_table_privilege(%s, %s,"
            " 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')",
            (role, f"public.{db.MIGRATIONS_TABLE}"),
        ).fetchone()
    assert sorted(r[0] for r in reachable) == [
        f"public.{db.MIGRATIONS_TABLE}",
        "public.app_role_grants",
    ]
    assert record_writable == (False,)
    assert [r[0] for r in schemas] == [SCHEMA[service]]
    assert create_public == (False,)


def test_a_password_opens_only_its_own_role(base_env):
    for service in GRANTED:
        params = conninfo_to_dict(url_of(base_env, service))
        with psycopg.connect(make_conninfo("", **params)) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (db.SERVICE_ROLE[service],)
        for other, password in ROLE_PASSWORDS.items():
            if other == service:
                continue
            wrong = make_conninfo("", **{**params, "password": password})
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(wrong, connect_timeout=10)


def test_user_owned_tables_hold_their_owner_and_policies_name_a_role(infra):
    with psycopg.connect(infra.database_url) as conn:
        forced = dict(
            conn.execute(
                "SELECT c.oid::regclass::text, c.relforcerowsecurity FROM pg_class c"
                " WHERE c.oid = ANY(%s::regclass[])",
                (USER_OWNED,),
            ).fetchall()
        )
        public_policies = conn.execute(
            "SELECT schemaname || '.' || tablename || ' ' || policyname FROM pg_policies"
            " WHERE schemaname = ANY(%s) AND 'public' = ANY(roles)",
            (list(SCHEMA.values()),),
        ).fetchall()
    assert forced == dict.fromkeys(USER_OWNED, True)
    assert public_policies == []


async def test_a_service_refuses_to_start_on_the_owners_login(base_env, infra):
    with pytest.raises(db.PrivilegedLogin, match="superuser"):
        await db.Database(infra.database_url).open()
    settings = make_settings(WorkspaceSettings, base_env, workspace_database_url=infra.database_url)
    with pytest.raises(db.PrivilegedLogin, match="superuser"):
        await start_workspace(settings, port=0)


@pytest.fixture
def privileged_login(infra, request):
    """A throwaway login role that could bypass row level security: with
    BYPASSRLS, or owning a table."""
    kind = request.param
    role = f"ourvidz_probe_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with psycopg.connect(infra.database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                sql.Identifier(role),
                sql.SQL("BYPASSRLS" if kind == "bypassrls" else "NOBYPASSRLS"),
                sql.Literal(password),
            )
        )
        if kind == "owner":
            conn.execute(sql.SQL("CREATE TABLE public.{} ()").format(sql.Identifier(role)))
            conn.execute(
                sql.SQL("ALTER TABLE public.{} OWNER TO {}").format(
                    sql.Identifier(role), sql.Identifier(role)
                )
            )
    try:
        yield kind, db.role_url(infra.database_url, role, password)
    finally:
        with psycopg.connect(infra.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS public.{}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("privileged_login", ["bypassrls", "owner"], indirect=True)
async def test_a_bypassrls_or_owning_login_is_refused(privileged_login):
    kind, url = privileged_login
    what = {"bypassrls": "BYPASSRLS", "owner": "a table owner"}[kind]
    with pytest.raises(db.PrivilegedLogin, match=what):
        await db.Database(url).open()
    with pytest.raises(db.PrivilegedLogin, match=what):
        await db.check_login_url(url)


def test_prod_settings_require_the_services_own_url(base_env):
    env = {k: v for k, v in base_env.items() if k != "JOBS_DATABASE_URL"}
    with pytest.raises(ValueError, match="JOBS_DATABASE_URL"):
        make_settings(JobsSettings, env, ourvidz_env="prod")
    # In test (and dev) the URL may be derived from the owner's and the role's password.
    settings = make_settings(JobsSettings, env, db_password_jobs=ROLE_PASSWORDS["jobs"])
    with psycopg.connect(settings.service_database_url()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("ourvidz_jobs",)


def test_migrations_refuse_short_or_shared_role_passwords_in_prod(base_env):
    strong = {f"db_password_{n}": f"{n}-0123456789abcdef" for n in db.SERVICE_ROLE}
    settings = make_settings(MigrateSettings, base_env, ourvidz_env="prod", **strong)
    assert len(set(settings.role_passwords().values())) == 4
    with pytest.raises(ValueError, match="DB_PASSWORD_JOBS must be set to 16"):
        make_settings(
            MigrateSettings, base_env, ourvidz_env="prod", **{**strong, "db_password_jobs": "short"}
        )
    shared = dict.fromkeys(strong, "one-password-for-every-role")
    with pytest.raises(ValueError, match="must differ"):
        make_settings(MigrateSettings, base_env, ourvidz_env="prod", **shared)
