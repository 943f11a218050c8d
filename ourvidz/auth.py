"""Identity across the mesh: signed short-lived access tokens, the caller of the
current RPC, and the server interceptor that verifies every call.

The gateway signs users' tokens (role "user" or "admin"); internal callers —
workers, the enhancer — sign their own short-lived tokens with role "worker"
through `TokenSource`. Every service verifies every call, so a request that
bypasses the gateway is held to the same rules.
"""

from __future__ import annotations

import contextvars
import time
import uuid
from dataclasses import dataclass

import jwt

from ourvidz.errors import PermissionDenied, Unauthenticated

ISSUER = "ourvidz"
ALGORITHM = "HS256"
ROLES = ("user", "worker", "admin")


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str
    email: str = ""

    @property
    def user_id(self) -> str:
        """The id that row level security keys on (a user's or admin's own id)."""
        return self.subject if self.role in ("user", "admin") else ""

    def require(self, *roles: str) -> Principal:
        if self.role not in roles:
            raise PermissionDenied(f"this call needs the role {' or '.join(roles)}")
        return self


def mint_token(
    secret: str, subject: str, role: str, ttl_seconds: int, *, email: str = "", kind: str = "access"
) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": subject,
        "role": role,
        "typ": kind,
        "iat": now,
        "exp": now + ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    if email:
        claims["email"] = email
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str, *, kind: str = "access") -> Principal:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthenticated("token expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated("invalid token") from exc
    if claims.get("typ") != kind or claims.get("role") not in ROLES:
        raise Unauthenticated("invalid token")
    return Principal(subject=claims["sub"], role=claims["role"], email=claims.get("email", ""))


def bearer(metadata) -> str | None:
    for key, value in metadata or ():
        if (
            key == "authorization"
            and isinstance(value, str)
            and value.lower().startswith("bearer ")
        ):
            return value[7:].strip()
    return None


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "ourvidz_principal", default=None
)


def current_principal() -> Principal:
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("missing credentials")
    return principal


def set_principal(principal: Principal | None) -> contextvars.Token:
    return _current.set(principal)


def reset_principal(token: contextvars.Token) -> None:
    _current.reset(token)


class TokenSource:
    """Short-lived tokens for a service acting as itself, renewed before expiry."""

    def __init__(self, secret: str, subject: str, role: str = "worker", ttl_seconds: int = 300):
        self._secret = secret
        self._subject = subject
        self._role = role
        self._ttl = ttl_seconds
        self._token = ""
        self._expires = 0.0

    def token(self) -> str:
        if time.time() > self._expires - self._ttl / 3:
            self._token = mint_token(self._secret, self._subject, self._role, self._ttl)
            self._expires = time.time() + self._ttl
        return self._token

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token()}"),)


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)
