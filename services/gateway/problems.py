"""Every error as application/problem+json (RFC 9457): gRPC statuses from the
services, domain errors raised here, FastAPI's validation errors, HTTP errors
and anything unexpected (a generic 500, never a stack trace).

A dependency that is down or too slow — a service answering UNAVAILABLE or
DEADLINE_EXCEEDED, or the gateway's own database or NATS failing — is a 503
with a `Retry-After` header, never a 500."""

from __future__ import annotations

import logging
from functools import lru_cache
from http import HTTPStatus

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from ourvidz.errors import (
    PEER,
    DomainError,
    FieldViolation,
    InvalidArgument,
    dependency_error_classes,
    dependency_failure,
    parse_rpc_error,
)
from services.gateway.headers import ALWAYS

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"
TYPE_BASE = "https://ourvidz.dev/problems/"
# Seconds a client is asked to wait before retrying a 503 or 429 (`Retry-After`).
RETRY_AFTER_SECONDS = 5

# gRPC status -> HTTP status. Anything not listed is a 500.
GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
}

# Messages of these statuses are not the client's business: say something generic.
_GENERIC_DETAIL = {
    500: "internal error",
    503: "a backing service is unavailable; try again shortly",
}


def http_status(code: grpc.StatusCode) -> int:
    return GRPC_TO_HTTP.get(code, 500)


class PayloadTooLarge(StarletteHTTPException):
    """A request body over its limit. A subclass of HTTPException so FastAPI
    re-raises it from body parsing instead of turning it into a 400."""

    def __init__(self, limit: int, field: str | None = None) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")
        self.limit = limit
        self.field = field


def problem_body(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str | None = None,
    errors: list[FieldViolation] | None = None,
    **extra: object,
) -> dict[str, object]:
    """The RFC 9457 body: type, title, status, detail, and `errors` for bad fields."""
    phrase = _phrase(status)
    body: dict[str, object] = {
        "type": type_ or TYPE_BASE + phrase.lower().replace(" ", "-").replace("'", ""),
        "title": title or phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    body.update(extra)
    return body


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str | None = None,
    errors: list[FieldViolation] | None = None,
    headers: dict[str, str] | None = None,
    **extra: object,
) -> JSONResponse:
    body = problem_body(status, detail, title=title, type_=type_, errors=errors, **extra)
    if status in (429, 503):
        # A limit or a dependency away: when to try again (a limit that knows
        # its own window passes its own header).
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS), **(headers or {})}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_TYPE, headers=headers)


def problem_bytes(status: int, detail: str, errors: list[FieldViolation] | None = None) -> bytes:
    """The body of a problem response, for plain ASGI middleware."""
    return bytes(problem(status, detail, errors=errors).body)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _tells_reason(status: int) -> bool:
    """Whether a problem carries the error's reason: a client's error does, and
    so does a 503 (DATABASE_UNAVAILABLE, ...: what is down, nothing more)."""
    return status < 500 or status == 503


def _auth_headers(status: int, detail: str) -> dict[str, str] | None:
    if status != 401:
        return None
    return {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{detail}"'}


def from_rpc_error(err: grpc.RpcError) -> JSONResponse:
    remote = parse_rpc_error(err)
    status = http_status(remote.code)
    if status >= 500:
        log.warning("backing service error %s: %s", remote.code.name, remote.message)
        detail = _GENERIC_DETAIL.get(status, _GENERIC_DETAIL[500])
    else:
        detail = remote.message
    extra = {"reason": remote.reason} if remote.reason and _tells_reason(status) else {}
    return problem(
        status,
        detail,
        errors=remote.violations or None,
        headers=_auth_headers(status, detail),
        **extra,
    )


def rpc_problem_body(err: grpc.RpcError, interrupted: str) -> dict[str, object]:
    """The problem body of a gRPC error that broke a stream after it started
    (sent as an SSE `error` event); `interrupted` is the detail of a 5xx."""
    remote = parse_rpc_error(err)
    status = http_status(remote.code)
    log.warning("stream ended with %s: %s", remote.code.name, remote.message)
    detail = remote.message if status < 500 else interrupted
    return problem_body(status, detail, errors=remote.violations or None)


def from_domain_error(exc: DomainError) -> JSONResponse:
    status = http_status(exc.code)
    detail = exc.message if status < 500 else _GENERIC_DETAIL.get(status, _GENERIC_DETAIL[500])
    errors = exc.violations if isinstance(exc, InvalidArgument) else None
    extra = {"reason": exc.reason} if _tells_reason(status) else {}
    return problem(status, detail, errors=errors, headers=_auth_headers(status, detail), **extra)


def from_dependency_failure(request: Request, exc: BaseException) -> JSONResponse:
    """503 for the gateway's own dependency failing (its database, NATS, a
    connection that broke): one warning line, no traceback."""
    dependency = dependency_failure(exc) or PEER
    text = str(exc).strip().splitlines()
    log.warning(
        "%s %s: %s (%s: %s)",
        request.method,
        request.url.path,
        dependency.summary,
        type(exc).__name__,
        text[0] if text else "",
    )
    return problem(503, dependency.message, reason=dependency.reason)


def field_name(loc: tuple | list) -> str:
    """("body", "num_images") -> "num_images"; ("query", "page_size") -> "page_size"."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        parts = parts[1:] or parts
    return ".".join(parts)


def _message(error: dict) -> str:
    """pydantic's message for a field, without the "Value error, " it puts
    before what our own validators say."""
    msg = error.get("msg") or "is invalid"
    if error.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
    return msg


def from_validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem(400, "the request body is not valid JSON", title="Malformed JSON")
    violations = [FieldViolation(field_name(e.get("loc", ())), _message(e)) for e in errors]
    detail = "; ".join(f"{v.field}: {v.message}" for v in violations) or "invalid request"
    return problem(422, detail, errors=violations)


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route of `app` serves at the request's path."""
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for ctx in iter_route_contexts(app.routes):
        if ctx.methods and ctx.path and _path_regex(ctx.path).match(path):
            methods |= set(ctx.methods)
    return sorted(methods) or [request.method]


@lru_cache(maxsize=512)
def _path_regex(path: str):
    return compile_path(path)[0]


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return from_validation_error(exc)

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError):
        return from_domain_error(exc)

    @app.exception_handler(grpc.RpcError)
    async def _rpc(request: Request, exc: grpc.RpcError):
        return from_rpc_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if isinstance(exc, PayloadTooLarge):
            errors = (
                [FieldViolation(exc.field, f"must be at most {exc.limit} bytes")]
                if exc.field
                else None
            )
            return problem(413, str(exc.detail), errors=errors)
        detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
        headers = dict(exc.headers or {}) or _auth_headers(exc.status_code, detail)
        if exc.status_code == 405:
            # The route that refused names only its own methods; the path may have more.
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(app, request))}
        return problem(exc.status_code, detail, headers=headers)

    async def _dependency(request: Request, exc: Exception):
        return from_dependency_failure(request, exc)

    # By class, so these are answered where the route raised them (an
    # `Exception` handler answers too, but only after the error was re-raised
    # to the server, which logs it with its traceback).
    for cls in dependency_error_classes():
        app.add_exception_handler(cls, _dependency)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        # Answered from outside every middleware, so the headers are added here.
        return problem(500, _GENERIC_DETAIL[500], headers=dict(ALWAYS))
