"""/v1/auth/* and /v1/me: identity at the edge."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from services.gateway.deps import CallerDep, gateway
from services.gateway.identity import Session
from services.gateway.models import (
    LoginBody,
    Me,
    RefreshBody,
    SignupAccepted,
    SignupBody,
    TokenResponse,
    problem_responses,
)

router = APIRouter(tags=["auth"])


def _tokens(session: Session) -> dict:
    return {
        "user": session.user,
        "access_token": session.access_token,
        "refresh_token": session.refresh_token,
        "token_type": "bearer",
        "expires_in": session.expires_in,
    }


@router.post(
    "/v1/auth/signup",
    status_code=202,
    response_model=SignupAccepted,
    responses=problem_responses(429),
)
async def signup(body: SignupBody, request: Request, gw=Depends(gateway)) -> SignupAccepted:
    """Create an account. The answer is the same for a free address and for one
    that already has an account; sign in with POST /v1/auth/login next. A weak
    password or a malformed address is a 422 naming the field and saying why."""
    await gw.throttle.signup(gw.throttle.client_address(request))
    await gw.identity.signup(body.email, body.password)
    return SignupAccepted()


@router.post("/v1/auth/login", response_model=TokenResponse, responses=problem_responses(401, 429))
async def login(body: LoginBody, request: Request, gw=Depends(gateway)) -> dict:
    address = gw.throttle.client_address(request)
    async with gw.throttle.login_attempt(body.email, address):
        session = await gw.identity.login(body.email, body.password)
    return _tokens(session)


@router.post("/v1/auth/refresh", response_model=TokenResponse, responses=problem_responses(401))
async def refresh(body: RefreshBody, gw=Depends(gateway)) -> dict:
    return _tokens(await gw.identity.refresh(body.refresh_token))


@router.get("/v1/me", response_model=Me)
async def me(caller: CallerDep, gw=Depends(gateway)) -> dict:
    user = await gw.identity.me(caller.user_id)
    return {
        "id": str(user["id"]),
        "email": user["email"],
        "role": user["role"],
        "created_at": user["created_at"].isoformat(),
    }
