"""PostgreSQL or NATS going away under a running mesh (jobs, workspace and the
gateway, in this process): the HTTP API answers 503 with `Retry-After` and a
problem+json body, never a 500, for submits, reads, sign-in and event-stream
connects; the services log one line per failure, no traceback; and everything
answers again once the dependency is back.

The servers are the suite's own; each is reached through a proxy this test
cuts (nothing listens any more, open connections drop) and restores."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from ourvidz_dev.stack import running_stack
from tests.e2e.conftest import mesh_env, signup
from tests.e2e_outage.proxy import nats_proxy, postgres_proxy


@pytest.fixture(scope="module")
async def outage(base_env):
    """(stack, database proxy, NATS proxy)."""
    db, db_url = postgres_proxy(base_env["DATABASE_URL"])
    mq, mq_url = nats_proxy(base_env["NATS_URL"])
    await db.start()
    await mq.start()
    env = mesh_env(
        base_env,
        DATABASE_URL=db_url(db.port),
        # Every service's own login, through the proxy too.
        **{
            key: db_url(db.port, base_env[key]) for key in base_env if key.endswith("_DATABASE_URL")
        },
        NATS_URL=mq_url(mq.port),
        DB_POOL_TIMEOUT_SECONDS="1",
        GRPC_DEADLINE_SECONDS="10",
    )
    try:
        async with running_stack(env, workers=()) as stack:
            yield stack, db, mq
    finally:
        await db.cut()
        await mq.cut()


async def eventually(check, within: float = 60.0, every: float = 0.2):
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)


def assert_unavailable(response: httpx.Response, reason: str | None = None) -> None:
    assert response.status_code == 503, (response.request.url, response.text)
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == 503 and body["title"] == "Service Unavailable"
    assert "Traceback" not in response.text
    if reason:
        assert body["reason"] == reason, body


def tracebacks(caplog) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.exc_info or (r.levelno >= logging.ERROR and r.name.startswith(("ourvidz", "services")))
    ]


async def test_database_down_is_503_with_retry_after(outage, caplog):
    stack, db, _ = outage
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        user = await signup(http)
        body = {"job_type": "sdxl_image_fast", "prompt": "a lighthouse at dusk"}
        created = await user.post("/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        session_id = created.json()["workspace_session_id"]

        await db.cut()
        caplog.clear()
        try:
            assert_unavailable(await user.post("/v1/jobs", json=body))
            assert_unavailable(await user.get(f"/v1/jobs/{job_id}"))
            assert_unavailable(await user.get("/v1/jobs"))
            assert_unavailable(await user.get(f"/v1/workspace/sessions/{session_id}/items"))
            for path in (
                f"/v1/jobs/{job_id}/events",
                f"/v1/workspace/sessions/{session_id}/events",
            ):
                async with http.stream("GET", path, headers=user.headers) as stream:
                    await stream.aread()
                    assert_unavailable(stream, "DATABASE_UNAVAILABLE")
            # The gateway's own database: identity.
            assert_unavailable(await user.get("/v1/me"), "DATABASE_UNAVAILABLE")
            login = {"email": user.user["email"], "password": "a long password"}
            assert_unavailable(await http.post("/v1/auth/login", json=login))
            assert tracebacks(caplog) == []
        finally:
            await db.restore()

        # Back: every service's pool reconnects in its own time (with a
        # back-off), and a request meanwhile is a 503 the client retries.
        async def answers_again():
            for path in (f"/v1/jobs/{job_id}", "/v1/me"):  # Jobs' database, the gateway's
                read = await user.get(path)
                assert read.status_code in (200, 503), read.text
                if read.status_code != 200:
                    return False
            submitted = await user.post("/v1/jobs", json=body)
            assert submitted.status_code in (202, 503), submitted.text
            return submitted.status_code == 202

        await eventually(answers_again)


async def test_nats_down_refuses_session_streams_and_never_500s(outage, caplog):
    stack, _, mq = outage
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        user = await signup(http)
        body = {"job_type": "sdxl_image_fast", "prompt": "a lighthouse at night"}

        async def accepted():  # the database may have just come back (see above)
            response = await user.post("/v1/jobs", json=body)
            assert response.status_code in (202, 503), response.text
            return response if response.status_code == 202 else None

        created = await eventually(accepted)
        session_id = created.json()["workspace_session_id"]

        await mq.cut()
        caplog.clear()
        try:

            async def workspace_lost_nats():
                return not stack.workspace.nc.is_connected

            await eventually(workspace_lost_nats)
            path = f"/v1/workspace/sessions/{session_id}/events"
            async with http.stream("GET", path, headers=user.headers) as stream:
                await stream.aread()
                assert_unavailable(stream, "QUEUE_UNAVAILABLE")
            # Submits and reads do not need NATS: the job waits in the outbox.
            # (The pool may still be replacing the connections the database
            # outage above broke: a 503 for the database, never for NATS.)
            queued = await eventually(accepted)

            async def read_back():
                got = await user.get(f"/v1/jobs/{queued.json()['id']}")
                assert got.status_code in (200, 503), got.text
                if got.status_code == 503:
                    assert_unavailable(got, "DATABASE_UNAVAILABLE")
                return got.status_code == 200

            await eventually(read_back)
            assert tracebacks(caplog) == []
        finally:
            await mq.restore()

        async def streams_again():
            async with http.stream("GET", path, headers=user.headers) as stream:
                return stream.status_code == 200

        await eventually(streams_again)
