"""Helpers of the gateway tests: settings, an in-process client, SSE parsing."""

from __future__ import annotations

import contextlib
import json

import httpx

from ourvidz.v1 import events_pb2, job_pb2
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from tests.conftest import make_settings


def gateway_settings(
    base_env, fakes_port: int, enhancer_port: int = 1, **overrides
) -> GatewaySettings:
    """Settings against the doubles; without `enhancer_port` the enhancer is a
    closed port (unavailable)."""
    env = {
        "STORAGE_BACKEND": "local",
        "JOBS_ADDR": f"127.0.0.1:{fakes_port}",
        "WORKSPACE_ADDR": f"127.0.0.1:{fakes_port}",
        "ENHANCER_ADDR": f"127.0.0.1:{enhancer_port}",
        "PUBLIC_BASE_URL": "http://testserver",
        **{k.upper(): str(v) for k, v in overrides.items()},
    }
    return make_settings(GatewaySettings, {**base_env, **env})


@contextlib.asynccontextmanager
async def serve_app(settings: GatewaySettings, **app_kwargs):
    """An httpx client on the app, inside the app's lifespan."""
    app = create_app(settings, **app_kwargs)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            client.app = app
            yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def parse_sse(text: str) -> list[dict]:
    """Events of an SSE body: [{"id", "event", "data"}], comments dropped."""
    events = []
    for block in text.split("\n\n"):
        fields: dict = {}
        for line in block.splitlines():
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields or "data" in fields:
            fields["data"] = json.loads(fields.get("data", "null"))
            events.append(fields)
    return events


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= body.keys()
    return body


def held_job(jobs, user_id: str) -> job_pb2.Job:
    """A job of the jobs double with two events: running, then completed. With
    `jobs.hold_stream` set to an Event that is never set, its event stream sends
    the first and stays open."""
    job = jobs.make_job(user_id=user_id, job_type="image_fast", prompt="held")
    jobs.events[job.id] = [
        events_pb2.JobEvent(
            job_id=job.id,
            sequence=1,
            type=events_pb2.JOB_EVENT_TYPE_STATE,
            state=job_pb2.JOB_STATE_RUNNING,
        ),
        events_pb2.JobEvent(
            job_id=job.id,
            sequence=2,
            type=events_pb2.JOB_EVENT_TYPE_COMPLETED,
            state=job_pb2.JOB_STATE_COMPLETED,
        ),
    ]
    return job
