"""Identity end to end over HTTP, against the real PostgreSQL."""

from __future__ import annotations

import uuid

from ourvidz import db
from ourvidz.auth import mint_token
from tests.conftest import SECRET
from tests.gateway.gateway_helpers import assert_problem, auth


def _email() -> str:
    return f"u{uuid.uuid4().hex[:10]}@example.com"


async def _signup(client, email=None, password="correct horse battery"):
    email = email or _email()
    return email, await client.post("/v1/auth/signup", json={"email": email, "password": password})


async def test_signup_returns_201_with_tokens_and_user(client):
    email, r = await _signup(client, _email().upper())
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["user"]["email"] == email.lower()
    assert body["user"]["role"] == "user"
    uuid.UUID(body["user"]["id"])
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert body["access_token"] and body["refresh_token"]


async def test_duplicate_email_any_case_is_409(client):
    email, r = await _signup(client)
    assert r.status_code == 201
    _, again = await _signup(client, email.upper())
    assert_problem(again, 409)


async def test_signup_validates_email_and_password(client):
    r = await client.post("/v1/auth/signup", json={"email": "not-an-email", "password": "short"})
    body = assert_problem(r, 422)
    assert {e["field"] for e in body["errors"]} == {"email", "password"}


async def test_admin_email_gets_admin_role(client):
    r = await client.post(
        "/v1/auth/signup", json={"email": "Boss@Example.com", "password": "correct horse battery"}
    )
    assert r.status_code in (201, 409)
    login = await client.post(
        "/v1/auth/login", json={"email": "boss@example.com", "password": "correct horse battery"}
    )
    assert login.status_code == 200, login.text
    assert login.json()["user"]["role"] == "admin"


async def test_login_wrong_password_and_unknown_email_are_the_same_401(client):
    email, _ = await _signup(client)
    wrong = await client.post("/v1/auth/login", json={"email": email, "password": "wrong password"})
    unknown = await client.post(
        "/v1/auth/login", json={"email": _email(), "password": "correct horse battery"}
    )
    a, b = assert_problem(wrong, 401), assert_problem(unknown, 401)
    assert a["detail"] == b["detail"] == "invalid email or password"
    ok = await client.post(
        "/v1/auth/login", json={"email": email.upper(), "password": "correct horse battery"}
    )
    assert ok.status_code == 200
    assert ok.json()["user"]["email"] == email


async def test_refresh_rotates_and_reuse_is_refused(client):
    _, r = await _signup(client)
    first = r.json()["refresh_token"]
    rotated = await client.post("/v1/auth/refresh", json={"refresh_token": first})
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()["refresh_token"]
    assert second != first
    assert rotated.json()["user"] == r.json()["user"]

    reuse = await client.post("/v1/auth/refresh", json={"refresh_token": first})
    assert_problem(reuse, 401)
    # A reused token may be stolen: the whole family is revoked.
    after = await client.post("/v1/auth/refresh", json={"refresh_token": second})
    assert_problem(after, 401)


async def test_unknown_refresh_token_is_401(client):
    assert_problem(await client.post("/v1/auth/refresh", json={"refresh_token": "nope"}), 401)


async def test_me(client):
    email, r = await _signup(client)
    me = await client.get("/v1/me", headers=auth(r.json()["access_token"]))
    assert me.status_code == 200
    assert me.json()["email"] == email
    assert me.json()["id"] == r.json()["user"]["id"]
    assert me.json()["role"] == "user"


async def test_missing_expired_and_tampered_tokens_are_401(client):
    _, r = await _signup(client)
    user_id = r.json()["user"]["id"]
    token = r.json()["access_token"]
    expired = mint_token(SECRET, user_id, "user", -1)
    head, payload, sig = token.split(".")
    tampered = f"{head}.{payload}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}"
    foreign = mint_token("another-secret-0123456789-0123456789", user_id, "user", 300)
    for headers in ({}, auth(expired), auth(tampered), auth(foreign), {"Authorization": "Basic x"}):
        resp = await client.get("/v1/me", headers=headers)
        assert_problem(resp, 401)
        assert resp.headers["www-authenticate"].startswith("Bearer")


async def test_row_level_security_hides_other_users(client, base_env):
    _, a = await _signup(client)
    _, b = await _signup(client)
    database = db.Database(base_env["GATEWAY_DATABASE_URL"])
    await database.open()
    try:
        async with database.tx(user_id=a.json()["user"]["id"], role="user") as conn:
            rows = await (await conn.execute("SELECT id FROM identity.users")).fetchall()
            tokens = await (
                await conn.execute("SELECT user_id FROM identity.refresh_tokens")
            ).fetchall()
    finally:
        await database.close()
    assert [str(r["id"]) for r in rows] == [a.json()["user"]["id"]]
    assert {str(t["user_id"]) for t in tokens} == {a.json()["user"]["id"]}
    assert b.json()["user"]["id"] not in {str(r["id"]) for r in rows}
