"""Sign-up, login, refresh-token rotation and the current user: the service
layer over domain.py and store.py, owning the transactions."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ourvidz.auth import TokenSigner
from ourvidz.db import Database, act_as
from ourvidz.errors import Unauthenticated
from services.gateway import domain, store
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


@dataclass
class Session:
    """What login and refresh hand back."""

    user: dict
    access_token: str
    refresh_token: str
    expires_in: int


class Identity:
    def __init__(
        self, settings: GatewaySettings, database: Database, signer: TokenSigner | None = None
    ) -> None:
        self.settings = settings
        self.db = database
        self._signer = signer or settings.token_signer()

    async def signup(self, email: str, password: str) -> None:
        """Create the account unless the address is taken. Both cases answer
        the same and cost the same (the password is hashed and the insert
        tried either way), so sign-up does not tell which addresses have
        accounts. Every account starts as a user; admins are made by an
        operator (`ourvidz admin grant`)."""
        min_score = self.settings.gateway_min_password_score
        email = await asyncio.to_thread(domain.check_signup, email, password, min_score)
        password_hash = await asyncio.to_thread(domain.hash_password, password)
        # The new row is written as its own user: the gateway's database role
        # acts only as a user, never as "system".
        user_id = str(uuid.uuid4())
        async with self.db.tx(user_id=user_id) as conn:
            user = await store.insert_user(conn, user_id, email, password_hash, "user")
        if user is None:
            log.info("sign-up for an address that has an account")
        else:
            log.info("user signed up", extra={"user_id": str(user["id"])})

    async def login(self, email: str, password: str) -> Session:
        async with self.db.tx() as conn:
            user = await store.user_by_email(conn, domain.normalize_email(email))
        password_hash = user["password_hash"] if user else None
        ok = await asyncio.to_thread(domain.verify_password, password_hash, password)
        if not ok or user is None:
            raise Unauthenticated(domain.INVALID_CREDENTIALS, reason="INVALID_CREDENTIALS")
        async with self.db.tx(user_id=str(user["id"]), role="user") as conn:
            if domain.needs_rehash(user["password_hash"]):
                new_hash = await asyncio.to_thread(domain.hash_password, password)
                await store.update_password_hash(conn, user["id"], new_hash)
            return await self._issue(conn, user)

    async def refresh(self, refresh_token: str) -> Session:
        """Rotate: the presented token is revoked and a new pair issued. A token
        presented again after rotation is refused and, since it may have been
        stolen, every live refresh token of that user is revoked."""
        token_hash = domain.hash_refresh_token(refresh_token)
        async with self.db.tx() as conn:
            row = await store.refresh_token_for_update(conn, token_hash)
            if row is None:
                raise Unauthenticated("invalid refresh token", reason="INVALID_REFRESH_TOKEN")
            # The rest of the transaction acts as the token's user.
            await act_as(conn, str(row["user_id"]))
            if row["revoked_at"] is not None:
                revoked = await store.revoke_all_refresh_tokens(conn, row["user_id"])
                log.warning(
                    "refresh token reused; revoked the user's tokens",
                    extra={"user_id": str(row["user_id"]), "revoked": revoked},
                )
                reuse = True
            else:
                reuse = False
                if row["expires_at"] <= datetime.now(UTC):
                    raise Unauthenticated("refresh token expired", reason="REFRESH_TOKEN_EXPIRED")
                await store.revoke_refresh_token(conn, row["id"])
                user = {"id": row["user_id"], "email": row["email"], "role": row["role"]}
                session = await self._issue(conn, user)
        # Raised outside the transaction so the revocation above is committed.
        if reuse:
            raise Unauthenticated("refresh token already used", reason="REFRESH_TOKEN_REUSED")
        return session

    async def me(self, user_id: str) -> dict:
        async with self.db.tx(user_id=user_id, role="user") as conn:
            user = await store.user_by_id(conn, user_id)
        if user is None:
            raise Unauthenticated("unknown user")
        return user

    async def _issue(self, conn, user: dict) -> Session:
        token, token_hash = domain.new_refresh_token()
        expires_at = datetime.now(UTC) + timedelta(seconds=self.settings.refresh_token_ttl_seconds)
        await store.insert_refresh_token(conn, user["id"], token_hash, expires_at)
        ttl = self.settings.access_token_ttl_seconds
        access = self._signer.mint(str(user["id"]), user["role"], ttl, email=user["email"])
        public = {"id": str(user["id"]), "email": user["email"], "role": user["role"]}
        return Session(user=public, access_token=access, refresh_token=token, expires_in=ttl)
