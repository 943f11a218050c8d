"""SQL of the abuse limits (identity.login_attempts, rate_limits,
stream_leases). Each check is one atomic statement, so replicas that check the
same key at once are serialised by PostgreSQL's row lock. The caller owns the
transaction; row level security admits the gateway's login role to these
tables whoever the transaction acts for."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

import psycopg


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # Seconds until a refused request may be tried again (None when allowed).
    retry_after: float | None


# Count a sign-in attempt unless the key is locked. The lock-out is set once
# the count reaches `limit` and doubles with each further counted attempt (up
# to `max_lock`); a key quiet for a whole `window` after its last attempt or
# lock starts again from one. `allowed` tells whether this attempt was counted.
_TAKE_LOGIN_ATTEMPT = """
INSERT INTO identity.login_attempts AS a (key, failures, counted_at, locked_until, allowed)
VALUES (%(key)s, 1, now(), CASE WHEN %(limit)s <= 1 THEN now() + %(first_lock)s END, true)
ON CONFLICT (key) DO UPDATE SET (failures, counted_at, locked_until, allowed) = (
    SELECT
        s.n,
        CASE WHEN s.locked THEN a.counted_at ELSE now() END,
        CASE
            WHEN s.locked THEN a.locked_until
            WHEN s.n >= %(limit)s THEN now() + least(
                %(first_lock)s * 2 ^ least(s.n - %(limit)s, 30), %(max_lock)s)
        END,
        NOT s.locked
    FROM (
        SELECT
            coalesce(a.locked_until > now(), false) AS locked,
            CASE
                WHEN a.locked_until > now() THEN a.failures
                WHEN greatest(a.counted_at, a.locked_until) + %(window)s <= now() THEN 1
                ELSE a.failures + 1
            END AS n
    ) AS s
)
RETURNING allowed, extract(epoch FROM locked_until - now())::float8 AS retry_after
"""

# Take back one counted attempt (it succeeded, or was never judged); the lock
# goes with it unless the remaining count still reaches the limit.
_GIVE_BACK_LOGIN_ATTEMPT = """
UPDATE identity.login_attempts
SET failures = failures - 1,
    locked_until = CASE WHEN failures - 1 >= %(limit)s THEN locked_until END
WHERE key = %(key)s AND failures > 0
"""

_CLEAR_LOGIN_ATTEMPTS = "DELETE FROM identity.login_attempts WHERE key = %s"

# A token bucket in one timestamp (GCRA): each request moves `tat` on by
# `interval`; a request fits while `tat` is at most `tolerance` ahead of now
# (tolerance = (burst - 1) * interval). A refused request changes nothing.
_TAKE_RATE = """
INSERT INTO identity.rate_limits AS r (key, tat, allowed)
VALUES (%(key)s, now() + %(interval)s, true)
ON CONFLICT (key) DO UPDATE SET (tat, allowed) = (
    SELECT
        CASE WHEN s.start <= now() + %(tolerance)s THEN s.start + %(interval)s ELSE r.tat END,
        s.start <= now() + %(tolerance)s
    FROM (SELECT greatest(r.tat, now()) AS start) AS s
)
RETURNING allowed, extract(epoch FROM tat - %(tolerance)s - now())::float8 AS retry_after
"""

# Leases of one user are taken one at a time (the count and the insert must
# not interleave with another replica's).
_LOCK_USER_STREAMS = "SELECT pg_advisory_xact_lock(hashtextextended('streams:' || %s, 0))"

_OPEN_STREAM = """
WITH expired AS (
    DELETE FROM identity.stream_leases WHERE user_id = %(user_id)s AND expires_at <= now()
), live AS (
    SELECT count(*) AS open, min(expires_at) AS soonest
    FROM identity.stream_leases
    WHERE user_id = %(user_id)s AND expires_at > now()
), granted AS (
    INSERT INTO identity.stream_leases (id, user_id, expires_at)
    SELECT %(id)s, %(user_id)s, now() + %(ttl)s FROM live WHERE live.open < %(cap)s
    RETURNING id
)
SELECT
    EXISTS (SELECT 1 FROM granted) AS allowed,
    extract(epoch FROM (SELECT soonest FROM live) - now())::float8 AS retry_after
"""

# Refresh a lease; one that expired and was collected meanwhile is taken again.
_KEEP_STREAM = """
INSERT INTO identity.stream_leases (id, user_id, expires_at)
VALUES (%(id)s, %(user_id)s, now() + %(ttl)s)
ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at
"""

_CLOSE_STREAM = "DELETE FROM identity.stream_leases WHERE id = %s"


def _decision(row: dict) -> Decision:
    allowed = bool(row["allowed"])
    return Decision(allowed, None if allowed else row["retry_after"])


async def take_login_attempt(
    conn: psycopg.AsyncConnection,
    key: str,
    *,
    limit: int,
    window: timedelta,
    first_lock: timedelta,
    max_lock: timedelta,
) -> Decision:
    cur = await conn.execute(
        _TAKE_LOGIN_ATTEMPT,
        {
            "key": key,
            "limit": limit,
            "window": window,
            "first_lock": first_lock,
            "max_lock": max_lock,
        },
    )
    return _decision(await cur.fetchone())


async def give_back_login_attempt(conn: psycopg.AsyncConnection, key: str, *, limit: int) -> None:
    await conn.execute(_GIVE_BACK_LOGIN_ATTEMPT, {"key": key, "limit": limit})


async def clear_login_attempts(conn: psycopg.AsyncConnection, key: str) -> None:
    await conn.execute(_CLEAR_LOGIN_ATTEMPTS, (key,))


async def take_rate(
    conn: psycopg.AsyncConnection, key: str, *, interval: timedelta, burst: int
) -> Decision:
    cur = await conn.execute(
        _TAKE_RATE, {"key": key, "interval": interval, "tolerance": interval * (burst - 1)}
    )
    return _decision(await cur.fetchone())


async def open_stream(
    conn: psycopg.AsyncConnection, lease_id: uuid.UUID, user_id: str, *, cap: int, ttl: timedelta
) -> Decision:
    await conn.execute(_LOCK_USER_STREAMS, (user_id,))
    cur = await conn.execute(
        _OPEN_STREAM, {"id": lease_id, "user_id": user_id, "cap": cap, "ttl": ttl}
    )
    return _decision(await cur.fetchone())


async def keep_stream(
    conn: psycopg.AsyncConnection, lease_id: uuid.UUID, user_id: str, *, ttl: timedelta
) -> None:
    await conn.execute(_KEEP_STREAM, {"id": lease_id, "user_id": user_id, "ttl": ttl})


async def close_stream(conn: psycopg.AsyncConnection, lease_id: uuid.UUID) -> None:
    await conn.execute(_CLOSE_STREAM, (lease_id,))


# Rows that say no more than a missing row would: a full bucket, a count that
# would restart, a lapsed lease. Any replica may collect them.
_PURGE_RATES = "DELETE FROM identity.rate_limits WHERE tat < now()"
_PURGE_LOGIN_ATTEMPTS = (
    "DELETE FROM identity.login_attempts WHERE greatest(counted_at, locked_until) + %s <= now()"
)
_PURGE_STREAMS = "DELETE FROM identity.stream_leases WHERE expires_at <= now()"


async def purge(conn: psycopg.AsyncConnection, *, login_window: timedelta) -> int:
    removed = (await conn.execute(_PURGE_RATES)).rowcount
    removed += (await conn.execute(_PURGE_LOGIN_ATTEMPTS, (login_window,))).rowcount
    removed += (await conn.execute(_PURGE_STREAMS)).rowcount
    return removed
