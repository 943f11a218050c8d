"""Typed request and response bodies: what /openapi.json documents. The
responses are built by mapping.py and checked against these models."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

JobState = Literal["queued", "enhancing", "running", "completed", "failed", "cancelled"]
ReferenceType = Literal["style", "composition", "character"]
Destination = Literal["workspace", "library"]

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_page_token: str = ""


# --- identity ----------------------------------------------------------------------


class SignupBody(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)


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


PROBLEM_RESPONSES = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (401, 404, 422)
}
