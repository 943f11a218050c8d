"""GET /.well-known/jwks.json: the public keys that verify the gateway's access
tokens (RFC 7517), for services and clients that verify tokens themselves.
Public members only; during a rotation both the old and the new key are listed."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from services.gateway.deps import gateway

router = APIRouter(tags=["ops"])


class PublicJwk(BaseModel):
    kty: Literal["OKP"] = "OKP"
    crv: Literal["Ed25519"] = "Ed25519"
    x: str = Field(description="the public key, base64url")
    kid: str = Field(description="the key id: its RFC 7638 thumbprint")
    alg: Literal["EdDSA"] = "EdDSA"
    use: Literal["sig"] = "sig"


class Jwks(BaseModel):
    keys: list[PublicJwk]


@router.get(
    "/.well-known/jwks.json",
    response_model=Jwks,
    summary="The public keys that verify access tokens",
)
async def jwks(response: Response, gw=Depends(gateway)) -> Jwks:
    response.headers["Cache-Control"] = "public, max-age=300"
    return Jwks.model_validate(gw.verifier.gateway_jwks())
