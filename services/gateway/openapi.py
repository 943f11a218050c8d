"""/openapi.json as the gateway really answers: every error status a route can
give, documented as application/problem+json with its headers, derived from
what the route does rather than listed by hand on each one.

- a body: 400 (not JSON, or broken multipart), 413 (over the body limit),
  422 (fields);
- any parameter or body: 422 (what the route's pydantic models refuse);
- a path parameter: 404 (an id that names nothing, or someone else's);
- a dependency: the statuses it declares with `answers` (the bearer token
  401, the admin check 403, a rate limit 429 ...);
- every /v1 route: 503 (a backing service, the database or NATS is away);
- anything else a route declares in `responses` (409, 403 ...).

The body of POST /v1/jobs is documented per kind of job type (a variant each),
from the catalog and the deployment's size limits that Jobs validates with.

A 401 carries `WWW-Authenticate`, a 429 and a 503 `Retry-After`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts

from ourvidz import catalog
from ourvidz.settings import CatalogLimits
from services.gateway.models import Problem
from services.gateway.problems import PROBLEM_TYPE

F = TypeVar("F", bound=Callable[..., Any])

# The statuses a dependency may answer, read from its callable.
_ANSWERS = "__problem_statuses__"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

DESCRIPTIONS = {
    400: "The request body is not valid JSON, or a header is malformed",
    401: "A bearer token is missing, invalid or expired (or the credentials are wrong)",
    403: "The caller may not do this",
    404: "Not found (someone else's resource is not found either)",
    409: "The resource's state does not allow this, or it exists already",
    413: "The request body is over its limit",
    415: "The request body's media type is not accepted",
    422: "A parameter or a body field is invalid; `errors` names each one",
    429: "Too many requests; retry after the `Retry-After` seconds",
    503: "A backing service, the database or the message queue is down or too slow; "
    "retry after the `Retry-After` seconds",
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}
HEADERS: dict[int, dict[str, dict]] = {
    401: {
        "WWW-Authenticate": {
            "description": "The Bearer challenge, with the reason",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}


def answers(*statuses: int) -> Callable[[F], F]:
    """Declare the error statuses a dependency (or a route's endpoint) may
    answer, so every route that uses it documents them."""

    def mark(fn: F) -> F:
        setattr(fn, _ANSWERS, frozenset(statuses) | getattr(fn, _ANSWERS, frozenset()))
        return fn

    return mark


def _dependencies(dependant) -> Iterator:
    for dep in dependant.dependencies:
        yield dep
        yield from _dependencies(dep)


def route_statuses(route: APIRoute) -> set[int]:
    """The error statuses `route` can answer, from what it does."""
    dependant = route.dependant
    statuses = {int(s) for s in route.responses if str(s).isdigit() and int(s) >= 400}
    statuses |= getattr(route.endpoint, _ANSWERS, frozenset())
    everything = [dependant, *_dependencies(dependant)]
    if route.body_field is not None:
        # 400: not JSON, or broken multipart framing.
        statuses |= {400, 413, 422}
    # A path parameter is a plain string here: what names nothing is a 404.
    if any(d.query_params or d.header_params or d.cookie_params for d in everything):
        statuses.add(422)
    if dependant.path_params:
        statuses.add(404)
    for dep in everything:
        statuses |= getattr(dep.call, _ANSWERS, frozenset())
    if route.path_format.startswith("/v1/"):
        statuses.add(503)
    return statuses


def problem_response(status: int, existing: dict | None = None) -> dict:
    """The OpenAPI response object of a problem+json answer."""
    existing = existing or {}
    description = existing.get("description") or ""
    if not description or description in ("Successful Response", "Validation Error"):
        description = DESCRIPTIONS.get(status, "An error")
    headers = {**existing.get("headers", {}), **HEADERS.get(status, {})}
    out: dict = {
        "description": description,
        "content": {PROBLEM_TYPE: {"schema": PROBLEM_REF}},
    }
    if headers:
        out["headers"] = headers
    return out


def _api_routes(app: FastAPI) -> Iterator[tuple[APIRoute, str, set[str]]]:
    """(route, path as documented, methods) of every documented API route."""
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        if isinstance(route, APIRoute) and route.include_in_schema:
            yield route, ctx.path_format or route.path_format, set(ctx.methods or route.methods)


def job_body_variants(base: dict, limits: CatalogLimits) -> list[dict]:
    """The CreateJobBody schema once per kind of job type (types that allow
    the same sizes, counts and references share one), with what those types
    allow (Jobs' validation: services/jobs/domain.py). An absent or 0 size or
    count takes the type's default (GET /v1/job-types lists them)."""
    kinds: dict[tuple, list[str]] = {}
    for jt in catalog.CATALOG.values():
        key = (
            catalog.size_limits(jt, limits),
            jt.size_multiple,
            jt.num_images,
            jt.output == "video",
            jt.accepts_reference,
        )
        kinds.setdefault(key, []).append(jt.name)
    variants = []
    for ((lo, hi), multiple, num_images, video, reference), names in kinds.items():
        size = {
            "anyOf": [
                {"type": "integer", "minimum": lo, "maximum": hi, "multipleOf": multiple},
                {"const": 0},
                {"type": "null"},
            ],
            "description": f"a multiple of {multiple} from {lo} to {hi}",
        }
        frames = [0, *range(1, limits.wan_max_frames + 1, 4)] if video else [0, 1]
        props = dict(base["properties"])
        props.update(
            job_type={"enum": names},
            prompt={**props["prompt"], "maxLength": limits.max_prompt_chars},
            num_images={"anyOf": [{"enum": [0, *num_images]}, {"type": "null"}]},
            width=size,
            height=size,
            num_frames={"anyOf": [{"enum": frames}, {"type": "null"}]},
        )
        negative = props["negative_prompt"]
        props["negative_prompt"] = {
            "anyOf": [
                {**option, "maxLength": limits.max_negative_prompt_chars}
                if option.get("type") == "string"
                else option
                for option in negative.get("anyOf", [negative])
            ]
        }
        if not reference:
            props["reference_image_id"] = {
                "anyOf": [{"const": ""}, {"type": "null"}],
                "description": "these job types take no reference image",
            }
        variants.append({**base, "title": " | ".join(names), "properties": props})
    return variants


def build(app: FastAPI, limits: CatalogLimits) -> dict:
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    if "CreateJobBody" in schemas:
        base = schemas["CreateJobBody"]
        schemas["CreateJobBody"] = {
            "title": base.get("title", "CreateJobBody"),
            "description": base.get("description", ""),
            "oneOf": job_body_variants(base, limits),
        }
    for route, path, methods in _api_routes(app):
        statuses = route_statuses(route)
        for method in methods:
            operation = doc["paths"].get(path, {}).get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            if 422 not in statuses:
                # FastAPI's own 422 of any route with a parameter: a string
                # path parameter is never refused (what it names is a 404).
                responses.pop("422", None)
            for status in sorted(statuses):
                responses[str(status)] = problem_response(status, responses.get(str(status)))
            operation["responses"] = dict(sorted(responses.items()))
    # FastAPI's own validation error shapes are never sent: every 422 is a Problem.
    text = repr(doc["paths"])
    for name in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{name}'" not in text:
            schemas.pop(name, None)
    return doc


def install(app: FastAPI, limits: CatalogLimits) -> None:
    """Serve the document `build` makes (built once, on the first request)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, limits)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
