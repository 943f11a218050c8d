"""Typed request and response bodies: what /openapi.json documents. The
responses are built by mapping.py and checked against these models."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ourvidz import catalog
from services.gateway import domain

JobState = Literal["queued", "enhancing", "running", "completed", "failed", "cancelled"]
ReferenceType = Literal["style", "composition", "character"]
Destination = Literal["workspace", "library"]

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_page_token: str = ""


# --- identity ----------------------------------------------------------------------


class SignupBody(BaseModel):
    # The lengths are checked by the domain rules, which name every bad field
    # at once; the schema states the same limits.
    email: str = Field(
        description="An e-mail address",
        json_schema_extra={"maxLength": domain.MAX_EMAIL_CHARS},
    )
    password: str = Field(
        description="Hard to guess: common passwords, repeats and the e-mail address's "
        "parts are refused (by default a zxcvbn score of at least 3 of 4)",
        json_schema_extra={
            "minLength": domain.MIN_PASSWORD_CHARS,
            "maxLength": domain.MAX_PASSWORD_CHARS,
        },
    )


SIGNUP_ACCEPTED_DETAIL = "If this address can be used, the account is ready: sign in with it."


class SignupAccepted(BaseModel):
    """The same answer whether or not the address already had an account."""

    status: Literal["accepted"] = "accepted"
    detail: str = SIGNUP_ACCEPTED_DETAIL


class LoginBody(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)


class RefreshBody(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=512)


class PublicUser(BaseModel):
    id: str
    email: str
    role: Literal["user", "admin"]


class Me(PublicUser):
    created_at: str | None = None


class TokenResponse(BaseModel):
    user: PublicUser
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


# --- jobs --------------------------------------------------------------------------


class CreateJobBody(BaseModel):
    """A new job. Unset fields take the job type's defaults."""

    model_config = ConfigDict(extra="ignore")

    job_type: str = Field(min_length=1, max_length=64)
    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None
    num_images: int | None = Field(None, description="1, 3 or 6 (SDXL)")
    width: int | None = None
    height: int | None = None
    num_frames: int | None = Field(None, description="WAN video: 4k+1 frames")
    reference_image_id: str | None = None
    reference_type: ReferenceType | None = None
    reference_strength: float | None = Field(None, description="0.1 to 1.0")
    destination: Destination = "workspace"
    workspace_session_id: str | None = None


class ProgressOut(BaseModel):
    step: int
    total: int
    stage: str | None = None


class AssetOut(BaseModel):
    index: int
    content_type: str
    width: int
    height: int
    seed: int
    num_frames: int | None = None
    size_bytes: int = 0
    url: str | None
    thumbnail_url: str | None
    expires_at: str | None


class JobErrorOut(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    id: str
    job_type: str
    state: JobState | None
    prompt: str
    enhanced_prompt: str | None
    negative_prompt: str
    seed: int
    num_images: int
    width: int
    height: int
    num_frames: int
    steps: int
    guidance_scale: float
    reference_image_id: str | None
    reference_type: ReferenceType | None
    reference_strength: float | None
    destination: Destination | None
    workspace_session_id: str | None
    progress: ProgressOut
    attempt: int
    assets: list[AssetOut]
    error: JobErrorOut | None
    enhancement_fallback: bool = False
    enhancement_fallback_reason: str | None = None
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    updated_at: str | None = None


class JobTypeOut(BaseModel):
    name: str
    worker: str
    output: str
    quality: str
    enhanced: bool
    steps: int
    guidance_scale: float
    default_width: int
    default_height: int
    allowed_widths: list[int] = []
    allowed_heights: list[int] = []
    size_multiple: int
    default_num_frames: int
    max_num_frames: int = 0
    allowed_num_images: list[int] = []
    bucket: str
    content_type: str
    expected_seconds: int
    accepts_reference: bool
    fps: int = 0
    notes: str = ""


class JobTypesOut(BaseModel):
    items: list[JobTypeOut]


# --- prompts: enhancement, templates, playground, ratings ------------------------------

TargetModel = Literal["sdxl", "wan"]
JobTypeName = Literal[tuple(catalog.CATALOG)]  # type: ignore[valid-type]
# Limits shared with the enhancer's own checks (it enforces them again).
MAX_PROMPT_CHARS = 2000
MAX_NEW_TOKENS = 1024
MAX_SYSTEM_PROMPT = 8000
MAX_USER_TEMPLATE = 8000
MAX_DESCRIPTION = 2000
MAX_SAMPLE_PROMPTS = 20
MAX_CHAT_MESSAGES = 50
MAX_CHAT_CONTENT = 8000
PROMPT_PLACEHOLDER = "{prompt}"


def _not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must not be empty")
    return value


class GenerationSettingsIn(BaseModel):
    """Generation settings; an absent field takes the template's (then the
    service's) default. A seed makes the output reproducible."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, gt=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_new_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    seed: int | None = Field(None, ge=1, le=catalog.SEED_MAX)


class GenerationSettingsOut(BaseModel):
    """Settings of a generation: those used (in answers) or a template's
    defaults (null where the template sets none)."""

    temperature: float | None
    top_p: float | None
    max_new_tokens: int | None
    seed: int | None


class EnhanceBody(GenerationSettingsIn):
    """A prompt to enhance: for `target_model`, or for the model of `job_type`."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    job_type: JobTypeName | None = None
    target_model: TargetModel | None = None

    _prompt = field_validator("prompt")(_not_blank)

    @field_validator("target_model")
    @classmethod
    def _matches_job_type(cls, value, info):
        job_type = info.data.get("job_type")
        if value and job_type and catalog.CATALOG[job_type].target_model != value:
            raise ValueError(
                f"{job_type} jobs are generated by {catalog.CATALOG[job_type].target_model}"
            )
        return value


class TemplateRef(BaseModel):
    id: str | None
    version: int | None


class EnhancementOut(BaseModel):
    original_prompt: str
    enhanced_prompt: str
    target_model: str
    template: TemplateRef
    model: str
    tokens_in: int
    tokens_out: int
    target_tokens: int
    latency_seconds: float
    settings: GenerationSettingsOut
    fallback: bool
    fallback_reason: str | None
    enhancement_id: str | None


class CreateTemplateBody(BaseModel):
    """Version 1 of a new template. The user turn defaults to the prompt itself;
    `activate` makes it the active template of its target model at once."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    target_model: TargetModel
    system_prompt: str = Field(min_length=1, max_length=MAX_SYSTEM_PROMPT)
    user_template: str | None = Field(None, max_length=MAX_USER_TEMPLATE)
    description: str | None = Field(None, max_length=MAX_DESCRIPTION)
    settings: GenerationSettingsIn | None = None
    activate: bool = False

    _blank = field_validator("name", "system_prompt")(_not_blank)

    @field_validator("user_template")
    @classmethod
    def _has_placeholder(cls, value: str | None) -> str | None:
        if value is not None and PROMPT_PLACEHOLDER not in value:
            raise ValueError('must contain "{prompt}"')
        return value


class UpdateTemplateBody(BaseModel):
    """A new version of a template; absent fields are copied from its latest version."""

    model_config = ConfigDict(extra="forbid")

    system_prompt: str | None = Field(None, min_length=1, max_length=MAX_SYSTEM_PROMPT)
    user_template: str | None = Field(None, max_length=MAX_USER_TEMPLATE)
    description: str | None = Field(None, max_length=MAX_DESCRIPTION)
    settings: GenerationSettingsIn | None = None
    activate: bool = False

    _blank = field_validator("system_prompt")(_not_blank)
    _placeholder = field_validator("user_template")(CreateTemplateBody._has_placeholder.__func__)


class TemplateOut(BaseModel):
    id: str
    name: str
    target_model: str
    version: int
    system_prompt: str
    user_template: str
    description: str
    settings: GenerationSettingsOut
    active: bool
    created_by: str | None
    created_at: str | None


class TemplatesOut(BaseModel):
    templates: list[TemplateOut]


class TemplateTestBody(BaseModel):
    """Sample prompts to run the template over (absent: the service's own)."""

    model_config = ConfigDict(extra="forbid")

    sample_prompts: list[str] | None = Field(None, min_length=1, max_length=MAX_SAMPLE_PROMPTS)
    settings: GenerationSettingsIn | None = None

    @field_validator("sample_prompts")
    @classmethod
    def _each_prompt(cls, value: list[str] | None) -> list[str] | None:
        for text in value or ():
            if not text.strip():
                raise ValueError("a sample prompt must not be empty")
            if len(text) > MAX_PROMPT_CHARS:
                raise ValueError(f"a sample prompt must be at most {MAX_PROMPT_CHARS} characters")
        return value


class PromptTestOut(BaseModel):
    id: str
    template_id: str
    template_version: int
    sample_prompt: str
    result: EnhancementOut
    created_at: str | None


class PromptTestsOut(BaseModel):
    tests: list[PromptTestOut]


class TemplateStatsOut(BaseModel):
    template_id: str
    template_version: int
    enhancements: int
    fallbacks: int
    mean_latency_seconds: float
    mean_tokens_in: float
    mean_tokens_out: float
    ratings: int
    mean_rating: float | None = Field(description="null while nothing is rated")


class ChatMessageIn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1, max_length=MAX_CHAT_CONTENT)

    _content = field_validator("content")(_not_blank)


class ChatBody(GenerationSettingsIn):
    """A conversation for the playground; the last message is the user's."""

    model_config = ConfigDict(extra="ignore")

    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_CHAT_MESSAGES)

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, value: list[ChatMessageIn]) -> list[ChatMessageIn]:
        if value and value[-1].role != "user":
            raise ValueError("the last message must be the user's")
        return value


class RatingBody(BaseModel):
    rating: int = Field(ge=1, le=5, description="1 (poor) to 5 (excellent)")


class RatingOut(BaseModel):
    job_id: str
    rating: int


# --- workspace, library, uploads ------------------------------------------------------


class CreateSessionBody(BaseModel):
    name: str = Field("", max_length=200)


class SessionOut(BaseModel):
    id: str
    name: str
    active: bool
    item_count: int
    created_at: str | None
    last_activity_at: str | None


class ClearSessionOut(BaseModel):
    deleted_items: int


class WorkspaceItemOut(BaseModel):
    id: str
    session_id: str
    job_id: str
    index: int
    job_type: str
    content_type: str
    url: str | None
    thumbnail_url: str | None
    prompt: str
    seed: int
    width: int
    height: int
    library_asset_id: str | None
    expires_at: str | None
    created_at: str | None


class SaveItemBody(BaseModel):
    title: str = Field("", max_length=200)


class LibraryAssetOut(BaseModel):
    id: str
    job_id: str
    index: int
    job_type: str
    content_type: str
    title: str
    prompt: str
    seed: int
    width: int
    height: int
    size_bytes: int
    url: str | None
    thumbnail_url: str | None
    expires_at: str | None
    created_at: str | None


class UpdateAssetBody(BaseModel):
    title: str = Field(max_length=200)


class UploadOut(BaseModel):
    id: str
    content_type: str
    width: int
    height: int
    size_bytes: int = 0
    created_at: str | None = None


# --- errors ------------------------------------------------------------------------


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details (served as application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
    # Why, in one word a client can branch on (INVALID_CREDENTIALS, DATABASE_UNAVAILABLE, ...).
    reason: str | None = None


class QueueOut(BaseModel):
    family: str  # sdxl | wan | enhance
    priority: str | None  # fast | high; none for enhance
    subject: str
    consumer: str
    # False until a worker of this family declared its consumer (then all zeros).
    declared: bool
    pending: int  # waiting to be delivered
    in_flight: int  # delivered, not yet acked
    redelivered: int
    waiting_pulls: int  # workers waiting for work


class QueuesOut(BaseModel):
    queues: list[QueueOut]
    checked_at: str


class WorkerOut(BaseModel):
    worker_id: str
    family: str  # sdxl | wan | enhancer
    model_preset: str
    device: str
    dtype: str
    ready: bool
    current_job_id: str | None
    jobs_completed: int
    jobs_failed: int
    last_seen: str | None
    health: Literal["healthy", "starting", "stale", "failing"]


class WorkersOut(BaseModel):
    workers: list[WorkerOut]


UNAVAILABLE_RESPONSE = {
    "description": "A backing service, the database or the message queue is down or too "
    "slow; retry after the `Retry-After` seconds",
    "headers": {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "schema": {"type": "integer"},
        }
    },
}


TOO_MANY_REQUESTS_RESPONSE = {
    "description": "An abuse limit was reached (`reason` says which); retry after the "
    "`Retry-After` seconds",
    "headers": {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "schema": {"type": "integer"},
        }
    },
}


def problem_responses(*statuses: int) -> dict[int, dict]:
    """OpenAPI entries of the problem+json answers a route gives (a 503 with
    its `Retry-After` header, and so does a 429)."""
    return {
        status: {
            "model": Problem,
            "content": {"application/problem+json": {}},
            **(UNAVAILABLE_RESPONSE if status == 503 else {}),
            **(TOO_MANY_REQUESTS_RESPONSE if status == 429 else {}),
        }
        for status in statuses
    }


# Every /v1 route calls a service or the database, so any may answer 503.
PROBLEM_RESPONSES = problem_responses(401, 404, 422, 503)
