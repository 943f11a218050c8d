"""Identity end to end over HTTP, against the real PostgreSQL."""

from __future__ import annotations

import uuid

import pytest

from ourvidz import db
from tests.conftest import foreign_token
from tests.conftest import token as mint
from tests.gateway.gateway_helpers import assert_problem, auth, gateway_settings, serve_app


def _email() -> str:
    return f"u{uuid.uuid4().hex[:10]}@example.com"


PASSWORD = "correct horse battery"
ACCEPTED = {
    "status": "accepted",
    "detail": "If this address can be used, the account is ready: sign in with it.",
}


async def _signup(client, email=None, password=PASSWORD):
    email = email or _email()
    return email, await client.post("/v1/auth/signup", json={"email": email, "password": password})


async def _account(client, email=None, password=PASSWORD):
    """(email, the login answer) of a new account: sign-up, then login."""
    email, r = await _signup(client, email, password)
    assert r.status_code == 202, r.text
    login = await client.post("/v1/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200, login.text
    return email, login


async def test_signup_answers_202_without_tokens_and_login_works(client):
    email, r = await _signup(client, _email().upper())
    assert r.status_code == 202, r.text
    assert r.json() == ACCEPTED
    login = await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    body = login.json()
    assert body["user"]["email"] == email.lower()
    assert body["user"]["role"] == "user"
    uuid.UUID(body["user"]["id"])
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert body["access_token"] and body["refresh_token"]


async def test_taken_and_free_addresses_answer_byte_for_byte_the_same(client):
    email, first = await _signup(client)
    assert first.status_code == 202
    # The same address in another case, with another password: it changes nothing.
    _, taken = await _signup(client, email.upper(), "another quite long phrase")
    _, free = await _signup(client, _email(), "another quite long phrase")
    assert taken.status_code == free.status_code == 202
    assert taken.content == free.content == first.content
    assert taken.headers["content-type"] == free.headers["content-type"]
    kept = await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert kept.status_code == 200, kept.text
    other = {"email": email, "password": "another quite long phrase"}
    assert_problem(await client.post("/v1/auth/login", json=other), 401)


@pytest.mark.parametrize(
    ("local", "password", "why"),
    [
        (None, "password", "common password"),
        (None, "12345678", "common password"),
        (None, "aaaaaaaa", "Repeats"),
        ("alice", "alice2024", "e-mail address"),
        ("kwimbleton", "kwimbleton2024", "e-mail address"),
        ("quillon.vandermeer", "quillon.vandermeer", "e-mail address"),
    ],
)
async def test_weak_passwords_are_refused_with_the_field_and_a_reason(client, local, password, why):
    # "kwimbleton2024" alone would pass: it is weak because the address holds it.
    email = f"{local or 'u' + uuid.uuid4().hex[:8]}@x{uuid.uuid4().hex[:8]}.example.com"
    _, r = await _signup(client, email, password)
    body = assert_problem(r, 422)
    assert [e["field"] for e in body["errors"]] == ["password"]
    message = body["errors"][0]["message"]
    assert message.startswith("is too easy to guess")
    assert why in message
    # Nothing was created: a sign-up with a strong password makes the account.
    await _account(client, email)


async def test_a_long_password_is_judged_on_its_first_72_characters(client):
    _, r = await _signup(client, password="a" * 72 + "Zq8#kLw!pT")
    body = assert_problem(r, 422)
    assert "first 72 characters" in body["errors"][0]["message"]
    await _account(client, password="correct horse battery " * 40)


async def test_signup_validates_email_and_password(client):
    r = await client.post("/v1/auth/signup", json={"email": "not-an-email", "password": "short"})
    body = assert_problem(r, 422)
    assert {e["field"] for e in body["errors"]} == {"email", "password"}


async def test_signup_schema_states_the_password_lengths_and_the_202(client):
    spec = (await client.get("/openapi.json")).json()
    body = spec["components"]["schemas"]["SignupBody"]["properties"]
    assert (body["password"]["minLength"], body["password"]["maxLength"]) == (8, 1024)
    assert body["email"]["maxLength"] == 254
    responses = spec["paths"]["/v1/auth/signup"]["post"]["responses"]
    assert {"202", "400", "422", "503"} <= responses.keys()
    assert "201" not in responses
    accepted = responses["202"]["content"]["application/json"]["schema"]["$ref"]
    assert accepted.endswith("/SignupAccepted")


async def test_an_address_of_the_former_admin_list_signs_up_as_a_user(base_env, fakes, enhancer):
    # GATEWAY_ADMIN_EMAILS made admins at sign-up; it has no effect any more.
    email = _email()
    settings = gateway_settings(
        base_env, fakes[0].port, enhancer[0].port, gateway_admin_emails=email
    )
    assert not hasattr(settings, "gateway_admin_emails")
    async with serve_app(settings) as client:
        _, login = await _account(client, email)
        assert login.json()["user"]["role"] == "user"
        token = login.json()["access_token"]
        denied = await client.get("/v1/admin/prompt-templates", headers=auth(token))
        assert_problem(denied, 403)


async def test_login_wrong_password_and_unknown_email_are_the_same_401(client):
    email, _ = await _account(client)
    wrong = await client.post("/v1/auth/login", json={"email": email, "password": "wrong password"})
    unknown = await client.post("/v1/auth/login", json={"email": _email(), "password": PASSWORD})
    a, b = assert_problem(wrong, 401), assert_problem(unknown, 401)
    assert a["detail"] == b["detail"] == "invalid email or password"
    ok = await client.post("/v1/auth/login", json={"email": email.upper(), "password": PASSWORD})
    assert ok.status_code == 200
    assert ok.json()["user"]["email"] == email


async def test_refresh_rotates_and_reuse_is_refused(client):
    _, r = await _account(client)
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
    email, r = await _account(client)
    me = await client.get("/v1/me", headers=auth(r.json()["access_token"]))
    assert me.status_code == 200
    assert me.json()["email"] == email
    assert me.json()["id"] == r.json()["user"]["id"]
    assert me.json()["role"] == "user"


async def test_missing_expired_and_tampered_tokens_are_401(client):
    _, r = await _account(client)
    user_id = r.json()["user"]["id"]
    token = r.json()["access_token"]
    expired = mint(user_id, "user", -1)
    head, payload, sig = token.split(".")
    tampered = f"{head}.{payload}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}"
    foreign = foreign_token(user_id)
    for headers in ({}, auth(expired), auth(tampered), auth(foreign), {"Authorization": "Basic x"}):
        resp = await client.get("/v1/me", headers=headers)
        assert_problem(resp, 401)
        assert resp.headers["www-authenticate"].startswith("Bearer")


async def test_row_level_security_hides_other_users(client, base_env):
    _, a = await _account(client)
    _, b = await _account(client)
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
