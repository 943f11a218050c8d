"""SSE over a real uvicorn: a client that goes away cancels the upstream watch,
and shutdown ends open streams instead of waiting for them."""

from __future__ import annotations

import asyncio

import httpx

from ourvidz.v1 import job_pb2
from services.gateway.main import start
from tests.gateway.gateway_helpers import auth, gateway_settings, held_job


async def _first_event(chunks) -> str:
    """Text up to the first complete event (or the end of the body)."""
    buffer = ""
    async for text in chunks:
        buffer += text
        if "event: " in buffer and buffer.endswith("\n\n"):
            return buffer
    return buffer


async def _rest(chunks) -> str:
    return "".join([text async for text in chunks])


def _held_job(jobs, user_id: str) -> job_pb2.Job:
    job = held_job(jobs, user_id)
    jobs.hold_stream = asyncio.Event()  # never set: the stream stays open after event 1
    jobs.watch_closed.clear()
    return job


async def test_client_disconnect_cancels_the_watch(base_env, fakes, user_token):
    served, jobs, _ = fakes
    user_id, token = user_token
    job = _held_job(jobs, user_id)
    running = await start(gateway_settings(base_env, served.port), port=0)
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.port}") as http,
            http.stream("GET", f"/v1/jobs/{job.id}/events", headers=auth(token)) as r,
        ):
            assert r.status_code == 200
            first = await _first_event(r.aiter_text())
            assert "id: 1\nevent: state" in first
        await asyncio.wait_for(jobs.watch_closed.wait(), 20)
    finally:
        jobs.hold_stream = None
        await running.stop()


async def test_shutdown_ends_open_streams(base_env, fakes, user_token):
    served, jobs, _ = fakes
    user_id, token = user_token
    job = _held_job(jobs, user_id)
    settings = gateway_settings(base_env, served.port, gateway_shutdown_grace_seconds=120)
    running = await start(settings, port=0)
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.port}") as http,
            http.stream("GET", f"/v1/jobs/{job.id}/events", headers=auth(token)) as r,
        ):
            chunks = r.aiter_text()
            assert "event: state" in await _first_event(chunks)
            stopping = asyncio.create_task(running.stop())
            rest = await asyncio.wait_for(_rest(chunks), 30)  # the body ends
            await asyncio.wait_for(stopping, 30)  # well within the 120 s grace
        assert "event: completed" not in rest
        assert running.task.done()
    finally:
        jobs.hold_stream = None
        if not running.task.done():
            await running.stop()
