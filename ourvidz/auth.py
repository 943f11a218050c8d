"""Identity across the mesh: signed short-lived access tokens, the caller of the
current RPC, and what the server interceptor verifies on every call.

Tokens are EdDSA (Ed25519) JWTs. The gateway alone holds the private key that
signs users' tokens (role "user" or "admin"); each worker holds a key of its
own and signs its own short-lived tokens with role "worker" through
`TokenSource`. Every service verifies every call with public keys only
(`TokenVerifier`), so a request that bypasses the gateway is held to the same
rules, and a key decides the roles its tokens may carry: a worker's key makes
worker tokens and nothing else; the gateway's key makes no worker tokens.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ourvidz import keys
from ourvidz.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

ISSUER = "ourvidz"
ALGORITHM = keys.ALGORITHM
ROLES = ("user", "worker", "admin")
# The roles a token may carry, by who signed it.
GATEWAY_ROLES = ("user", "admin")
WORKER_ROLES = ("worker",)


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


class TokenSigner:
    """Signs access tokens with an Ed25519 private key, for the roles that key
    may sign (the gateway: user and admin; a worker: worker)."""

    def __init__(self, key: Ed25519PrivateKey, roles: Iterable[str]) -> None:
        self._key = key
        self.roles = tuple(roles)
        self.jwk = keys.public_jwk(key)
        self.kid: str = self.jwk["kid"]

    @classmethod
    def from_pem(cls, pem: bytes | str, roles: Iterable[str]) -> TokenSigner:
        return cls(keys.load_private_key(pem), roles)

    def mint(
        self,
        subject: str,
        role: str,
        ttl_seconds: int,
        *,
        email: str = "",
        kind: str = "access",
    ) -> str:
        if role not in self.roles:
            raise ValueError(f"this key does not sign {role!r} tokens")
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
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})


def parse_jwks(text: str, where: str) -> list[dict]:
    """The keys of a JWKS document, each checked to be a public Ed25519 key and
    given its thumbprint as `kid` when it has none. ValueError names `where`."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{where}: not JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError(f"{where}: not a JWKS document (an object with a 'keys' list)")
    out = []
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict):
            raise ValueError(f"{where}: a key is not an object")
        if any(member in jwk for member in keys.PRIVATE_MEMBERS):
            raise ValueError(f"{where}: holds a private key; publish public keys only")
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not jwk.get("x"):
            raise ValueError(f"{where}: only Ed25519 (OKP) keys are accepted")
        if jwk.get("alg", ALGORITHM) != ALGORITHM:
            raise ValueError(f"{where}: key {jwk.get('kid')!r} is not for {ALGORITHM}")
        out.append({**jwk, "kid": jwk.get("kid") or keys.thumbprint(jwk)})
    return out


def load_jwks(inline: str = "", path: str = "", *, name: str = "AUTH_JWKS") -> list[dict]:
    """The keys of an inline JWKS document and/or a JWKS file (both may be set)."""
    found: list[dict] = []
    if inline.strip():
        found += parse_jwks(inline, name)
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from exc
        found += parse_jwks(text, f"{name}_FILE ({path})")
    return found


class TokenVerifier:
    """Verifies access tokens with public keys only. A token is valid under a
    gateway key with role user or admin, or under a worker key with role
    worker; its key is found by `kid`, its algorithm is EdDSA and nothing else."""

    def __init__(self, gateway_keys: Iterable[dict] = (), worker_keys: Iterable[dict] = ()):
        self._keys: dict[str, tuple[jwt.PyJWK, tuple[str, ...]]] = {}
        self._public: list[dict] = []
        for jwks, roles in ((gateway_keys, GATEWAY_ROLES), (worker_keys, WORKER_ROLES)):
            for jwk in jwks:
                kid = jwk["kid"]
                if kid in self._keys:
                    if self._keys[kid][1] != roles:
                        raise ValueError(f"key {kid} is both a gateway key and a worker key")
                    continue
                try:
                    key = jwt.PyJWK(jwk, algorithm=ALGORITHM)
                except jwt.PyJWTError as exc:
                    raise ValueError(f"key {kid}: {exc}") from exc
                if not isinstance(key.key, Ed25519PublicKey):
                    raise ValueError(f"key {kid} is not an Ed25519 public key")
                self._keys[kid] = (key, roles)
                if roles == GATEWAY_ROLES:
                    self._public.append(jwk)

    @classmethod
    def from_settings(cls, settings) -> TokenVerifier:
        gateway = load_jwks(settings.auth_jwks, settings.auth_jwks_file, name="AUTH_JWKS")
        if not gateway:
            log.warning("AUTH_JWKS_FILE / AUTH_JWKS name no key: every user token is refused")
        return cls(
            gateway,
            load_jwks(
                settings.auth_worker_jwks, settings.auth_worker_jwks_file, name="AUTH_WORKER_JWKS"
            ),
        )

    def knows(self, kid: str) -> bool:
        return kid in self._keys

    def gateway_jwks(self) -> dict:
        """The gateway's public keys as a JWKS document (public members only)."""
        return keys.public_only({"keys": self._public})

    def verify(self, token: str, *, kind: str = "access") -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("invalid token") from exc
        found = self._keys.get(header.get("kid")) if isinstance(header.get("kid"), str) else None
        if header.get("alg") != ALGORITHM or found is None:
            raise Unauthenticated("invalid token")
        key, roles = found
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("invalid token") from exc
        if claims.get("typ") != kind or claims.get("role") not in roles:
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

    def __init__(
        self, signer: TokenSigner, subject: str, role: str = "worker", ttl_seconds: int = 300
    ):
        self._signer = signer
        self._subject = subject
        self._role = role
        self._ttl = ttl_seconds
        self._token = ""
        self._expires = 0.0

    def token(self) -> str:
        if time.time() > self._expires - self._ttl / 3:
            self._token = self._signer.mint(self._subject, self._role, self._ttl)
            self._expires = time.time() + self._ttl
        return self._token

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token()}"),)


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)
