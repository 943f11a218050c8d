"""Request dependencies: the gateway's wiring and the authenticated caller."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ourvidz.auth import Principal
from ourvidz.errors import NotFound, PermissionDenied, Unauthenticated
from services.gateway.openapi import answers

_bearer = HTTPBearer(auto_error=False, description="An access token from /v1/auth/login")


def gateway(request: Request):
    """The `Gateway` built by the app's lifespan (settings, identity, backends...)."""
    return request.app.state.gateway


@dataclass(frozen=True)
class Caller:
    principal: Principal
    # The bearer token as received, forwarded to the services on every call.
    token: str

    @property
    def user_id(self) -> str:
        return self.principal.user_id


@answers(401)
async def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None or not credentials.credentials:
        raise Unauthenticated("missing bearer token")
    principal = request.app.state.gateway.verifier.verify(credentials.credentials)
    if principal.role not in ("user", "admin"):
        raise Unauthenticated("this API takes user tokens")
    return Caller(principal=principal, token=credentials.credentials)


CallerDep = Annotated[Caller, Depends(caller)]


@answers(403)
async def admin(caller: CallerDep) -> Caller:
    """A signed-in admin; a user is refused here (403) before any service is called."""
    if caller.principal.role != "admin":
        raise PermissionDenied("this route is for admins")
    return caller


AdminDep = Annotated[Caller, Depends(admin)]


def resource_id(value: str, what: str) -> str:
    """A path id as the services expect it (a UUID). Anything else names no
    resource, so it is a 404 like any other missing one."""
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise NotFound(f"{what} not found") from exc
