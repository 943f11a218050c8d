"""Typed request and response bodies: what /openapi.json documents. The
responses are built by mapping.py and checked against these models."""

from __future__ import annotations

from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from ourvidz import catalog
from ourvidz.text import has_control_chars
from services.gateway import domain

JobState = Literal["queued", "enhancing", "running", "completed", "failed", "cancelled"]
ReferenceType = Literal["style", "composition", "character"]
Destination = Literal["workspace", "library"]

T = TypeVar("T")

# Control characters but tab and line breaks: none belongs in a prompt, a
# title or a name (and PostgreSQL refuses NUL in text).
_CONTROL = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
# Text without those (a JSON Schema pattern; the validators below check the same).
TEXT_PATTERN = rf"^[^{_CONTROL}]*$"
# The same, and something besides whitespace.
PROMPT_PATTERN = rf"^[^{_CONTROL}]*[^\s{_CONTROL}][^{_CONTROL}]*$"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# An optional id: a UUID, or empty for "none".
OPTIONAL_UUID_PATTERN = UUID_PATTERN.replace("^", "^$|^", 1)
# Opaque list cursors: what a list's next_page_token holds (base64url).
PAGE_TOKEN_PATTERN = r"^[A-Za-z0-9_=-]*$"
MAX_PAGE_TOKEN = 1024
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def _no_control(value: str | None) -> str | None:
    if value is not None and has_control_chars(value):
        raise ValueError("must not contain control characters")
    return value


def _not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must not be empty")
    return value


def _prompt(value: str | None) -> str | None:
    return _no_control(_not_blank(value))


# Strings the gateway checks in Python (str.strip and unicodedata, as the
# services do); the pattern says the same in the document.
Text = Annotated[
    str, AfterValidator(_no_control), Field(json_schema_extra={"pattern": TEXT_PATTERN})
]
PromptText = Annotated[
    str, AfterValidator(_prompt), Field(json_schema_extra={"pattern": PROMPT_PATTERN})
]
PageToken = Annotated[
    str,
    Field(
        max_length=MAX_PAGE_TOKEN,
        pattern=PAGE_TOKEN_PATTERN,
        description="The next_page_token of the previous page (opaque); empty for the first",
    ),
]


def _integral(value: object) -> object:
    """JSON has one number type: 3.0 is the integer 3 (so JSON Schema says). A
    boolean or a string is not a number (the models are strict)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def json_int(**bounds: int):
    """An integer field with its bounds (inside the type, so the document
    states them as minimum/maximum in a nullable field too)."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral)]


class RequestBody(BaseModel):
    """A JSON request body, validated strictly: a number is not a string or a
    boolean here, as in the document (JSON Schema types)."""

    model_config = ConfigDict(strict=True)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_page_token: str = ""


# --- identity ----------------------------------------------------------------------


class SignupBody(RequestBody):
    # The lengths are checked by the domain rules, which name every bad field
    # at once; the schema states the same limits.
    email: str = Field(
        description="An e-mail address",
        json_schema_extra={"maxLength": domain.MAX_EMAIL_CHARS, "pattern": domain.EMAIL_PATTERN},
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


class LoginBody(RequestBody):
    email: str = Field(max_length=domain.MAX_EMAIL_CHARS)
    password: str = Field(max_length=domain.MAX_PASSWORD_CHARS)


class RefreshBody(RequestBody):
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


JobTypeName = Literal[tuple(catalog.CATALOG)]  # type: ignore[valid-type]
MIN_REFERENCE_STRENGTH = 0.1
MAX_REFERENCE_STRENGTH = 1.0


class CreateJobBody(RequestBody):
    """A new job. Unset (or 0) sizes and counts take the job type's defaults;
    what each job type allows (sizes, image and frame counts, references) is
    in the document's per-type variants and in GET /v1/job-types."""

    model_config = ConfigDict(extra="ignore")

    job_type: JobTypeName
    prompt: PromptText
    negative_prompt: Text | None = None
    seed: json_int(ge=0, le=catalog.SEED_MAX) | None = None
    num_images: json_int(ge=0, le=INT32_MAX) | None = Field(None, description="1, 3 or 6 (SDXL)")
    width: json_int(ge=0, le=INT32_MAX) | None = None
    height: json_int(ge=0, le=INT32_MAX) | None = None
    num_frames: json_int(ge=0, le=INT32_MAX) | None = Field(
        None, description="WAN video: 4k+1 frames"
    )
    reference_image_id: str | None = Field(None, pattern=OPTIONAL_UUID_PATTERN)
    reference_type: ReferenceType | None = None
    reference_strength: float | None = Field(
        None, ge=MIN_REFERENCE_STRENGTH, le=MAX_REFERENCE_STRENGTH
    )
    destination: Destination = "workspace"
    workspace_session_id: str | None = Field(None, pattern=OPTIONAL_UUID_PATTERN)


class RerunJobBody(RequestBody):
    """Where a re-run's outputs go when its job filed them in the workspace:
    the session named here (the caller's), else the caller's active one."""

    model_config = ConfigDict(extra="ignore")

    workspace_session_id: str | None = Field(None, pattern=OPTIONAL_UUID_PATTERN)


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


class ProvenanceOut(BaseModel):
    """What rendered a completed job, as its worker reported it."""

    weights_digest: str = Field(
        description="sha256 (hex) of the weights: over the model folder's manifest (each "
        "file's relative path, size and sha256), or over a built-in random preset's name, "
        "seed and configuration"
    )
    preset: str = Field(description="The model preset, or the model folder's name")
    scheduler: str = Field(description="The scheduler's class name")
    scheduler_config: str | None = Field(None, description="The scheduler's configuration (JSON)")
    dtype: str
    device: str = Field(description="cpu, cuda or mps")
    worker_id: str
    diffusers_version: str
    transformers_version: str
    torch_version: str
    ourvidz_version: str
    steps: int = Field(description="Denoising steps the render used")
    guidance_scale: float = Field(description="Guidance scale the render used")
    img2img_strength: float | None = Field(
        None, description="img2img denoising strength; null without a reference image"
    )


class QueueEstimateOut(BaseModel):
    """A queued job's place in line."""

    position: int = Field(
        description="Jobs of its worker family expected to start before it, users taking "
        "turns (0: it is next)"
    )
    dispatched: bool = Field(
        description="Its task is on the queue: the next free worker of its family takes it"
    )
    estimated_start_at: str | None = Field(
        None,
        description="When it is expected to start, from the job times measured in this "
        "deployment and the workers there are now; null while unknown",
    )


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
    enhancement_template_id: str | None = Field(
        None,
        description="The prompt template whose enhancement the job rendered; null for a "
        "job that is not enhanced (yet) or fell back to its own prompt",
    )
    enhancement_template_version: int | None = Field(
        None, description="The version of that template; null with it"
    )
    provenance: ProvenanceOut | None = Field(
        None,
        description="What rendered the job; null until it is completed, and for a job "
        "completed by a worker that reports none",
    )
    queue: QueueEstimateOut | None = Field(
        None, description="Where the job stands in line while it is queued; null otherwise"
    )
    rerun_of: str | None = Field(
        None,
        description="The job this one re-runs (POST /v1/jobs/{id}/rerun); null for a job "
        "submitted anew",
    )
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
    # Whether a job of this type can run now: its worker family has a worker
    # with its model loaded (and, for an enhanced type, the enhancer serves).
    # An unavailable type can still be submitted: its job waits in the queue.
    available: bool
    unavailable_reason: str | None = Field(
        description="Why the type cannot run now (null when available), "
        "e.g. 'the wan worker is still loading its model'."
    )


class JobTypesOut(BaseModel):
    items: list[JobTypeOut]


# --- prompts: enhancement, templates, playground, ratings ------------------------------

TargetModel = Literal["sdxl", "wan"]
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
# A user turn: text with the placeholder in it.
USER_TEMPLATE_PATTERN = rf"^[^{_CONTROL}]*\{{prompt\}}[^{_CONTROL}]*$"


class GenerationSettingsIn(RequestBody):
    """Generation settings; an absent field takes the template's (then the
    service's) default. A seed makes the output reproducible."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, gt=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_new_tokens: json_int(ge=1, le=MAX_NEW_TOKENS) | None = None
    seed: json_int(ge=1, le=catalog.SEED_MAX) | None = None


class GenerationSettingsOut(BaseModel):
    """Settings of a generation: those used (in answers) or a template's
    defaults (null where the template sets none)."""

    temperature: float | None
    top_p: float | None
    max_new_tokens: int | None
    seed: int | None


class EnhanceBody(GenerationSettingsIn):
    """A prompt to enhance: for `target_model`, or for the model of `job_type`."""

    # target_model, job_type, or both when the job type is generated by that model.
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "anyOf": [
                *(
                    {
                        "required": ["target_model"],
                        "properties": {
                            "target_model": {"const": target},
                            "job_type": {
                                "anyOf": [
                                    {
                                        "enum": [
                                            n
                                            for n, t in catalog.CATALOG.items()
                                            if t.target_model == target
                                        ]
                                    },
                                    {"type": "null"},
                                ]
                            },
                        },
                    }
                    for target in ("sdxl", "wan")
                ),
                {
                    "required": ["job_type"],
                    "properties": {
                        "job_type": {"type": "string"},
                        "target_model": {"type": "null"},
                    },
                },
            ]
        },
    )

    prompt: PromptText = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    job_type: JobTypeName | None = None
    target_model: TargetModel | None = None

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


def _has_placeholder(value: str) -> str:
    if PROMPT_PLACEHOLDER not in value:
        raise ValueError('must contain "{prompt}"')
    return value


UserTemplate = Annotated[
    Text,
    AfterValidator(_has_placeholder),
    Field(max_length=MAX_USER_TEMPLATE, json_schema_extra={"pattern": USER_TEMPLATE_PATTERN}),
]


class CreateTemplateBody(RequestBody):
    """Version 1 of a new template. The user turn defaults to the prompt itself;
    `activate` makes it the active template of its target model at once."""

    model_config = ConfigDict(extra="forbid")

    name: PromptText = Field(min_length=1, max_length=100)
    target_model: TargetModel
    system_prompt: PromptText = Field(min_length=1, max_length=MAX_SYSTEM_PROMPT)
    user_template: UserTemplate | None = None
    description: Text | None = Field(None, max_length=MAX_DESCRIPTION)
    settings: GenerationSettingsIn | None = None
    activate: bool = False


class UpdateTemplateBody(RequestBody):
    """A new version of a template; absent fields are copied from its latest version."""

    model_config = ConfigDict(extra="forbid")

    system_prompt: PromptText | None = Field(None, min_length=1, max_length=MAX_SYSTEM_PROMPT)
    user_template: UserTemplate | None = None
    description: Text | None = Field(None, max_length=MAX_DESCRIPTION)
    settings: GenerationSettingsIn | None = None
    activate: bool = False


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


class TemplateTestBody(RequestBody):
    """Sample prompts to run the template over (absent: the service's own)."""

    model_config = ConfigDict(extra="forbid")

    sample_prompts: list[Annotated[PromptText, Field(max_length=MAX_PROMPT_CHARS)]] | None = Field(
        None, min_length=1, max_length=MAX_SAMPLE_PROMPTS
    )
    settings: GenerationSettingsIn | None = None


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


class ChatMessageIn(RequestBody):
    role: Literal["system", "user", "assistant"]
    content: PromptText = Field(min_length=1, max_length=MAX_CHAT_CONTENT)


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


class RatingBody(RequestBody):
    rating: json_int(ge=1, le=5) = Field(description="1 (poor) to 5 (excellent)")


class RatingOut(BaseModel):
    job_id: str
    rating: int


# --- workspace, library, uploads ------------------------------------------------------


class CreateSessionBody(RequestBody):
    name: Text = Field("", max_length=200)


class SessionOut(BaseModel):
    id: str
    name: str
    active: bool
    item_count: int
    created_at: str | None
    last_activity_at: str | None


class ClearSessionOut(BaseModel):
    deleted_items: int


RENDERED_PROMPT = (
    "The prompt the output was rendered from: the enhanced prompt where the job was "
    "enhanced, else the prompt as typed"
)
ORIGINAL_PROMPT = "The prompt as the user typed it; equal to prompt for a job not enhanced"
RENDERED_NEGATIVE_PROMPT = (
    "The negative prompt rendered (the job type's default where none was given); "
    "empty for outputs filed before it was recorded"
)


class WorkspaceItemOut(BaseModel):
    id: str
    session_id: str
    job_id: str
    index: int
    job_type: str
    content_type: str
    url: str | None
    thumbnail_url: str | None
    prompt: str = Field(description=RENDERED_PROMPT)
    original_prompt: str = Field(description=ORIGINAL_PROMPT)
    negative_prompt: str = Field(description=RENDERED_NEGATIVE_PROMPT)
    seed: int
    width: int
    height: int
    library_asset_id: str | None
    expires_at: str | None
    created_at: str | None


class SaveItemBody(RequestBody):
    title: Text = Field("", max_length=200)


class LibraryAssetOut(BaseModel):
    id: str
    job_id: str
    index: int
    job_type: str
    content_type: str
    title: str
    prompt: str = Field(description=RENDERED_PROMPT)
    original_prompt: str = Field(description=ORIGINAL_PROMPT)
    negative_prompt: str = Field(description=RENDERED_NEGATIVE_PROMPT)
    seed: int
    width: int
    height: int
    size_bytes: int
    url: str | None
    thumbnail_url: str | None
    expires_at: str | None
    created_at: str | None


class UpdateAssetBody(RequestBody):
    title: PromptText = Field(max_length=200)


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
    # Always null: a family's one consumer takes both priorities (kept for clients).
    priority: str | None
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


def problem_responses(*statuses: int) -> dict[int, dict]:
    """The problem+json answers a route gives beyond those derived from what
    it does (services/gateway/openapi.py documents each one in full)."""
    return {status: {"model": Problem} for status in statuses}
