"""The problem+json mapping: the status table, validation errors, malformed
JSON, unexpected errors."""

from __future__ import annotations

import logging

import grpc
import nats.errors
import psycopg
import psycopg_pool
import pytest

from services.gateway.problems import field_name, http_status
from tests.gateway.gateway_helpers import assert_problem, auth


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 422),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.FAILED_PRECONDITION, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 503),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.DATA_LOSS, 500),
    ],
)
def test_status_table(code, status):
    assert http_status(code) == status


def test_field_names_drop_the_location():
    assert field_name(("body", "num_images")) == "num_images"
    assert field_name(("query", "page_size")) == "page_size"
    assert field_name(("body",)) == "body"


async def test_malformed_json_is_400(client, user_token):
    r = await client.post(
        "/v1/jobs",
        content=b'{"job_type": ',
        headers={**auth(user_token[1]), "Content-Type": "application/json"},
    )
    assert_problem(r, 400)


async def test_body_that_is_not_an_object_is_422(client):
    r = await client.post("/v1/auth/login", json=["a", "b"])
    assert assert_problem(r, 422)["errors"][0]["field"] == "body"


async def test_unknown_route_is_a_problem(client):
    assert_problem(await client.get("/v1/nope"), 404)


async def test_unexpected_error_is_a_generic_500(client):
    async def boom():
        raise RuntimeError("secret stack detail")

    client.app.add_api_route("/test-boom", boom)
    r = await client.get("/test-boom")
    body = assert_problem(r, 500)
    assert "secret" not in r.text and body["detail"] == "internal error"
    assert r.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (psycopg.OperationalError("connection failed: Connection refused"), "DATABASE_UNAVAILABLE"),
        (
            psycopg_pool.PoolTimeout("couldn't get a connection after 5.00 sec"),
            "DATABASE_UNAVAILABLE",
        ),
        (nats.errors.NoServersError(), "QUEUE_UNAVAILABLE"),
        (ConnectionRefusedError(111, "Connection refused"), "DEPENDENCY_UNAVAILABLE"),
    ],
)
async def test_the_gateways_own_dependency_failing_is_503_with_retry_after(
    client, caplog, failure, reason
):
    async def down():
        raise failure

    path = f"/test-down-{reason.lower()}-{type(failure).__name__}"
    client.app.add_api_route(path, down)
    caplog.set_level(logging.WARNING, logger="services.gateway.problems")
    r = await client.get(path)
    body = assert_problem(r, 503)
    assert int(r.headers["Retry-After"]) > 0
    assert body["reason"] == reason and body["detail"].endswith("try again shortly")
    assert [rec.exc_info for rec in caplog.records] == [None]  # one line, no traceback


async def test_openapi_lists_503_with_retry_after(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path, method in (
        ("/v1/jobs", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}/events", "get"),
        ("/v1/workspace/sessions/{session_id}/events", "get"),
        ("/v1/auth/login", "post"),
        ("/v1/me", "get"),
        ("/readyz", "get"),
    ):
        unavailable = paths[path][method]["responses"]["503"]
        assert "application/problem+json" in unavailable["content"], path
        assert "Retry-After" in unavailable["headers"], path
