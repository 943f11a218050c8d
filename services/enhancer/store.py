"""SQL of the enhancer schema. Every function takes a connection inside a
transaction opened by the service layer (`Database.tx`), which decides who
the caller is (row level security) and what is atomic."""

from __future__ import annotations

from psycopg import AsyncConnection, sql

TEMPLATE_COLUMNS = (
    "id, name, target_model, version, system_prompt, user_template, temperature, top_p, "
    "max_new_tokens, description, created_by, created_at, active"
)
TEST_COLUMNS = (
    "id, template_id, template_version, sample_prompt, enhanced_prompt, model, target_model, "
    "tokens_in, tokens_out, target_tokens, latency_seconds, fallback, fallback_reason, "
    "temperature, top_p, max_new_tokens, seed, created_by, created_at"
)


async def _insert(conn: AsyncConnection, table: str, row: dict, returning: str) -> dict:
    schema, name = table.split(".")
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING " + returning).format(
        sql.Identifier(schema, name),
        sql.SQL(", ").join(map(sql.Identifier, row)),
        sql.SQL(", ").join(sql.Placeholder() * len(row)),
    )
    cur = await conn.execute(query, list(row.values()))
    return await cur.fetchone()


# --- templates -----------------------------------------------------------------------------


async def get_template(conn: AsyncConnection, template_id: str) -> dict | None:
    cur = await conn.execute(
        f"SELECT {TEMPLATE_COLUMNS} FROM enhancer.prompt_templates WHERE id = %s", (template_id,)
    )
    return await cur.fetchone()


async def active_template(conn: AsyncConnection, target_model: str) -> dict | None:
    cur = await conn.execute(
        f"SELECT {TEMPLATE_COLUMNS} FROM enhancer.prompt_templates "
        "WHERE target_model = %s AND active",
        (target_model,),
    )
    return await cur.fetchone()


async def list_templates(
    conn: AsyncConnection, target_model: str = "", active_only: bool = False
) -> list[dict]:
    where, params = ["true"], []
    if target_model:
        where.append("target_model = %s")
        params.append(target_model)
    if active_only:
        where.append("active")
    cur = await conn.execute(
        f"SELECT {TEMPLATE_COLUMNS} FROM enhancer.prompt_templates WHERE {' AND '.join(where)} "
        "ORDER BY target_model, name, version DESC",
        params,
    )
    return await cur.fetchall()


async def lock_name(conn: AsyncConnection, name: str) -> None:
    """Serialises the versions of one template name."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 11))", (name,))


async def lock_target(conn: AsyncConnection, target_model: str) -> None:
    """Serialises activations within one target model."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 12))", (target_model,))


async def name_exists(conn: AsyncConnection, name: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM enhancer.prompt_templates WHERE lower(name) = lower(%s) LIMIT 1", (name,)
    )
    return await cur.fetchone() is not None


async def latest_version(conn: AsyncConnection, name: str) -> dict:
    cur = await conn.execute(
        f"SELECT {TEMPLATE_COLUMNS} FROM enhancer.prompt_templates WHERE name = %s "
        "ORDER BY version DESC LIMIT 1",
        (name,),
    )
    return await cur.fetchone()


async def insert_template(conn: AsyncConnection, row: dict) -> dict:
    return await _insert(conn, "enhancer.prompt_templates", row, TEMPLATE_COLUMNS)


async def activate(conn: AsyncConnection, template_id: str, target_model: str) -> dict:
    """`template_id` becomes its target's only active version."""
    await conn.execute(
        "UPDATE enhancer.prompt_templates SET active = false "
        "WHERE target_model = %s AND active AND id <> %s",
        (target_model, template_id),
    )
    cur = await conn.execute(
        f"UPDATE enhancer.prompt_templates SET active = true WHERE id = %s "
        f"RETURNING {TEMPLATE_COLUMNS}",
        (template_id,),
    )
    return await cur.fetchone()


# --- tests ----------------------------------------------------------------------------------


async def insert_test(conn: AsyncConnection, row: dict) -> dict:
    return await _insert(conn, "enhancer.prompt_tests", row, TEST_COLUMNS)


async def list_tests(conn: AsyncConnection, template_id: str | None, limit: int) -> list[dict]:
    where, params = "true", []
    if template_id:
        where, params = "template_id = %s", [template_id]
    cur = await conn.execute(
        f"SELECT {TEST_COLUMNS} FROM enhancer.prompt_tests WHERE {where} "
        "ORDER BY created_at DESC, id DESC LIMIT %s",
        [*params, limit],
    )
    return await cur.fetchall()


# --- enhancements and ratings -------------------------------------------------------------


async def record_enhancement(conn: AsyncConnection, row: dict) -> str:
    """Insert an enhancement; a job's second enhancement (a redelivered task)
    replaces its first. Returns the row's id."""
    columns = list(row)
    updates = [c for c in columns if c not in ("id", "job_id")]
    query = sql.SQL(
        "INSERT INTO enhancer.enhancements ({}) VALUES ({}) "
        "ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO UPDATE SET {}, created_at = now() "
        "RETURNING id"
    ).format(
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
            for c in updates
        ),
    )
    cur = await conn.execute(query, [row[c] for c in columns])
    return str((await cur.fetchone())["id"])


async def enhancement_of_job(conn: AsyncConnection, job_id: str, user_id: str) -> dict | None:
    cur = await conn.execute(
        "SELECT id FROM enhancer.enhancements WHERE job_id = %s AND user_id = %s",
        (job_id, user_id),
    )
    return await cur.fetchone()


async def upsert_rating(conn: AsyncConnection, user_id: str, job_id: str, rating: int) -> dict:
    cur = await conn.execute(
        "INSERT INTO enhancer.enhancement_ratings (user_id, job_id, rating) VALUES (%s, %s, %s) "
        "ON CONFLICT (user_id, job_id) DO UPDATE SET rating = EXCLUDED.rating, updated_at = now() "
        "RETURNING job_id, rating",
        (user_id, job_id, rating),
    )
    return await cur.fetchone()


async def template_stats(conn: AsyncConnection, template_id: str) -> dict:
    cur = await conn.execute(
        "SELECT count(*) AS enhancements, count(*) FILTER (WHERE fallback) AS fallbacks, "
        "coalesce(avg(latency_seconds), 0) AS mean_latency, "
        "coalesce(avg(tokens_in), 0) AS mean_tokens_in, "
        "coalesce(avg(tokens_out), 0) AS mean_tokens_out "
        "FROM enhancer.enhancements WHERE template_id = %s",
        (template_id,),
    )
    stats = dict(await cur.fetchone())
    cur = await conn.execute(
        "SELECT count(*) AS ratings, coalesce(avg(rating), 0) AS mean_rating "
        "FROM enhancer.enhancement_ratings WHERE job_id IN "
        "(SELECT job_id FROM enhancer.enhancements "
        " WHERE template_id = %s AND job_id IS NOT NULL)",
        (template_id,),
    )
    stats.update(await cur.fetchone())
    return stats
