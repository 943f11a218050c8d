"""SQL of the identity schema. The caller owns the transaction (and so the
row level security context it runs in)."""

from __future__ import annotations

import uuid
from datetime import datetime

import psycopg


async def insert_user(
    conn: psycopg.AsyncConnection, user_id, email: str, password_hash: str, role: str
) -> dict | None:
    """The new user, or None when the email is taken (any case). The
    transaction must act as `user_id` (row level security)."""
    cur = await conn.execute(
        """
        INSERT INTO identity.users (id, email, password_hash, role)
        VALUES (%s, %s, %s, %s)
        ON CONFLICT DO NOTHING
        RETURNING id, email, role, created_at
        """,
        (user_id, email, password_hash, role),
    )
    return await cur.fetchone()


async def user_by_email(conn: psycopg.AsyncConnection, email: str) -> dict | None:
    """The account with this e-mail (any case), through the SECURITY DEFINER
    lookup: the gateway's own role sees no row but its caller's."""
    cur = await conn.execute(
        "SELECT id, email, role, password_hash, created_at FROM identity.login_candidate(%s)",
        (email,),
    )
    return await cur.fetchone()


async def user_by_id(conn: psycopg.AsyncConnection, user_id: str) -> dict | None:
    cur = await conn.execute(
        "SELECT id, email, role, created_at FROM identity.users WHERE id = %s", (user_id,)
    )
    return await cur.fetchone()


async def update_password_hash(conn: psycopg.AsyncConnection, user_id, password_hash: str) -> None:
    await conn.execute(
        "UPDATE identity.users SET password_hash = %s WHERE id = %s", (password_hash, user_id)
    )


async def insert_refresh_token(
    conn: psycopg.AsyncConnection, user_id, token_hash: str, expires_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO identity.refresh_tokens (id, user_id, token_hash, expires_at)"
        " VALUES (%s, %s, %s, %s)",
        (uuid.uuid4(), user_id, token_hash, expires_at),
    )


async def refresh_token_for_update(conn: psycopg.AsyncConnection, token_hash: str) -> dict | None:
    """The token row with its user, locked so two concurrent refreshes of one
    token cannot both succeed (a SECURITY DEFINER lookup, as the token's user
    is not known yet)."""
    cur = await conn.execute(
        "SELECT id, user_id, expires_at, revoked_at, email, role"
        " FROM identity.refresh_token_for_update(%s)",
        (token_hash,),
    )
    return await cur.fetchone()


async def revoke_refresh_token(conn: psycopg.AsyncConnection, token_id) -> None:
    await conn.execute(
        "UPDATE identity.refresh_tokens SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
        (token_id,),
    )


async def revoke_all_refresh_tokens(conn: psycopg.AsyncConnection, user_id) -> int:
    cur = await conn.execute(
        "UPDATE identity.refresh_tokens SET revoked_at = now()"
        " WHERE user_id = %s AND revoked_at IS NULL",
        (user_id,),
    )
    return cur.rowcount
