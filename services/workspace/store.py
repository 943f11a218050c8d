"""SQL of the workspace schema. Functions take an open connection; the service
layer owns transactions (and thereby the caller that row level security sees).
Every user-facing query also names the user, so isolation never rests on one
mechanism alone."""

from __future__ import annotations

import uuid
from datetime import datetime

from psycopg import AsyncConnection

from services.workspace.domain import Output

_SESSION_COLUMNS = """
    s.id, s.user_id, s.name, s.active, s.created_at, s.last_activity_at,
    (SELECT count(*) FROM workspace.items i WHERE i.session_id = s.id)::int AS item_count
"""
_ITEM_COLUMNS = """
    id, session_id, user_id, job_id, index, job_type, content_type, prompt, original_prompt,
    negative_prompt, seed, width, height, bucket, key, thumbnail_bucket, thumbnail_key, size_bytes,
    library_asset_id, created_at
"""
_ASSET_COLUMNS = """
    id, user_id, job_id, index, job_type, content_type, title, prompt, original_prompt,
    negative_prompt, seed, width, height, bucket, key, thumbnail_bucket, thumbnail_key, size_bytes,
    created_at
"""


async def lock_user(conn: AsyncConnection, user_id: uuid.UUID) -> None:
    """Serialise the changes of one user's active session (one active at most)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('workspace.active:' || %s, 0))",
        (str(user_id),),
    )


# --- sessions ------------------------------------------------------------------------


async def insert_active_session(conn: AsyncConnection, user_id: uuid.UUID, name: str) -> dict:
    """A new session that becomes the user's active one. Hold lock_user first."""
    await conn.execute(
        "UPDATE workspace.sessions SET active = false WHERE user_id = %s AND active",
        (user_id,),
    )
    cur = await conn.execute(
        """INSERT INTO workspace.sessions (id, user_id, name, active)
           VALUES (%s, %s, %s, true) RETURNING id""",
        (uuid.uuid4(), user_id, name),
    )
    row = await cur.fetchone()
    return await get_session(conn, user_id, row["id"])


async def get_session(
    conn: AsyncConnection, user_id: uuid.UUID, session_id: uuid.UUID, *, lock: bool = False
) -> dict | None:
    if lock:
        # Row locks cannot sit beside the item count's aggregate: lock first.
        cur = await conn.execute(
            """SELECT id FROM workspace.sessions
               WHERE id = %s AND user_id = %s AND deleted_at IS NULL FOR UPDATE""",
            (session_id, user_id),
        )
        if await cur.fetchone() is None:
            return None
    cur = await conn.execute(
        f"""SELECT {_SESSION_COLUMNS} FROM workspace.sessions s
            WHERE s.id = %s AND s.user_id = %s AND s.deleted_at IS NULL""",
        (session_id, user_id),
    )
    return await cur.fetchone()


async def get_active_session(conn: AsyncConnection, user_id: uuid.UUID) -> dict | None:
    cur = await conn.execute(
        f"""SELECT {_SESSION_COLUMNS} FROM workspace.sessions s
            WHERE s.user_id = %s AND s.active AND s.deleted_at IS NULL
            ORDER BY s.created_at DESC LIMIT 1""",
        (user_id,),
    )
    return await cur.fetchone()


async def list_sessions(
    conn: AsyncConnection, user_id: uuid.UUID, limit: int, after: list | None
) -> list[dict]:
    params: list = [user_id]
    keyset = ""
    if after:
        keyset = "AND (s.created_at, s.id) < (%s::timestamptz, %s::uuid)"
        params += after
    cur = await conn.execute(
        f"""SELECT {_SESSION_COLUMNS} FROM workspace.sessions s
            WHERE s.user_id = %s AND s.deleted_at IS NULL {keyset}
            ORDER BY s.created_at DESC, s.id DESC LIMIT %s""",
        [*params, limit],
    )
    return await cur.fetchall()


async def touch_session(conn: AsyncConnection, session_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE workspace.sessions SET last_activity_at = now() WHERE id = %s", (session_id,)
    )


async def idle_sessions(conn: AsyncConnection, idle_before: datetime, limit: int) -> list[dict]:
    cur = await conn.execute(
        """SELECT id, user_id FROM workspace.sessions
           WHERE deleted_at IS NULL AND last_activity_at < %s
           ORDER BY last_activity_at LIMIT %s""",
        (idle_before, limit),
    )
    return await cur.fetchall()


async def lock_idle_session(
    conn: AsyncConnection, session_id: uuid.UUID, idle_before: datetime
) -> bool:
    """Lock a session for retirement if it is still idle (the filer may have
    filed into it since it was listed)."""
    cur = await conn.execute(
        """SELECT id FROM workspace.sessions
           WHERE id = %s AND deleted_at IS NULL AND last_activity_at < %s
           FOR UPDATE SKIP LOCKED""",
        (session_id, idle_before),
    )
    return await cur.fetchone() is not None


async def retire_session(conn: AsyncConnection, session_id: uuid.UUID) -> None:
    await conn.execute(
        """UPDATE workspace.sessions SET active = false, deleted_at = now()
           WHERE id = %s""",
        (session_id,),
    )


# --- items ---------------------------------------------------------------------------


async def insert_item(
    conn: AsyncConnection,
    *,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    job_id: str,
    job_type: str,
    prompt: str,
    original_prompt: str,
    negative_prompt: str,
    output: Output,
) -> dict | None:
    """File one output; None when it was filed before (a redelivered event)."""
    cur = await conn.execute(
        f"""INSERT INTO workspace.items
              (id, session_id, user_id, job_id, index, job_type, content_type, prompt,
               original_prompt, negative_prompt, seed, width, height, bucket, key,
               thumbnail_bucket, thumbnail_key, size_bytes)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (job_id, index) DO NOTHING
            RETURNING {_ITEM_COLUMNS}""",
        (
            uuid.uuid4(),
            session_id,
            user_id,
            job_id,
            output.index,
            job_type,
            output.content_type,
            prompt,
            original_prompt,
            negative_prompt,
            output.seed,
            output.width,
            output.height,
            output.bucket,
            output.key,
            output.thumbnail_bucket,
            output.thumbnail_key,
            output.size_bytes,
        ),
    )
    return await cur.fetchone()


async def get_item(
    conn: AsyncConnection, user_id: uuid.UUID, item_id: uuid.UUID, *, lock: bool = False
) -> dict | None:
    cur = await conn.execute(
        f"""SELECT {_ITEM_COLUMNS} FROM workspace.items WHERE id = %s AND user_id = %s
            {"FOR UPDATE" if lock else ""}""",
        (item_id, user_id),
    )
    return await cur.fetchone()


async def list_items(
    conn: AsyncConnection,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    limit: int,
    after: list | None,
) -> list[dict]:
    """Newest jobs first; the outputs of one job in their index order."""
    params: list = [session_id, user_id]
    keyset = ""
    if after:
        keyset = """AND (created_at < %(t)s::timestamptz
                         OR (created_at = %(t)s::timestamptz
                             AND (job_id < %(j)s OR (job_id = %(j)s AND index > %(i)s))))"""
    query = f"""SELECT {_ITEM_COLUMNS} FROM workspace.items
                WHERE session_id = %(s)s AND user_id = %(u)s {keyset}
                ORDER BY created_at DESC, job_id DESC, index ASC LIMIT %(n)s"""
    named = {"s": params[0], "u": params[1], "n": limit}
    if after:
        named.update(t=after[0], j=after[1], i=int(after[2]))
    cur = await conn.execute(query, named)
    return await cur.fetchall()


async def delete_item(conn: AsyncConnection, item_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM workspace.items WHERE id = %s", (item_id,))


async def delete_session_items(conn: AsyncConnection, session_id: uuid.UUID) -> list[dict]:
    cur = await conn.execute(
        f"DELETE FROM workspace.items WHERE session_id = %s RETURNING {_ITEM_COLUMNS}",
        (session_id,),
    )
    return await cur.fetchall()


async def set_item_asset(conn: AsyncConnection, item_id: uuid.UUID, asset_id: uuid.UUID) -> dict:
    cur = await conn.execute(
        f"""UPDATE workspace.items SET library_asset_id = %s WHERE id = %s
            RETURNING {_ITEM_COLUMNS}""",
        (asset_id, item_id),
    )
    return await cur.fetchone()


# --- library -------------------------------------------------------------------------


async def insert_asset(
    conn: AsyncConnection,
    *,
    user_id: uuid.UUID,
    job_id: str,
    job_type: str,
    title: str,
    prompt: str,
    original_prompt: str,
    negative_prompt: str,
    output: Output,
) -> dict | None:
    """A library asset; None when this output is in the library already."""
    cur = await conn.execute(
        f"""INSERT INTO workspace.library_assets
              (id, user_id, job_id, index, job_type, content_type, title, prompt,
               original_prompt, negative_prompt, seed, width, height, bucket, key,
               thumbnail_bucket, thumbnail_key, size_bytes)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (user_id, job_id, index) DO NOTHING
            RETURNING {_ASSET_COLUMNS}""",
        (
            uuid.uuid4(),
            user_id,
            job_id,
            output.index,
            job_type,
            output.content_type,
            title,
            prompt,
            original_prompt,
            negative_prompt,
            output.seed,
            output.width,
            output.height,
            output.bucket,
            output.key,
            output.thumbnail_bucket,
            output.thumbnail_key,
            output.size_bytes,
        ),
    )
    return await cur.fetchone()


async def find_asset(
    conn: AsyncConnection, user_id: uuid.UUID, job_id: str, index: int
) -> dict | None:
    cur = await conn.execute(
        f"""SELECT {_ASSET_COLUMNS} FROM workspace.library_assets
            WHERE user_id = %s AND job_id = %s AND index = %s""",
        (user_id, job_id, index),
    )
    return await cur.fetchone()


async def get_asset(conn: AsyncConnection, user_id: uuid.UUID, asset_id: uuid.UUID) -> dict | None:
    cur = await conn.execute(
        f"SELECT {_ASSET_COLUMNS} FROM workspace.library_assets WHERE id = %s AND user_id = %s",
        (asset_id, user_id),
    )
    return await cur.fetchone()


async def list_assets(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    limit: int,
    after: list | None,
    *,
    media_type: str = "",
    job_type: str = "",
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> list[dict]:
    where = ["user_id = %s"]
    params: list = [user_id]
    if created_after is not None:
        where.append("created_at >= %s")
        params.append(created_after)
    if created_before is not None:
        where.append("created_at < %s")
        params.append(created_before)
    if media_type:
        where.append("content_type LIKE %s")
        params.append(f"{media_type}/%")
    if job_type:
        where.append("job_type = %s")
        params.append(job_type)
    if after:
        where.append("(created_at, id) < (%s::timestamptz, %s::uuid)")
        params += after
    cur = await conn.execute(
        f"""SELECT {_ASSET_COLUMNS} FROM workspace.library_assets
            WHERE {" AND ".join(where)}
            ORDER BY created_at DESC, id DESC LIMIT %s""",
        [*params, limit],
    )
    return await cur.fetchall()


async def rename_asset(
    conn: AsyncConnection, user_id: uuid.UUID, asset_id: uuid.UUID, title: str
) -> dict | None:
    cur = await conn.execute(
        f"""UPDATE workspace.library_assets SET title = %s WHERE id = %s AND user_id = %s
            RETURNING {_ASSET_COLUMNS}""",
        (title, asset_id, user_id),
    )
    return await cur.fetchone()


async def delete_asset(
    conn: AsyncConnection, user_id: uuid.UUID, asset_id: uuid.UUID
) -> dict | None:
    cur = await conn.execute(
        f"""DELETE FROM workspace.library_assets WHERE id = %s AND user_id = %s
            RETURNING {_ASSET_COLUMNS}""",
        (asset_id, user_id),
    )
    return await cur.fetchone()


# --- objects -------------------------------------------------------------------------


async def is_referenced(conn: AsyncConnection, bucket: str, key: str) -> bool:
    """True while any item or library asset still points at this object (as its
    output or as its thumbnail)."""
    cur = await conn.execute(
        """SELECT EXISTS (SELECT 1 FROM workspace.items
                          WHERE (bucket = %(b)s AND key = %(k)s)
                             OR (thumbnail_bucket = %(b)s AND thumbnail_key = %(k)s))
               OR EXISTS (SELECT 1 FROM workspace.library_assets
                          WHERE (bucket = %(b)s AND key = %(k)s)
                             OR (thumbnail_bucket = %(b)s AND thumbnail_key = %(k)s)) AS used""",
        {"b": bucket, "k": key},
    )
    row = await cur.fetchone()
    return bool(row["used"])


# --- uploads -------------------------------------------------------------------------


async def insert_upload(conn: AsyncConnection, **values) -> dict:
    cur = await conn.execute(
        """INSERT INTO workspace.uploads
             (id, user_id, bucket, key, content_type, width, height, size_bytes)
           VALUES (%(id)s, %(user_id)s, %(bucket)s, %(key)s, %(content_type)s, %(width)s,
                   %(height)s, %(size_bytes)s)
           RETURNING id, user_id, bucket, key, content_type, width, height, size_bytes,
                     created_at""",
        values,
    )
    return await cur.fetchone()


async def get_upload(
    conn: AsyncConnection, user_id: uuid.UUID, upload_id: uuid.UUID
) -> dict | None:
    cur = await conn.execute(
        """SELECT id, user_id, bucket, key, content_type, width, height, size_bytes, created_at
           FROM workspace.uploads WHERE id = %s AND user_id = %s""",
        (upload_id, user_id),
    )
    return await cur.fetchone()
