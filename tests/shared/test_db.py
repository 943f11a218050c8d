"""`Database.tx` against the real PostgreSQL: what a transaction carries,
that it commits or rolls back as a whole, and that pooled connections whose
server side went away (a PostgreSQL restart, a killed backend) are replaced
without failing the caller."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from ourvidz import db


def _owner(base_env: dict) -> psycopg.Connection:
    return psycopg.connect(base_env["DATABASE_URL"], autocommit=True)


@pytest.fixture
async def jobs_db(base_env):
    database = db.Database(base_env["JOBS_DATABASE_URL"], max_size=3, name="test-db")
    await database.open()
    try:
        yield database
    finally:
        await database.close()


async def test_a_transaction_carries_its_caller_and_commits_as_one(jobs_db):
    user = str(uuid.uuid4())
    async with jobs_db.tx(user_id=user, role="worker") as conn:
        row = await (
            await conn.execute(
                "SELECT current_setting('app.user_id') AS u, current_setting('app.role') AS r, "
                "now() = statement_timestamp() AS fresh"
            )
        ).fetchone()
        assert (row["u"], row["r"]) == (user, "worker")
        # One transaction: its first statement's time is the transaction's.
        second = await (await conn.execute("SELECT now() AS t")).fetchone()
        first = await (await conn.execute("SELECT now() AS t")).fetchone()
        assert first["t"] == second["t"]
    async with jobs_db.tx(role="system") as conn:
        row = await (await conn.execute("SELECT current_setting('app.user_id') AS u")).fetchone()
        assert row["u"] == ""  # the settings end with their transaction


async def test_a_block_that_raises_changes_nothing(jobs_db, base_env):
    key = f"test-db-{uuid.uuid4().hex}"
    with pytest.raises(RuntimeError):
        async with jobs_db.tx(role="system") as conn:
            await conn.execute(
                "INSERT INTO jobs.outbox (subject, msg_id, payload) VALUES ('test.db', %s, '')",
                (key,),
            )
            raise RuntimeError("stop")
    async with jobs_db.tx(role="system") as conn:
        await conn.execute(
            "INSERT INTO jobs.outbox (subject, msg_id, payload) VALUES ('test.db', %s, '')",
            (key + "-kept",),
        )
    with _owner(base_env) as owner:
        found = owner.execute(
            "SELECT msg_id FROM jobs.outbox WHERE msg_id LIKE %s", (key + "%",)
        ).fetchall()
        owner.execute("DELETE FROM jobs.outbox WHERE msg_id LIKE %s", (key + "%",))
    assert [r[0] for r in found] == [key + "-kept"]


async def test_pooled_connections_killed_on_the_server_are_replaced(jobs_db, base_env):
    """Every pooled connection's backend is terminated, as a PostgreSQL restart
    does: the next transactions succeed on new connections."""

    async def backend() -> int:
        async with jobs_db.tx(role="system") as conn:
            return (await (await conn.execute("SELECT pg_backend_pid() AS p")).fetchone())["p"]

    # Fill the pool: three transactions at once hold three connections.
    async def hold(ready: asyncio.Event, go: asyncio.Event) -> int:
        async with jobs_db.tx(role="system") as conn:
            pid = (await (await conn.execute("SELECT pg_backend_pid() AS p")).fetchone())["p"]
            ready.set()
            await go.wait()
            return pid

    go = asyncio.Event()
    readies = [asyncio.Event() for _ in range(3)]
    holders = [asyncio.create_task(hold(r, go)) for r in readies]
    for r in readies:
        await r.wait()
    go.set()
    pids = set(await asyncio.gather(*holders))
    assert len(pids) == 3
    with _owner(base_env) as owner:
        owner.execute("SELECT pg_terminate_backend(p) FROM unnest(%s::int[]) AS p", (list(pids),))
    for _ in range(4):
        assert await backend() not in pids
    async with jobs_db.connection() as conn:
        assert (await (await conn.execute("SELECT 1 AS one")).fetchone())["one"] == 1
