"""The workspace's rules: records, titles, names, pagination and filters.

Nothing here touches gRPC or the database, so the rules are read (and tested)
on their own.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Generic, TypeVar

from ourvidz.catalog import CATALOG
from ourvidz.errors import InvalidArgument, NotFound
from ourvidz.text import has_control_chars

TITLE_MAX_CHARS = 200
DEFAULT_TITLE_CHARS = 60
SESSION_NAME_MAX_CHARS = 200
MEDIA_TYPES = ("image", "video")
UNTITLED = "Untitled"
T = TypeVar("T")


def _from_row(cls, row: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in row.items() if k in names})


@dataclass(frozen=True)
class Session:
    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    active: bool
    created_at: datetime
    last_activity_at: datetime
    item_count: int = 0

    @classmethod
    def from_row(cls, row: dict) -> Session:
        return _from_row(cls, row)


@dataclass(frozen=True)
class Item:
    id: uuid.UUID
    session_id: uuid.UUID
    user_id: uuid.UUID
    job_id: str
    index: int
    job_type: str
    content_type: str
    prompt: str
    original_prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    bucket: str
    key: str
    thumbnail_bucket: str
    thumbnail_key: str
    size_bytes: int
    library_asset_id: uuid.UUID | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict) -> Item:
        return _from_row(cls, row)


@dataclass(frozen=True)
class Asset:
    id: uuid.UUID
    user_id: uuid.UUID
    job_id: str
    index: int
    job_type: str
    content_type: str
    title: str
    prompt: str
    original_prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    bucket: str
    key: str
    thumbnail_bucket: str
    thumbnail_key: str
    size_bytes: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict) -> Asset:
        return _from_row(cls, row)


@dataclass(frozen=True)
class Upload:
    id: uuid.UUID
    user_id: uuid.UUID
    bucket: str
    key: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict) -> Upload:
        return _from_row(cls, row)


@dataclass(frozen=True)
class Output:
    """One output of a completed job, as the job's event describes it."""

    index: int
    content_type: str
    width: int
    height: int
    seed: int
    bucket: str
    key: str
    thumbnail_bucket: str
    thumbnail_key: str
    size_bytes: int


@dataclass(frozen=True)
class Completion:
    """What the filer needs from a completed job. `prompt` is the prompt the
    worker rendered (the enhanced one where the job was enhanced),
    `original_prompt` the one the user typed."""

    job_id: str
    user_id: uuid.UUID
    job_type: str
    prompt: str
    original_prompt: str
    negative_prompt: str
    to_library: bool
    session_id: uuid.UUID | None
    outputs: tuple[Output, ...]


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


# --- identifiers -------------------------------------------------------------------


def parse_id(value: str, what: str) -> uuid.UUID:
    """A resource id from a request. A malformed id names nothing, so it is a
    NotFound like any other id that is not the caller's."""
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError) as exc:
        raise NotFound(f"{what} not found") from exc


def optional_id(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


# --- names and titles ----------------------------------------------------------------


def check_title(title: str) -> str:
    """A library asset's title: 1..200 characters once trimmed."""
    text = (title or "").strip()
    if not text:
        raise InvalidArgument.field("title", "must not be empty")
    if len(text) > TITLE_MAX_CHARS:
        raise InvalidArgument.field("title", f"must be at most {TITLE_MAX_CHARS} characters")
    if has_control_chars(text):
        raise InvalidArgument.field("title", "must not contain control characters")
    return text


def default_title(prompt: str) -> str:
    """The first ~60 characters of the prompt, cut at a word boundary when one
    is near, so a saved asset has a readable name without asking for one."""
    text = " ".join((prompt or "").split())
    if not text:
        return UNTITLED
    if len(text) <= DEFAULT_TITLE_CHARS:
        return text
    cut = text[:DEFAULT_TITLE_CHARS]
    space = cut.rfind(" ")
    if space >= DEFAULT_TITLE_CHARS // 2:
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + "…"


def title_for_save(title: str, prompt: str) -> str:
    """The title asked for, else a default from `prompt` (the typed prompt:
    the user's own words name the asset better than an enhancer's)."""
    return check_title(title) if (title or "").strip() else default_title(prompt)


def session_name(name: str, now: datetime) -> str:
    text = (name or "").strip()
    if len(text) > SESSION_NAME_MAX_CHARS:
        raise InvalidArgument.field("name", f"must be at most {SESSION_NAME_MAX_CHARS} characters")
    if has_control_chars(text):
        raise InvalidArgument.field("name", "must not contain control characters")
    return text or f"Session {now:%Y-%m-%d %H:%M}"


# --- lists -------------------------------------------------------------------------


def page_size(requested: int, default: int, maximum: int) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(requested or default, maximum)


def encode_token(values: list) -> str:
    """An opaque keyset position: the sort key of the last row of a page."""
    raw = json.dumps(values, default=str, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, arity: int) -> list | None:
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(values, list) or len(values) != arity:
            raise ValueError("wrong shape")
        return values
    except (ValueError, TypeError) as exc:
        raise InvalidArgument.field("page_token", "is not a token this list gave out") from exc


def check_media_type(media_type: str) -> str:
    value = (media_type or "").strip().lower()
    if value and value not in MEDIA_TYPES:
        raise InvalidArgument.field("media_type", "must be image or video")
    return value


def check_job_type(job_type: str) -> str:
    value = (job_type or "").strip()
    if value and value not in CATALOG:
        raise InvalidArgument.field("job_type", "is not a known job type")
    return value
