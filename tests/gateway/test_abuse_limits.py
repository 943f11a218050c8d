"""Abuse limits over HTTP against the real PostgreSQL: sign-in lock-outs per
account and per address (shared by replicas), sign-ups per address, job
submissions per user and open event streams per user.

The apps here trust 127.0.0.1 (the in-process client) as a proxy, so each test
picks its own client address with X-Forwarded-For and the counts of other
tests never reach it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta

import httpx
import psycopg
import pytest
from starlette.requests import Request

from services.gateway import throttle_store
from services.gateway.main import start
from services.gateway.throttle import Throttle
from tests.conftest import token as mint
from tests.gateway.gateway_helpers import (
    assert_problem,
    auth,
    gateway_settings,
    held_job,
    serve_app,
)

PASSWORD = "correct horse battery"
WAIT = 60  # seconds: the bound of every wait for a limit to lift


def _email() -> str:
    return f"t{uuid.uuid4().hex[:10]}@example.com"


def _address() -> str:
    """A client address of this test's own (TEST-NET-2, 198.51.100.0/24 and beyond)."""
    n = uuid.uuid4().int
    return f"198.{51 + n % 40}.{n >> 8 & 255}.{n >> 16 & 255}"


def _from(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def _settings(base_env, fakes, **overrides):
    served, _, _ = fakes
    return gateway_settings(base_env, served.port, gateway_trusted_proxies="127.0.0.1", **overrides)


async def _signup(client, email: str, address: str) -> None:
    r = await client.post(
        "/v1/auth/signup", json={"email": email, "password": PASSWORD}, headers=_from(address)
    )
    assert r.status_code < 300, r.text


async def _login(client, email: str, password: str, address: str) -> httpx.Response:
    return await client.post(
        "/v1/auth/login", json={"email": email, "password": password}, headers=_from(address)
    )


def _assert_too_many(r: httpx.Response, reason: str) -> dict:
    body = assert_problem(r, 429)
    assert body["reason"] == reason
    assert int(r.headers["Retry-After"]) >= 1
    return body


@pytest.fixture(scope="module")
async def replicas(base_env, fakes):
    """Two gateway apps on the same database: each account locks after 5
    failures, for a minute at first."""
    settings = _settings(
        base_env,
        fakes,
        gateway_login_max_failures_per_account=5,
        gateway_login_lockout_seconds=60,
    )
    async with serve_app(settings) as a, serve_app(settings) as b:
        yield a, b


async def test_twenty_wrong_logins_lock_the_account_on_every_replica(replicas):
    a, b = replicas
    email, address = _email(), _address()
    await _signup(a, email, address)
    answers = []
    for i in range(20):  # alternately through each replica
        answers.append(await _login((a, b)[i % 2], email, "wrong password", address))
    assert [r.status_code for r in answers] == [401] * 5 + [429] * 15
    for r in answers[5:]:
        body = _assert_too_many(r, "TOO_MANY_ATTEMPTS")
        assert int(r.headers["Retry-After"]) <= 60
    for client in (a, b):
        right = await _login(client, email, PASSWORD, address)
        body = _assert_too_many(right, "TOO_MANY_ATTEMPTS")
        assert "even with the right password" in body["detail"]


async def test_unknown_and_known_emails_get_the_same_429(replicas):
    a, _ = replicas
    known, unknown, address = _email(), _email(), _address()
    await _signup(a, known, address)
    last = {}
    for email in (known, unknown):
        for _ in range(6):
            last[email] = await _login(a, email, "wrong password", address)
    k, u = last[known], last[unknown]
    assert k.status_code == u.status_code == 429
    assert k.json() == u.json()
    assert k.headers.keys() == u.headers.keys()
    assert abs(int(k.headers["Retry-After"]) - int(u.headers["Retry-After"])) <= 1


async def test_the_lock_expires_and_a_success_resets_the_count(base_env, fakes, infra):
    settings = _settings(
        base_env,
        fakes,
        gateway_login_max_failures_per_account=2,
        gateway_login_lockout_seconds=60,
    )
    email, address = _email(), _address()
    async with serve_app(settings) as client:
        await _signup(client, email, address)
        for _ in range(2):
            assert (await _login(client, email, "wrong password", address)).status_code == 401
        locked = await _login(client, email, PASSWORD, address)
        _assert_too_many(locked, "TOO_MANY_ATTEMPTS")
        assert (await _login(client, email, PASSWORD, address)).status_code == 429

        # The lock runs out (ended in the database rather than waited for, so
        # a slow machine cannot make the test race the clock).
        with psycopg.connect(infra.database_url, autocommit=True) as owner:
            ended = owner.execute(
                "UPDATE identity.login_attempts SET locked_until = now()"
                " WHERE key = %s AND locked_until > now()",
                (f"account:{email}",),
            ).rowcount
        assert ended == 1
        r = await _login(client, email, PASSWORD, address)
        assert r.status_code == 200, r.text

        # Counted afresh: one failure more leaves the account open (without the
        # reset it would be the third in a row, and lock it again).
        assert (await _login(client, email, "wrong password", address)).status_code == 401
        assert (await _login(client, email, PASSWORD, address)).status_code == 200


async def test_an_address_is_locked_across_accounts(base_env, fakes):
    settings = _settings(
        base_env,
        fakes,
        gateway_login_max_failures_per_address=3,
        gateway_login_max_failures_per_account=100,
        gateway_login_lockout_seconds=60,
    )
    address, other = _address(), _address()
    async with serve_app(settings) as client:
        for _ in range(3):
            assert (await _login(client, _email(), "wrong", address)).status_code == 401
        email = _email()
        _assert_too_many(await _login(client, email, "wrong", address), "TOO_MANY_ATTEMPTS")
        # The account itself is not locked: from elsewhere it is judged as usual.
        assert (await _login(client, email, "wrong", other)).status_code == 401


async def test_failures_back_off_exponentially_up_to_the_cap(client, infra, base_env):
    """The lock-out after each further failure: 1 s, 2 s, 4 s, then the 5 s
    cap (each lock is ended by hand in the database, so nothing waits)."""
    database = client.app.state.gateway.database
    key = f"account:{_email()}"
    limits = {
        "limit": 2,
        "window": timedelta(minutes=15),
        "first_lock": timedelta(seconds=1),
        "max_lock": timedelta(seconds=5),
    }
    durations = []
    with psycopg.connect(infra.database_url, autocommit=True) as owner:
        for _ in range(6):
            async with database.tx() as conn:
                decision = await throttle_store.take_login_attempt(conn, key, **limits)
            assert decision.allowed
            failures, lock = owner.execute(
                "SELECT failures, locked_until - counted_at FROM identity.login_attempts"
                " WHERE key = %s",
                (key,),
            ).fetchone()
            durations.append(lock)
            owner.execute(  # the lock has run out
                "UPDATE identity.login_attempts SET locked_until = now() WHERE key = %s", (key,)
            )
        assert failures == 6
    seconds = [None if d is None else d.total_seconds() for d in durations]
    assert seconds == [None, 1, 2, 4, 5, 5]

    # No other service's login role may read them.
    with (
        psycopg.connect(base_env["JOBS_DATABASE_URL"]) as jobs,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        jobs.execute("SELECT count(*) FROM identity.login_attempts")


async def test_signups_are_limited_per_address(base_env, fakes):
    settings = _settings(base_env, fakes, gateway_signups_per_address=3)
    address = _address()
    async with serve_app(settings) as client:
        for _ in range(3):
            await _signup(client, _email(), address)
        email = _email()
        r = await client.post(
            "/v1/auth/signup", json={"email": email, "password": PASSWORD}, headers=_from(address)
        )
        _assert_too_many(r, "TOO_MANY_SIGNUPS")
        # Nothing was made: the address refused, the e-mail signs up from elsewhere.
        await _signup(client, email, _address())


async def test_job_submissions_are_limited_per_user(base_env, fakes, user_token):
    settings = _settings(base_env, fakes, gateway_jobs_per_minute=1, gateway_jobs_burst=3)
    _, token = user_token
    body = {"job_type": "image_fast", "prompt": "a lighthouse", "destination": "library"}
    async with serve_app(settings) as client:
        for _ in range(3):
            r = await client.post("/v1/jobs", json=body, headers=auth(token))
            assert r.status_code == 202, r.text
        r = await client.post("/v1/jobs", json=body, headers=auth(token))
        _assert_too_many(r, "TOO_MANY_JOBS")
        assert int(r.headers["Retry-After"]) <= 60
        other = await client.post("/v1/jobs", json=body, headers=auth(_another_user()[1]))
        assert other.status_code == 202, other.text


def _another_user() -> tuple[str, str]:
    user_id = str(uuid.uuid4())
    return user_id, mint(user_id, "user", 300, email="other@example.com")


async def _opened(stack: contextlib.AsyncExitStack, http: httpx.AsyncClient, url, token):
    """Open an event stream and read up to its first event; the stream stays
    open until `stack` closes (or the caller closes the response)."""
    r = await stack.enter_async_context(http.stream("GET", url, headers=auth(token)))
    assert r.status_code == 200
    chunks = r.aiter_text()
    # Held with the response: a half-read iterator that is collected closes it.
    r.extensions["chunks"] = chunks
    text = ""
    while "event: " not in text:
        text += await anext(chunks)
    return r


async def test_open_streams_are_capped_per_user_across_replicas(base_env, fakes, user_token):
    _, jobs, _ = fakes
    user_id, token = user_token
    job = held_job(jobs, user_id)
    url = f"/v1/jobs/{job.id}/events"
    settings = _settings(base_env, fakes, gateway_max_streams_per_user=2)
    jobs.hold_stream = asyncio.Event()  # never set while the test runs
    first = await start(settings, port=0)
    second = await start(settings, port=0)
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{first.port}", timeout=WAIT) as a,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{second.port}", timeout=WAIT) as b,
            contextlib.AsyncExitStack() as streams,
        ):
            await _opened(streams, a, url, token)
            one_more = await _opened(streams, b, url, token)
            for http in (a, b):
                _assert_too_many(await http.get(url, headers=auth(token)), "TOO_MANY_STREAMS")
            # Another user is not held to this user's streams.
            other_id, other_token = _another_user()
            other_job = held_job(jobs, other_id)
            await _opened(streams, a, f"/v1/jobs/{other_job.id}/events", other_token)

            # Closing a stream releases its lease, so one more opens.
            await one_more.aclose()
            async with asyncio.timeout(WAIT):
                while True:
                    async with a.stream("GET", url, headers=auth(token)) as r:
                        if r.status_code == 200:
                            break
                        assert r.status_code == 429
                    await asyncio.sleep(0.2)
    finally:
        jobs.hold_stream = None
        await first.stop()
        await second.stop()


async def test_limits_answer_503_while_the_database_is_down(base_env, fakes, user_token):
    _, jobs, _ = fakes
    user_id, token = user_token
    job = jobs.make_job(user_id=user_id, job_type="image_fast", prompt="watched")
    settings = _settings(
        base_env,
        fakes,
        gateway_database_url="postgresql://ourvidz_gateway@127.0.0.1:1/ourvidz",
        db_pool_timeout_seconds=1,
    )
    async with serve_app(settings) as client:
        answers = [
            await client.post("/v1/auth/login", json={"email": _email(), "password": "x"}),
            await client.post("/v1/auth/signup", json={"email": _email(), "password": PASSWORD}),
            await client.post(
                "/v1/jobs",
                json={"job_type": "image_fast", "prompt": "a", "destination": "library"},
                headers=auth(token),
            ),
            await client.get(f"/v1/jobs/{job.id}/events", headers=auth(token)),
        ]
    for r in answers:
        body = assert_problem(r, 503)
        assert body["reason"] == "DATABASE_UNAVAILABLE"
        assert "Retry-After" in r.headers


async def test_the_new_429s_are_in_the_openapi_document(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path, method in (
        ("/v1/auth/login", "post"),
        ("/v1/auth/signup", "post"),
        ("/v1/jobs", "post"),
        ("/v1/jobs/{job_id}/events", "get"),
        ("/v1/workspace/sessions/{session_id}/events", "get"),
        ("/v1/playground/chat", "post"),
    ):
        response = paths[path][method]["responses"]["429"]
        assert "Retry-After" in response["headers"]
        assert "application/problem+json" in response["content"]


def _request(peer: str, forwarded: str | None = None) -> Request:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return Request({"type": "http", "headers": headers, "client": (peer, 50000)})


@pytest.mark.parametrize(
    ("peer", "forwarded", "counted_as"),
    [
        # Without a trusted proxy in front, the header is the client's to forge.
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
        # Through the proxies: the hop they added, whatever the client sent before it.
        ("10.0.0.2", "198.51.100.1", "198.51.100.1"),
        ("10.0.0.2", "6.6.6.6, 198.51.100.1, 10.0.0.7", "198.51.100.1"),
        ("10.0.0.2", None, "10.0.0.2"),
        # IPv6 counts per /64; IPv4 written as IPv6 counts as itself.
        ("2001:db8:1:2:3:4:5:6", None, "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.4", None, "198.51.100.4"),
    ],
)
def test_the_client_address_trusts_only_the_listed_proxies(
    base_env, fakes, peer, forwarded, counted_as
):
    settings = gateway_settings(base_env, fakes[0].port, gateway_trusted_proxies="10.0.0.0/8")
    throttle = Throttle(settings, database=None)
    assert throttle.client_address(_request(peer, forwarded)) == counted_as


def test_a_trusted_proxy_setting_that_is_no_address_is_refused(base_env, fakes):
    with pytest.raises(ValueError, match="gateway_trusted_proxies"):
        gateway_settings(base_env, fakes[0].port, gateway_trusted_proxies="10.0.0.0/8,proxy.local")


async def test_rows_that_limit_no_one_are_purged(client, infra):
    """A full bucket, a count past its window and a lapsed lease go; live ones stay."""
    gw = client.app.state.gateway
    tag = uuid.uuid4().hex
    stale, live = f"jobs:stale-{tag}", f"jobs:live-{tag}"
    async with gw.database.tx() as conn:
        for key in (stale, live):
            await throttle_store.take_rate(conn, key, interval=timedelta(minutes=1), burst=5)
        await throttle_store.take_login_attempt(
            conn,
            f"account:{tag}",
            limit=5,
            window=timedelta(minutes=15),
            first_lock=timedelta(seconds=1),
            max_lock=timedelta(seconds=5),
        )
        lease = uuid.uuid4()
        await throttle_store.keep_stream(conn, lease, str(uuid.uuid4()), ttl=timedelta(minutes=1))
    with psycopg.connect(infra.database_url, autocommit=True) as owner:
        owner.execute(
            "UPDATE identity.rate_limits SET tat = now() - interval '1 s' WHERE key = %s", (stale,)
        )
        owner.execute(
            "UPDATE identity.login_attempts SET counted_at = now() - interval '1 hour'"
            " WHERE key = %s",
            (f"account:{tag}",),
        )
        owner.execute(
            "UPDATE identity.stream_leases SET expires_at = now() - interval '1 s' WHERE id = %s",
            (lease,),
        )
        assert await gw.throttle.purge() >= 3
        keys = {r[0] for r in owner.execute("SELECT key FROM identity.rate_limits").fetchall()}
        assert live in keys and stale not in keys
        assert not owner.execute(
            "SELECT 1 FROM identity.login_attempts WHERE key = %s", (f"account:{tag}",)
        ).fetchall()
        assert not owner.execute(
            "SELECT 1 FROM identity.stream_leases WHERE id = %s", (lease,)
        ).fetchall()
