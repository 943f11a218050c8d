"""/healthz, /readyz, the HTTP metrics (on the internal metrics port, not the
public one), the SSE keep-alive, and a real uvicorn from
services.gateway.main.start on port 0."""

from __future__ import annotations

import asyncio
import socket

import httpx
from prometheus_client import REGISTRY, generate_latest

from services.gateway.main import start
from services.gateway.sse import KEEPALIVE, with_keepalive
from tests.gateway.gateway_helpers import assert_problem, auth, gateway_settings, serve_app


async def test_healthz(client):
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_readyz_ready_when_database_and_services_serve(client):
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok", "jobs": "SERVING", "workspace": "SERVING"}
    assert r.json()["optional"]["enhancer"] == "SERVING"
    assert r.json()["optional"]["workers"].keys() == {"sdxl", "wan"}


async def test_readyz_names_the_part_that_is_down(base_env, fakes):
    served, _, _ = fakes
    settings = gateway_settings(base_env, served.port, workspace_addr="127.0.0.1:1")
    async with serve_app(settings) as client:
        r = await client.get("/readyz")
    body = assert_problem(r, 503)
    assert "workspace" in body["detail"] and "jobs" not in body["detail"]
    assert body["checks"]["jobs"] == "SERVING"


async def test_readyz_with_the_database_down_while_healthz_answers(base_env, fakes):
    served, _, _ = fakes
    settings = gateway_settings(
        base_env,
        served.port,
        gateway_database_url="postgresql://ourvidz_gateway@127.0.0.1:1/ourvidz",
    )
    async with serve_app(settings) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert health.status_code == 200
    body = assert_problem(ready, 503)
    assert body["checks"]["database"] == "down"
    assert body["checks"]["jobs"] == "SERVING"


async def test_metrics_count_by_route_template(client, user_token):
    labels = {"method": "GET", "route": "/v1/jobs/{job_id}", "status": "404"}
    before = REGISTRY.get_sample_value("ourvidz_gateway_http_requests_total", labels) or 0
    await client.get("/v1/jobs/not-a-uuid", headers=auth(user_token[1]))
    after = REGISTRY.get_sample_value("ourvidz_gateway_http_requests_total", labels)
    assert after == before + 1
    text = generate_latest(REGISTRY).decode()
    assert "not-a-uuid" not in text
    assert "ourvidz_gateway_http_request_duration_seconds_bucket" in text


async def test_the_public_port_serves_no_metrics(client):
    r = await client.get("/metrics")
    assert r.status_code == 404
    assert "/metrics" not in (await client.get("/openapi.json")).json()["paths"]


async def test_keepalive_while_the_source_is_idle():
    gate = asyncio.Event()

    async def source():
        await gate.wait()
        yield b"event: state\ndata: {}\n\n"

    stream = with_keepalive(source(), 0.01)
    assert (await anext(stream)).startswith(b"retry:")
    assert await anext(stream) == KEEPALIVE
    gate.set()
    chunks = [chunk async for chunk in stream]
    assert b"event: state\ndata: {}\n\n" in chunks


async def test_start_serves_on_a_free_port_and_stops(settings):
    running = await start(settings, port=0)
    try:
        assert running.port > 0
        assert running.metrics is None  # METRICS_PORT=0: metrics off
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.port}") as http:
            r = await http.get("/healthz")
            assert r.status_code == 200
            spec = (await http.get("/openapi.json")).json()
            assert "/v1/jobs/{job_id}/events" in spec["paths"]
            assert "CreateJobBody" in spec["components"]["schemas"]
    finally:
        await running.stop()
    assert running.task.done()


async def test_metrics_are_served_on_the_internal_port_only(settings):
    from ourvidz_dev.embedded import free_port

    metrics_port = free_port()
    running = await start(settings.model_copy(update={"metrics_port": metrics_port}), port=0)
    try:
        assert running.metrics is not None and running.metrics.port == metrics_port
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{running.port}/healthz")
            public = await http.get(f"http://127.0.0.1:{running.port}/metrics")
            internal = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert public.status_code == 404
        assert internal.status_code == 200
        assert 'route="/healthz"' in internal.text
    finally:
        await running.stop()
    with socket.socket() as sock:  # the port is closed with the gateway
        assert sock.connect_ex(("127.0.0.1", metrics_port)) != 0


async def test_openapi_documents_the_prompt_routes(client):
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    expected = {
        "/v1/prompts/enhance": ("post", "EnhanceBody", "EnhancementOut"),
        "/v1/playground/chat": ("post", "ChatBody", None),
        "/v1/jobs/{job_id}/rating": ("put", "RatingBody", "RatingOut"),
        "/v1/admin/prompt-templates": ("post", "CreateTemplateBody", "TemplateOut"),
        "/v1/admin/prompt-templates/{template_id}/versions": (
            "post",
            "UpdateTemplateBody",
            "TemplateOut",
        ),
        "/v1/admin/prompt-templates/{template_id}/tests": (
            "post",
            "TemplateTestBody",
            "PromptTestsOut",
        ),
    }
    for path, (method, body, out) in expected.items():
        op = paths[path][method]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/" + body), (path, ref)
        if out:
            schema = op["responses"][next(iter(op["responses"]))]["content"]["application/json"]
            assert schema["schema"]["$ref"].endswith("/" + out), path
    assert (
        "text/event-stream" in paths["/v1/playground/chat"]["post"]["responses"]["200"]["content"]
    )
    for path in (
        "/v1/admin/prompt-templates/{template_id}",
        "/v1/admin/prompt-templates/{template_id}/activate",
        "/v1/admin/prompt-templates/{template_id}/stats",
    ):
        assert path in paths
    assert "403" in paths["/v1/admin/prompt-templates"]["get"]["responses"]
    assert "503" in paths["/v1/prompts/enhance"]["post"]["responses"]
    job = spec["components"]["schemas"]["JobOut"]["properties"]
    assert "enhancement_fallback_reason" in job
