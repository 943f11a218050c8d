"""The gateway's tokens over HTTP: signed with its Ed25519 key, its public keys
served at /.well-known/jwks.json, and every token it did not sign for a user
refused with 401."""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest

from ourvidz import keys
from ourvidz.auth import GATEWAY_ROLES, ISSUER, TokenSigner
from tests.conftest import GATEWAY_KEY, GATEWAY_SIGNER, VERIFIER, WORKER_KEY, WORKER_SIGNER
from tests.gateway.gateway_helpers import assert_problem, auth, gateway_settings, serve_app


def _claims(subject: str, role: str) -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "sub": subject, "role": role, "typ": "access", "iat": now,
            "exp": now + 300}  # fmt: skip


async def _signup(client) -> dict:
    """A new account's login answer (sign-up, then login)."""
    email = f"k{uuid.uuid4().hex[:10]}@example.com"
    body = {"email": email, "password": "correct horse battery staple"}
    r = await client.post("/v1/auth/signup", json=body)
    assert r.status_code == 202, r.text
    login = await client.post("/v1/auth/login", json=body)
    assert login.status_code == 200, login.text
    return login.json()


async def test_jwks_serves_the_public_signing_key_only(client):
    r = await client.get("/.well-known/jwks.json")
    assert r.status_code == 200, r.text
    served = r.json()["keys"]
    public = keys.public_jwk(GATEWAY_KEY)
    assert served == [public]
    assert all(set(k) <= {"kty", "crv", "x", "kid", "alg", "use"} for k in served)
    assert keys.public_jwk(WORKER_KEY)["kid"] not in r.text
    schema = client.app.openapi()
    assert "/.well-known/jwks.json" in schema["paths"]


async def test_issued_tokens_are_eddsa_under_the_gateway_key(client):
    body = await _signup(client)
    header = jwt.get_unverified_header(body["access_token"])
    assert (header["alg"], header["kid"]) == ("EdDSA", GATEWAY_SIGNER.kid)
    # Any service verifies it with the public keys alone.
    assert VERIFIER.verify(body["access_token"]).subject == body["user"]["id"]


@pytest.mark.parametrize(
    "forge",
    [
        "worker key, admin role",
        "worker key, user role",
        "gateway key, worker role",
        "worker token",
        "hs256 old secret",
        "alg none",
    ],
)
async def test_tokens_not_signed_for_a_user_are_401(client, forge):
    user_id = (await _signup(client))["user"]["id"]
    if forge.startswith("worker key"):
        role = forge.split(", ")[1].split()[0]
        token = jwt.encode(_claims(user_id, role), WORKER_KEY, algorithm="EdDSA",
                           headers={"kid": WORKER_SIGNER.kid})  # fmt: skip
    elif forge == "gateway key, worker role":
        token = jwt.encode(_claims(user_id, "worker"), GATEWAY_KEY, algorithm="EdDSA",
                           headers={"kid": GATEWAY_SIGNER.kid})  # fmt: skip
    elif forge == "worker token":
        token = WORKER_SIGNER.mint(user_id, "worker", 300)
    elif forge == "hs256 old secret":
        token = jwt.encode(_claims(user_id, "admin"), "test-secret-0123456789-0123456789-abcdef",
                           algorithm="HS256", headers={"kid": GATEWAY_SIGNER.kid})  # fmt: skip
    else:
        token = jwt.encode(_claims(user_id, "admin"), None, algorithm="none",
                           headers={"kid": GATEWAY_SIGNER.kid})  # fmt: skip
    for path in ("/v1/me", "/v1/admin/prompt-templates"):
        resp = await client.get(path, headers=auth(token))
        assert_problem(resp, 401)


async def test_rotation_tokens_of_the_old_and_the_new_key_both_work(
    base_env, fakes, enhancer, tmp_path
):
    """Step 2 of a rotation: both public keys are published, the gateway signs
    with the new key, and tokens of the old one keep working until they expire."""
    new = keys.generate_private_key()
    (tmp_path / "new.pem").write_bytes(keys.private_pem(new))
    jwks = {"keys": [keys.public_jwk(GATEWAY_KEY), keys.public_jwk(new)]}
    settings = gateway_settings(
        base_env,
        fakes[0].port,
        enhancer[0].port,
        auth_signing_key_file=str(tmp_path / "new.pem"),
        auth_jwks=json.dumps(jwks),
        auth_jwks_file="",
    )
    async with serve_app(settings) as client:
        body = await _signup(client)
        assert jwt.get_unverified_header(body["access_token"])["kid"] == jwks["keys"][1]["kid"]
        old = GATEWAY_SIGNER.mint(body["user"]["id"], "user", 300)
        for token in (body["access_token"], old):
            me = await client.get("/v1/me", headers=auth(token))
            assert me.status_code == 200, me.text
        served = (await client.get("/.well-known/jwks.json")).json()["keys"]
        assert [k["kid"] for k in served] == [k["kid"] for k in jwks["keys"]]


def test_a_signing_key_missing_from_the_jwks_is_refused_at_start(base_env, fakes, tmp_path):
    stray = keys.generate_private_key()
    (tmp_path / "stray.pem").write_bytes(keys.private_pem(stray))
    settings = gateway_settings(
        base_env, fakes[0].port, auth_signing_key_file=str(tmp_path / "stray.pem")
    )
    with pytest.raises(ValueError, match="AUTH_JWKS does not hold"):
        from services.gateway.app import create_app

        create_app(settings)
    assert TokenSigner(stray, GATEWAY_ROLES).kid != GATEWAY_SIGNER.kid
