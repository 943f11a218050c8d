"""/openapi.json says what the gateway answers: the error statuses derived
from what each route does, the constraints its models check, and 405s that
list every method of a path."""

from __future__ import annotations

import uuid

import jsonschema
import pytest
from fastapi import APIRouter, Depends

from services.gateway import domain
from services.gateway.openapi import answers, route_statuses
from tests.gateway.gateway_helpers import assert_problem, auth


@pytest.fixture(scope="module")
async def doc(client) -> dict:
    return (await client.get("/openapi.json")).json()


def _responses(doc: dict, path: str, method: str) -> dict:
    return doc["paths"][path][method]["responses"]


def _validator(doc: dict, name: str) -> jsonschema.Validator:
    """A validator of components/schemas/<name> that resolves the document's refs."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/v1/auth/signup", "post", {"400", "413", "422", "429", "503"}),
        ("/v1/auth/login", "post", {"400", "401", "413", "422", "429", "503"}),
        ("/v1/me", "get", {"401", "503"}),
        ("/v1/jobs", "post", {"400", "401", "404", "413", "422", "429", "503"}),
        ("/v1/jobs", "get", {"401", "422", "503"}),
        ("/v1/jobs/{job_id}", "get", {"401", "404", "503"}),
        (
            "/v1/jobs/{job_id}/rerun",
            "post",
            {"400", "401", "404", "409", "413", "422", "429", "503"},
        ),
        ("/v1/library/assets/{asset_id}", "patch", {"400", "401", "404", "413", "422", "503"}),
        ("/v1/uploads", "post", {"400", "401", "413", "422", "503"}),
        ("/v1/admin/queues", "get", {"401", "403", "503"}),
        ("/v1/files/{bucket}/{key}", "get", {"403", "404", "422", "503"}),
    ],
)
def test_each_route_documents_what_it_can_answer(doc, path, method, statuses):
    responses = _responses(doc, path, method)
    errors = {s for s in responses if s >= "400"}
    assert errors == statuses
    for status in errors:
        assert list(responses[status]["content"]) == ["application/problem+json"], status
        assert responses[status]["content"]["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }


def test_standard_headers_of_401_429_503(doc):
    post = _responses(doc, "/v1/jobs", "post")
    assert post["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert post["429"]["headers"]["Retry-After"]["required"] is True
    assert post["503"]["headers"]["Retry-After"]["required"] is True
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_a_dependency_declares_its_statuses():
    """A route using a dependency marked with `answers` documents its statuses."""

    @answers(429)
    async def limited() -> None:
        return None

    router = APIRouter()

    @router.get("/v1/limited", dependencies=[Depends(limited)])
    async def endpoint() -> dict:
        return {}

    route = next(r for r in router.routes if r.path == "/v1/limited")
    assert route_statuses(route) == {429, 503}


def test_signup_schema_carries_the_identity_rules(doc):
    validate = _validator(doc, "SignupBody")
    ok = {"email": "a@example.com", "password": "x" * domain.MAX_PASSWORD_CHARS}
    assert validate.is_valid(ok)
    assert not validate.is_valid({**ok, "password": "x" * (domain.MAX_PASSWORD_CHARS + 1)})
    assert not validate.is_valid({**ok, "password": "x" * (domain.MIN_PASSWORD_CHARS - 1)})
    assert not validate.is_valid({**ok, "email": ""})
    assert not validate.is_valid({**ok, "email": "a b@example.com"})


async def test_signup_refuses_what_the_schema_refuses(client):
    r = await client.post(
        "/v1/auth/signup",
        json={"email": "a@example.com", "password": "x" * (domain.MAX_PASSWORD_CHARS + 1)},
    )
    assert assert_problem(r, 422)["errors"][0]["field"] == "password"


def test_job_body_is_documented_per_job_type(doc, settings):
    validate = _validator(doc, "CreateJobBody")
    limits = settings.limits()
    assert validate.is_valid({"job_type": "sdxl_image_fast", "prompt": "a cat", "num_images": 3})
    assert not validate.is_valid({"job_type": "nope", "prompt": "a cat"})
    assert not validate.is_valid({"job_type": "sdxl_image_fast", "prompt": "   "})
    assert not validate.is_valid({"job_type": "video_fast", "prompt": "a", "num_images": 3})
    assert not validate.is_valid({"job_type": "sdxl_image_fast", "prompt": "a", "width": 100})
    assert validate.is_valid({"job_type": "video_fast", "prompt": "a", "num_frames": 81})
    assert not validate.is_valid({"job_type": "video_fast", "prompt": "a", "num_frames": 80})
    too_many = limits.wan_max_frames + 4
    assert not validate.is_valid({"job_type": "video_fast", "prompt": "a", "num_frames": too_many})
    reference = str(uuid.uuid4())
    assert validate.is_valid(
        {"job_type": "sdxl_image_fast", "prompt": "a", "reference_image_id": reference}
    )
    assert not validate.is_valid(
        {"job_type": "image_fast", "prompt": "a", "reference_image_id": reference}
    )


async def test_job_body_refused_at_the_edge(client, user_token):
    r = await client.post(
        "/v1/jobs",
        json={"job_type": "nope", "prompt": "a\x00b", "num_frames": 2**40},
        headers=auth(user_token[1]),
    )
    fields = {e["field"] for e in assert_problem(r, 422)["errors"]}
    assert fields == {"job_type", "prompt", "num_frames"}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/jobs", "GET, POST"),
        ("DELETE", "/v1/workspace/sessions", "GET, POST"),
        ("PUT", "/v1/library/assets/abc", "DELETE, GET, PATCH"),
        ("POST", "/v1/me", "GET"),
    ],
)
async def test_405_lists_every_method_of_the_path(client, method, path, allowed):
    r = await client.request(method, path)
    assert_problem(r, 405)
    assert r.headers["Allow"] == allowed


async def test_bodies_are_typed_strictly(client, user_token):
    """A boolean or a numeric string is not an integer, as the schema says."""
    body = {"job_type": "video_fast", "prompt": "a", "num_frames": False, "seed": "7"}
    r = await client.post("/v1/jobs", json=body, headers=auth(user_token[1]))
    fields = {e["field"] for e in assert_problem(r, 422)["errors"]}
    assert fields == {"num_frames", "seed"}


async def test_library_times_are_rfc3339(client, user_token):
    r = await client.get(
        "/v1/library/assets", params={"created_before": "0.5"}, headers=auth(user_token[1])
    )
    assert assert_problem(r, 422)["errors"][0]["field"] == "created_before"


@pytest.mark.parametrize("name", ["WorkspaceItemOut", "LibraryAssetOut"])
def test_items_and_assets_document_the_rendered_and_the_typed_prompt(doc, name):
    schema = doc["components"]["schemas"][name]
    for field in ("prompt", "original_prompt", "negative_prompt"):
        assert field in schema["required"], field
        assert schema["properties"][field]["type"] == "string"
    assert "enhanced" in schema["properties"]["prompt"]["description"]
    assert "typed" in schema["properties"]["original_prompt"]["description"]


def test_rerun_and_its_fields_are_documented(doc):
    rerun = doc["paths"]["/v1/jobs/{job_id}/rerun"]["post"]
    assert rerun["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobOut"
    }
    assert "Idempotency-Key" in [p["name"] for p in rerun["parameters"]]
    assert not rerun["requestBody"].get("required", False)  # a body is optional
    body = _validator(doc, "RerunJobBody")
    assert body.is_valid({}) and body.is_valid({"workspace_session_id": str(uuid.uuid4())})
    assert not body.is_valid({"workspace_session_id": "not-a-session"})
    job = doc["components"]["schemas"]["JobOut"]["properties"]
    for name in ("rerun_of", "enhancement_template_id", "enhancement_template_version"):
        assert name in job and job[name].get("description"), name
