"""Identity rules: what a valid email and password are, password hashing, and
refresh tokens. No HTTP, gRPC or SQL here."""

from __future__ import annotations

import hashlib
import re
import secrets
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from zxcvbn import zxcvbn

from ourvidz.errors import FieldViolation, InvalidArgument

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024  # hashing cost grows with length; nobody needs more
MAX_EMAIL_CHARS = 254
# zxcvbn's score, 0 (too guessable) to 4 (very unguessable); 3 ("safely
# unguessable", about 10^8 guesses) is the least a new password may score.
MIN_PASSWORD_SCORE = 3
# zxcvbn's matching grows faster than linearly with length (seconds at 1,000
# characters), so it looks at the first 72 characters: a longer password must
# be hard to guess on that part alone.
ESTIMATED_PASSWORD_CHARS = 72
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

# zxcvbn keeps the user inputs of a call in a module-level dictionary, so two
# estimates must not run at once.
_ZXCVBN_LOCK = threading.Lock()


def normalize_email(email: str) -> str:
    return email.strip().lower()


def check_signup(email: str, password: str, min_score: int = MIN_PASSWORD_SCORE) -> str:
    """The normalized email, or InvalidArgument naming each bad field. A
    password must also be hard to guess (see `password_weakness`)."""
    normalized = normalize_email(email)
    violations: list[FieldViolation] = []
    # The address as sent (no spaces around it), as the document's pattern says.
    if len(email) > MAX_EMAIL_CHARS or not _EMAIL.match(email):
        violations.append(FieldViolation("email", "is not a valid email address"))
    if len(password) < MIN_PASSWORD_CHARS:
        violations.append(
            FieldViolation("password", f"must be at least {MIN_PASSWORD_CHARS} characters")
        )
    elif len(password) > MAX_PASSWORD_CHARS:
        violations.append(
            FieldViolation("password", f"must be at most {MAX_PASSWORD_CHARS} characters")
        )
    else:
        weakness = password_weakness(password, normalized, min_score)
        if weakness:
            violations.append(FieldViolation("password", weakness))
    if violations:
        raise InvalidArgument(violations)
    return normalized


def password_weakness(password: str, email: str, min_score: int = MIN_PASSWORD_SCORE) -> str | None:
    """Why `password` is too easy to guess, in words its owner can act on, or
    None when it is strong enough. The e-mail address and its parts count as
    known words, so "alice2024" is weak for alice@example.com."""
    local, _, domain_part = email.partition("@")
    user_inputs = [email, local, *re.split(r"[^a-z0-9]+", local), domain_part.split(".")[0]]
    user_inputs.append("ourvidz")
    with _ZXCVBN_LOCK:
        result = zxcvbn(
            password[:ESTIMATED_PASSWORD_CHARS],
            user_inputs=[w for w in user_inputs if len(w) >= 3],
            max_length=ESTIMATED_PASSWORD_CHARS,
        )
    if result["score"] >= min_score:
        return None
    feedback = result["feedback"]
    reasons = [feedback.get("warning") or ""]
    if any(m.get("dictionary_name") == "user_inputs" for m in result["sequence"]):
        reasons.append("It contains your e-mail address or a part of it.")
    reasons += feedback.get("suggestions") or ["Use a longer phrase of uncommon words."]
    if len(password) > ESTIMATED_PASSWORD_CHARS:
        reasons.append(f"Only the first {ESTIMATED_PASSWORD_CHARS} characters are assessed.")
    return "is too easy to guess: " + " ".join(r for r in reasons if r)


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
