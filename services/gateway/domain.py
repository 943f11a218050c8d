"""Identity rules: what a valid email and password are, password hashing, and
refresh tokens. No HTTP, gRPC or SQL here."""

from __future__ import annotations

import hashlib
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ourvidz.errors import FieldViolation, InvalidArgument

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024  # hashing cost grows with length; nobody needs more
MAX_EMAIL_CHARS = 254
# Deliberately plain: one "@", a dot in the domain, no spaces or control
# characters. Deliverability is not ours to prove. (ASCII classes only, so the
# pattern means the same to Python, pydantic and a JSON Schema validator.)
EMAIL_PATTERN = r"^[^@\x00-\x20\x7f]{1,64}@[^@\x00-\x20\x7f]+\.[^@\x00-\x20\x7f.]{2,}$"
_EMAIL = re.compile(EMAIL_PATTERN)

# One hasher (argon2id, the library's recommended parameters) for the process.
HASHER = PasswordHasher()
# Verified against when an email is unknown, so a login for a missing account
# costs as much time as a wrong password.
_DUMMY_HASH = HASHER.hash(secrets.token_urlsafe(16))

INVALID_CREDENTIALS = "invalid email or password"


def normalize_email(email: str) -> str:
    return email.strip().lower()


def check_signup(email: str, password: str) -> str:
    """The normalized email, or InvalidArgument naming each bad field."""
    normalized = normalize_email(email)
    violations: list[FieldViolation] = []
    if len(normalized) > MAX_EMAIL_CHARS or not _EMAIL.match(normalized):
        violations.append(FieldViolation("email", "is not a valid email address"))
    if len(password) < MIN_PASSWORD_CHARS:
        violations.append(
            FieldViolation("password", f"must be at least {MIN_PASSWORD_CHARS} characters")
        )
    elif len(password) > MAX_PASSWORD_CHARS:
        violations.append(
            FieldViolation("password", f"must be at most {MAX_PASSWORD_CHARS} characters")
        )
    if violations:
        raise InvalidArgument(violations)
    return normalized


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when `password` matches; always spends the hashing time."""
    try:
        return HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return HASHER.check_needs_rehash(password_hash)


def new_refresh_token() -> tuple[str, str]:
    """(token for the client, sha256 hex stored in the database)."""
    token = secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def role_for(email: str, admin_emails: list[str]) -> str:
    return "admin" if normalize_email(email) in admin_emails else "user"
