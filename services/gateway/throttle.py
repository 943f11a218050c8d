"""Abuse limits at the edge: failed sign-ins per account and per client
address (with a growing lock-out), sign-ups per address, job submissions per
user, and open event streams per user. The state lives in PostgreSQL
(throttle_store.py), so every gateway replica enforces the same limits.

A limit that cannot be checked because the database is down is a 503 (the
error reaches the dependency handler); nothing is let through unchecked."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from fastapi import FastAPI, Request

from ourvidz.db import Database
from ourvidz.errors import ResourceExhausted, Unauthenticated
from services.gateway import domain, problems
from services.gateway import throttle_store as store
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

LOGIN_LOCKED = (
    "too many failed sign-in attempts: sign-in is locked for now, even with the right "
    "password; try again after the Retry-After seconds"
)


class TooManyRequests(ResourceExhausted):
    """A 429 with `Retry-After` (whole seconds, at least one)."""

    def __init__(self, message: str, *, retry_after: float | None, reason: str) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = max(1, math.ceil(retry_after or 0))


def install(app: FastAPI) -> None:
    """Answer TooManyRequests as problem+json with its Retry-After header."""

    @app.exception_handler(TooManyRequests)
    async def _too_many(request: Request, exc: TooManyRequests):
        response = problems.from_domain_error(exc)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response


class Throttle:
    def __init__(self, settings: GatewaySettings, database: Database) -> None:
        self.settings = settings
        self.db = database
        self._proxies = [ipaddress.ip_network(p) for p in settings.gateway_trusted_proxies]
        # Releases of stream leases still being written (kept so they finish).
        self._closing: set[asyncio.Task] = set()

    # --- client addresses ----------------------------------------------------------

    def client_address(self, request: Request) -> str:
        """The address limits are counted against: the peer, or, when the peer
        is a trusted proxy, the nearest X-Forwarded-For hop that is not one
        (the first hop when the proxies in front replace the header; a client
        cannot pick its own address by sending one). IPv6 counts per /64, the
        block one subscriber usually holds."""
        peer = request.client.host if request.client else ""
        address = peer
        if self._trusted(peer):
            header = ",".join(request.headers.getlist("x-forwarded-for"))
            for hop in reversed([h.strip() for h in header.split(",") if h.strip()]):
                address = hop
                if not self._trusted(hop):
                    break
        return _counted_as(address)

    def _trusted(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self._proxies)

    # --- sign-in -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def login_attempt(self, email: str, address: str) -> AsyncIterator[None]:
        """Count a sign-in attempt for the address and the account before the
        password is checked (so parallel guesses cannot outrun the count), and
        refuse it with 429 while either is locked. The body's Unauthenticated
        leaves it counted as a failure; a success clears the account's count;
        any other error takes the attempt back. The answer is the same whether
        or not an account has this e-mail."""
        s = self.settings
        account = _Key(
            "account:" + domain.normalize_email(email), s.gateway_login_max_failures_per_account
        )
        client = _Key("address:" + address, s.gateway_login_max_failures_per_address)
        async with self.db.tx() as conn:
            decision = await self._take(conn, client)
            if decision.allowed:
                decision = await self._take(conn, account)
                if not decision.allowed:  # a refused attempt counts nowhere
                    await store.give_back_login_attempt(conn, client.name, limit=client.limit)
        if not decision.allowed:
            raise TooManyRequests(
                LOGIN_LOCKED, retry_after=decision.retry_after, reason="TOO_MANY_ATTEMPTS"
            )
        try:
            yield
        except Unauthenticated:
            raise
        except Exception:
            try:
                async with self.db.tx() as conn:
                    for key in (account, client):
                        await store.give_back_login_attempt(conn, key.name, limit=key.limit)
            except Exception as exc:
                log.warning("could not take back a sign-in attempt: %s", exc)
            raise
        async with self.db.tx() as conn:
            await store.clear_login_attempts(conn, account.name)
            await store.give_back_login_attempt(conn, client.name, limit=client.limit)

    async def _take(self, conn, key: _Key) -> store.Decision:
        s = self.settings
        return await store.take_login_attempt(
            conn,
            key.name,
            limit=key.limit,
            window=timedelta(seconds=s.gateway_login_failure_window_seconds),
            first_lock=timedelta(seconds=s.gateway_login_lockout_seconds),
            max_lock=timedelta(seconds=s.gateway_login_lockout_max_seconds),
        )

    # --- request rates -------------------------------------------------------------

    async def signup(self, address: str) -> None:
        s = self.settings
        await self._rate(
            "signup:" + address,
            per=s.gateway_signups_per_address,
            seconds=s.gateway_signup_window_seconds,
            burst=s.gateway_signups_per_address,
            message="too many sign-ups from this address; try again after the Retry-After seconds",
            reason="TOO_MANY_SIGNUPS",
        )

    async def submit_job(self, user_id: str) -> None:
        s = self.settings
        await self._rate(
            "jobs:" + user_id,
            per=s.gateway_jobs_per_minute,
            seconds=60.0,
            burst=s.gateway_jobs_burst,
            message=f"too many job submissions (at most {s.gateway_jobs_per_minute:g} a minute); "
            "try again after the Retry-After seconds",
            reason="TOO_MANY_JOBS",
        )

    async def _rate(
        self, key: str, *, per: float, seconds: float, burst: int, message: str, reason: str
    ) -> None:
        """Refill `per` requests every `seconds`, holding at most `burst`."""
        async with self.db.tx() as conn:
            decision = await store.take_rate(
                conn, key, interval=timedelta(seconds=seconds / per), burst=burst
            )
        if not decision.allowed:
            raise TooManyRequests(message, retry_after=decision.retry_after, reason=reason)

    # --- event streams -------------------------------------------------------------

    async def open_stream(self, user_id: str) -> StreamLease:
        """A lease on one of the user's open event streams, or 429 when they
        hold as many as allowed (on any replica)."""
        s = self.settings
        lease = StreamLease(self, uuid.uuid4(), user_id)
        async with self.db.tx() as conn:
            decision = await store.open_stream(
                conn,
                lease.id,
                user_id,
                cap=s.gateway_max_streams_per_user,
                ttl=timedelta(seconds=s.gateway_stream_lease_seconds),
            )
        if not decision.allowed:
            raise TooManyRequests(
                f"too many open event streams (at most {s.gateway_max_streams_per_user} "
                "per user); close one, or try again after the Retry-After seconds",
                retry_after=decision.retry_after,
                reason="TOO_MANY_STREAMS",
            )
        return lease

    # --- housekeeping --------------------------------------------------------------

    async def purge(self) -> int:
        """Delete the rows that no longer limit anyone; how many went."""
        window = timedelta(seconds=self.settings.gateway_login_failure_window_seconds)
        async with self.db.tx() as conn:
            return await store.purge(conn, login_window=window)

    async def purge_every(self, seconds: float, stop: asyncio.Event) -> None:
        """Purge now and then until `stop` is set (run as a task by the app)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
            if stop.is_set():
                return
            try:
                removed = await self.purge()
            except Exception as exc:
                log.warning("could not purge the abuse-limit rows: %s", exc)
            else:
                log.debug("purged %d abuse-limit rows", removed)


class StreamLease:
    """One open event stream. `held()` surrounds the streaming: it refreshes
    the lease while the stream is open and releases it however the stream ends
    (the release is written even when the stream's task is being cancelled)."""

    def __init__(self, throttle: Throttle, lease_id: uuid.UUID, user_id: str) -> None:
        self._throttle = throttle
        self.id = lease_id
        self.user_id = user_id

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        keeper = asyncio.create_task(self._keep())
        try:
            yield
        finally:
            keeper.cancel()
            await self.release()

    async def release(self) -> None:
        task = asyncio.create_task(self._close())
        self._throttle._closing.add(task)
        task.add_done_callback(self._throttle._closing.discard)
        await asyncio.shield(task)

    async def _keep(self) -> None:
        ttl = self._throttle.settings.gateway_stream_lease_seconds
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                async with self._throttle.db.tx() as conn:
                    await store.keep_stream(conn, self.id, self.user_id, ttl=timedelta(seconds=ttl))
            except Exception as exc:
                log.warning("could not refresh an event stream's lease: %s", exc)

    async def _close(self) -> None:
        try:
            async with self._throttle.db.tx() as conn:
                await store.close_stream(conn, self.id)
        except Exception as exc:
            # It expires by itself within gateway_stream_lease_seconds.
            log.warning("could not release an event stream's lease: %s", exc)


@dataclass(frozen=True)
class _Key:
    name: str  # "account:<email>" or "address:<ip>"
    limit: int  # counted failures before the lock-out


def _counted_as(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
