"""SQL of the jobs schema. Every function takes a connection inside a
transaction opened by the caller (`Database.tx`), so row level security and
atomicity are decided by the service layer, not here."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb

from ourvidz import telemetry
from services.jobs import domain

_JOB_COLUMNS = (
    "id, user_id, request_id, job_type, state, prompt, enhanced_prompt, negative_prompt, seed, "
    "num_images, width, height, num_frames, steps, guidance_scale, reference_upload_id, "
    "reference_type, reference_strength, reference_bucket, reference_key, destination, "
    "workspace_session_id, progress_step, progress_total, progress_stage, attempt, "
    "cancel_requested, error_code, error_message, enhancement_fallback, "
    "enhancement_fallback_reason, last_sequence, start_token, heartbeat_at, checked_at, "
    "created_at, started_at, completed_at, updated_at, provenance, enhancement_template_id, "
    "enhancement_template_version, rerun_of, dispatched_at, batch_id, trace_headers"
)
_ASSET_COLUMNS = (
    "job_id, index, bucket, key, content_type, width, height, seed, thumbnail_bucket, "
    "thumbnail_key, size_bytes, num_frames"
)


async def insert_job(conn: AsyncConnection, row: dict) -> dict:
    columns = list(row)
    query = sql.SQL("INSERT INTO jobs.jobs ({}) VALUES ({}) RETURNING " + _JOB_COLUMNS).format(
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )
    cur = await conn.execute(query, [row[c] for c in columns])
    return await cur.fetchone()


async def get_job(conn: AsyncConnection, job_id: str, *, for_update: bool = False) -> dict | None:
    lock = " FOR UPDATE" if for_update else ""
    cur = await conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs.jobs WHERE id = %s{lock}", (job_id,))
    return await cur.fetchone()


async def find_by_request_id(conn: AsyncConnection, user_id: str, request_id: str) -> dict | None:
    cur = await conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs.jobs WHERE user_id = %s AND request_id = %s",
        (user_id, request_id),
    )
    return await cur.fetchone()


async def latest_provenance(conn: AsyncConnection, job_types: list[str]) -> dict | None:
    """The provenance of the job of `job_types` completed last (with one), as
    stored: what their worker family rendered with most recently. One index
    probe per job type."""
    cur = await conn.execute(
        "SELECT last.provenance FROM unnest(%s::text[]) AS t(job_type) "
        "CROSS JOIN LATERAL (SELECT provenance, completed_at FROM jobs.jobs j "
        "WHERE j.job_type = t.job_type AND state = 'completed' AND provenance IS NOT NULL "
        "ORDER BY completed_at DESC LIMIT 1) AS last "
        "ORDER BY last.completed_at DESC LIMIT 1",
        (job_types,),
    )
    row = await cur.fetchone()
    return row["provenance"] if row else None


async def lock_user(conn: AsyncConnection, user_id: str) -> None:
    """Serialises one user's creates, so the active-job limit holds under races."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", (user_id,))


async def count_active(conn: AsyncConnection, user_id: str) -> int:
    cur = await conn.execute(
        "SELECT count(*) AS n FROM jobs.jobs WHERE user_id = %s AND state = ANY(%s)",
        (user_id, list(domain.ACTIVE)),
    )
    return (await cur.fetchone())["n"]


async def update_job(conn: AsyncConnection, job_id: str, changes: dict) -> dict:
    """Apply `changes` and return the updated row (updated_at is set here)."""
    assignments = [sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder()) for c in changes]
    assignments.append(sql.SQL("updated_at = now()"))
    query = sql.SQL("UPDATE jobs.jobs SET {} WHERE id = %s RETURNING " + _JOB_COLUMNS).format(
        sql.SQL(", ").join(assignments)
    )
    cur = await conn.execute(query, [*changes.values(), job_id])
    return await cur.fetchone()


async def claim_stale_enhancing(
    conn: AsyncConnection, older_than_seconds: float, limit: int
) -> list[dict]:
    """Jobs enhancing for longer than `older_than_seconds`, oldest first, locked
    until the transaction ends; rows another transaction holds (a replica's
    sweep, a CompleteEnhancement in flight) are skipped, not waited for."""
    cur = await conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs.jobs WHERE state = 'enhancing' "
        "AND created_at < now() - make_interval(secs => %s) "
        "ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT %s",
        (older_than_seconds, limit),
    )
    return await cur.fetchall()


async def heartbeat(conn: AsyncConnection, job_id: str) -> None:
    await conn.execute("UPDATE jobs.jobs SET heartbeat_at = now() WHERE id = %s", (job_id,))


async def claim_silent_running(
    conn: AsyncConnection, silent_seconds: float, limit: int
) -> list[dict]:
    """Running jobs whose worker gave no sign of life for `silent_seconds`,
    locked (rows held elsewhere are skipped)."""
    cur = await conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs.jobs WHERE state = 'running' "
        "AND coalesce(heartbeat_at, updated_at) < now() - make_interval(secs => %s) "
        "ORDER BY heartbeat_at NULLS FIRST FOR UPDATE SKIP LOCKED LIMIT %s",
        (silent_seconds, limit),
    )
    return await cur.fetchall()


async def claim_queued_to_check(
    conn: AsyncConnection, older_than_seconds: float, limit: int
) -> list[dict]:
    """Queued jobs dispatched and unchanged for `older_than_seconds` and not
    confirmed within that time either, least recently confirmed first, locked."""
    cur = await conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs.jobs WHERE state = 'queued' "
        "AND dispatched_at < now() - make_interval(secs => %s) "
        "AND updated_at < now() - make_interval(secs => %s) "
        "AND (checked_at IS NULL OR checked_at < now() - make_interval(secs => %s)) "
        "ORDER BY checked_at NULLS FIRST, updated_at FOR UPDATE SKIP LOCKED LIMIT %s",
        (older_than_seconds, older_than_seconds, older_than_seconds, limit),
    )
    return await cur.fetchall()


async def mark_checked(conn: AsyncConnection, job_ids: list[str]) -> None:
    await conn.execute(
        "UPDATE jobs.jobs SET checked_at = now() WHERE id = ANY(%s::uuid[])", (job_ids,)
    )


async def outbox_subjects(conn: AsyncConnection, subjects: list[str]) -> set[str]:
    """Which of `subjects` still have a row waiting in the outbox."""
    cur = await conn.execute(
        "SELECT DISTINCT subject FROM jobs.outbox WHERE subject = ANY(%s)", (subjects,)
    )
    return {row["subject"] for row in await cur.fetchall()}


async def job_states(conn: AsyncConnection, job_ids: list[str]) -> dict[str, str]:
    cur = await conn.execute(
        "SELECT id, state FROM jobs.jobs WHERE id = ANY(%s::uuid[])", (job_ids,)
    )
    return {str(row["id"]): row["state"] for row in await cur.fetchall()}


async def asset_locations(conn: AsyncConnection, job_ids: list[str]) -> set[tuple[str, str]]:
    """Every (bucket, key) the assets of `job_ids` point at, thumbnails included."""
    cur = await conn.execute(
        "SELECT bucket, key, thumbnail_bucket, thumbnail_key FROM jobs.assets "
        "WHERE job_id = ANY(%s::uuid[])",
        (job_ids,),
    )
    found: set[tuple[str, str]] = set()
    for row in await cur.fetchall():
        found.add((row["bucket"], row["key"]))
        if row["thumbnail_bucket"] and row["thumbnail_key"]:
            found.add((row["thumbnail_bucket"], row["thumbnail_key"]))
    return found


async def list_jobs(
    conn: AsyncConnection,
    user_id: str,
    *,
    state: str,
    after: tuple[datetime, str] | None,
    limit: int,
    job_type: str = "",
) -> list[dict]:
    where = ["user_id = %s"]
    params: list = [user_id]
    if state:
        where.append("state = %s")
        params.append(state)
    if job_type:
        where.append("job_type = %s")
        params.append(job_type)
    if after is not None:
        where.append("(created_at, id) < (%s, %s)")
        params.extend(after)
    params.append(limit)
    cur = await conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs.jobs WHERE {' AND '.join(where)} "
        "ORDER BY created_at DESC, id DESC LIMIT %s",
        params,
    )
    return await cur.fetchall()


async def assets_of(conn: AsyncConnection, job_ids: Iterable[str]) -> dict[str, list[dict]]:
    ids = [str(i) for i in job_ids]
    found: dict[str, list[dict]] = {i: [] for i in ids}
    if not ids:
        return found
    cur = await conn.execute(
        f"SELECT {_ASSET_COLUMNS} FROM jobs.assets WHERE job_id = ANY(%s::uuid[]) ORDER BY index",
        (ids,),
    )
    for row in await cur.fetchall():
        found[str(row["job_id"])].append(row)
    return found


async def replace_assets(
    conn: AsyncConnection, job_id: str, user_id: str, assets: list[dict]
) -> None:
    await conn.execute("DELETE FROM jobs.assets WHERE job_id = %s", (job_id,))
    if not assets:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO jobs.assets (job_id, user_id, index, bucket, key, content_type, width, "
            "height, seed, thumbnail_bucket, thumbnail_key, size_bytes, num_frames) VALUES "
            "(%(job_id)s, %(user_id)s, %(index)s, %(bucket)s, %(key)s, %(content_type)s, "
            "%(width)s, %(height)s, %(seed)s, %(thumbnail_bucket)s, %(thumbnail_key)s, "
            "%(size_bytes)s, %(num_frames)s)",
            [{**a, "job_id": job_id, "user_id": user_id} for a in assets],
        )


async def insert_event(
    conn: AsyncConnection,
    job_id: str,
    user_id: str,
    sequence: int,
    kind: str,
    payload: bytes,
    subject: str,
    msg_id: str,
) -> None:
    """A job event and its message in the outbox (to `subject` as `msg_id`),
    in one statement."""
    await conn.execute(
        "WITH event AS (INSERT INTO jobs.job_events (job_id, sequence, user_id, type, payload) "
        "VALUES (%(job_id)s, %(sequence)s, %(user_id)s, %(kind)s, %(payload)s)) "
        "INSERT INTO jobs.outbox (subject, msg_id, payload, trace_headers) "
        "VALUES (%(subject)s, %(msg_id)s, %(payload)s, %(trace)s)",
        {
            "job_id": job_id,
            "sequence": sequence,
            "user_id": user_id,
            "kind": kind,
            "payload": payload,
            "subject": subject,
            "msg_id": msg_id,
            "trace": Jsonb(telemetry.inject()),
        },
    )


async def events_after(conn: AsyncConnection, job_id: str, after: int) -> list[dict]:
    cur = await conn.execute(
        "SELECT sequence, type, payload FROM jobs.job_events "
        "WHERE job_id = %s AND sequence > %s ORDER BY sequence",
        (job_id, after),
    )
    return await cur.fetchall()


async def insert_outbox(
    conn: AsyncConnection,
    subject: str,
    msg_id: str,
    payload: bytes,
    headers: dict[str, str] | None = None,
    trace_headers: dict[str, str] | None = None,
) -> None:
    """A message to publish once the transaction commits, with a trace
    context (`trace_headers`, or the current call's) and any `headers` of its
    own (published as its headers)."""
    if trace_headers is None:
        trace_headers = telemetry.inject()
    await conn.execute(
        "INSERT INTO jobs.outbox (subject, msg_id, payload, trace_headers, headers) "
        "VALUES (%s, %s, %s, %s, %s)",
        (subject, msg_id, payload, Jsonb(trace_headers), Jsonb(headers or {})),
    )


async def claim_outbox(conn: AsyncConnection, limit: int) -> list[dict]:
    """Rows no other relay holds, tasks first (a worker may wait for one),
    each kind oldest first; locked until the transaction ends. Messages of
    one subject keep their order."""
    cur = await conn.execute(
        "SELECT id, subject, msg_id, payload, trace_headers, headers FROM jobs.outbox "
        "ORDER BY subject LIKE 'tasks.%%' DESC, id FOR UPDATE SKIP LOCKED LIMIT %s",
        (limit,),
    )
    return await cur.fetchall()


async def delete_outbox(conn: AsyncConnection, ids: list[int]) -> None:
    await conn.execute("DELETE FROM jobs.outbox WHERE id = ANY(%s)", (ids,))


async def count_outbox(conn: AsyncConnection) -> int:
    """Rows waiting to be published."""
    cur = await conn.execute("SELECT count(*) AS n FROM jobs.outbox")
    return (await cur.fetchone())["n"]


# --- dispatch (services/jobs/dispatch.py) ---------------------------------------

# A job's place in its user's line: fast job types are pulled forward by a head
# start (seconds), so a fast job goes before a high one submitted less than the
# head start earlier, and a high job that waited longer goes first (ageing).
_RANK_TIME = (
    "CASE WHEN job_type = ANY(%(fast)s) "
    "THEN created_at - make_interval(secs => %(head_start)s) ELSE created_at END"
)
_WAITING = "state = 'queued' AND dispatched_at IS NULL AND job_type = ANY(%(types)s)"
_IN_FLIGHT = (
    "state IN ('queued', 'running') AND dispatched_at IS NOT NULL AND job_type = ANY(%(types)s)"
)


def _line_params(types: list[str], fast: list[str], head_start: float) -> dict:
    return {"types": types, "fast": fast, "head_start": head_start}


async def lock_dispatch(conn: AsyncConnection, family: str) -> None:
    """Serialises the dispatch of one family across Jobs replicas (until the
    transaction ends)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 11))", (family,))


async def any_waiting(conn: AsyncConnection, types: list[str]) -> bool:
    """Whether a job of these types waits in Jobs (queued, not yet dispatched)."""
    cur = await conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM jobs.jobs WHERE {_WAITING}) AS found", {"types": types}
    )
    return (await cur.fetchone())["found"]


async def dispatch_candidates(
    conn: AsyncConnection, types: list[str], fast: list[str], head_start: float, per_user: int
) -> list[dict]:
    """The first `per_user` waiting jobs of each user in their line order
    (`rank_time`, then submission), with that order's `user_rank` (1 first)."""
    cur = await conn.execute(
        f"SELECT * FROM (SELECT {_JOB_COLUMNS}, {_RANK_TIME} AS rank_time, "
        f"row_number() OVER (PARTITION BY user_id ORDER BY {_RANK_TIME}, created_at, id) "
        f"AS user_rank FROM jobs.jobs WHERE {_WAITING}) AS line "
        "WHERE user_rank <= %(per_user)s ORDER BY rank_time, created_at, id",
        {**_line_params(types, fast, head_start), "per_user": per_user},
    )
    return await cur.fetchall()


async def in_flight_by_user(
    conn: AsyncConnection, types: list[str], user_ids: list[str]
) -> dict[str, int]:
    """Each user's jobs of these types on the queue or running."""
    cur = await conn.execute(
        f"SELECT user_id, count(*) AS n FROM jobs.jobs WHERE {_IN_FLIGHT} "
        "AND user_id = ANY(%(users)s::uuid[]) GROUP BY user_id",
        {"types": types, "users": user_ids},
    )
    return {str(row["user_id"]): row["n"] for row in await cur.fetchall()}


async def outbox_tasks(conn: AsyncConnection, family: str) -> int:
    """Tasks of `family` written but not yet published."""
    cur = await conn.execute(
        "SELECT count(*) AS n FROM jobs.outbox WHERE subject LIKE %s", (f"tasks.{family}.%",)
    )
    return (await cur.fetchone())["n"]


async def dispatch_task(
    conn: AsyncConnection,
    job_ids: list[str],
    batch_id: str | None,
    subject: str,
    msg_id: str,
    payload: bytes,
    headers: dict[str, str],
    trace_headers: dict[str, str],
) -> None:
    """The jobs' task into the outbox and the jobs marked dispatched, in one
    statement."""
    await conn.execute(
        "WITH task AS (INSERT INTO jobs.outbox (subject, msg_id, payload, trace_headers, headers) "
        "VALUES (%(subject)s, %(msg_id)s, %(payload)s, %(trace)s, %(headers)s)) "
        "UPDATE jobs.jobs SET dispatched_at = now(), batch_id = %(batch_id)s "
        "WHERE id = ANY(%(ids)s::uuid[])",
        {
            "subject": subject,
            "msg_id": msg_id,
            "payload": payload,
            "trace": Jsonb(trace_headers),
            "headers": Jsonb(headers),
            "batch_id": batch_id,
            "ids": job_ids,
        },
    )


async def undispatch(conn: AsyncConnection, job_ids: list[str]) -> None:
    """Back to waiting in Jobs (their task is gone from the queue)."""
    await conn.execute(
        "UPDATE jobs.jobs SET dispatched_at = NULL, batch_id = NULL WHERE id = ANY(%s::uuid[])",
        (job_ids,),
    )


async def family_waiting(conn: AsyncConnection, types: list[str]) -> int:
    """Queued jobs of these types not yet started: waiting in Jobs or on the queue."""
    cur = await conn.execute(
        "SELECT count(*) AS n FROM jobs.jobs WHERE state = 'queued' AND job_type = ANY(%s)",
        (types,),
    )
    return (await cur.fetchone())["n"]


async def jobs_ahead(
    conn: AsyncConnection, job_id: str, types: list[str], fast: list[str], head_start: float
) -> int | None:
    """How many jobs are expected to start before the waiting job `job_id` if
    users take turns: every job on the queue, its own user's jobs before it,
    and of each other user the jobs in an earlier turn (a lower place in that
    user's line) or in the same turn and longer in line. None when the job is
    not waiting in Jobs."""
    cur = await conn.execute(
        f"WITH line AS (SELECT id, user_id, created_at, {_RANK_TIME} AS t, "
        f"row_number() OVER (PARTITION BY user_id ORDER BY {_RANK_TIME}, created_at, id) AS r "
        f"FROM jobs.jobs WHERE {_WAITING}), "
        "me AS (SELECT * FROM line WHERE id = %(id)s) "
        "SELECT (SELECT count(*) FROM me) AS found, "
        "(SELECT count(*) FROM line, me WHERE (line.user_id = me.user_id AND line.r < me.r) "
        "OR (line.user_id <> me.user_id AND (line.r < me.r OR (line.r = me.r AND "
        "(line.t, line.created_at, line.id) < (me.t, me.created_at, me.id))))) AS waiting, "
        "(SELECT count(*) FROM jobs.jobs WHERE state = 'queued' AND dispatched_at IS NOT NULL "
        "AND job_type = ANY(%(types)s)) AS on_queue",
        {**_line_params(types, fast, head_start), "id": job_id},
    )
    row = await cur.fetchone()
    if not row["found"]:
        return None
    return row["waiting"] + row["on_queue"]


async def typical_seconds(conn: AsyncConnection, job_type: str, last: int) -> float | None:
    """The median time from start to completion of the last `last` completed
    jobs of `job_type` (None before any)."""
    cur = await conn.execute(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY took) AS median FROM ("
        "SELECT extract(epoch FROM completed_at - started_at) AS took FROM jobs.jobs "
        "WHERE job_type = %s AND state = 'completed' AND started_at IS NOT NULL "
        "ORDER BY completed_at DESC LIMIT %s) AS recent",
        (job_type, last),
    )
    row = await cur.fetchone()
    return None if row["median"] is None else float(row["median"])
